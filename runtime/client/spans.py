"""``runtime.span``: name a group of tasks, and read what they did from the scheduler.

::

    with runtime.span("load") as span_id:        contextvar: SpanPath(("load",), (span_id,))
        with runtime.span("parse"):              contextvar: SpanPath(("load", "parse"), (span_id, id2))
            client.submit(...)                   update-graph carries the contextvar's value (its span field)
    client.get_spans(span_id)                    the scheduler's figures for the tree under span_id

The current span lives in a ``contextvars.ContextVar``: it follows ``with`` blocks, threads
and asyncio tasks as any context does, and reading it costs one lookup per update-graph.
The scheduler side is ``runtime/scheduler/extensions/spans.py``.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from runtime.comm.messages import SpanPath

#: the tags of the current span, outermost first, and the id of each level (None: no span)
_current: contextvars.ContextVar[SpanPath | None] = contextvars.ContextVar("runtime_span", default=None)


@contextmanager
def span(*tags: str) -> Iterator[str]:
    """Tag every task submitted inside the block as part of a span; yields the span's id.

    Spans nest: a span opened inside another is its child (``span("a", "b")`` opens both at
    once).  Opening a span with the same tags again makes a new span.  Read what its tasks
    did with ``client.get_spans(span_id)``.
    """
    if not tags:
        raise ValueError("span() needs at least one tag")
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise TypeError(f"a span's tags are non-empty strings, not {tag!r:.80}")
    outer = _current.get()
    names, ids = (outer.names, outer.ids) if outer is not None else ((), ())
    new_ids = tuple(str(uuid.uuid4()) for _ in tags)
    token = _current.set(SpanPath(names + tags, ids + new_ids))
    try:
        yield new_ids[-1]
    finally:
        _current.reset(token)


def current_span() -> SpanPath | None:
    """The tags and ids of the span this code runs in, or None."""
    return _current.get()


@dataclass(frozen=True, slots=True)
class SpanInfo:
    """What the scheduler knows of a span (``client.get_spans``); figures of its own tasks,
    and ``cumulative`` ones of its own and its sub-spans' tasks together."""

    id: str
    #: its tags, outermost first
    name: tuple[str, ...]
    parent: str | None
    children: tuple[str, ...]
    #: when the scheduler first heard of it (its clock, seconds since the epoch)
    enqueued: float
    #: its own tasks by state (forgotten ones included)
    states: dict[str, int]
    #: seconds its own tasks ran on workers
    compute_seconds: float
    #: bytes of results its own tasks produced
    nbytes: int
    #: when its first task started and its last one ended (workers' clocks), or None
    start: float | None
    stop: float | None
    #: ``states``, ``compute_seconds``, ``nbytes``, ``start``, ``stop`` of the whole subtree,
    #: and ``done``: none of its tasks has work ahead of it
    cumulative: dict[str, Any]

    @property
    def done(self) -> bool:
        return bool(self.cumulative["done"])


def get_spans(span_id: str | None = None, client: Any = None) -> dict[str, SpanInfo]:
    """Every span by id, or ``span_id``'s and those inside it; ValueError for an unknown id."""
    from runtime.client.event_log import client_of

    client = client_of(client)
    if span_id is not None and not isinstance(span_id, str):
        raise TypeError(f"a span id is a string (what runtime.span() yields), not {span_id!r:.80}")
    reply = client.request_checked("get-spans", id=span_id)
    return {i: SpanInfo(**{**s, "name": tuple(s["name"]), "children": tuple(s["children"])}) for i, s in reply.items()}
