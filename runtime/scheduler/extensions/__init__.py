"""The scheduler's extensions beside the state machine, each a pure state plus a
``SchedulerPlugin`` that serves its requests (see ``base.py``): coordination primitives,
published datasets, the event log, pub/sub and spans (and replay's two requests)."""

from runtime.scheduler.extensions.base import EXTENSIONS_CLIENT, install

__all__ = ["EXTENSIONS_CLIENT", "install"]
