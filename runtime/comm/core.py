"""Connections between processes: asyncio streams (uvloop when installed), TCP or Unix sockets.

Addresses are strings: ``tcp://HOST:PORT`` or ``unix:///path/to/socket``.  A ``Comm``
reads whole frames (each a batch of messages) and sends batches.  ``send`` never waits:
messages queued during one turn of the event loop leave together in one frame on the
next turn, which is what keeps thousands of tiny task messages cheap.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from runtime import config
from runtime.comm import auth, codec
from runtime.comm.messages import Decoder, Message

logger = logging.getLogger(__name__)


def parse_address(address: str) -> tuple[str, str, int]:
    """``tcp://h:p`` -> ("tcp", h, p); ``unix:///p`` -> ("unix", p, 0).  Errors name the address."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "unix"):
        raise ValueError(f"address {address!r} must look like tcp://HOST:PORT or unix:///PATH")
    if scheme == "unix":
        return "unix", rest, 0
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no numeric port (expected tcp://HOST:PORT)")
    return "tcp", host.strip("[]"), int(port)


class Comm:
    """One open connection.  Not thread-safe: use it from its event loop only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, decoder: Decoder):
        self.reader = reader
        self.writer = writer
        #: who is on the other side, for log lines and errors
        self.peer = peer
        #: the messages this side accepts on this connection
        self.decoder = decoder
        self._outbox: list[Message] = []
        self._flush_scheduled = False
        self.closed = False
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read(self) -> list[Any]:
        """The next batch of messages.  Raises ``ConnectionError`` when the peer is gone."""
        header = b""
        try:
            header = await self.reader.readexactly(codec.HEADER.size)
            payload = await self.reader.readexactly(codec.frame_length(header, self.peer))
        except asyncio.IncompleteReadError as e:
            self.closed = True
            if header or e.partial:  # it went away in the middle of a frame
                raise codec.ProtocolError(f"truncated frame: the connection closed {len(e.partial)} bytes in") from None
            raise ConnectionResetError(f"connection to {self.peer} closed") from None
        return codec.decode(payload, self.decoder)

    def send(self, msg: Message) -> None:
        """Queue one message; it leaves with the others queued in this loop turn."""
        self.send_many([msg])

    def send_many(self, msgs: list[Message]) -> None:
        if msgs and not self.closed:
            self._outbox.extend(msgs)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        msgs, self._outbox = self._outbox, []
        if not msgs or self.closed:
            return
        try:
            self.writer.write(codec.encode_many(msgs))
        except codec.ProtocolError as e:  # one message over the frame limit: it cannot go, and the
            # peer must not wait for it forever, so the connection ends (its end sees that at once)
            kinds = ", ".join(sorted({type(msg).__name__ for msg in msgs}))
            logger.error(
                "closing the connection to %s: a message among %s is too large to send: %s", self.peer, kinds, e
            )
            self.closed = True
            self.writer.close()
        except (ConnectionError, RuntimeError) as e:
            logger.debug("dropping %d messages to %s: %s", len(msgs), self.peer, e)
            self.closed = True

    async def drain(self) -> None:
        self._flush()
        await self.writer.drain()

    def close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
        self.writer.close()


async def connect(address: str, decoder: Decoder, timeout: float = 10.0) -> Comm:
    """Open a connection, retrying until ``timeout`` while the peer is still starting; what the
    peer sends is decoded by ``decoder``."""
    scheme, host, port = parse_address(address)
    security = auth.default_security()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    while True:
        try:
            # Bounded: a host that drops packets must not leave us waiting on the kernel's minutes.
            if scheme == "unix":
                opening = asyncio.open_unix_connection(host, limit=2**20)
            else:
                opening = asyncio.open_connection(host, port, limit=2**20, ssl=security.client_ssl)
            reader, writer = await asyncio.wait_for(opening, max(0.01, deadline - loop.time()))
            if security.secret is not None:
                try:
                    await auth.client_handshake(reader, writer, security.secret, max(1.0, deadline - loop.time()))
                except auth.AuthenticationError as e:
                    writer.close()
                    raise auth.AuthenticationError(f"{address}: {e}") from None
            return Comm(reader, writer, address, decoder)
        except TimeoutError:
            raise ConnectionRefusedError(f"nothing answers at {address} within {timeout:g}s") from None
        except (ConnectionRefusedError, FileNotFoundError) as e:
            if loop.time() + delay > deadline:
                raise ConnectionRefusedError(f"nothing answers at {address} after {timeout:g}s ({e})") from None
            await asyncio.sleep(delay)
            # Short steps: a peer starting on this machine (a cluster's scheduler) is often
            # ready within a fraction of a second, and each step past that delays the start.
            delay = min(delay * 1.5, 0.025)


Handler = Callable[[Comm], Awaitable[None]]


async def listen(
    address: str, handler: Handler, decoder: Decoder, sock: socket.socket | None = None
) -> tuple[asyncio.AbstractServer, str]:
    """Serve ``handler`` for each new connection, whose messages ``decoder`` decodes; returns
    the server and the bound address.

    ``tcp://127.0.0.1:0`` picks a free port; the returned address names it.  ``sock``: a Unix
    socket already bound to ``address`` and listening, made by whoever started this process
    (so peers could connect before it was ready: ``LocalCluster``).
    """
    scheme, host, port = parse_address(address)
    security = auth.default_security()
    auth.check_listen(scheme, host, security)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "unix-peer"
        comm = Comm(reader, writer, str(peer), decoder)
        try:
            if security.secret is not None:  # before any byte of theirs is read as a message
                try:
                    await auth.server_handshake(reader, writer, security.secret)
                except auth.AuthenticationError as e:
                    logger.warning("refused connection from %s: %s", peer, e)
                    return
            await handler(comm)
        except ConnectionError:
            pass
        except Exception:
            logger.exception("handler for %s failed", comm.peer)
        finally:
            comm.close()

    if scheme == "unix":
        where = {"sock": sock} if sock is not None else {"path": host}
        server = await asyncio.start_unix_server(on_connect, **where, limit=2**20)
        return server, address
    server = await asyncio.start_server(on_connect, host, port, limit=2**20, ssl=security.server_ssl)
    bound_port = server.sockets[0].getsockname()[1]
    return server, f"tcp://{host}:{bound_port}"


class ThreadOutbox:
    """Messages from any thread, handed to an event loop in batches.

    ``put`` wakes the loop only when the outbox was empty, so a burst of messages (task
    results, ``.remote()`` calls) costs one wake-up and leaves as one batch.  A *lazy*
    message (one nothing waits on, such as a release) waits up to LAZY_DELAY for others to
    leave with, so a loop that drops futures one by one wakes the loop once per batch, not
    once per future; any other message takes the lazy ones along at once, in order.  The
    flags are cleared before the queue is drained, so a message put during a drain is never
    stranded.
    """

    LAZY_DELAY = 0.002

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[Message]], None]):
        self._loop = loop
        self._deliver = deliver
        self._queue: deque[Message] = deque()
        self._wakeup_pending = False
        self._timer_pending = False

    def put(self, msg: Message, lazy: bool = False) -> None:
        self._queue.append(msg)
        if self._wakeup_pending or (lazy and self._timer_pending):
            return
        try:
            if lazy:
                self._timer_pending = True
                self._loop.call_soon_threadsafe(self._loop.call_later, self.LAZY_DELAY, self.drain)
            else:
                self._wakeup_pending = True
                self._loop.call_soon_threadsafe(self.drain)
        except RuntimeError:  # the loop closed while shutting down
            pass

    def drain(self) -> None:
        """Deliver everything queued (on the loop's thread)."""
        self._wakeup_pending = self._timer_pending = False
        batch = []
        while self._queue:
            batch.append(self._queue.popleft())
        if batch:
            self._deliver(batch)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop when uvloop is installed, else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def install_uvloop() -> None:
    """Use uvloop's faster event loop for ``asyncio.run`` in this process when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def request_sync(address: str, msg: Message, decoder: Decoder, timeout: float = 60.0) -> Any:
    """One request and its reply over a fresh blocking connection, for threads with no event loop.

    Used by executor threads and user threads to ask their node agent for an object.
    """
    scheme, host, port = parse_address(address)
    with auth.open_sync(scheme, host, port, timeout) as sock:
        sock.sendall(codec.encode([msg]))
        return read_frame(sock, address, decoder)[0]


def open_blocking(address: str, timeout: float, io_timeout: float | None = None) -> socket.socket:
    """A blocking connection for a thread that writes (and reads) its own frames: this process's
    TLS and secret, no Nagle delay; ``io_timeout`` bounds each send and receive (None: none)."""
    scheme, host, port = parse_address(address)
    return _blocking(auth.open_sync(scheme, host, port, timeout), io_timeout)


def _blocking(sock: socket.socket, io_timeout: float | None) -> socket.socket:
    """A connected socket set up for blocking I/O: ``io_timeout`` in place of the connect's own
    timeout, and no Nagle delay on TCP."""
    sock.settimeout(io_timeout)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def local_name(address: str) -> str:
    """The abstract Unix socket (Linux) a blocking server at TCP ``address`` also listens on.

    It exists on a host only if that server runs there (the name holds the server's own
    address, and abstract sockets are private to a host's network namespace), so a client
    that can connect to it is on the same host: there a Unix socket's round trip costs half
    of loopback TCP's (50 against 108 us on the 2-core VM, idle)."""
    return "\0runtime-" + address.removeprefix("tcp://")


def listen_local(address: str) -> socket.socket | None:
    """A listening socket on ``local_name(address)``; None where there are no abstract sockets."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(local_name(address))
        sock.listen(128)
    except OSError:
        sock.close()
        return None
    return sock


def open_local_first(address: str, timeout: float, io_timeout: float | None = None) -> socket.socket:
    """``open_blocking``, through the server's ``local_name`` when it is on this host (a server
    that listens there: an actor's worker, for calls and direct pub/sub)."""
    if address.startswith("tcp://"):
        try:
            return _blocking(auth.open_sync("unix", local_name(address), 0, timeout), io_timeout)
        except OSError:  # elsewhere, or no abstract sockets here
            pass
    return open_blocking(address, timeout, io_timeout)


def close_blocking(sock: socket.socket) -> None:
    """Close a blocking connection, waking a thread blocked reading it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def read_frame(sock: socket.socket, peer: str, decoder: Decoder) -> list[Any]:
    """The next batch of messages from a blocking socket; ``ConnectionError`` when it closes."""
    header = auth.recv_exactly(sock, codec.HEADER.size, peer)
    return codec.decode(auth.recv_exactly(sock, codec.frame_length(header, peer), peer), decoder)


class FrameReader:
    """Frames from a blocking socket, read in large chunks: a reply that arrives with the next
    one costs one ``recv`` for both, and a frame costs one system call instead of two.

    A thread that waits here polls for up to ``comm.busy-poll`` seconds before it sleeps in
    ``recv``.  A CPU left idle takes long to wake (on the 2-core VM a Unix-socket ping-pong
    costs 41-48 us sleeping, 7-8 us polling), and both the writer's ``send`` and the sleeper
    pay for it; a caller making sequential actor calls and the thread serving them wait only
    tens of microseconds each time.  A poll that misses makes the next 1, 2, 4 ... 64 waits
    sleep at once, and one that catches its frame resets that: an idle connection polls one
    wait in 64, and a busy machine, where polling would take the CPU the answer needs (one
    busy process beside a sequential caller on 2 cores: 2,900 calls/s polling every wait,
    6,000 sleeping), is left alone."""

    CHUNK = 256 * 1024

    def __init__(self, sock: socket.socket, peer: str, decoder: Decoder):
        self.sock = sock
        self.peer = peer
        self.decoder = decoder
        self._buf = bytearray()
        # Received into, again and again: ``recv(CHUNK)`` would allocate CHUNK bytes each
        # time, which glibc serves with mmap and munmap (~90 us a call here, most of an
        # actor call's round trip).
        self._chunk = memoryview(bytearray(self.CHUNK))
        # Only a plain socket without a timeout takes MSG_DONTWAIT as a poll (TLS refuses
        # flags; a timeout would make Python wait for readability first).
        plain = type(sock) is socket.socket and sock.gettimeout() is None
        #: seconds to poll before sleeping (0: never)
        self.busy_poll: float = config.get("comm.busy-poll") if plain else 0.0
        #: polls missed in a row, and how many waits to sleep through before polling again
        self._misses = self._skip = 0

    def buffered(self) -> bool:
        """True if a whole frame is read already (``read`` will not block)."""
        buf = self._buf
        h = codec.HEADER.size
        return len(buf) >= h and len(buf) >= h + codec.frame_length(bytes(buf[:h]), self.peer)

    def wait(self, deadline: float) -> bool:
        """Whether a frame can be read before ``deadline`` (``time.monotonic()``): one is
        buffered already, or bytes arrive in time (``read`` then takes the rest of the frame)."""
        if self.buffered():
            return True
        remaining = deadline - time.monotonic()
        return remaining > 0 and bool(select.select([self.sock], [], [], remaining)[0])

    def read(self) -> list[Any]:
        """The next batch of messages; ``ConnectionError`` when the socket closes."""
        h = codec.HEADER.size
        buf = self._buf
        while len(buf) < h:
            self._fill()
        n = codec.frame_length(bytes(buf[:h]), self.peer)
        while len(buf) < h + n:
            self._fill()
        payload = bytes(buf[h : h + n])
        del buf[: h + n]
        return codec.decode(payload, self.decoder)

    def _fill(self) -> None:
        n = 0
        if self._skip:
            self._skip -= 1
        elif self.busy_poll:
            n = self._poll()
            # A miss skips the polls of the next 1, 2, 4 ... 64 waits; a hit polls every wait.
            self._misses = 0 if n else min(self._misses + 1, 7)
            self._skip = (1 << self._misses - 1) if self._misses else 0
        if not n:
            n = self.sock.recv_into(self._chunk)
        if not n:
            raise ConnectionResetError(f"{self.peer} closed the connection")
        self._buf += self._chunk[:n]

    def _poll(self) -> int:
        """Bytes received within ``busy_poll`` seconds, else 0 (also when the peer closed:
        the ``recv`` that follows finds that out)."""
        end = time.perf_counter() + self.busy_poll
        while True:
            try:
                return self.sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if time.perf_counter() >= end:
                    return 0
