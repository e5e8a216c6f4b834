"""Spans: named groups of tasks (``with runtime.span("load"):``) and what their tasks did.

::

    client: update-graph(tasks, span) ──► state machine ──► transitions
                                                                  │ (scheduler plugin hooks)
    SpansExtension.update_graph: new tasks tagged ──► Spans.span_of[key] ◄──┘ .transition: states counted
    get-spans ──► each span: its tasks by state, compute seconds, bytes produced, start/stop,
                  its own and with its sub-spans'

A span is made the first time a task submitted inside it reaches the scheduler; the ids
of every level come with the tasks, so nested spans form a tree (a span whose tasks all
sit in sub-spans exists too).  A task belongs to the span it was first submitted in.
Only tasks still known are indexed (``span_of``); a forgotten task leaves its count under
``forgotten``.  Spans themselves are kept for the scheduler's life, as Dask keeps them.

When ``opentelemetry-sdk`` is installed and the scheduler's environment configures a
traces exporter (``OTEL_TRACES_EXPORTER``: ``console``, written to the scheduler's log, or
``otlp``, configured by the ``OTEL_EXPORTER_OTLP_*`` variables), each tree of spans
is exported once its root is done, as OpenTelemetry spans with the tasks' times and
figures as attributes.  Without it nothing is imported or done.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

logger = logging.getLogger("runtime.scheduler.spans")

#: states in which a task has work ahead of it: a span with one is not done (released inputs are done, as in Dask)
ACTIVE_STATES = frozenset({"waiting", "queued", "no-worker", "processing"})


@dataclass(slots=True)
class Span:
    """One span and the figures of the tasks submitted directly in it."""

    #: unique, made by the client's ``span()``
    id: str
    #: its tags, outermost first: ("load", "parse") for span("parse") inside span("load")
    name: tuple[str, ...]
    #: the enclosing span's id (None for a root)
    parent: str | None
    #: when the scheduler first heard of it (scheduler clock)
    enqueued: float
    #: ids of the spans directly inside it, in the order they appeared
    children: list[str] = field(default_factory=list)
    #: its own tasks by state (``forgotten`` included)
    states: dict[str, int] = field(default_factory=dict)
    #: seconds its own tasks ran on workers (every attempt that ended, failed ones too)
    compute_seconds: float = 0.0
    #: bytes of the results its own tasks produced
    nbytes: int = 0
    #: when the first of its own tasks started, and the last ended (worker clocks); None before
    start: float | None = None
    stop: float | None = None
    #: exported to OpenTelemetry already (only roots are)
    exported: bool = False

    def count(self, state: str, n: int) -> None:
        self.states[state] = self.states.get(state, 0) + n


class Spans:
    """Every span, and the span of each task the scheduler still knows (pure)."""

    def __init__(self) -> None:
        #: every span by id
        self.spans: dict[str, Span] = {}
        #: ids of the spans with no parent, in order of appearance
        self.roots: list[str] = []
        #: the span of each live task submitted in one
        self.span_of: dict[str, Span] = {}

    def observe(self, names: tuple[str, ...], ids: tuple[str, ...], tasks: dict[str, str], now: float) -> Span:
        """Tasks (key -> current state) were submitted in the span ``ids[-1]``; make the
        spans of every level that are new, and count the tasks not tagged before."""
        if not names or len(names) != len(ids):
            raise ValueError(f"a span needs one id per tag: tags {names!r}, ids {ids!r}")
        parent: Span | None = None
        for depth, span_id in enumerate(ids):
            span = self.spans.get(span_id)
            if span is None:
                span = self.spans[span_id] = Span(span_id, names[: depth + 1], parent and parent.id, now)
                if parent is None:
                    self.roots.append(span_id)
                else:
                    parent.children.append(span_id)
            parent = span
        assert parent is not None
        for key, state in tasks.items():
            if key not in self.span_of:
                self.span_of[key] = parent
                parent.count(state, 1)
        return parent

    def transition(self, key: str, start: str, finish: str) -> Span | None:
        """A task moved; the span it counts in, if any."""
        span = self.span_of.get(key)
        if span is not None:
            span.count(start, -1)
            span.count(finish, 1)
            if finish == "forgotten":
                del self.span_of[key]
        return span

    @staticmethod
    def ran(span: Span, start: float, stop: float, nbytes: int) -> None:
        """One of ``span``'s tasks ran from ``start`` to ``stop`` and produced ``nbytes``."""
        if stop > start:
            span.compute_seconds += stop - start
        span.nbytes += nbytes
        if start > 0:
            span.start = start if span.start is None else min(span.start, start)
        if stop > 0:
            span.stop = stop if span.stop is None else max(span.stop, stop)

    def subtree(self, span_id: str) -> list[Span]:
        """``span_id``'s span and all inside it, parents before children."""
        out, todo = [], [span_id]
        while todo:
            span = self.spans[todo.pop()]
            out.append(span)
            todo.extend(reversed(span.children))
        return out

    def cumulative(self, span_id: str) -> dict[str, Any]:
        """The figures of ``span_id`` with every span inside it."""
        spans = self.subtree(span_id)
        states: dict[str, int] = {}
        for s in spans:
            for state, n in s.states.items():
                states[state] = states.get(state, 0) + n
        starts = [s.start for s in spans if s.start is not None]
        stops = [s.stop for s in spans if s.stop is not None]
        return {
            "states": {k: n for k, n in states.items() if n},
            "compute_seconds": sum(s.compute_seconds for s in spans),
            "nbytes": sum(s.nbytes for s in spans),
            "start": min(starts, default=None),
            "stop": max(stops, default=None),
            "done": not any(states.get(state) for state in ACTIVE_STATES),
        }

    def info(self, span_id: str) -> dict[str, Any]:
        """What a client reads of one span: its own figures and, under ``cumulative``, its subtree's."""
        s = self.spans[span_id]
        own = {k: n for k, n in s.states.items() if n}
        return {
            "id": s.id, "name": list(s.name), "parent": s.parent, "children": list(s.children),
            "enqueued": s.enqueued, "states": own, "compute_seconds": s.compute_seconds, "nbytes": s.nbytes,
            "start": s.start, "stop": s.stop, "cumulative": self.cumulative(span_id),
        }  # fmt: skip

    def root_of(self, span: Span) -> Span:
        while span.parent is not None:
            span = self.spans[span.parent]
        return span


