"""Hostile or broken peers: each bad connection is dropped with a logged reason, and the
scheduler and node agent go on serving everyone else."""

from __future__ import annotations

import os
import pathlib
import random
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cloudpickle
import msgpack
import numpy as np
import pytest
from conftest import runtime_cmd, validated

from runtime.client.client import ClusterClient
from runtime.comm import codec, serialize
from runtime.comm import messages as m
from runtime.comm.core import parse_address, read_frame
from runtime.comm.serialize import dumps_function
from runtime.objstore import store

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


class Head:
    """A cluster started by ``runtime start --head`` on loopback TCP, as a user would."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        started = runtime_cmd("start", "--head", "--port", "0", "--num-workers", "1", run_dir=run_dir)
        assert started.returncode == 0, started.stderr
        with open(os.path.join(run_dir, "address")) as f:
            self.scheduler_address = f.read().strip()

    def log(self, name: str) -> str:
        with open(os.path.join(self.run_dir, "logs", name)) as f:
            return f.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    head = Head(str(tmp_path_factory.mktemp("hostile")))
    try:
        client = ClusterClient(head.scheduler_address)
        try:
            client.wait_for_workers(1)
            with validated(client):
                yield head, client
        finally:
            client.close()
    finally:
        assert runtime_cmd("stop", run_dir=head.run_dir).returncode == 0


def _frame(*msgs) -> bytes:
    """A frame of hand-made messages, each ``[op, field, ...]`` as the wire has them."""
    payload = msgpack.packb(list(msgs), use_bin_type=True)
    return struct.pack("<I", len(payload)) + payload


def _send_raw(address: str, data: bytes, wait_for_close: bool = True) -> None:
    """Connect, send ``data``, and (optionally) wait until the peer closes the connection."""
    scheme, host, port = parse_address(address)
    family = socket.AF_UNIX if scheme == "unix" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(host if scheme == "unix" else (host, port))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # all it will ever send
        if wait_for_close:
            while sock.recv(65536):  # the peer drops us: recv returns b"" (never a timeout)
                pass


def _still_serving(client: ClusterClient) -> None:
    assert client.submit(dumps_function(inc), "inc", (41,), {}).result(timeout=60) == 42


def _client_id() -> str:
    return f"client-hostile-{os.urandom(4).hex()}"


MALFORMED = [
    ("garbage bytes", b"\x93\x00\xff" + os.urandom(64), None),
    ("oversized frame", struct.pack("<I", codec.MAX_FRAME_BYTES + 1), "over the"),
    ("truncated frame", struct.pack("<I", 1000) + b"\x91" * 10, "truncated frame"),
    ("not a list of messages", struct.pack("<I", 1) + b"\x05", "a frame is a list of messages"),
    ("empty batch", _frame(), "held no message"),
    ("a message that is a map", _frame({"op": "register-client", "client": "c"}), "a message is an array"),
    ("first message not a registration", _frame(["update-graph", [], []]), "not a registration"),
    ("registration missing its id", _frame(["register-worker", "n"]), "malformed 'register-worker' message"),
    ("registration of the wrong type", _frame(["register-client", [1]]), "field 'client': Expected `str`"),
    ("unknown op", _frame(["register-client", "c-x"], ["explode"]), "unknown op 'explode'"),
    (
        "message missing a field",
        _frame(["register-client", "c-y"], ["update-graph", []]),
        "malformed 'update-graph' message: Expected `array` of at least length 3",
    ),
    (
        "field of the wrong type",
        _frame(["register-worker", "w-z", "n"], ["task-finished", ["k"], b"", 1]),
        "malformed 'task-finished' message: field 'key'",
    ),
    (
        "a task of the wrong shape",
        _frame(["register-client", "c-w"], ["update-graph", [["k", 1]], []]),
        "malformed 'update-graph' message: field 'tasks'",
    ),
    (
        "a heartbeat from a client",
        _frame(["register-client", "c-h"], ["heartbeat", "n", 0, 0, 0]),
        "a client may not send 'heartbeat'",
    ),
]


@pytest.mark.parametrize("kind, data, logged", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_each_kind_of_malformed_frame_drops_only_that_connection(served, kind, data, logged):
    cluster, client = served
    _send_raw(cluster.scheduler_address, data)
    if logged is not None:
        deadline = time.monotonic() + 30
        while logged not in cluster.log("scheduler.log") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logged in cluster.log("scheduler.log")
    _still_serving(client)
    # A peer that got as far as registering is removed again with its connection.
    deadline = time.monotonic() + 30
    while len(client.request("identity")["workers"]) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.request("identity")["workers"]) == 1


def test_a_thousand_garbage_connections_leave_the_scheduler_serving(served):
    cluster, client = served
    rng = random.Random(6)
    payloads = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: _send_raw(cluster.scheduler_address, p), payloads))
    _still_serving(client)
    # Hostile peers never became clients or workers.
    identity = client.request("identity")
    assert len(identity["workers"]) == 1 and len(identity["nodes"]) == 1


def test_the_node_agents_object_server_drops_bad_peers_and_keeps_serving(served):
    cluster, client = served
    (node,) = client.request("identity")["nodes"].values()
    agent = node["address"]
    for _, data, _ in MALFORMED[:5]:
        _send_raw(agent, data)
    elsewhere = f"rt-1-abcdef-{'0' * 28}"  # another store's object
    bad_requests = [
        ["get-object"],  # no name
        ["get-object", "../../../etc/passwd"],  # a path, not an object
        ["get-object", elsewhere],
        ["fetch", elsewhere],  # no location
        ["delete-everything", elsewhere],
    ]
    for request in bad_requests:
        assert _exchange(agent, _frame(request)) == b""  # dropped: not a byte of any file
    _still_serving(client)
    log = cluster.log("agent.log")
    assert "malformed 'get-object' message: field 'name': Expected `str` matching regex" in log
    assert "unknown op 'delete-everything'" in log
    assert client.request("identity")["nodes"]  # the agent is still there


def _exchange(address: str, data: bytes) -> bytes:
    """Send ``data`` and return all the peer answers before it closes."""
    _, host, port = parse_address(address)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_peers_that_stop_midway_through_an_object_leave_nothing_behind_and_one_log_line(served):
    cluster, client = served
    (node,) = client.request("identity")["nodes"].values()
    agent, prefix = node["address"], node["prefix"]
    _, host, port = parse_address(agent)
    ref = client.put(np.ones(10_000_000))  # 80 MB: more than the socket buffers hold
    name = ref._state.value.name

    # A reader that takes a little of an object and goes away (a reset, as a killed process's).
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(_frame(["get-object", name]))
        assert type(read_frame(sock, agent, m.FROM_OBJECT_SERVER)[0]) is m.Object
        sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A client with no store that starts a put and goes away.
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(_frame(["put-object", "half-put", 10_000_000]))
        assert type(read_frame(sock, agent, m.FROM_OBJECT_SERVER)[0]) is m.Ready
        sock.sendall(bytes(1_000_000))
    # Puts that cannot be: refused with a reason, and the connection goes on serving.
    with socket.create_connection((host, port), timeout=30) as sock:
        for size, says in ((-1, "no object"), (2**60, "larger than the node store's limit")):
            sock.sendall(_frame(["put-object", "bad-put", size]))
            reply = read_frame(sock, agent, m.FROM_OBJECT_SERVER)[0]
            assert type(reply) is m.PutFailed and says in reply.error, reply
    for request in (["put-object", "k", "lots"], ["fetch", "k", ["n", 1, "/x"], "tcp://x:1"]):
        assert _exchange(agent, _frame(request)) == b""

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        [f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix) and ".tmp-" in f]
        or "put of 'half-put'" not in cluster.log("agent.log")
    ):
        time.sleep(0.05)
    assert not [f for f in os.listdir(store.SHM_DIR) if f.startswith(prefix) and ".tmp-" in f]
    log = cluster.log("agent.log")
    assert "went away" in log and "put of 'half-put'" in log
    assert "handler failed" not in log and "Traceback" not in log and "BufferError" not in log
    assert float(client.get([ref])[0].sum()) == 10_000_000.0  # nothing stored was touched
    del ref
    _still_serving(client)


def _wait_for_log(cluster: Head, log: str, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while cluster.log(log).count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.log(log).count(text) >= count, f"{log} does not say {text!r} {count} times"


def test_a_name_that_is_not_an_object_of_the_store_never_reaches_a_file(served, tmp_path):
    # Before: an update-data (or add-replica) naming a path had the node agent delete that file.
    cluster, client = served
    (node,) = client.request("identity")["nodes"].values()
    prefix = node["prefix"]
    victims = [tmp_path / "relative", tmp_path / "absolute", *(tmp_path / "under-shm" / n for n in ("a", "b"))]
    for victim in victims:
        victim.parent.mkdir(exist_ok=True)
        victim.write_text("precious")
    drain = pathlib.Path(store.SHM_DIR, f"{prefix}drain-999999")  # one of the store's own files, as a victim
    drain.touch()
    bad_names = [
        os.path.relpath(victims[0], store.SHM_DIR),  # ../../tmp/...
        str(victims[1]),  # absolute: the spill directory's join would go there
        f"{prefix}{'0' * 28}/../../{os.path.relpath(victims[2], store.SHM_DIR)}",  # an object's name, then a path
        f"{prefix}{'0' * 27}\0",  # NUL: os.unlink raised in the agent's loop and ended the agent
        f"{prefix}capacity",
        f"{prefix}pool-20-0",
        drain.name,
        f"{prefix}{'0' * 28}.tmp-1",
        "",
    ]
    # A real object of another store: a valid name, but not the node's to free.
    other = f"rt-{os.getpid()}-{os.urandom(3).hex()}-"
    others = [store.new_name(other, f"k{i}") for i in range(2)]
    for name in others:
        store.write(name, *serialize.dumps_value(b"x" * 1000))
    try:
        for name in bad_names + others:
            key = f"victim-{os.urandom(4).hex()}"
            located = [node["node"], 1000, name]
            update = ["update-data", key, located, 1000]
            _send_raw(cluster.scheduler_address, _frame(["register-client", _client_id()], update))
            release = ["release-keys", [key]]
            _send_raw(cluster.scheduler_address, _frame(["register-client", _client_id()], release))
            replica = ["add-replica", key, node["node"], name, located]
            _send_raw(cluster.scheduler_address, _frame(["register-node", f"n-{key}", "rt-1-abcdef-"], replica))
        # The scheduler refuses each bad name at the wire, the agent an object of another store.
        _wait_for_log(cluster, "scheduler.log", "malformed 'update-data' message: field 'value'", len(bad_names))
        _wait_for_log(cluster, "scheduler.log", "malformed 'add-replica' message: field 'name'", len(bad_names))
        for name in others:
            _wait_for_log(cluster, "agent.log", f"refusing to free {name!r}")
        assert all(v.read_text() == "precious" for v in victims)
        assert drain.exists() and os.path.exists(f"{store.SHM_DIR}/{prefix}capacity")
        assert all(os.path.exists(store.object_path(n)) for n in others)
        _still_serving(client)
        assert client.request("identity")["nodes"]  # the agent is still there
    finally:
        store.sweep(other)
        drain.unlink(missing_ok=True)
