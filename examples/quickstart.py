"""The quick-start: remote functions, an actor and the futures Client on an embedded local cluster."""

import numpy as np

import runtime as rt

rt.init(num_workers=2)


@rt.remote
def inc(x):
    return x + 1


@rt.remote
def total(a):
    # `a` arrives as a read-only, zero-copy view into the node's shared-memory store.
    return float(a.sum())


@rt.remote
def fail():
    raise ValueError("this task fails on purpose")


@rt.remote
class Counter:
    # An actor: its state stays in one worker's memory; calls from one caller run in order.
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n


a = inc.remote(1)
b = inc.remote(a)  # a future as an argument: resolved to its value before inc runs
print("inc chain:", rt.get([a, b]))

done, pending = rt.wait([inc.remote(i) for i in range(10)], num_returns=10, timeout=10)
print(f"wait: {len(done)} done, {len(pending)} pending")

big = rt.put(np.ones(10_000_000))  # 80 MB, written once into shared memory
print("sum of 8 reads of one put array:", rt.get([total.remote(big) for _ in range(8)]))

try:
    rt.get(fail.remote())
except ValueError as e:
    print("a task's exception comes back as itself:", repr(e))

counter = Counter.remote()
print("actor calls, in order:", rt.get([counter.incr.remote() for _ in range(5)]))

# Dask's futures API: a Client with no address starts a local cluster of its own.
rt.shutdown()
with rt.Client(n_workers=2) as client:
    futures = client.map(lambda x: x * x, range(10))
    print("Client.map + submit:", client.submit(sum, futures).result(timeout=30))
