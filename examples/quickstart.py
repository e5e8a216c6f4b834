"""The quick-start: remote functions on an embedded local cluster."""

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

rt.shutdown()
