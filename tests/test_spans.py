"""Spans: the pure bookkeeping, the scheduler plugin hooks that drive it, and a cluster's
spans read by the client (and exported to OpenTelemetry when it is configured)."""

from __future__ import annotations

import itertools
import os
import sys
import time

import cloudpickle
import pytest
from conftest import validated, wait_until

import runtime as rt
from runtime import Client
from runtime.client.spans import current_span
from runtime.scheduler import stimuli as st
from runtime.scheduler.extensions.spans import Spans, SpansExtension
from runtime.scheduler.plugins import TransitionTap
from runtime.scheduler.server import Scheduler

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module

_ids = itertools.count()


def sid() -> str:
    return f"s{next(_ids)}"


# -- pure ---------------------------------------------------------------------------------


def test_spans_form_a_tree_and_count_their_own_tasks():
    spans = Spans()
    inner = spans.observe(("load", "parse"), ("L", "P"), {"a": "waiting", "b": "processing"}, now=1.0)
    assert inner.id == "P" and inner.parent == "L" and spans.roots == ["L"] and spans.spans["L"].children == ["P"]
    outer = spans.observe(("load",), ("L",), {"c": "waiting", "a": "memory"}, now=2.0)  # a is P's already
    assert outer.states == {"waiting": 1} and inner.states == {"waiting": 1, "processing": 1}
    spans.transition("b", "processing", "memory")
    spans.ran(inner, 10.0, 12.5, 100)
    spans.transition("a", "waiting", "processing")
    spans.ran(inner, 11.0, 11.5, 50)
    spans.transition("a", "processing", "memory")
    assert spans.transition("elsewhere", "waiting", "processing") is None
    c = spans.cumulative("L")
    assert c["states"] == {"memory": 2, "waiting": 1} and not c["done"]
    assert (c["compute_seconds"], c["nbytes"], c["start"], c["stop"]) == (3.0, 150, 10.0, 12.5)
    assert spans.cumulative("P")["done"]
    for key in "abc":
        spans.transition(key, "memory" if key != "c" else "waiting", "forgotten")
    assert spans.span_of == {} and spans.cumulative("L")["states"] == {"forgotten": 3}
    assert spans.info("P")["cumulative"]["done"] and spans.info("L")["children"] == ["P"]
    with pytest.raises(ValueError, match="one id per tag"):
        spans.observe(("a", "b"), ("only-one",), {}, now=0.0)


# -- the shell's hook, no processes ---------------------------------------------------------


def test_the_plugin_hooks_drive_spans_from_the_transitions_of_each_stimulus():
    sched = Scheduler(validate=True)
    sched.plugins.add(SpansExtension(), "extension-spans")
    sched.handle_stimulus(st.AddNode(sid(), "n1"))
    sched.handle_stimulus(st.AddWorker(sid(), "w1", "n1"))
    ext = sched.plugins.plugins["extension-spans"]
    spans = ext.spans
    assert not ext.wants_transitions and not isinstance(sched.state.transition_log, TransitionTap)  # no cost
    tasks = (st.TaskSpec("a-1", (b"f", b"x")), st.TaskSpec("b-1", (b"f", b"x"), ("a-1",)))
    sched.handle_stimulus(st.UpdateGraph(sid(), "c1", tasks, ("b-1",), 0, ("etl",), ("E",)))
    assert ext.wants_transitions and isinstance(sched.state.transition_log, TransitionTap)
    assert spans.spans["E"].states == {"processing": 1, "waiting": 1}  # its own transitions not counted twice
    sched.handle_stimulus(st.TaskFinished(sid(), "a-1", "w1", b"va", 10, 1.0, 2.0))
    sched.handle_stimulus(st.TaskFinished(sid(), "a-1", "w1", b"va", 10, 1.0, 2.0))  # a duplicate: not counted
    sched.handle_stimulus(st.TaskFinished(sid(), "b-1", "w1", b"vb", 20, 2.0, 4.0))
    span = spans.spans["E"]
    assert span.states == {"released": 1, "memory": 1, "processing": 0, "waiting": 0}
    assert (span.compute_seconds, span.nbytes, span.start, span.stop) == (3.0, 30, 1.0, 4.0)
    assert spans.cumulative("E")["done"]
    assert [t[2] for t in sched.state.story("b-1")][-1] == "memory"  # the state's own log still has it all
    sched.handle_stimulus(st.ClientReleasesKeys(sid(), "c1", ("b-1",)))
    assert spans.cumulative("E")["states"] == {"forgotten": 2} and spans.span_of == {}
    assert not ext.wants_transitions and not isinstance(sched.state.transition_log, TransitionTap)
    assert sched._validate() is None


