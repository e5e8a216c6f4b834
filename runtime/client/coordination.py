"""Coordination primitives by name across the cluster: Lock, MultiLock, Semaphore, Queue,
Variable and Event, with Dask's names and behaviour.

Each object is a name plus the cluster client it talks through; the state lives in the
scheduler's extensions (``runtime/scheduler/extensions/``), reached with requests.  A wait
(``acquire``, ``get``, ``wait``) is one request that the scheduler answers when the wait is
over or its timeout fires: nothing polls.  The objects pickle by name, so they can be
passed to tasks and actors, where they talk through that process's cluster client.

Values travel pickled; a ``Future`` put into a ``Queue`` or set into a ``Variable`` travels
as its key, and the scheduler keeps that key alive while it is there.  The getter gets a
``Future`` of its own for it.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from runtime import config
from runtime.client import handle_refs
from runtime.client.client import ClusterClient
from runtime.client.future import Future
from runtime.comm import serialize

__all__ = ["Lock", "MultiLock", "Semaphore", "Queue", "Variable", "Event", "cluster_client"]


#: numbers the leases this process takes (with its client's id, unique in the cluster)
_lease_ids = itertools.count()


def cluster_client(client: Any = None) -> ClusterClient:
    """The cluster client to talk through: ``client`` (a ``runtime.Client`` or a cluster
    client), else, inside a task or actor, that worker process's, else the default
    ``runtime.Client``, else the runtime's (``runtime.init()``, started if need be)."""
    if client is not None:
        core = getattr(client, "core", client)
        if not isinstance(core, ClusterClient):
            raise TypeError(f"client must be a runtime.Client, not a {type(client).__name__}")
        return core
    from runtime.api.context import current_runtime
    from runtime.client.futures_client import default_client
    from runtime.worker.actors import current_worker

    if current_worker() is None and (default := default_client()) is not None:
        return default.core
    return current_runtime().client


def _ask(cc: ClusterClient, what: str, wait: bool = False, **kwargs: Any) -> Any:
    """A request to the scheduler's extensions; a waiting one (``wait``) has no client-side
    limit: the scheduler answers at its timeout, and a lost connection fails it."""
    result = cc.request_args(what, kwargs, None if wait else 30.0)
    if isinstance(result, dict) and "error" in result:
        raise RuntimeError(result["error"])
    return result


def encode_item(cc: ClusterClient, value: Any) -> tuple[dict, Future | None]:
    """A value as the extensions keep it: pickled, or a future's key; an actor's handle is
    both, its handle key held while the item is (runtime/client/handle_refs.py).  A large
    value (``inline-threshold``) is stored first and goes as its key, marked ``stored``: the
    scheduler keeps no large bytes, and the taker reads it zero-copy.  Also the future to hold
    until the request is answered (the stored value's: nothing else holds it meanwhile)."""
    ref = handle_refs.ref_of(value)
    if ref is not None:
        return {"value": serialize.dumps(value), "key": ref.key}, None
    if isinstance(value, Future):
        owner = value._owner
        if not isinstance(owner, ClusterClient):
            raise TypeError(f"future {value.key!r} belongs to a local scheduler; only cluster futures can be shared")
        if value._state.local and not owner.register_local(value):  # an actor call's result
            raise RuntimeError(f"future {value.key!r} failed; it cannot be shared") from value.exception()
        if owner is not cc:  # its messages go on another connection: make sure they have landed
            owner.request("who-has", keys=[value.key])
        return {"key": value.key}, None
    stored = cc.by_reference(value)
    if stored is not value:
        return {"key": stored.key, "stored": True}, stored
    return {"value": serialize.dumps(value)}, None


def decode_item(cc: ClusterClient, item: dict) -> Any:
    if "value" not in item:
        future = cc.update_graph([], [item["key"]])[0]
        return cc.get([future])[0] if item.get("stored") else future
    if "key" not in item:
        return serialize.loads(item["value"])
    given = handle_refs.adopt(cc, item["key"])  # an actor's handle: the key was given to ``cc``
    handle = serialize.loads(item["value"])
    del given
    return handle


