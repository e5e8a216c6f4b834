"""Ray's ``ray.util.queue.Queue``, on the cluster's ``Queue`` (``runtime.Queue``, Dask's): one
first-in first-out queue kept by the scheduler, shared by passing it to tasks and actors.

``put``/``get`` block by default (``timeout`` seconds at most, then ``Full``/``Empty``);
``block=False`` or the ``_nowait`` forms never wait.
"""

from __future__ import annotations

import queue as _stdlib_queue
from typing import Any

from runtime.client import coordination


class Empty(_stdlib_queue.Empty):
    """``get`` found the queue empty (at once, or for ``timeout`` seconds)."""


class Full(_stdlib_queue.Full):
    """``put`` found the queue full (at once, or for ``timeout`` seconds)."""


class Queue:
    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        """``maxsize`` 0: unbounded.  ``actor_options`` (Ray's, for the actor behind its queue)
        is accepted: this queue lives in the scheduler, not in an actor."""
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise TypeError(f"Queue maxsize must be a whole number >= 0, not {maxsize!r}")
        self.maxsize = maxsize
        self._queue = coordination.Queue(maxsize=maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        return self._queue.qsize()

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.qsize() >= self.maxsize

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; when full, wait (``block``) up to ``timeout`` s for room, else ``Full``."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        try:
            self._queue.put(item, timeout=timeout if block else 0)
        except TimeoutError:
            raise Full from None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next item; when empty, wait (``block``) up to ``timeout`` s for one, else ``Empty``."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        try:
            return self._queue.get(timeout=timeout if block else 0)
        except TimeoutError:
            raise Empty from None

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def put_nowait_batch(self, items: list[Any]) -> None:
        """Add every item, or none (``Full``) when they do not all fit."""
        items = list(items)
        if self.maxsize and self.qsize() + len(items) > self.maxsize:
            raise Full(f"Cannot add {len(items)} items to queue of size {self.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.put(item, block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """The next ``num_items`` items, or none (``Empty``) when there are fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
            raise ValueError("'num_items' must be a nonnegative integer")
        if num_items > self.qsize():
            raise Empty(f"Cannot get {num_items} items from queue of size {self.qsize()}.")
        return [self.get(block=False) for _ in range(num_items)]

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """Ray's: ends the queue's actor.  Here the items left are dropped."""
        self._queue.get(batch=True)

    def __repr__(self) -> str:
        return f"<ray.util.queue.Queue {self._queue.name} maxsize={self.maxsize}>"
