"""What every extension shares: waiting requests, keys held for futures, installation.

An extension is a pure state class (no I/O, no clocks: it is given ``now``) plus a
``SchedulerPlugin`` that owns it, answers its requests (registered with ``@request``) and
follows clients leaving (``remove_client``).  A request that has to wait gets a ``Waits``
entry: an id the pure state keeps, and the asyncio future the shell replies with when the
state wakes that id, when its timeout fires, or never (cancelled) when its client left.

::

    request ──► handler ──► pure state ──► answered now ──► reply
                   │             │
                   │             └──► queued as waiter id ──► later stimulus wakes it
                   └──► Waits.new(client, timeout) ──► asyncio future ──► reply when set

Futures put into a queue or variable, or published, stay alive while they are there: the
pseudo-client ``EXTENSIONS_CLIENT`` wants their keys (``KeyRefs``), as ``ACTORS_CLIENT``
wants actors' creation tasks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime import config
from runtime.scheduler import stimuli as st
from runtime.scheduler.plugins import SchedulerPlugin

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

#: the pseudo-client that wants every key held by a queue, a variable or a dataset
EXTENSIONS_CLIENT = "extensions"

#: a value as it travels and rests: ``{"value": pickle}`` or ``{"key": key}`` for a future
Item = dict


def timeout_of(msg: dict) -> float | None:
    """A request's ``timeout`` in seconds (None: no limit); ValueError/TypeError if it is bad."""
    return config.parse_timeout(msg.get("timeout"))


def name_of(msg: dict) -> str:
    name = msg["name"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"the name must be a non-empty string, not {name!r}")
    return name


class Waits:
    """The requests waiting in one extension: for each waiter id, its reply's future, its
    client and its timer."""

    def __init__(self, on_timeout: Callable[[int], Any]):
        #: takes a waiter out of the pure state when its time is up; returns the reply
        self._on_timeout = on_timeout
        #: waiter id -> the future its reply waits on
        self.futures: dict[int, asyncio.Future] = {}
        #: waiter id -> the client that asked
        self.clients: dict[int, str] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._ids = itertools.count(1)

    def new(self, client: str, timeout: float | None) -> tuple[int, asyncio.Future]:
        loop = asyncio.get_running_loop()
        wid = next(self._ids)
        fut = self.futures[wid] = loop.create_future()
        self.clients[wid] = client
        if timeout is not None and timeout != float("inf"):
            self._timers[wid] = loop.call_later(timeout, self._expire, wid)
        return wid, fut

    def wake(self, wid: int, result: Any) -> None:
        fut = self._pop(wid)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def cancel(self, wid: int) -> None:
        fut = self._pop(wid)
        if fut is not None:
            fut.cancel()

    def of_client(self, client: str) -> list[int]:
        return [wid for wid, c in self.clients.items() if c == client]

    def close(self) -> None:
        for wid in list(self.futures):
            self.cancel(wid)

    def _pop(self, wid: int) -> asyncio.Future | None:
        self.clients.pop(wid, None)
        timer = self._timers.pop(wid, None)
        if timer is not None:
            timer.cancel()
        return self.futures.pop(wid, None)

    def _expire(self, wid: int) -> None:
        self._timers.pop(wid, None)
        if wid in self.futures:
            self.wake(wid, self._on_timeout(wid))


class NamedWaiters:
    """Waiter ids by the name they wait on, in order (a pure state's part for variables and events)."""

    def __init__(self) -> None:
        #: name -> the waiter ids waiting on it, in order
        self.waiters: dict[str, dict[int, None]] = {}
        #: waiter id -> the name it waits on
        self.waiting_on: dict[int, str] = {}

    def wait(self, name: str, wid: int) -> None:
        self.waiters.setdefault(name, {})[wid] = None
        self.waiting_on[wid] = name

    def drop_waiter(self, wid: int) -> None:
        name = self.waiting_on.pop(wid, None)
        if name is not None:
            waiters = self.waiters[name]
            del waiters[wid]
            if not waiters:
                del self.waiters[name]

    def take(self, name: str) -> list[int]:
        """Every waiter on ``name``, now no longer waiting."""
        woken = list(self.waiters.pop(name, ()))
        for wid in woken:
            del self.waiting_on[wid]
        return woken