class _Named:
    """A primitive known by name, bound to its cluster client on first use."""

    _kind = "object"

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"a {type(self).__name__} name must be a non-empty string, not {name!r}")
        self.name = name or f"{self._kind}-{uuid.uuid4().hex}"
        self._client = client
        self._cc: ClusterClient | None = None

    @property
    def cc(self) -> ClusterClient:
        if self._cc is None:
            self._cc = cluster_client(self._client)
            self._bind()
        return self._cc

    def _bind(self) -> None:
        """Register with the scheduler, once (those that need to)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


class Semaphore(_Named):
    """At most ``max_leases`` holders at a time across the cluster (Dask's ``Semaphore``).

    A holder whose process dies releases its leases at once; one that stops refreshing them
    (a frozen process) loses them after ``scheduler.locks.lease-timeout``.
    """

    _kind = "semaphore"

    def __init__(self, max_leases: int = 1, name: str | None = None, client: Any = None):
        if isinstance(max_leases, bool) or not isinstance(max_leases, int):
            raise TypeError(f"max_leases must be a whole number >= 1, not {max_leases!r}")
        if max_leases < 1:
            raise ValueError(f"max_leases must be a whole number >= 1, not {max_leases!r}")
        super().__init__(name, client)
        self.max_leases = max_leases
        #: the leases this object holds, oldest first
        self._leases: deque[str] = deque()
        self._refresher: Any = None

    def _bind(self) -> None:
        assert self._cc is not None
        lease_timeout = config.get("scheduler.locks.lease-timeout")
        self._lease_timeout = None if lease_timeout == float("inf") else lease_timeout
        _ask(
            self._cc,
            "semaphore-register",
            name=self.name,
            max_leases=self.max_leases,
            lease_timeout=self._lease_timeout,
        )

    def acquire(self, timeout: Any = None) -> bool:
        """Take a lease: True, or False if none was free within ``timeout`` (seconds, "1s",
        a timedelta; None: wait as long as it takes)."""
        seconds = config.parse_timeout(timeout)
        cc = self.cc
        lease = f"{cc.id}-{next(_lease_ids)}"  # unique in the cluster (uuid4 costs a getrandom call)
        if not _ask(cc, "semaphore-acquire", wait=True, name=self.name, lease=lease, timeout=seconds):
            return False
        self._leases.append(lease)
        if self._lease_timeout is not None and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.run_coroutine_threadsafe(self._refresh(self._lease_timeout / 5), cc._loop)
        return True

    async def _refresh(self, interval: float) -> None:
        """On the client's loop, while this object holds leases: renew them."""
        while self._leases:
            await asyncio.sleep(interval)
            leases = list(self._leases)
            if leases:
                try:
                    await self.cc._ask("semaphore-refresh", name=self.name, leases=leases)
                except ConnectionError:
                    return

    def release(self) -> bool:
        """Give back the oldest lease this object holds; RuntimeError if it holds none."""
        if not self._leases:
            raise RuntimeError(f"{type(self).__name__} {self.name!r} released too often: this object holds no lease")
        lease = self._leases.popleft()
        # The refresher ends by itself at its next turn if nothing is left to renew: cancelling
        # it here would make every acquire start one, a hand-off to the loop thread each time.
        self.cc.tell("semaphore-release", name=self.name, lease=lease)  # checked above: it holds the lease
        return True

    def get_value(self) -> int:
        """How many leases are held now, by anyone."""
        return _ask(self.cc, "semaphore-value", name=self.name)

    def close(self) -> None:
        """Forget the semaphore on the scheduler (its waiters get False)."""
        _ask(self.cc, "semaphore-close", name=self.name)

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple:
        return type(self), (self.max_leases, self.name)


class Lock(Semaphore):
    """A lock by name across the cluster (Dask's ``Lock``: a semaphore of one lease).

    Only the object that acquired it may release it; another ``Lock`` of the same name
    raises RuntimeError.
    """

    _kind = "lock"

    def __init__(self, name: str | None = None, client: Any = None):
        super().__init__(1, name, client)

    def acquire(self, blocking: bool = True, timeout: Any = None) -> bool:  # type: ignore[override]
        if not blocking:
            if timeout is not None:
                raise ValueError("a non-blocking acquire takes no timeout")
            timeout = 0
        return super().acquire(timeout)

    def locked(self) -> bool:
        return self.get_value() == 1

    def __reduce__(self) -> tuple:
        return type(self), (self.name,)


class MultiLock(_Named):
    """Several named locks taken at once, with no deadlock between overlapping sets
    (Dask's ``MultiLock``)."""

    _kind = "multi-lock"

    def __init__(self, names: Sequence[str] = (), client: Any = None):
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise TypeError(f"MultiLock takes a list of lock names, not {names!r}")
        super().__init__(None, client)
        self.names = list(names)
        #: this object's request id while it holds (or waits for) the locks
        self.id = uuid.uuid4().hex
        self._held = False

    def acquire(self, blocking: bool = True, timeout: Any = None, num_locks: int | None = None) -> bool:
        """Take all the locks (or ``num_locks`` of them); False if that took longer than ``timeout``."""
        if not blocking:
            if timeout is not None:
                raise ValueError("a non-blocking acquire takes no timeout")
            timeout = 0
        seconds = config.parse_timeout(timeout)
        if self._held:
            raise RuntimeError(f"this MultiLock holds {self.names} already; release it first")
        self._held = bool(
            _ask(self.cc, "multi-lock-acquire", wait=True, id=self.id, names=self.names, num_locks=num_locks,
                 timeout=seconds)
        )  # fmt: skip
        return self._held

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("this MultiLock is not acquired")
        self._held = False
        _ask(self.cc, "multi-lock-release", id=self.id)

    def locked(self) -> bool:
        """Whether any of its locks is held by anyone."""
        return _ask(self.cc, "multi-lock-locked", names=self.names)

    def __enter__(self) -> MultiLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple:
        return type(self), (self.names,)


class Queue(_Named):
    """A first-in first-out queue by name across the cluster (Dask's ``Queue``)."""

    _kind = "queue"

    def __init__(self, name: str | None = None, client: Any = None, maxsize: int = 0):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise TypeError(f"maxsize must be a whole number >= 0, not {maxsize!r}")
        super().__init__(name, client)
        self.maxsize = maxsize

    def _bind(self) -> None:
        assert self._cc is not None
        _ask(self._cc, "queue-create", name=self.name, maxsize=self.maxsize)

    def put(self, value: Any, timeout: Any = None) -> None:
        """Put ``value`` (a ``Future`` stays alive while queued); TimeoutError if the queue stays
        full for ``timeout``."""
        seconds = config.parse_timeout(timeout)
        cc = self.cc
        item, _held = encode_item(cc, value)
        if not self.maxsize and "key" not in item:
            # It cannot wait (no bound) and holds no key to be held before we return: one
            # message, no round trip.  This thread's later requests go after it, in order.
            cc.tell("queue-put", name=self.name, item=item, timeout=seconds)
            return
        result = _ask(cc, "queue-put", wait=True, name=self.name, item=item, timeout=seconds)
        if isinstance(result, dict):
            raise TimeoutError(result["timeout"])

    def get(self, timeout: Any = None, batch: bool | int = False) -> Any:
        """The next item; with ``batch=n`` a list of the next ``n``, with ``batch=True`` a list of
        all there is now (perhaps none).  TimeoutError if nothing came within ``timeout``."""
        seconds = config.parse_timeout(timeout)
        if not isinstance(batch, bool) and (not isinstance(batch, int) or batch < 1):
            raise TypeError(f"batch must be True, False or a whole number >= 1, not {batch!r}")
        cc = self.cc
        result = _ask(cc, "queue-get", wait=True, name=self.name, timeout=seconds, batch=batch)
        if isinstance(result, list):
            return [decode_item(cc, item) for item in result]
        if "timeout" in result:
            raise TimeoutError(result["timeout"])
        return decode_item(cc, result)

    def qsize(self) -> int:
        return _ask(self.cc, "queue-qsize", name=self.name)

    def __reduce__(self) -> tuple:
        return type(self), (self.name, None, self.maxsize)


class Variable(_Named):
    """One value by name across the cluster (Dask's ``Variable``)."""

    _kind = "variable"

    def set(self, value: Any) -> None:
        """Set the value (a ``Future`` stays alive while it is set)."""
        cc = self.cc
        item, _held = encode_item(cc, value)
        _ask(cc, "variable-set", name=self.name, item=item)

    def get(self, timeout: Any = None) -> Any:
        """The value, waiting for one to be set; TimeoutError after ``timeout``."""
        seconds = config.parse_timeout(timeout)
        cc = self.cc
        result = _ask(cc, "variable-get", wait=True, name=self.name, timeout=seconds)
        if "timeout" in result:
            raise TimeoutError(result["timeout"])
        return decode_item(cc, result)

    def delete(self) -> None:
        _ask(self.cc, "variable-delete", name=self.name)

    def __reduce__(self) -> tuple:
        return type(self), (self.name,)


class Event(_Named):
    """A flag by name across the cluster (Dask's ``Event``)."""

    _kind = "event"

    def set(self) -> None:
        _ask(self.cc, "event-set", name=self.name)

    def clear(self) -> None:
        _ask(self.cc, "event-clear", name=self.name)

    def is_set(self) -> bool:
        return _ask(self.cc, "event-is-set", name=self.name)

    def wait(self, timeout: Any = None) -> bool:
        """True once the event is set; False if it was not set within ``timeout``."""
        seconds = config.parse_timeout(timeout)
        return _ask(self.cc, "event-wait", wait=True, name=self.name, timeout=seconds)

    def __reduce__(self) -> tuple:
        return type(self), (self.name,)
