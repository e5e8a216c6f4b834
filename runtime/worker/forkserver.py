"""How a node agent starts its workers: forked from a pre-imported template, or spawned.

A worker's interpreter start and imports (the runtime, msgspec, psutil, uvloop, numpy)
cost a few hundred milliseconds of CPU each, paid again by every worker and every restart.
With the ``forkserver`` start method (Linux; ``worker.start-method``) each node has one
*template* process, which imports the runtime once, in parallel with the scheduler's own
start (a ``LocalCluster`` starts it beside the agent and hands the agent its socket; an
agent started otherwise starts its own), and then forks each worker on request, as
``multiprocessing``'s forkserver does::

    node agent ──fork request (argv, env; its stdin pipe and log file as fds)──► template
       ▲  │                                                                     │ fork()
       │  └── worker's stdin pipe: EOF when the agent is gone ──────────────┐    ▼
       └──── "pid" once forked, "exit" with its status once reaped ──── worker process

The template starts no thread and no event loop, so a fork copies one thread in a clean
state; the ``worker.preload`` modules (numpy) it imports only once idle, so they do not
slow the first workers' start (OpenBLAS's pool, if numpy starts one, is stopped by its own
``pthread_atfork`` handler).  The child gets the agent's environment and config, fresh
random seeds, its own stdin pipe and log file as fds 0-2, then runs
``python -m runtime.worker``'s ``main``.

The template is the workers' parent, so it reaps them and reports each exit status to the
agent, which supervises a ``ForkedProcess`` as it would a subprocess: the cause of a death
(exit code, signal, last log lines) reads the same.  The template leaves when its socket
or its stdin pipe closes (the agent, or whoever started it, is gone), once its workers have
gone (they see the agent's EOF); a forked worker gets SIGKILL if its template dies first
(``PR_SET_PDEATHSIG``), and the agent counts it dead and starts a new template.  Where
forking is unavailable, or the template cannot start, each worker is spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from runtime import config, procutil
from runtime.comm import messages as m

logger = logging.getLogger("runtime.agent")

#: the command line of a spawned worker, before its arguments
WORKER_MODULE = [sys.executable, "-m", "runtime.worker"]
#: what the template imports once for all its workers, besides ``worker.preload``
RUNTIME_MODULES = ("runtime.worker.__main__", "runtime.comm.core", "uvloop")
#: seconds the template waits for its workers to stop once its agent is gone
LEAVE_TIMEOUT = 5.0
#: seconds without a fork request after which the template imports the ``worker.preload`` modules
PRELOAD_AFTER = 0.5
_PR_SET_PDEATHSIG = 1
_MAX_PACKET = 1 << 20


def forkserver_available() -> bool:
    """Whether workers can be forked here: Linux (fork, fd passing, parent-death signals)."""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


class WorkerProcess(Protocol):
    """What the agent needs of a worker process: a subprocess or a forked one."""

    pid: int
    returncode: int | None

    async def wait(self) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class SpawnLauncher:
    """Each worker a new interpreter (``python -m runtime.worker``)."""

    closing = False

    async def start(self, args: list[str], log: int) -> WorkerProcess:
        return await asyncio.create_subprocess_exec(
            *WORKER_MODULE, *args, stdin=asyncio.subprocess.PIPE, stdout=log, stderr=log
        )

    async def close(self) -> None:
        pass


class ForkedProcess:
    """A worker forked by the template: ``pid``, ``returncode`` and ``wait()`` as a subprocess's."""

    def __init__(self, pid: int, stdin: int):
        self.pid = pid
        #: as ``Popen.returncode``: the exit code, or minus the signal that ended it
        self.returncode: int | None = None
        #: the write end of its stdin: closed when it ends, or when the agent does
        self._stdin = stdin
        self._done = asyncio.get_running_loop().create_future()

    def exited(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            os.close(self._stdin)
            self._done.set_result(returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        # Not reported reaped: the pid is still its own (but for the moment between the
        # template's reaping and its report, as with any pid signalled from outside).
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def template_command(fd: int, scheduler: str, node: str) -> list[str]:
    """How to start a template that talks over socket ``fd`` (the scheduler and node only name
    it in a process list, as its workers' command line)."""
    return [sys.executable, "-m", "runtime.worker.forkserver", str(fd), "--scheduler", scheduler, "--node", node]


def template_socket() -> tuple[socket.socket, socket.socket]:
    """The agent's end and the template's end of a new template's socket."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class ForkServerLauncher:
    """The agent's side of the template: start it (or adopt one its starter made), ask it for
    workers, hear of their exits."""

    def __init__(self, scheduler: str = "", node: str = "", adopt: socket.socket | None = None) -> None:
        #: named in the template's command line
        self._scheduler, self._node = scheduler, node
        #: the template, when we started it (not one adopted from a LocalCluster)
        self._template: asyncio.subprocess.Process | None = None
        #: its pid, once it said it is ready (or we started it)
        self.template_pid: int | None = None
        #: the template a LocalCluster started beside us, its socket's end given to us
        self._adopt = adopt
        self._sock: socket.socket | None = None
        #: fork requests sent and not answered yet, by id: the answer's future, the stdin's write end
        self._pending: dict[int, tuple[asyncio.Future[ForkedProcess], int]] = {}
        #: forked workers not reaped yet, by pid
        self._children: dict[int, ForkedProcess] = {}
        self._ids = 0
        #: held while a template starts: workers restarting together share the new one
        self._starting = asyncio.Lock()
        #: set as the agent stops: a template leaving now is no news
        self.closing = False
        #: what to do with each message from the template
        self._handlers: dict[type, Callable[[Any], None]] = {
            m.ForkServerReady: self._ready, m.Forked: self._forked, m.ForkFailed: self._fork_failed,
            m.WorkerExited: self._exited,
        }  # fmt: skip

    async def begin(self) -> None:
        """Start the template, or adopt the one given (it imports in the background; requests
        wait in its socket meanwhile)."""
        if self._adopt is not None:
            ours, self._adopt = self._adopt, None
        else:
            ours, theirs = template_socket()
            try:
                self._template = await asyncio.create_subprocess_exec(
                    *template_command(theirs.fileno(), self._scheduler, self._node), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                )  # fmt: skip
            finally:
                theirs.close()
            self.template_pid = self._template.pid
        ours.setblocking(False)
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)

    async def start(self, args: list[str], log: int) -> WorkerProcess:
        async with self._starting:
            if self._sock is None:
                await self.begin()
        assert self._sock is not None
        stdin_r, stdin_w = os.pipe()
        self._ids += 1
        request = _encode(m.ForkWorker(self._ids, tuple(args), dict(os.environ)))
        forked: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = (forked, stdin_w)
        try:
            socket.send_fds(self._sock, [request], [stdin_r, log])
        except OSError as e:
            self._pending.pop(self._ids)
            os.close(stdin_w)
            raise RuntimeError(f"the worker fork server is gone: {e}") from None
        finally:
            os.close(stdin_r)
        return await forked

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                packet = self._sock.recv(_MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:
                packet = b""
            if not packet:
                self._lost()
                return
            for msg in m.FROM_FORK_SERVER.decode(packet):
                self._handlers[type(msg)](msg)

    def _ready(self, msg: m.ForkServerReady) -> None:
        self.template_pid = msg.pid

    def _exited(self, msg: m.WorkerExited) -> None:
        proc = self._children.pop(msg.pid, None)
        if proc is not None:
            proc.exited(msg.code)

    def _forked(self, msg: m.Forked) -> None:
        forked, stdin_w = self._pending.pop(msg.id)  # made here, not by the caller: an exit may follow
        proc = self._children[msg.pid] = ForkedProcess(msg.pid, stdin_w)
        forked.set_result(proc)

    def _fork_failed(self, msg: m.ForkFailed) -> None:
        forked, stdin_w = self._pending.pop(msg.id)
        os.close(stdin_w)
        forked.set_exception(RuntimeError(f"the worker fork server could not fork: {msg.error}"))

    def _lost(self) -> None:
        """The template is gone: its workers got SIGKILL (PR_SET_PDEATHSIG); count them dead.
        The next ``start`` starts a new template."""
        if self._sock is None:
            return
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        code = self._template.returncode if self._template is not None else None
        if self.closing:
            logger.info("the worker fork server (pid %s) has left", self.template_pid)
        else:
            logger.error(
                "the worker fork server (pid %s) is gone (%s); its workers are lost with it; the next worker "
                "starts a new one", self.template_pid, procutil.describe_exit(code) if code is not None else "it ended",
            )  # fmt: skip
        self._template = self.template_pid = None
        for forked, stdin_w in self._pending.values():
            os.close(stdin_w)
            forked.set_exception(RuntimeError("the worker fork server ended before it forked"))
        self._pending.clear()
        for proc in self._children.values():
            proc.exited(-signal.SIGKILL)
        self._children.clear()

    async def close(self) -> None:
        """Stop the template: it leaves once its workers have (call after stopping them); one
        adopted from a LocalCluster leaves as its socket closes, and the cluster waits for it."""
        template = self._template
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if template is None:
            return
        if template.stdin is not None:
            template.stdin.close()
        try:
            await asyncio.wait_for(template.wait(), LEAVE_TIMEOUT + 2)
        except TimeoutError:
            template.kill()
            await template.wait()


def make_launcher(
    method: str | None = None, scheduler: str = "", node: str = "", adopt: socket.socket | None = None
) -> SpawnLauncher | ForkServerLauncher:
    """The launcher ``worker.start-method`` asks for, or spawning where forking is unavailable;
    ``adopt``: the socket of a template started for us."""
    if adopt is not None:
        return ForkServerLauncher(scheduler, node, adopt)
    if uses_forkserver(method):
        return ForkServerLauncher(scheduler, node)
    return SpawnLauncher()


def uses_forkserver(method: str | None = None) -> bool:
    """Whether workers are forked: ``method`` (default: the ``worker.start-method`` setting)
    asks for it and the platform allows it."""
    return (method or config.get("worker.start-method")) == "forkserver" and forkserver_available()


# ----------------------------------------------------------------------------- the template


def _preload() -> None:
    """Import the ``worker.preload`` modules that are installed."""
    for name in config.get("worker.preload"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
        except Exception as e:  # a worker imports it again, and reports what fails then
            print(f"worker fork server: importing {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
    if threading.active_count() > 1:  # a fork would copy only this thread, not what the others hold
        print("worker fork server: a preloaded module started a thread; forking anyway", file=sys.stderr)


def serve(sock: socket.socket) -> None:
    """The template's loop: fork a worker per request, report each exit; stdin EOF (its starter
    is gone) or the socket's (the agent is) ends it.

    The runtime's modules are imported before the first fork; the ``worker.preload`` ones
    once no request has come for ``PRELOAD_AFTER`` seconds, so that importing them neither
    delays nor competes with the start of a cluster's first workers (which import them when
    a task needs them, as a spawned worker does); workers forked later have them.
    """
    for name in RUNTIME_MODULES:
        importlib.import_module(name)
    _send(sock, m.ForkServerReady(os.getpid()))
    preloaded = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD wakes select
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the agent decides, and its workers see it
    children: set[int] = set()
    agent_gone = False
    while not agent_gone:
        readable, _, _ = select.select([sock, 0, wake_r], [], [], None if preloaded else PRELOAD_AFTER)
        if not readable and not preloaded:
            _preload()
            preloaded = True
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(sock, children, block=False)
        if 0 in readable and not os.read(0, 4096):
            agent_gone = True
        elif sock in readable:
            msg, fds, _, _ = socket.recv_fds(sock, _MAX_PACKET, 2)
            if not msg:
                agent_gone = True
            else:
                (request,) = m.TO_FORK_SERVER.decode(msg)
                _fork(sock, request, fds, children, (wake_r, wake_w))
    _leave(sock, children)


def _fork(sock: socket.socket, request: m.ForkWorker, fds: list[int], children: set[int], own: tuple[int, int]) -> None:
    template = os.getpid()
    try:
        pid = os.fork()
    except OSError as e:
        for fd in fds:
            os.close(fd)
        _send(sock, m.ForkFailed(request.id, str(e)))
        return
    if pid == 0:
        _child(request, fds, template, [sock.fileno(), *own])
    for fd in fds:
        os.close(fd)
    children.add(pid)
    _send(sock, m.Forked(request.id, pid))


def _child(request: m.ForkWorker, fds: list[int], template: int, close: list[int]) -> None:
    """In the forked worker: become ``python -m runtime.worker ARGS``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != template:  # the template died before prctl: so should we
            os._exit(1)
        stdin, log = fds
        os.dup2(stdin, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (stdin, log, *close):
            os.close(fd)
        env = request.env
        if env != dict(os.environ):  # the agent's environment, hence its config, is the worker's
            os.environ.clear()
            os.environ.update(env)
            config.refresh()
        _reseed()
        sys.argv = ["-m", *request.argv]
        from runtime.worker.__main__ import main

        main()
        code = 0
    except SystemExit as e:  # as the interpreter would: argparse's errors end so
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _reseed() -> None:
    """Fresh random state: ``random`` reseeds itself after a fork; numpy's global one does not."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


def _reap(sock: socket.socket, children: set[int], block: bool) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, m.WorkerExited(pid, os.waitstatus_to_exitcode(status)))
        if block:
            return


def _encode(msg: m.Message) -> bytes:
    """One message as a packet: a frame's payload (a list of messages) without its header."""
    return msgspec.msgpack.encode([msg])


def _send(sock: socket.socket, msg: m.Message) -> None:
    with contextlib.suppress(OSError):  # the agent is gone: nobody to tell
        sock.send(_encode(msg))


def _leave(sock: socket.socket, children: set[int]) -> None:
    """The agent is gone: its workers stop on their own (their stdin closed too); wait for them,
    then kill what is left."""

    def timed_out(*_: object) -> None:
        raise TimeoutError

    signal.signal(signal.SIGALRM, timed_out)
    signal.setitimer(signal.ITIMER_REAL, LEAVE_TIMEOUT)
    try:
        while children:
            _reap(sock, children, block=True)
    except TimeoutError:
        pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))  # the rest of the command line names its cluster
    sock.setblocking(True)
    serve(sock)


if __name__ == "__main__":
    main()
