"""Semaphores and locks: at most ``max_leases`` holders of a name across the cluster.

A ``Lock`` is a semaphore of one lease (as Dask's is).  Each acquire brings a lease id of
the caller's making; the lease belongs to the caller's client.  A lease ends when it is
released, when its client disconnects (its process died: at once), or when its holder
stopped refreshing it for the semaphore's lease timeout (a frozen process;
``scheduler.locks.lease-timeout``).  Waiting acquires are granted in the order they came.

::

    acquire ──► free lease? ──yes──► True
                    │no
                    └──► waiters (FIFO) ──release / client gone / lease expired──► True
                                      └──timeout──► False
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.scheduler.extensions.base import Waits, name_of, timeout_of
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.scheduler.server import request

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

logger = logging.getLogger("runtime.scheduler.semaphores")


@dataclass(slots=True)
class Sem:
    max_leases: int
    #: seconds a lease lives without a refresh (None: forever)
    lease_timeout: float | None
    #: lease id -> [its client, when it was last acquired or refreshed]
    leases: dict[str, list] = field(default_factory=dict)
    #: waiting acquires in the order they came: waiter id -> (lease id, client)
    waiters: dict[int, tuple[str, str]] = field(default_factory=dict)


class SemaphoreState:
    """Every semaphore's leases and waiters; pure (``now`` is given)."""

    def __init__(self) -> None:
        #: semaphores by name
        self.sems: dict[str, Sem] = {}
        #: waiter id -> the semaphore it waits on
        self.waiting_on: dict[int, str] = {}

    def register(self, name: str, max_leases: int, lease_timeout: float | None) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int):
            raise TypeError(f"max_leases must be a whole number >= 1, not {max_leases!r}")
        if max_leases < 1:
            raise ValueError(f"max_leases must be a whole number >= 1, not {max_leases!r}")
        sem = self.sems.get(name)
        if sem is None:
            self.sems[name] = Sem(max_leases, lease_timeout)
        elif sem.max_leases != max_leases:
            raise ValueError(f"semaphore {name!r} has max_leases={sem.max_leases}, not {max_leases}")

    def _get(self, name: str) -> Sem:
        sem = self.sems.get(name)
        if sem is None:
            raise KeyError(f"no semaphore or lock named {name!r} is registered")
        return sem

    def acquire(self, name: str, lease: str, client: str, now: float) -> bool:
        """Take a lease now if one is free (or ``lease`` is held already: a retried request)."""
        sem = self._get(name)
        if lease in sem.leases or (len(sem.leases) < sem.max_leases and not sem.waiters):
            sem.leases[lease] = [client, now]
            return True
        return False

    def wait(self, name: str, wid: int, lease: str, client: str) -> None:
        self._get(name).waiters[wid] = (lease, client)
        self.waiting_on[wid] = name

    def drop_waiter(self, wid: int) -> None:
        name = self.waiting_on.pop(wid, None)
        if name is not None and name in self.sems:
            self.sems[name].waiters.pop(wid, None)

    def release(self, name: str, lease: str, now: float) -> list[int]:
        """End ``lease``; returns the waiters granted a lease in its place."""
        sem = self._get(name)
        if sem.leases.pop(lease, None) is None:
            raise ValueError(f"lease {lease!r} of {name!r} is not held (released already, or expired)")
        return self._grant(name, sem, now)

    def refresh(self, name: str, leases: list[str], now: float) -> list[str]:
        """Renew ``leases``; returns those not held any more (expired)."""
        sem = self._get(name)
        lost = []
        for lease in leases:
            held = sem.leases.get(lease)
            if held is None:
                lost.append(lease)
            else:
                held[1] = now
        return lost

    def value(self, name: str) -> int:
        sem = self.sems.get(name)
        return len(sem.leases) if sem is not None else 0

    def close(self, name: str) -> list[int]:
        """Forget semaphore ``name``; returns its waiters (they get False)."""
        sem = self.sems.pop(name, None)
        if sem is None:
            return []
        for wid in sem.waiters:
            self.waiting_on.pop(wid, None)
        return list(sem.waiters)

    def client_gone(self, client: str, now: float) -> list[int]:
        """A client left: its leases end and its waiters go; returns the waiters granted."""
        granted = []
        for name, sem in self.sems.items():
            for wid in [w for w, (_, c) in sem.waiters.items() if c == client]:
                self.drop_waiter(wid)
            for lease in [lease for lease, (c, _) in sem.leases.items() if c == client]:
                del sem.leases[lease]
            granted += self._grant(name, sem, now)
        return granted

    def expire(self, now: float) -> Iterator[tuple[str, str, list[int]]]:
        """End every lease past its semaphore's timeout: (name, lease, waiters granted) for each."""
        for name, sem in self.sems.items():
            if sem.lease_timeout is None:
                continue
            for lease in [lease for lease, (_, seen) in sem.leases.items() if now - seen > sem.lease_timeout]:
                del sem.leases[lease]
                yield name, lease, self._grant(name, sem, now)

    def _grant(self, name: str, sem: Sem, now: float) -> list[int]:
        granted = []
        while sem.waiters and len(sem.leases) < sem.max_leases:
            wid = next(iter(sem.waiters))
            lease, client = sem.waiters.pop(wid)
            self.waiting_on.pop(wid, None)
            sem.leases[lease] = [client, now]
            granted.append(wid)
        return granted


