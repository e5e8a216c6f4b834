"""Clients' direct request channels: one connection per user thread, requests only.

::

    client thread ──register-channel(client), request...──► serve(): each request answered
                                                            as the client's own, on this Comm
    client leaves (remove-client) ──► client_gone(): its channels close

A channel belongs to a client connected already; it carries nothing but ``request``s, and
its requests are the client's (waits, leases and subscriptions end when the client leaves,
whichever connection asked).  The client's side: ``runtime/client/channel.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.comm import messages as m

if TYPE_CHECKING:
    from runtime.comm.core import Comm
    from runtime.scheduler.server import Scheduler


class Channels:
    """The open request channels, by client."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        #: client id -> its open channels
        self.open: dict[str, set[Comm]] = {}

    async def serve(self, comm: Comm, first: m.RegisterChannel, msgs: list) -> None:
        """Answer the requests of one channel until it closes."""
        from runtime.scheduler.server import PeerError

        s, client = self.scheduler, first.client
        if client not in s.comms or client not in s.state.clients:
            raise PeerError(f"register-channel for client {client!r}, which is not connected")
        self.open.setdefault(client, set()).add(comm)
        try:
            while True:
                for msg in msgs:
                    if type(msg) is not m.Request:
                        raise PeerError(f"a request channel may not send {m.op_of(type(msg))!r}")
                    s._answer(comm, client, msg)
                msgs = await comm.read()
        finally:
            channels = self.open.get(client)
            if channels is not None:
                channels.discard(comm)
                if not channels:
                    del self.open[client]

    def client_gone(self, client: str) -> None:
        """``client`` left: close its channels (a thread waiting on one gets ConnectionError)."""
        for comm in self.open.pop(client, ()):
            comm.close()