class SpansExtension(SchedulerPlugin):
    """Keeps ``Spans`` in step with the state machine, as a scheduler plugin: ``update_graph``
    tags a graph's tasks, ``transition`` counts their moves and what the workers reported."""

    #: transitions are wanted only while a task in a span is alive: without spans the
    #: scheduler pays nothing for them
    wants_transitions = False

    def __init__(self) -> None:
        self.spans = Spans()
        #: an OpenTelemetry tracer when one is installed and configured, else None
        self.tracer = _otel_tracer()
        self._scheduler: Scheduler | None = None
        #: the update-graph just observed and the keys it tagged: its own transitions (told
        #: after update_graph) are in the states observed already
        self._tagged: tuple[str, set[str]] = ("", set())

    def update_graph(
        self, scheduler: Scheduler, *, tasks: list[str], stimulus_id: str, span_names: tuple[str, ...] = (),
        span_ids: tuple[str, ...] = (), **kwargs: Any,
    ) -> None:  # fmt: skip
        if not span_ids:
            return
        spans, known = self.spans, scheduler.state.tasks
        new = {key: ts.state for key in tasks if key not in spans.span_of and (ts := known.get(key)) is not None}
        self._tagged = (stimulus_id, set(new))
        self._maybe_export(spans.observe(span_names, span_ids, new, time.time()))
        self._scheduler = scheduler
        self._want(bool(spans.span_of))

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        spans = self.spans
        if not spans.span_of or (stimulus_id == self._tagged[0] and key in self._tagged[1]):
            return
        span = spans.transition(key, start, finish)
        if span is None:
            return
        if finish == "forgotten" and not spans.span_of:
            self._want(False)
        if start == "processing" and "startstops" in kwargs:  # a worker's report was taken
            (ran,) = kwargs["startstops"]
            spans.ran(span, ran["start"], ran["stop"], kwargs.get("nbytes", 0))
        if finish not in ACTIVE_STATES:
            self._maybe_export(span)

    def _want(self, transitions: bool) -> None:
        if transitions != self.wants_transitions and self._scheduler is not None:
            self.wants_transitions = transitions
            self._scheduler.plugins.rehook()

    def _maybe_export(self, span: Span) -> None:
        """Export ``span``'s tree if a tracer is configured and its root is first done."""
        if self.tracer is not None:
            root = self.spans.root_of(span)
            if not root.exported and self.spans.cumulative(root.id)["done"]:
                root.exported = True
                _export(self.tracer, self.spans, root)


def _otel_tracer() -> Any:
    """A tracer if opentelemetry-sdk is installed and ``OTEL_TRACES_EXPORTER`` names an exporter."""
    exporters = [e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if not exporters or exporters == ["none"]:
        return None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        logger.warning("OTEL_TRACES_EXPORTER is set, but opentelemetry-sdk is not installed: spans are not exported")
        return None
    provider = TracerProvider()
    for name in exporters:
        if name == "console":
            # stderr: a scheduler's stdout goes nowhere, its stderr to its log
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                from opentelemetry.sdk.trace.export import BatchSpanProcessor
            except ImportError:
                logger.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http")
                continue
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            logger.warning("unknown OTEL_TRACES_EXPORTER %r (console and otlp are supported)", name)
    return provider.get_tracer("runtime.scheduler.spans")


def _export(tracer: Any, spans: Spans, root: Span) -> None:
    """Export ``root`` and every span inside it, each with its subtree's times and figures."""
    from opentelemetry import trace

    def ns(t: float | None, default: float) -> int:
        return int((t if t is not None else default) * 1e9)

    made: dict[str, Any] = {}
    for s in spans.subtree(root.id):
        c = spans.cumulative(s.id)
        context = trace.set_span_in_context(made[s.parent]) if s.parent in made else None
        attributes = {
            "runtime.span.id": s.id, "runtime.span.compute_seconds": c["compute_seconds"],
            "runtime.span.nbytes": c["nbytes"],
            **{f"runtime.span.tasks.{state}": n for state, n in c["states"].items()},
        }  # fmt: skip
        made[s.id] = otel = tracer.start_span(
            "/".join(s.name), context=context, start_time=ns(c["start"], s.enqueued), attributes=attributes
        )
        otel.end(end_time=ns(c["stop"], s.enqueued))


@request("get-spans")
def _get_spans(s: Scheduler, msg: dict, peer: str) -> Any:
    spans: Spans = s.extensions["spans"].spans
    span_id = msg.get("id")
    if span_id is None:
        return {i: spans.info(i) for i in spans.spans}
    if not isinstance(span_id, str):
        raise TypeError(f"a span id is a string, not {span_id!r:.80}")
    if span_id not in spans.spans:
        return {"error": f"no span {span_id!r}: no task submitted in it has reached the scheduler"}
    return {i: spans.info(i) for i in (s.id for s in spans.subtree(span_id))}
