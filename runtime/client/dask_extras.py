"""The rest of Dask's ``Client`` API: ``persist``, ``retry``, ``replicate``, ``rebalance``,
metadata, ``get_versions``, ``upload_file``, ``run_on_scheduler``, the task stream, and the
module-level ``fire_and_forget``, ``get_task_stream`` and ``performance_report``.

Mixed into ``runtime.Client`` (``DaskExtras``); each is a thin call into the scheduler's
``compat`` extension (``runtime/scheduler/extensions/compat.py``) or into what the client
does already.
"""

from __future__ import annotations

import html
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.client import graph, waiting
from runtime.client.client import ClusterClient
from runtime.client.future import ERRED, PENDING
from runtime.comm import serialize
from runtime.errors import RemoteTraceback
from runtime.scheduler.extensions.compat import versions

if TYPE_CHECKING:
    from runtime.client.futures_client import Client

#: ``get_metadata``'s "no default given"
_NO_DEFAULT = object()
#: the packages whose versions must agree between client, scheduler and workers (``check=True``)
_MUST_MATCH = ("python", "runtime", "msgspec", "cloudpickle")


def fire_and_forget(obj: Any) -> None:
    """Run the tasks of ``obj`` (a future, or lists, dicts or Dask collections of them) to the
    end even when no client holds their futures any more, as Dask's ``fire_and_forget``."""
    from runtime.client.futures_client import futures_of

    found = waiting.check_futures(futures_of(obj), "fire_and_forget()")
    by_core: dict[ClusterClient, list[str]] = {}
    for f in found:
        owner = f._owner
        if not isinstance(owner, ClusterClient):
            raise TypeError(f"fire_and_forget(): future {f.key!r} belongs to a local scheduler, not a cluster")
        if f._state.local and not owner.register_local(f):  # an actor call's result the scheduler does not know
            continue
        by_core.setdefault(owner, []).append(f.key)
    for core, keys in by_core.items():
        reply = core.request("fire-and-forget", keys=keys)
        if isinstance(reply, dict) and "error" in reply:
            raise ValueError(reply["error"])