def test_a_task_known_before_its_span_counts_in_its_state_of_then():
    sched = Scheduler(validate=True)
    sched.plugins.add(SpansExtension(), "extension-spans")
    spans = sched.plugins.plugins["extension-spans"].spans
    sched.handle_stimulus(st.UpdateGraph(sid(), "c1", (st.TaskSpec("a-1", (b"f", b"x")),), ("a-1",)))
    assert sched.state.tasks["a-1"].state == "no-worker"
    sched.handle_stimulus(st.UpdateGraph(sid(), "c1", (st.TaskSpec("a-1", (b"f", b"x")),), ("a-1",), 0, ("s",), ("S",)))
    assert spans.spans["S"].states == {"no-worker": 1}
    sched.handle_stimulus(st.AddNode(sid(), "n1"))
    sched.handle_stimulus(st.AddWorker(sid(), "w1", "n1"))
    assert {k: n for k, n in spans.spans["S"].states.items() if n} == {"processing": 1}


# -- on a cluster ---------------------------------------------------------------------------


def slow_inc(x):
    time.sleep(0.01)
    return x + 1


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2) as c, validated(c.core):
        yield c


def test_nested_spans_tag_tasks_and_the_client_reads_their_figures(client):
    assert current_span() is None
    with rt.span("etl") as etl:
        with rt.span("load") as load:
            assert current_span().ids == (etl, load)
            parts = client.map(slow_inc, range(8))
        total = client.submit(sum, parts)
        assert total.result() == 36
    assert current_span() is None
    outside = client.submit(slow_inc, 100)
    assert outside.result() == 101
    tree = wait_until(lambda: (s := client.get_spans(etl)) and s[etl].done and s, "the span is done")
    assert set(tree) == {etl, load}
    root, child = tree[etl], tree[load]
    assert root.name == ("etl",) and child.name == ("etl", "load") and child.parent == etl
    assert root.children == (load,) and root.states == {"memory": 1} and child.states["memory"] == 8
    assert child.compute_seconds >= 8 * 0.01 and child.nbytes > 0
    assert root.cumulative["states"] == {"memory": 9}
    assert root.cumulative["start"] <= child.stop <= root.cumulative["stop"]
    assert root.cumulative["compute_seconds"] >= child.compute_seconds
    assert etl in client.get_spans() and all(outside.key not in s.states for s in client.get_spans().values())
    del parts, total
    wait_until(
        lambda: client.get_spans(etl)[etl].cumulative["states"] == {"forgotten": 9}, "the span's tasks forgotten"
    )


def test_spans_are_per_context_and_bad_input_is_a_clear_error(client):
    with rt.span("a", "b") as b:
        path = current_span()
        assert path.names == ("a", "b") and path.ids[-1] == b
        with rt.span("a") as again:
            assert current_span().names == ("a", "b", "a") and again != path.ids[0]
    with pytest.raises(ValueError, match="at least one tag"):
        with rt.span():
            pass
    with pytest.raises(TypeError, match="non-empty strings"):
        with rt.span("ok", 3):
            pass
    with pytest.raises(ValueError, match="no span"):
        client.get_spans("no-such-span")
    with pytest.raises(TypeError, match="span id"):
        client.get_spans(5)


def test_spans_are_exported_to_opentelemetry_when_it_is_configured(monkeypatch):
    pytest.importorskip("opentelemetry.sdk")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # the scheduler inherits it
    with Client(n_workers=1) as c, validated(c.core):
        with rt.span("exported") as outer:
            with rt.span("inner"):
                assert c.submit(slow_inc, 1).result() == 2
        log = os.path.join(c.cluster.session_dir, "logs", "scheduler.log")

        def exported() -> str:
            with open(log) as f:
                text = f.read()
            return '"name": "exported/inner"' in text and text

        text = wait_until(exported, "the scheduler exported the spans")
        assert '"name": "exported"' in text and outer in text and '"runtime.span.tasks.memory": 1' in text
