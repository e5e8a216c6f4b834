"""Worker plugins: user code that runs in every worker, as ``distributed.WorkerPlugin``.

``Client.register_plugin(plugin)`` pickles the plugin once.  Workers running now install
it through ``Client.run`` (so an error in ``setup`` reaches the caller); the scheduler keeps
the pickle and sends it to every worker that joins later (``plugin-add``), restarted
ones included.  A worker calls:

* ``setup(worker)`` once, when the plugin is installed;
* ``transition(key, start, finish, **kwargs)`` from the executor thread as each task goes
  ``ready -> executing`` and then ``executing -> memory`` or ``executing -> error``;
* ``teardown(worker)`` when the worker stops or the plugin is replaced by one of the
  same name.

A plugin's hook that raises is logged, never fatal to the worker or the task.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("runtime.worker")


class WorkerPlugin:
    """Base class for worker plugins; override the hooks you need (all optional)."""

    #: the name it is registered under; a plugin of the same name replaces it
    name: str | None = None

    def setup(self, worker: Any) -> None:
        """Called once in each worker, with the ``Worker`` object."""

    def teardown(self, worker: Any) -> None:
        """Called when the worker stops or the plugin is replaced."""

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        """Called as a task moves between ``ready``, ``executing``, ``memory`` and ``error``."""


def plugin_name(plugin: Any, name: str | None) -> str:
    return name or getattr(plugin, "name", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}"


class Plugins:
    """The plugins installed in one worker, by name."""

    def __init__(self, worker: Any):
        self.worker = worker
        #: installed plugins by name, in installation order
        self.installed: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, plugin: Any, name: str) -> Any:
        """Install ``plugin`` (replacing one of the same name); returns what its ``setup`` returned."""
        with self._lock:
            old = self.installed.pop(name, None)
        if old is not None:
            self._call(old, "teardown", self.worker)
        setup = getattr(plugin, "setup", None)
        result = setup(self.worker) if setup is not None else None  # errors go to the caller
        with self._lock:
            self.installed[name] = plugin
        return result

    def remove(self, name: str) -> bool:
        with self._lock:
            plugin = self.installed.pop(name, None)
        if plugin is not None:
            self._call(plugin, "teardown", self.worker)
        return plugin is not None

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        for plugin in list(self.installed.values()):
            self._call(plugin, "transition", key, start, finish, **kwargs)

    def teardown_all(self) -> None:
        with self._lock:
            plugins, self.installed = list(self.installed.values()), {}
        for plugin in plugins:
            self._call(plugin, "teardown", self.worker)

    @staticmethod
    def _call(plugin: Any, hook: str, *args: Any, **kwargs: Any) -> None:
        method = getattr(plugin, hook, None)
        if method is None:
            return
        try:
            method(*args, **kwargs)
        except Exception:
            logger.exception("worker plugin %r failed in %s", plugin, hook)
