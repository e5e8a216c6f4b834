"""Futures stored inside values: a value holds the keys it refers to, a reader borrows them.

A task may return futures (``return [f.remote(), g.remote()]``), an actor method too, and
``put`` may store them; as in Ray, such a value keeps the keys it refers to alive::

    producer encodes a value with futures ──hold-refs(holder, keys)──► a holder client
                                                                        wants the keys
    reader decodes it ──borrow-refs(keys)──► the reader wants them too (its own futures)
    the holder key is forgotten ──────────► the sweep drops the holder's wants

The holder is a client of the state machine named after the value's key
(``refs-of-<key>``); it wants the referred keys through the ordinary ``update-graph``
stimulus, and is removed (``remove-client``) once the value it stands for is gone: the
sweep, every ``SWEEP_INTERVAL`` s, removes holders whose key the scheduler knew and has
forgotten, or never came to know within ``UNSEEN_GRACE`` s (an actor call's small result
lives only in its caller: it holds its keys that long for the caller to read it).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime.scheduler import stimuli as st
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: seconds between sweeps of the holders
SWEEP_INTERVAL = 1.0
#: how long a holder whose value the scheduler never knew keeps its keys
UNSEEN_GRACE = 60.0
HOLDER_PREFIX = "refs-of-"


@dataclass
class _Holders:
    #: holder key -> (whether the scheduler has known the key, when the hold began)
    held: dict[str, list[Any]] = field(default_factory=dict)
    sweeper: asyncio.Task | None = None


#: each scheduler's holders (made at its first hold)
_holders: weakref.WeakKeyDictionary[Scheduler, _Holders] = weakref.WeakKeyDictionary()


def _of(s: Scheduler) -> _Holders:
    holders = _holders.get(s)
    if holders is None:
        holders = _holders[s] = _Holders()
        holders.sweeper = asyncio.ensure_future(_sweep(s, holders))
        s._background.append(holders.sweeper)
    return holders


@request("hold-refs")
def _hold_refs(s: Scheduler, msg: dict, peer: str) -> dict:
    """The value ``holder`` refers to ``keys``: keep them while it lives."""
    holder, keys = msg["holder"], [k for k in msg["keys"] if k in s.state.tasks]
    holders = _of(s)
    entry = holders.held.setdefault(holder, [False, time.monotonic()])
    entry[0] = entry[0] or holder in s.state.tasks
    if keys:
        s.handle_stimulus(st.UpdateGraph(f"hold-refs-{holder}", HOLDER_PREFIX + holder, (), tuple(keys)))
    return {"missing": [k for k in msg["keys"] if k not in s.state.tasks]}


@request("borrow-refs")
def _borrow_refs(s: Scheduler, msg: dict, peer: str) -> dict:
    """A reader decoded futures of ``keys``: it wants them now; those already gone are named."""
    known = tuple(k for k in msg["keys"] if k in s.state.tasks)
    if known:
        s.handle_stimulus(st.UpdateGraph(f"borrow-refs-{next(s._ids)}", peer, (), known))
    return {"missing": [k for k in msg["keys"] if k not in s.state.tasks]}


async def _sweep(s: Scheduler, holders: _Holders) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        now = time.monotonic()
        for holder, entry in list(holders.held.items()):
            if holder in s.state.tasks:
                entry[0] = True
            elif entry[0] or now - entry[1] > UNSEEN_GRACE:
                del holders.held[holder]
                s.handle_stimulus(st.RemoveClient(f"drop-refs-{holder}", HOLDER_PREFIX + holder))