class Semaphores(SchedulerPlugin):
    """The semaphore extension: requests ``semaphore-*``; expires silent leases."""

    def __init__(self) -> None:
        self.state = SemaphoreState()
        self.waits = Waits(self._timed_out)
        self._expiry: asyncio.Task | None = None

    def start(self, scheduler: Scheduler) -> None:
        self._expiry = asyncio.ensure_future(self._expire_forever())

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self.waits.close()

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        for wid in self.waits.of_client(client):
            self.waits.cancel(wid)
        self._grant(self.state.client_gone(client, time.monotonic()))

    def _timed_out(self, wid: int) -> bool:
        self.state.drop_waiter(wid)
        return False

    def _grant(self, wids: list[int]) -> None:
        for wid in wids:
            self.waits.wake(wid, True)

    async def _expire_forever(self) -> None:
        interval = config.get("scheduler.locks.lease-validation-interval") or 1.0
        while True:
            await asyncio.sleep(interval)
            for name, lease, granted in self.state.expire(time.monotonic()):
                logger.warning("semaphore %r: lease %s was not refreshed within its timeout; released", name, lease)
                self._grant(granted)

    def acquire(self, msg: dict, client: str) -> Any:
        name, lease, timeout = name_of(msg), str(msg["lease"]), timeout_of(msg)
        if self.state.acquire(name, lease, client, time.monotonic()):
            return True
        if timeout == 0:
            return False
        wid, fut = self.waits.new(client, timeout)
        self.state.wait(name, wid, lease, client)
        return fut


def _semaphores(s: Scheduler) -> Semaphores:
    return s.extensions["semaphores"]


@request("semaphore-register")
def _register(s: Scheduler, msg: dict, peer: str) -> None:
    lease_timeout = config.parse_timedelta(msg.get("lease_timeout"))
    _semaphores(s).state.register(name_of(msg), msg["max_leases"], lease_timeout)


request("semaphore-acquire")(lambda s, msg, peer: _semaphores(s).acquire(msg, peer))
request("semaphore-value")(lambda s, msg, peer: _semaphores(s).state.value(name_of(msg)))


@request("semaphore-release")
def _release(s: Scheduler, msg: dict, peer: str) -> bool:
    ext = _semaphores(s)
    ext._grant(ext.state.release(name_of(msg), str(msg["lease"]), time.monotonic()))
    return True


@request("semaphore-refresh")
def _refresh(s: Scheduler, msg: dict, peer: str) -> list[str]:
    return _semaphores(s).state.refresh(name_of(msg), list(msg["leases"]), time.monotonic())


@request("semaphore-close")
def _close(s: Scheduler, msg: dict, peer: str) -> None:
    ext = _semaphores(s)
    for wid in ext.state.close(name_of(msg)):
        ext.waits.wake(wid, False)
