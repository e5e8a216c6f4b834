"""Requests from user threads, straight to the scheduler: one blocking channel per thread.

::

    user thread: request(what) ─── sendall(Request) ───────────► scheduler (the channel's Comm)
    user thread ◄── recv: it reads its own Reply ◄─────────────────┘ (answered on that channel)

A request made through the client's event loop costs two thread hand-offs each way (the
user thread wakes the loop, which writes; the loop reads the reply and wakes the user
thread).  Here the calling thread writes its request and reads its reply itself: one hop
and one wake-up each way, as a plain socket round trip.  This is how ``ClusterClient.request``
asks from user threads; the loop thread keeps its own path (``ClusterClient._ask``).

Each thread opens its channel on first use (``register-channel`` naming the client, sent
with the first request).  The scheduler answers its requests as the client's own, so a
wait (a lock, a queue get) ends when the client leaves, like one asked on the client's
connection, and it closes the client's channels then: a thread blocked reading gets a
``ConnectionError``.  So does the client when it closes or loses the scheduler
(``close``).  A ``tell`` gets no reply; one nobody waits for any more (a request that
timed out on this side) is skipped by the next read: replies carry their request's id.

Order: a channel is another connection than the client's, so a request could overtake
messages the client queued before it (a ``put`` or a submitted task the request names).
``ClusterClient`` therefore sends a request through the loop, behind those messages, until
one has been answered after them; only then do requests take a channel.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
import weakref
from typing import Any

from runtime.comm import codec
from runtime.comm import messages as m
from runtime.comm.core import FrameReader, close_blocking, open_blocking

#: seconds to open a channel (the scheduler is up: its client connection is)
CONNECT_TIMEOUT = 10.0


class _Channel:
    """One thread's connection to the scheduler."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock = sock
        self.reader = FrameReader(sock, peer, m.TO_CLIENT)
        #: the registration still to go, in front of the first request
        self.hello: m.Message | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        close_blocking(self.sock)  # wakes the thread blocked reading it


class Channels:
    """The request channels of one client, one per thread that asks."""

    def __init__(self, address: str, client_id: str, counter: itertools.count):
        self.address = address
        self.client_id = client_id
        #: request ids, shared with the client's loop path: ids are unique per client
        self._counter = counter
        self._local = threading.local()
        #: every open channel, to close them with the client
        self._open: weakref.WeakSet[_Channel] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: why requests can no longer be made (the client closed or lost the scheduler)
        self._closed: str | None = None

    def request(self, what: str, args: dict[str, Any], timeout: float | None) -> Any:
        """Ask on this thread's channel; its reply's result.  TimeoutError after ``timeout`` s;
        ConnectionError when the scheduler or the client goes."""
        channel = self._channel()
        reqid = next(self._counter)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._write(channel, m.Request(reqid, what, args))
            while True:
                if deadline is not None and not channel.reader.wait(deadline):
                    raise TimeoutError(f"the scheduler did not answer {what!r} within {timeout:g}s")
                for msg in channel.reader.read():
                    if type(msg) is m.Reply and msg.reqid == reqid:
                        return msg.result
                    # else: the reply to a request that timed out here: nobody waits for it
        except TimeoutError:  # an OSError too, but the channel is fine
            raise
        except (ConnectionError, OSError) as e:
            raise self._drop(channel, e) from None

    def tell(self, what: str, args: dict[str, Any]) -> None:
        """A request whose answer nobody waits for: one write, and the scheduler sends none."""
        channel = self._channel()
        try:
            self._write(channel, m.Request(next(self._counter), what, args, answer=False))
        except OSError as e:
            raise self._drop(channel, e) from None

    def close(self, why: str) -> None:
        """No more requests; threads blocked on a reply get ConnectionError(``why``)."""
        with self._lock:
            self._closed = self._closed or why  # the first reason is the cause; later ones follow from it
            channels = list(self._open)
        for channel in channels:
            channel.close()

    def _channel(self) -> _Channel:
        channel = getattr(self._local, "channel", None)
        if channel is not None and not channel.closed:
            return channel
        if self._closed:
            raise ConnectionError(self._closed)
        channel = _Channel(open_blocking(self.address, CONNECT_TIMEOUT), self.address)
        channel.hello = m.RegisterChannel(self.client_id)
        with self._lock:
            if self._closed:
                channel.close()
                raise ConnectionError(self._closed)
            self._open.add(channel)
        self._local.channel = channel
        return channel

    def _write(self, channel: _Channel, msg: m.Message) -> None:
        msgs = [msg] if channel.hello is None else [channel.hello, msg]
        channel.hello = None
        channel.sock.sendall(codec.encode(msgs))

    def _drop(self, channel: _Channel, error: BaseException) -> ConnectionError:
        """``channel`` failed: closed and forgotten (the next request opens another); the error to raise."""
        channel.close()
        if getattr(self._local, "channel", None) is channel:
            self._local.channel = None
        return ConnectionError(self._closed or f"lost the request channel to the scheduler at {self.address}: {error}")
