"""The dashboard's life in the scheduler process: started in the background once the
scheduler listens, closed with it, and the ``dashboard`` request clients ask for its link.

Nothing here imports the HTTP library at import time: ``aiohttp`` is imported in a thread
when the dashboard starts (a quarter of a second of imports the scheduler's event loop
does not wait for), and not at all when the dashboard is off.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from runtime.comm import auth
from runtime.dashboard.snapshot import Recorder, Snapshots

if TYPE_CHECKING:
    from runtime.scheduler.server import Scheduler

logger = logging.getLogger("runtime.dashboard")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as a host and a port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def link_host(host: str) -> str:
    """How a browser elsewhere reaches ``host``: this machine's name for every interface."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


#: seconds after the scheduler starts before the dashboard does
START_AFTER = 0.5


class Dashboard:
    """Serves the pages, ``/metrics`` and ``/api/v1`` of one scheduler (see ``http.py``)."""

    def __init__(self, scheduler: Scheduler, address: str):
        self.scheduler = scheduler
        self.host, self.port = split_address(address)
        #: what the state does not keep: the task stream, deaths, copies between nodes
        self.recorder = Recorder(scheduler.state)
        scheduler.on_stimulus.append(self.recorder)
        self.snapshots = Snapshots(scheduler, self.recorder)
        #: the shared secret the pages ask for (None: they ask nothing)
        self.secret: bytes | None = None
        #: the status page's URL once serving, None if the dashboard could not start
        self.link: str | None = None
        #: done once the dashboard serves or has given up (its result: ``link``); made by ``begin``
        self.started: asyncio.Future[str | None] | None = None
        self._runner: Any = None

    def begin(self) -> asyncio.Task:
        """Start serving in the background (on the running loop)."""
        self.started = asyncio.get_running_loop().create_future()
        return asyncio.ensure_future(self.start())

    async def start(self) -> None:
        assert self.started is not None, "begin() starts the dashboard"
        try:
            # The HTTP server's imports take a tenth of a second of CPU: not while the
            # cluster's agents and workers start on the same cores, and the first tasks run.
            await asyncio.sleep(START_AFTER)
            await self._start()
        except Exception as e:  # the cluster runs on without its dashboard
            logger.error("the dashboard did not start at %s:%d: %s: %s", self.host, self.port, type(e).__name__, e)
        finally:
            if not self.started.done():
                self.started.set_result(self.link)

    async def _start(self) -> None:
        security = auth.default_security()
        try:
            auth.check_listen("tcp", self.host, security)
        except ValueError as e:
            logger.error("the dashboard is off: %s", e)
            return
        self.secret = security.secret
        web = await asyncio.to_thread(importlib.import_module, "aiohttp.web")
        from runtime.dashboard import http

        runner = web.AppRunner(http.make_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as e:
            if e.errno != errno.EADDRINUSE or self.port == 0:
                raise
            site = web.TCPSite(runner, self.host, 0)
            await site.start()
            logger.warning(
                "port %d for the dashboard is taken (another program, or another cluster's dashboard): "
                "serving it on port %d instead; choose one with --dashboard-address or scheduler.dashboard.address",
                self.port, site._server.sockets[0].getsockname()[1],  # type: ignore[union-attr]
            )  # fmt: skip
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.link = f"http://{link_host(self.host)}:{port}/status"
        logger.info("dashboard at %s", self.link)

    async def close(self) -> None:
        if self.started is not None and not self.started.done():
            self.started.set_result(None)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
