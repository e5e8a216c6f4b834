"""runtime.shuffle: results, errors, shard files freed, a killed worker, a store too small,
two nodes (each with real processes)."""

from __future__ import annotations

import os
import signal
import sys
import time

import cloudpickle
import numpy as np
import pyarrow as pa
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime.objstore import store
from runtime.shuffling import hashing
from runtime.shuffling.layout import GROUPS, WHOLE, shard_name

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import tests/


def table(i: int, rows: int = 1000, keys: int = 300) -> pa.Table:
    rng = np.random.default_rng(i)
    return pa.table({"k": rng.integers(0, keys, rows), "v": np.arange(i * rows, (i + 1) * rows, dtype=np.float64)})


def check(outs: list, inputs: list[pa.Table], on: list[str]) -> None:
    """Every row once, each in the partition its key hashes to."""
    tables = [o if isinstance(o, pa.Table) else pa.Table.from_pandas(o, preserve_index=False) for o in outs]
    for j, t in enumerate(tables):
        if t.num_rows:
            assert (hashing.partition_of(t, on, len(outs)) == j).all(), f"output {j} holds a row of another"
    got = np.sort(np.concatenate([t["v"].to_numpy() for t in tables]))
    assert np.array_equal(got, np.sort(np.concatenate([t["v"].to_numpy() for t in inputs])))


def shard_files_left(client, outs: list) -> list[str]:
    sid = outs[0].key.split("-")[2]
    nodes = client.request("identity")["nodes"]
    names = [
        shard_name(info["prefix"], sid, i, g)
        for info in nodes.values()
        for i in range(64)
        for g in (*range(GROUPS), WHOLE)
    ]
    return [n for n in names if store.find(n) is not None]


def test_shuffle_by_key_puts_each_row_where_its_key_hashes(cluster):
    inputs = [table(i) for i in range(6)]
    parts = [rt.put(t) for t in inputs]
    outs = rt.shuffle(parts, on="k", npartitions=4)
    assert len(outs) == 4
    values = rt.get(outs)
    assert all(isinstance(v, pa.Table) for v in values)
    check(values, inputs, ["k"])
    wait_until(lambda: not shard_files_left(cluster.client, outs), "the shard files are freed")


def test_default_npartitions_several_keys_and_plain_values(cluster):
    inputs = [table(i).append_column("s", pa.array([f"x{j % 7}" for j in range(1000)])) for i in range(3)]
    outs = rt.shuffle(inputs, on=["s", "k"])  # tables, not futures: they travel with the tasks
    assert len(outs) == 3
    check(rt.get(outs), inputs, ["s", "k"])


def test_pandas_in_pandas_out(cluster):
    pd = pytest.importorskip("pandas")
    inputs = [table(i) for i in range(3)]
    outs = rt.get(rt.shuffle([rt.put(t.to_pandas()) for t in inputs], on="k", npartitions=2))
    assert all(isinstance(o, pd.DataFrame) for o in outs)
    check(outs, inputs, ["k"])


def test_random_shuffle_keeps_every_row_and_repeats_with_a_seed(cluster):
    inputs = [table(i) for i in range(4)]
    parts = [rt.put(t) for t in inputs]
    a = rt.get(rt.shuffle(parts, by="random", npartitions=3, seed=7))
    b = rt.get(rt.shuffle(parts, by="random", npartitions=3, seed=7))
    got = np.sort(np.concatenate([t["v"].to_numpy() for t in a]))
    assert np.array_equal(got, np.sort(np.concatenate([t["v"].to_numpy() for t in inputs])))
    assert [t["v"].to_pylist() for t in a] == [t["v"].to_pylist() for t in b]


def test_empty_partitions_and_null_keys(cluster):
    empty = pa.table({"k": pa.array([], pa.int64()), "v": pa.array([], pa.float64())})
    nulls = pa.table({"k": pa.array([1, None, 2, None], pa.int64()), "v": [0.5, 1.5, 2.5, 3.5]})
    outs = rt.get(rt.shuffle([empty, nulls, empty], on="k", npartitions=5))
    assert sum(o.num_rows for o in outs) == 4
    with_nulls = [o for o in outs if o["k"].null_count]
    assert len(with_nulls) == 1 and with_nulls[0]["k"].null_count == 2  # every null key in one partition
    check(outs, [empty, nulls], ["k"])


def test_a_missing_key_column_is_named_with_the_columns_there_are(cluster):
    outs = rt.shuffle([table(0)], on="nope")
    with pytest.raises(KeyError, match=r"'nope' is not in input partition 0; its columns are \['k', 'v'\]"):
        rt.get(outs)


