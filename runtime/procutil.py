"""What every runtime process (scheduler, node agent, worker) does the same way.

Parent-death detection is a pipe: a parent starts its child with ``stdin=PIPE`` and keeps
the write end.  When the parent exits for any reason, SIGKILL included, the kernel closes
that end and the child reads EOF on stdin, then shuts itself down.  Nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import psutil

from runtime import config


def configure_logging(name: str) -> None:
    level = config.get("log-level")
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {name}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def watch_parent(on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` once stdin reaches EOF (the parent holding its pipe is gone)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_gone()

    loop.add_reader(fd, readable)


def on_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists and has not ended (a zombie has, and waits only
    for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # there, but not ours to look at
        return True


def describe_exit(returncode: int | None) -> str:
    """'exit code 3' or 'signal 9 (SIGKILL)': how a child process ended, in words."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exit code {returncode}"


def last_lines(path: str, n: int) -> list[str]:
    """The last ``n`` lines of a log file (of its last 4 KB), or none if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def run_process(name: str, main: Coroutine[Any, Any, None]) -> None:
    """The body of every runtime process: logging, uvloop, then ``main`` to completion."""
    from runtime.comm.core import install_uvloop

    configure_logging(name)
    install_uvloop()
    asyncio.run(main)


async def serve_until_closed(
    run: Coroutine[Any, Any, None] | None, stop: Callable[[], Any], closed: asyncio.Event, watch_parent_pipe: bool
) -> None:
    """Run ``run`` until ``closed`` is set; SIGTERM/SIGINT, and stdin EOF when watching, call ``stop``."""

    def stopping() -> None:
        result = stop()
        if asyncio.iscoroutine(result):
            asyncio.ensure_future(result)

    on_signals(stopping)
    if watch_parent_pipe:
        watch_parent(stopping)
    task = asyncio.ensure_future(run) if run is not None else None
    await closed.wait()
    if task is not None:
        task.cancel()
