"""Multi-locks: take several named locks at once, with no deadlock between overlapping sets.

Each name has a queue of requests; a request holds a name while it is first in that name's
queue.  An acquire joins the queues of all its names in one step, so two requests meet in
the same order in every queue they share: neither can wait on the other in a cycle.  A
request is granted once it is first in ``num_locks`` of its queues (all, by default), as
in Dask.  Releasing, timing out or the client leaving takes the request out of every queue,
and grants whoever that puts first.

Multi-lock names are their own namespace, apart from ``Lock``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.scheduler.extensions.base import Waits, timeout_of
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler


@dataclass(slots=True)
class LockRequest:
    names: tuple[str, ...]
    #: how many of ``names`` it needs at the front of their queues
    num_locks: int
    client: str
    granted: bool = False
    #: the waiter id of its acquire while it waits, else 0
    wid: int = 0


class MultiLockState:
    """Every name's queue of requests; pure."""

    def __init__(self) -> None:
        #: lock name -> the ids of the requests for it, the holder first
        self.queues: dict[str, list[str]] = {}
        #: request id (the MultiLock object's) -> its request
        self.requests: dict[str, LockRequest] = {}

    def acquire(self, rid: str, names: list[str], num_locks: int | None, client: str) -> bool:
        """Queue request ``rid`` for ``names``; True if it holds them now."""
        if rid in self.requests:
            raise ValueError(f"multi-lock {rid!r} is acquired already; release it first")
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError(f"a multi-lock needs a list of lock names, not {names!r}")
        unique = tuple(dict.fromkeys(names))
        needed = len(unique) if num_locks is None else num_locks
        if isinstance(needed, bool) or not isinstance(needed, int) or not 1 <= needed <= len(unique):
            raise ValueError(f"num_locks must be from 1 to {len(unique)}, not {num_locks!r}")
        self.requests[rid] = req = LockRequest(unique, needed, client)
        for name in unique:
            self.queues.setdefault(name, []).append(rid)
        req.granted = self._held(req, rid)
        return req.granted

    def _held(self, req: LockRequest, rid: str) -> bool:
        return sum(self.queues[n][0] == rid for n in req.names) >= req.num_locks

    def release(self, rid: str) -> list[str]:
        """Take request ``rid`` out of every queue; returns the requests that now hold theirs."""
        req = self.requests.pop(rid, None)
        if req is None:
            raise ValueError(f"multi-lock {rid!r} is not acquired")
        candidates: dict[str, None] = {}
        for name in req.names:
            queue = self.queues[name]
            was_first = queue[0] == rid
            queue.remove(rid)
            if not queue:
                del self.queues[name]
            elif was_first:
                candidates[queue[0]] = None
        granted = []
        for other in candidates:
            oreq = self.requests[other]
            if not oreq.granted and self._held(oreq, other):
                oreq.granted = True
                granted.append(other)
        return granted

    def locked(self, names: list[str]) -> bool:
        return any(self.queues.get(n) and self.requests[self.queues[n][0]].granted for n in names)

    def client_gone(self, client: str) -> list[str]:
        """Release every request of ``client``; returns the requests granted in their place."""
        granted: list[str] = []
        for rid in [r for r, req in self.requests.items() if req.client == client]:
            granted += self.release(rid)
        return [rid for rid in granted if rid in self.requests]


class MultiLocks(SchedulerPlugin):
    """The multi-lock extension: requests ``multi-lock-acquire``, ``-release``, ``-locked``."""

    def __init__(self) -> None:
        self.state = MultiLockState()
        self.waits = Waits(self._timed_out)
        #: waiter id -> the request it waits for
        self._rids: dict[int, str] = {}

    def close(self) -> None:
        self.waits.close()

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        for wid in self.waits.of_client(client):
            self._rids.pop(wid, None)
            self.waits.cancel(wid)
        self._grant(self.state.client_gone(client))

    def _timed_out(self, wid: int) -> bool:
        rid = self._rids.pop(wid)
        self._grant(self.state.release(rid))
        return False

    def _grant(self, rids: list[str]) -> None:
        for rid in rids:
            req = self.state.requests[rid]
            if req.wid:
                self._rids.pop(req.wid, None)
                self.waits.wake(req.wid, True)
                req.wid = 0

    def acquire(self, msg: dict, client: str) -> Any:
        rid, timeout = str(msg["id"]), timeout_of(msg)
        if self.state.acquire(rid, list(msg["names"]), msg.get("num_locks"), client):
            return True
        if timeout == 0:
            self.state.release(rid)
            return False
        wid, fut = self.waits.new(client, timeout)
        self.state.requests[rid].wid = wid
        self._rids[wid] = rid
        return fut


def _ext(s: Scheduler) -> MultiLocks:
    return s.extensions["multi_locks"]


request("multi-lock-acquire")(lambda s, msg, peer: _ext(s).acquire(msg, peer))
request("multi-lock-locked")(lambda s, msg, peer: _ext(s).state.locked(list(msg["names"])))


@request("multi-lock-release")
def _release(s: Scheduler, msg: dict, peer: str) -> bool:
    ext = _ext(s)
    ext._grant(ext.state.release(str(msg["id"])))
    return True