def test_mismatched_schemas_are_a_clear_error(cluster):
    other = pa.table({"k": [1, 2], "w": ["a", "b"]})
    with pytest.raises(ValueError, match=r"do not share one schema: partition 0 has \(k: int64, v: double\)"):
        rt.get(rt.shuffle([table(0), other], on="k"))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, 'needs on= .* or by="random"'),
        ({"on": "k", "by": "random"}, "not both"),
        ({"by": "sorted"}, 'by must be "random"'),
        ({"on": []}, "on must be a column name"),
        ({"on": "k", "npartitions": 0}, "npartitions must be a whole number >= 1"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        rt.shuffle([table(0)], **kwargs)
    with pytest.raises(ValueError, match="at least one input partition"):
        rt.shuffle([], on="k")


def test_hash_is_stable_and_documented():
    t = pa.table({"k": pa.array([0, 1, -1, None], pa.int64()), "s": ["", "a", "ab", None]})
    assert (
        hashing.row_hashes(t, ["k"]).tolist()
        == hashing.row_hashes(pa.table({"k": pa.array([0, 1, -1, None], pa.int32())}), ["k"]).tolist()
    )  # int32 and int64 keys agree
    # Fixed values: a change of the hash would move every user's rows to other partitions.
    assert hashing.partition_of(t, ["k"], 1000).tolist() == FIXED_K
    assert hashing.partition_of(t, ["s", "k"], 1000).tolist() == FIXED_SK


FIXED_K = [0, 789, 67, 535]
FIXED_SK = [967, 362, 379, 714]


def gated(i: int, marker: str | None, go: str) -> pa.Table:
    """An input that records its worker's pid (with a ``marker``) and waits for ``go``
    (bounded), off its worker's threads (so the other inputs' tasks run meanwhile, wherever
    they were put)."""
    if marker is not None:
        with open(f"{marker}.{i}", "w") as f:
            f.write(str(os.getpid()))
    rt.secede()
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    rt.rejoin()
    return table(i)


def wait_for_transfers(core, outs: list, indices: range) -> str:
    """Wait until the transfers ``indices`` of the shuffle of ``outs`` are done; its id."""
    sid = outs[0].key.split("-")[2]
    wait_until(
        lambda: all(core.request("task-states").get(f"shuffle-transfer-{sid}-{i}") == "memory" for i in indices),
        "the ungated inputs' shards are written",
    )
    return sid


def test_a_worker_killed_mid_shuffle_changes_no_result_and_frees_every_shard(cluster, tmp_path):
    marker, go = str(tmp_path / "pid"), str(tmp_path / "go")
    make = rt.remote(gated)
    parts = [rt.put(table(0)), rt.put(table(1)), make.remote(2, marker, go), rt.put(table(3))]
    outs = rt.shuffle(parts, on="k", npartitions=4)
    wait_for_transfers(cluster.client, outs, range(2))
    pid = int(wait_until(lambda: os.path.exists(f"{marker}.2") and open(f"{marker}.2").read(), "input 2 runs"))
    os.kill(pid, signal.SIGKILL)
    open(go, "w").close()
    check(rt.get(outs, timeout=60), [table(i) for i in range(4)], ["k"])
    wait_until(lambda: not shard_files_left(cluster.client, outs), "the shard files are freed")
    cluster.client.wait_for_workers(2, timeout=30)


def store_files(prefixes: list[str], sid: str, ninputs: int) -> list[str]:
    """The shuffle's shard files as listed in /dev/shm and in the spill directory."""
    names = {shard_name(p, sid, i, g) for p in prefixes for i in range(ninputs) for g in (*range(GROUPS), WHOLE)}
    spilled = os.listdir(store.spill_dir()) if os.path.isdir(store.spill_dir()) else []
    return sorted(set(os.listdir(store.SHM_DIR) + spilled) & names)


def test_cancelling_the_outputs_frees_every_shard_in_memory_and_spilled(tmp_path):
    marker, go = str(tmp_path / "pid"), str(tmp_path / "go")
    limit = 16 * 2**20
    with (
        rt.config.set({"store.spill-dir": str(tmp_path / "spill")}),
        rt.LocalCluster(n_workers=2, object_store_memory=limit) as lc,
        rt.Client(lc) as client,
        validated(client.core),
    ):
        assert store.spill_dir() == str(tmp_path / "spill")
        make = lambda i: table(i, rows=200_000, keys=10_000)  # noqa: E731  3.2 MB each
        parts = [client.submit(make, i) for i in range(10)]
        parts.append(client.submit(gated, 10, marker, go))  # the barrier waits for it
        outs = rt.shuffle(parts, on="k", npartitions=4, client=client)
        sid = wait_for_transfers(client.core, outs, range(10))
        wait_until(lambda: os.listdir(tmp_path / "spill"), "some shards spilled")  # 10 * 3.2 MB > the store
        assert store_files([lc.prefix], sid, 11)
        client.cancel(outs)
        open(go, "w").close()
        wait_until(lambda: not store_files([lc.prefix], sid, 11), "every shard file is gone, in memory and on disk")
        wait_until(lambda: client.core.request("shuffle-runs")[sid][2], "the shuffle has ended")


def _node_loss(lc: rt.LocalCluster, client: rt.Client, tmp_path) -> tuple[list, list[pa.Table]]:
    """A shuffle whose transfers wrote shards on both nodes, then node 1 killed (agent and
    workers) before the barrier: returns the outputs and the inputs."""
    go = str(tmp_path / "go")
    workers = client.core.request("identity")["workers"]
    on = {node: sorted(w for w, info in workers.items() if info["node"] == node) for node in lc.nodes}
    inputs = [table(i, rows=20_000) for i in range(6)] + [table(6)]
    # Stored (over the inline threshold) in the store of the node that made them: their
    # transfers run there.
    parts = [client.submit(table, i, 20_000, workers=on[lc.nodes[i % 2]], allow_other_workers=True) for i in range(6)]
    parts.append(client.submit(gated, 6, None, go, workers=on[lc.nodes[0]]))  # holds the barrier back
    outs = rt.shuffle(parts, on="k", npartitions=4, client=client)
    sid = wait_for_transfers(client.core, outs, range(6))
    assert store_files([lc.prefixes[1]], sid, 7), "no transfer ran on node 1"
    lc.agent_procs[1].kill()
    wait_until(lambda: list(client.core.request("identity")["nodes"]) == [lc.nodes[0]], "node 1 is gone")
    open(go, "w").close()
    return outs, inputs


def test_a_node_lost_mid_shuffle_restarts_it_with_every_row(tmp_path):
    with rt.LocalCluster(n_workers=2, n_nodes=2) as lc, rt.Client(lc) as client, validated(client.core):
        try:
            outs, inputs = _node_loss(lc, client, tmp_path)
            check(client.gather(outs, timeout=120), inputs, ["k"])  # its shards were written again
            sid = outs[0].key.split("-")[2]
            assert client.core.request("shuffle-runs")[sid][3] == 1  # restarted once
            wait_until(lambda: not store_files([lc.prefixes[0]], sid, 7), "the shard files are freed")
        finally:
            store.sweep(lc.prefixes[1])  # what the killed agent left


def test_a_shuffle_that_loses_shards_too_often_fails_with_a_clear_error(tmp_path):
    with (
        rt.config.set({"scheduler.allowed-failures": 0}),
        rt.LocalCluster(n_workers=2, n_nodes=2) as lc,
        rt.Client(lc) as client,
    ):
        try:
            outs, _ = _node_loss(lc, client, tmp_path)
            with pytest.raises(rt.ShuffleError, match=r"lost shards 1 times, more than allowed-failures \(0\)"):
                client.gather(outs, timeout=120)
        finally:
            store.sweep(lc.prefixes[1])


def test_a_shuffle_three_times_the_store_spills_and_completes():
    limit = 24 * 2**20
    with rt.LocalCluster(n_workers=2, object_store_memory=limit) as lc, rt.Client(lc) as client, validated(client.core):
        make = lambda i: table(i, rows=300_000, keys=10_000)  # noqa: E731  4.8 MB each
        parts = [client.submit(make, i) for i in range(16)]  # 77 MB: over 3 times the store
        outs = rt.shuffle(parts, on="k", npartitions=8, client=client)
        lens = client.gather([client.submit(lambda t: t.num_rows, o) for o in outs])
        assert sum(lens) == 16 * 300_000
        for j, o in enumerate(outs[:2]):
            t = o.result()
            assert (hashing.partition_of(t, ["k"], 8) == j).all()


def test_two_nodes_read_each_others_shards():
    with rt.LocalCluster(n_workers=2, n_nodes=2) as lc, rt.Client(lc) as client, validated(client.core):
        inputs = [table(i) for i in range(6)]
        parts = [client.submit(table, i, workers=[w]) for i, w in zip(range(6), _workers(client) * 3, strict=False)]
        outs = rt.shuffle(parts, on="k", npartitions=4, client=client)
        check(client.gather(outs), inputs, ["k"])


def _workers(client) -> list[str]:
    return sorted(client.core.request("identity")["workers"])


def test_a_groups_files_are_freed_once_its_outputs_are_built():
    """The extension frees each group's files as soon as its last output is in memory."""
    from runtime.scheduler.extensions.shuffle import ShuffleSchedulerPlugin, output_key

    sent = []

    class Scheduler:  # what the plugin uses of one
        node_info = {"n1": {"prefix": "rt-1-abcdef-"}}
        extensions: dict = {}

        def send_to(self, node, msg):
            sent.append(set(msg.names))

    plugin = ShuffleSchedulerPlugin(Scheduler())
    plugin.register({"sid": "s1", "ninputs": 2, "noutputs": 2 * GROUPS})  # groups of 2 outputs
    files = lambda g: {shard_name("rt-1-abcdef-", "s1", i, g) for i in range(2)}  # noqa: E731
    plugin.transition(output_key("s1", 0), "processing", "memory", stimulus_id="x")
    assert sent == []  # output 1, of the same group, still reads them
    plugin.transition(output_key("s1", 1), "processing", "erred", stimulus_id="x")
    assert sent == [files(0)]
    plugin.transition(output_key("s1", 5), "processing", "forgotten", stimulus_id="x")
    plugin.transition(output_key("s1", 4), "processing", "memory", stimulus_id="x")
    assert sent == [files(0), files(2)]