class KeyRefs:
    """How many times queues, variables and datasets hold each key: ``EXTENSIONS_CLIENT``
    wants a key while it is held at least once."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: key -> how many places hold it
        self.counts: dict[str, int] = {}
        self._ids = itertools.count()

    def check(self, item: Item) -> Item:
        """``item`` if it is a well-formed value or a future the scheduler knows; else an error."""
        if "key" in item:  # a future's key, or an actor handle's (with the handle pickled as its value)
            key = item["key"]
            if not isinstance(key, str) or key not in self.scheduler.state.tasks:
                raise ValueError(f"the future {key!r} is not known to the scheduler (released already?)")
        if not isinstance(item.get("value", b""), bytes) or not ("key" in item or "value" in item):
            raise TypeError("an item must hold a pickled value or a future's key")
        return item

    def hold(self, item: Item) -> None:
        key = item.get("key")
        if key is None:
            return
        if key not in self.counts:
            self._stimulus(st.UpdateGraph(f"extension-hold-{next(self._ids)}", EXTENSIONS_CLIENT, (), (key,)))
        self.counts[key] = self.counts.get(key, 0) + 1

    def release(self, item: Item) -> None:
        key = item.get("key")
        if key is None or key not in self.counts:
            return
        self.counts[key] -= 1
        if not self.counts[key]:
            del self.counts[key]
            self._stimulus(st.ClientReleasesKeys(f"extension-release-{next(self._ids)}", EXTENSIONS_CLIENT, (key,)))

    def give(self, item: Item, client: str) -> None:
        """``client`` gets a reference of its own on the item's key before its reply leaves (the
        client's future then takes it over), so the key outlives the place that held it."""
        key = item.get("key")
        if key is not None and client in self.scheduler.state.clients:
            self._stimulus(st.UpdateGraph(f"extension-give-{next(self._ids)}", client, (), (key,)))

    def _stimulus(self, stimulus: st.Stimulus) -> None:
        self.scheduler.handle_stimulus(stimulus)


def install(scheduler: Scheduler) -> None:
    """Add every extension to ``scheduler`` as a plugin (once it listens)."""
    from runtime.scheduler.extensions import (
        compat,
        event,
        event_log,
        multi_lock,
        publish,
        pubsub,
        queues,
        semaphores,
        shuffle,
        spans,
        variables,
    )

    del shuffle  # its requests are registered; it adds itself as a plugin on the first shuffle

    scheduler.handle_stimulus(st.AddClient("add-client-extensions", EXTENSIONS_CLIENT))
    refs = KeyRefs(scheduler)
    for name, ext in {
        "semaphores": semaphores.Semaphores(),
        "multi_locks": multi_lock.MultiLocks(),
        "queues": queues.Queues(refs),
        "variables": variables.Variables(refs),
        "event": event.Events(),
        "datasets": publish.Datasets(refs),
        "event_log": event_log.EventLogExtension(),
        "pubsub": pubsub.PubSubExtension(),
        "spans": spans.SpansExtension(),
        "fire_and_forget": compat.FireAndForget(),
        "metadata": compat.Metadata(),
        "task_stream": compat.TaskStream(),
    }.items():
        scheduler.extensions[name] = ext
        scheduler.plugins.add(ext, f"extension-{name}")


class WaitingExtension(SchedulerPlugin):
    """An extension whose requests may wait (``self.waits``): closing it cancels them, and a
    client that leaves takes its waits with it, each dropped from the extension's state
    (``drop_waiter``) as it is cancelled."""

    def __init__(self) -> None:
        self.waits = Waits(self._timed_out)

    def close(self) -> None:
        self.waits.close()

    def remove_client(self, scheduler: Scheduler, client: str, **kwargs: Any) -> None:
        for wid in self.waits.of_client(client):
            self.waits.cancel(wid)
            self.drop_waiter(wid)

    def drop_waiter(self, wid: int) -> Any:
        """Take waiter ``wid`` out of the extension's state (its wait has ended)."""
        return self.state.drop_waiter(wid)  # type: ignore[attr-defined]

    def _timed_out(self, wid: int) -> Any:
        """Take waiter ``wid`` out as its time is up; returns its reply."""
        raise NotImplementedError
