"""The scheduler's extensions: coordination primitives and published datasets, each a
pure state plus a ``SchedulerPlugin`` that serves its requests (see ``base.py``)."""

from runtime.scheduler.extensions.base import EXTENSIONS_CLIENT, install

__all__ = ["EXTENSIONS_CLIENT", "install"]
