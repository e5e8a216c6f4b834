"""The stimulus log: a real run with failures, recorded and replayed offline to the same decisions."""

from __future__ import annotations

import os
import pickle
import sys

import cloudpickle
import msgpack
import pytest
from conftest import runtime_cmd

import runtime as rt
from runtime.api.context import current_runtime
from runtime.comm.messages import StoreRef
from runtime.scheduler import record
from runtime.scheduler import stimuli as st

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@rt.remote
def inc(x):
    return x + 1


@rt.remote
def boom(x):
    raise ValueError(f"boom {x}")


@rt.remote(max_retries=1)
def flaky(marker):
    if not os.path.exists(marker):  # fails the first time only
        open(marker, "w").close()
        raise RuntimeError("first try")
    return "second try"


@rt.remote(max_retries=0)
def kill_worker():
    os._exit(1)


def _records(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in msgpack.Unpacker(f, raw=False, strict_map_key=False)) - 1  # less the header


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A run of a two-worker cluster, recorded to its end: what the live scheduler said, and the log."""
    tmp = tmp_path_factory.mktemp("replay")
    log = str(tmp / "stimuli.log")
    settings = {"scheduler.record": log, "scheduler.allowed-failures": 1, "scheduler.record-messages": True}
    with rt.config.set(settings):
        rt.init(num_workers=2)
    try:
        client = current_runtime().client
        chain = inc.remote(inc.remote(rt.put(1)))
        bad = boom.remote(chain)
        retried = flaky.remote(str(tmp / "marker"))
        killer = kill_worker.remote()
        results = rt.get([chain, retried])
        assert results == [3, "second try"]
        for ref, error in ((bad, ValueError), (killer, rt.KilledWorker)):
            with pytest.raises(error):
                rt.get(ref, timeout=60)
        keys = [f.key for f in (chain, bad, retried, killer)]
        live = {
            "states": client.request("task-states"),
            "stories": {k: client.request("story", keys=[k]) for k in keys},
            "count": _records(log),
        }
        assert client.request("task-states") == live["states"]  # nothing moved while the log was counted
    finally:
        rt.shutdown()
    return log, keys, live


def test_a_recorded_run_replays_to_the_same_decisions_and_stories(recorded):
    log, keys, live = recorded
    state, n = record.replay(log, stop_at=str(live["count"]))
    assert n == live["count"]
    assert {k: ts.state for k, ts in state.tasks.items()} == live["states"]
    for key in keys:
        assert [[*t[:3], t[4]] for t in state.story(key)] == live["stories"][key], key
    # The whole run, to the driver leaving: every decision as recorded, and every task forgotten.
    state, total = record.replay(log)
    assert total > n and not state.tasks


def test_runtime_replay_prints_the_end_and_a_story_and_stops_where_asked(recorded, tmp_path):
    log, keys, live = recorded
    result = runtime_cmd("replay", log, "--stop-at", str(live["count"]), "--story", keys[1], run_dir=str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"replayed {live['count']} stimuli from {log}, stopped at {live['count']}: every decision as recorded" in out
    assert f"story of {keys[1]}:" in out and "-> erred" in out


def test_a_log_whose_decisions_differ_or_that_is_no_log_says_so(recorded, tmp_path):
    log, _, _ = recorded
    with open(log, "rb") as f:
        header, *records = msgpack.Unpacker(f, raw=False, strict_map_key=False)
    tampered = tmp_path / "tampered.log"
    op, values, original = records[5]
    records[5] = [op, values, b"\0" * 12]  # as if the scheduler had decided otherwise
    tampered.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in (header, *records)))
    with pytest.raises(record.ReplayError, match=f"stimulus 6 \\({op} .* makes other decisions"):
        record.replay(str(tampered))
    result = runtime_cmd("replay", str(tampered), run_dir=str(tmp_path))
    assert result.returncode == 1 and "makes other decisions on replay" in result.stderr
    # The fixture recorded the messages themselves: a replay that differs says how.
    records[5] = [*records[5][:2], original]
    n, (op, values, _) = next((i, r) for i, r in enumerate(records) if r[2] and msgpack.unpackb(r[2])[1])
    records[n] = [op, values, msgpack.packb([{}, {}])]  # as if it had sent nothing
    tampered.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in (header, *records)))
    with pytest.raises(record.ReplayError, match=f"stimulus {n + 1} .* to workers, .*: recorded None, replayed \\["):
        record.replay(str(tampered))
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello")
    result = runtime_cmd("replay", str(not_a_log), run_dir=str(tmp_path))
    assert result.returncode == 1 and "is not a stimulus log" in result.stderr
    result = runtime_cmd("replay", str(tmp_path / "missing.log"), run_dir=str(tmp_path))
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_every_kind_of_stimulus_comes_back_from_the_log_as_it_went_in(tmp_path):
    X, Y = "rt-1-abcdef-" + "0" * 28, "rt-2-abcdef-" + "1" * 28  # object names of two stores
    spec = st.TaskSpec("a", (b"f", b"args"), ("b",), 2, "a", ("n1/w",), {"GPU": 1.0}, True)
    examples = [
        st.UpdateGraph(
            "s1",
            "c",
            (
                spec,
                st.TaskSpec("b", (b"g", b"")),
            ),
            ("a",),
            3,
        ),
        st.UpdateData("s2", "c", "p", StoreRef("n1", 10, X), 10),
        st.TaskFinished("s3", "a", "n1/w", b"inline", 6, 1.5, 2.5),
        st.TaskErred("s4", "a", "n1/w", b"pickled", "Traceback...", "boom", 1.0, 2.0),
        st.MissingData("s5", "a", "n1/w", "b", StoreRef("n1", 10, X)),
        st.AddReplica("s6", "a", "n2", Y, StoreRef("n1", 10, X)),
        st.DropReplicas("s7", (("a", "n2", Y),)),
        st.AddWorker("s8", "n1/w", "n1", 2, 42, "host", {"GPU": 1.0}, 2**30),
        st.RemoveWorker("s9", "n1/w", "killed by signal 9", ("a",)),
        st.RemoveWorker("s10", "n1/w"),
        st.WorkerHeartbeat("s11", "n1/w", 100, 200),
        st.WorkerStatusChange("s12", "n1/w", "paused", 5, True),
        st.NodeHeartbeat("s13", "n1", 1, 2, 3),
        st.AddNode("s14", "n1", "tcp://h:1"),
        st.RemoveNode("s15", "n1", "silent"),
        st.AddClient("s16", "c"),
        st.RemoveClient("s17", "c"),
        st.ClientReleasesKeys("s18", "c", ("a", "b")),
        st.Cancel("s19", "c", ("a",), True),
        st.LongRunning("s20", "a", "n1/w"),
        st.RequestSteals("s21", (("a", "n1/w", "n2/w"),)),
        st.StealResponse("s22", "a", "n1/w", "s21", "queued"),
        st.RerunTasks("s23", ("a", "b")),
        st.Retry("s23", "c", ("a",)),
    ]
    assert {type(s) for s in examples} == set(record.STIMULI.values())
    path = str(tmp_path / "all.log")
    log = record.StimulusLog(path, {"allowed_failures": 3})
    for s in examples:
        log.write(s, b"digest")
    log.close()
    settings, records = record.read(path)
    assert settings == {"allowed_failures": 3}
    assert list(records) == [(s, b"digest") for s in examples]


def test_an_error_the_scheduler_makes_pickles_the_same_whatever_reducers_the_process_has():
    # Dask installs tblib's reducers for every exception class on import: a replay in such a
    # process must still make the recorded bytes.
    import copyreg

    from runtime.errors import KilledWorker
    from runtime.scheduler.entities import pickle_error

    before = pickle_error(KilledWorker("k", ["w1", "w2"], "exit code 1"))
    copyreg.pickle(KilledWorker, lambda e: (RuntimeError, (str(e),)))
    try:
        assert pickle_error(KilledWorker("k", ["w1", "w2"], "exit code 1")) == before
    finally:
        del copyreg.dispatch_table[KilledWorker]
    assert isinstance(pickle.loads(before), KilledWorker)