class DaskExtras:
    """Mixed into ``runtime.Client``."""

    core: ClusterClient

    def persist(self: Client, collections: Any, *, retries: int | None = 0, **kwargs: Any) -> Any:  # type: ignore[misc]
        """Start computing Dask collections and return them backed by their futures (their
        results stay in the cluster while the returned collections live), as Dask's.

        One collection gives one, a list or tuple gives a list or tuple; anything else passes
        through.  Dask's other options (``optimize_graph``, ``workers``...) are accepted and
        have no effect (see docs/coming-from-dask.md).
        """
        self._check_open()
        dask_config = getattr(sys.modules.get("dask"), "config", None)
        if dask_config is not None and dask_config.config.get("scheduler") is None:
            # Dask was imported after this Client was made: what it persists computes here.
            self._become_dask_default()
        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        out = []
        for c in items:
            if not hasattr(c, "__dask_graph__") or not hasattr(c, "__dask_postpersist__"):
                out.append(c)
                continue
            keys = c.__dask_keys__()
            futures = graph.submit(self, c.__dask_graph__(), keys, retries or 0)
            flat_keys: list = []
            flat_futures: list = []
            graph._flatten(keys, flat_keys)
            graph._flatten(futures, flat_futures)
            rebuild, args = c.__dask_postpersist__()
            out.append(rebuild(dict(zip(flat_keys, flat_futures, strict=True)), *args))
        return out[0] if single else type(collections)(out)

    def retry(self: Client, futures: Any) -> None:  # type: ignore[misc]
        """Run the failed tasks of ``futures`` again, from the tasks they failed because of
        (Dask's ``retry``); futures that did not fail are left as they are."""
        self._check_open()
        found = waiting.check_futures(futures, "retry()")
        erred = [f for f in found if f.status == ERRED]
        if not erred:
            return
        if any(f._owner is not self.core for f in erred):
            raise ValueError("retry(): the futures must belong to this Client")
        with self.core.futures.changing():  # pending again until the scheduler's news of them
            for f in erred:
                fs = f._state
                fs.status, fs.exception, fs.traceback, fs.blame, fs.worker = PENDING, None, "", "", ""
        self.core.request("retry", keys=list(dict.fromkeys(f.key for f in erred)))

    def replicate(self: Client, futures: Any, n: int | None = None, workers: Any = None, **kwargs: Any) -> None:  # type: ignore[misc]
        """Copy the values of ``futures`` to ``n`` nodes (all if None), or to the nodes of
        ``workers``.  A value in a node's store serves every worker of that node, and a small
        one travels with each task, so copies are per node, not per worker (Dask's are per worker)."""
        self._check_open()
        found = waiting.check_futures(futures, "replicate()")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"replicate() n must be a whole number >= 1, not {n!r}")
        waiting.wait_done(found)
        info = self.scheduler_info()
        nodes = list(info["nodes"])
        if workers is not None:
            wanted = waiting.check_workers(workers, "replicate()")
            unknown = [w for w in wanted if w not in info["workers"]]
            if unknown:
                raise ValueError(f"replicate(): no such worker(s): {', '.join(unknown)}")
            nodes = list(dict.fromkeys(info["workers"][w]["node"] for w in wanted))
        for f in found:
            if f.status == "finished":
                self._broadcast(f, nodes[:n] if n is not None else nodes)

    def rebalance(self: Client, futures: Any = None, workers: Any = None, **kwargs: Any) -> None:  # type: ignore[misc]
        """Dask's ``rebalance`` evens out memory between workers.  Here the workers of a node
        share its store (a value held by one is held by all), so within a node there is
        nothing to move; this waits for ``futures`` and returns.  Values are not moved
        between nodes (see docs/coming-from-dask.md)."""
        self._check_open()
        if futures is not None:
            waiting.wait_done(waiting.check_futures(futures, "rebalance()"))
        if workers is not None:
            waiting.check_workers(workers, "rebalance()")

    def ncores(self: Client) -> dict[str, int]:  # type: ignore[misc]
        """Dask's old name for ``nthreads()``."""
        return self.nthreads()

    def set_metadata(self, key: str | list[str], value: Any) -> None:
        """Store ``value`` (msgpack serializable) in the scheduler under ``key``, or under a
        path of keys in nested dicts (``["a", "b"]``), as Dask's."""
        self.core.request("set-metadata", keys=_key_path(key), value=value)

    def get_metadata(self, key: str | list[str], default: Any = _NO_DEFAULT) -> Any:
        """The value ``set_metadata`` stored under ``key``; ``KeyError`` (or ``default``) if none."""
        reply = self.core.request("get-metadata", keys=_key_path(key))
        if "missing" in reply:
            if default is _NO_DEFAULT:
                raise KeyError(reply["missing"])
            return default
        return reply["value"]

    def get_versions(self: Client, check: bool = False, packages: list[str] | None = None) -> dict[str, Any]:  # type: ignore[misc]
        """The versions of Python and the main packages on this client, the scheduler and
        every worker (Dask's shape); with ``check``, ``ValueError`` if they disagree."""
        out = {
            "client": versions(),
            "scheduler": self.core.request("versions"),
            "workers": self.run(versions),
        }
        if check:
            names = (*_MUST_MATCH, *(packages or ()))
            mine = out["client"]["packages"]
            for where, v in [("scheduler", out["scheduler"]), *out["workers"].items()]:
                differ = [p for p in names if v["packages"].get(p) != mine.get(p)]
                if differ:
                    shown = ", ".join(f"{p}: {mine.get(p)} here, {v['packages'].get(p)} there" for p in differ)
                    raise ValueError(f"Mismatched versions found on {where}: {shown}")
        return out

    def upload_file(self: Client, filename: str, load: bool = True) -> dict[str, Any]:  # type: ignore[misc]
        """Send a ``.py``, ``.zip``, ``.egg`` or ``.whl`` file to every worker, now and those that
        join later, and put it on their ``sys.path`` (a ``.py`` is imported when ``load``)."""
        self._check_open()
        if not isinstance(filename, (str, os.PathLike)) or not os.path.isfile(filename):
            raise FileNotFoundError(f"upload_file(): no such file: {filename!r}")
        name = os.path.basename(filename)
        if not name.endswith((".py", ".zip", ".egg", ".whl")):
            raise ValueError(f"upload_file() sends .py, .zip, .egg or .whl files, not {name!r}")
        with open(filename, "rb") as f:
            data = f.read()
        return self.register_plugin(UploadFile(name, data, load), name=f"upload-file-{name}")

    def get_task_stream(
        self, start: Any = None, stop: Any = None, count: int | None = None, plot: bool = False, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """The tasks the scheduler recorded (Dask's shape: see ``runtime.get_task_stream``),
        started after ``start`` and before ``stop`` (seconds since the epoch), the last ``count``.
        It records only while a ``get_task_stream()`` or ``performance_report()`` is open."""
        records = self.core.request("task-stream-get", since=0)
        if start is not None:
            records = [r for r in records if r["startstops"][0]["start"] >= start]
        if stop is not None:
            records = [r for r in records if r["startstops"][0]["start"] < stop]
        return records[-count:] if count else records

    def run_on_scheduler(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the scheduler's process, on its event loop, and
        return its result (a coroutine function is awaited; ``dask_scheduler=`` is given the
        scheduler when the function asks for it), as Dask's.  It must not block: the whole
        cluster waits while it runs."""
        if not callable(function):
            raise TypeError(f"run_on_scheduler() needs a callable, not a {type(function).__name__}")
        reply = self.core.request(
            "run-on-scheduler", function=serialize.dumps_function(function), args=serialize.dumps((args, kwargs))
        )
        if isinstance(reply, dict):
            raise RuntimeError(f"run_on_scheduler(): {reply.get('error', reply)}")
        status, pickled, text = reply
        if status == "ok":
            return serialize.loads(pickled)
        exc = serialize.loads(pickled)
        exc.__cause__ = RemoteTraceback(text)
        exc.add_note("raised by Client.run_on_scheduler in the scheduler")
        raise exc


def _key_path(key: Any) -> list[str]:
    path = [key] if isinstance(key, str) else list(key) if isinstance(key, (list, tuple)) else None
    if not path or not all(isinstance(k, str) for k in path):
        raise TypeError(f"metadata keys must be a string or a non-empty list of strings, not {key!r}")
    return path


#: where this worker process keeps uploaded files (made on first upload)
_upload_dir: str | None = None


class UploadFile:
    """The worker plugin behind ``upload_file`` (as Dask's): writes the file on the worker and
    adds it to ``sys.path``; workers that join later get it from the scheduler."""

    def __init__(self, name: str, data: bytes, load: bool):
        self.name = name
        self.data = data
        self.load = load

    def setup(self, worker: Any) -> str:
        global _upload_dir
        if _upload_dir is None:
            _upload_dir = tempfile.mkdtemp(prefix="runtime-uploads-")
            sys.path.insert(0, _upload_dir)
        path = os.path.join(_upload_dir, self.name)
        with open(path, "wb") as f:
            f.write(self.data)
        importlib.invalidate_caches()
        if self.name.endswith((".zip", ".egg", ".whl")):
            if path not in sys.path:
                sys.path.insert(0, path)
        elif self.load:
            module = self.name[: -len(".py")]
            if module in sys.modules:
                importlib.reload(sys.modules[module])
            else:
                importlib.import_module(module)
        return path


def _client(client: Any) -> Any:
    if client is not None:
        return client
    from runtime.client.futures_client import default_client

    found = default_client()
    if found is None:
        raise ValueError("no Client: make one (runtime.Client(...)) or pass client=")
    return found


class get_task_stream:  # noqa: N801 - named as Dask's
    """Dask's task stream as a context manager: ``with get_task_stream() as ts: ...`` then
    ``ts.data``, one dict per task a worker ran inside it: ``key``, ``worker``, ``status``
    (``"OK"`` or ``"error"``), ``nbytes`` and ``startstops`` (``({"action": "compute",
    "start": t, "stop": t},)``, the worker's clock).  ``plot`` is accepted (no figure is made)."""

    def __init__(self, client: Any = None, plot: bool = False, filename: str = "task-stream.html"):
        self.client = _client(client)
        #: the tasks run while it was open, once it is closed
        self.data: list[dict[str, Any]] = []
        self._cursor: int | None = None

    def __enter__(self) -> get_task_stream:
        self._cursor = self.client.core.request("task-stream-start")
        self.data = []
        return self

    def __exit__(self, *exc: object) -> None:
        core = self.client.core
        try:
            self.data.extend(core.request("task-stream-get", since=self._cursor))
        finally:
            core.request("task-stream-stop")


class performance_report:  # noqa: N801 - named as Dask's
    """Dask's ``performance_report``: on leaving, ``filename`` gets an HTML page of what ran
    inside (tasks by name and by worker, their compute time, the wall time).  Dask's page holds
    Bokeh plots and profiles; this one is a plain summary."""

    def __init__(self, filename: str = "dask-report.html", stacklevel: int = 1, mode: str | None = None):
        self.filename = filename
        self._stream: get_task_stream | None = None
        self._started = 0.0

    def __enter__(self) -> performance_report:
        self._stream = get_task_stream().__enter__()
        self._started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stream is not None
        self._stream.__exit__(*exc)
        wall = time.time() - self._started
        with open(self.filename, "w") as f:
            f.write(_report_html(self._stream.data, wall))


def _report_html(records: list[dict[str, Any]], wall: float) -> str:
    by_name: dict[str, list[float]] = {}
    by_worker: dict[str, int] = {}
    for r in records:
        seconds = sum(s["stop"] - s["start"] for s in r["startstops"])
        name = r["key"].rsplit("-", 1)[0] if "-" in r["key"] else r["key"]
        by_name.setdefault(name, []).append(seconds)
        by_worker[r["worker"]] = by_worker.get(r["worker"], 0) + 1
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{len(t)}</td><td>{sum(t):.3f}</td></tr>" for n, t in sorted(by_name.items())
    )
    workers = "".join(f"<tr><td>{html.escape(w)}</td><td>{n}</td></tr>" for w, n in sorted(by_worker.items()))
    total = sum(sum(t) for t in by_name.values())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>runtime performance report</title></head><body>"
        f"<h1>Performance report</h1><p>{len(records)} tasks, {total:.3f} s of compute in {wall:.3f} s</p>"
        f"<h2>Tasks by name</h2><table><tr><th>name</th><th>tasks</th><th>compute s</th></tr>{rows}</table>"
        f"<h2>Tasks by worker</h2><table><tr><th>worker</th><th>tasks</th></tr>{workers}</table></body></html>"
    )
