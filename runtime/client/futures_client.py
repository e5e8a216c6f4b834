"""``runtime.Client``: Dask's futures API (``distributed.Client``) on the runtime's client core.

::

    Client.submit/map ──► pickle fn once, args with futures as refs ──► core.update_graph ──► scheduler
    Client.gather     ◄── core (FutureState per key, pushed by the scheduler) ◄────────────────┘
    Client.get(dsk)   ──► runtime.client.graph: one task per graph node, one message

The core (``runtime.client.client.ClusterClient``) owns the connection and the futures; this
class only shapes calls the way Dask users know them.  ``Client()`` starts a
``LocalCluster`` it owns and closes; ``Client(address)`` and ``Client(cluster)`` connect.

It is also a ``concurrent.futures.Executor``: ``submit`` and ``shutdown`` work as there, but
``map`` follows Dask and returns futures at once.  ``get_executor()`` gives an executor
whose ``submit`` returns standard ``concurrent.futures.Future`` objects and whose ``map``
yields results, for code written against the standard library (its ``wait`` and
``as_completed`` then work too).
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import inspect
import logging
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from runtime.api.options import check_options, restrictions
from runtime.api.remote import RemoteFunction
from runtime.client import dask_actors, graph, waiting
from runtime.client import datasets as published
from runtime.client.client import ClusterClient, task_spec
from runtime.client.dask_extras import DaskExtras
from runtime.client.extensions import ClientExtensions
from runtime.client.future import CANCELLED, ERRED, Future, collect_futures, settle
from runtime.client.handle_refs import HANDLE_KEY_PREFIX
from runtime.client.owner import by_owner
from runtime.cluster import LocalCluster
from runtime.comm import serialize
from runtime.comm.messages import StoreRef, TaskSpec
from runtime.config import parse_timeout
from runtime.errors import RemoteTraceback
from runtime.scheduler.plugins import SchedulerPlugin
from runtime.worker.plugins import plugin_name

logger = logging.getLogger("runtime.client")

#: tasks per update-graph message in ``map``
MAP_BATCH_SIZE = 1000
#: the Clients made with ``set_as_default``, oldest first (coordination primitives use the
#: newest that is still open, as Dask's default client)
_defaults: list[weakref.ref[Client]] = []


def default_client() -> Client | None:
    """The default ``Client`` of this process: the newest made with ``set_as_default`` that is
    still open (when it closes, the one before it is the default again, as in Dask)."""
    _defaults[:] = [ref for ref in _defaults if (c := ref()) is not None and not c._closed]
    return _defaults[-1]() if _defaults else None


class Client(ClientExtensions, DaskExtras, concurrent.futures.Executor):
    """Connect to a cluster (or start a local one) and run tasks on it with futures."""

    #: whether close() closes the connection (not for get_client()'s, which shares another's)
    _owns_core = True
    #: Dask's flag for a Client run from asyncio; this one is always synchronous (Dask's
    #: ``compute(scheduler=client)`` asks it before using ``client.get``)
    asynchronous = False

    def __init__(
        self,
        address: str | LocalCluster | None = None,
        *,
        timeout: float | str = 30.0,
        n_workers: int | None = None,
        set_as_default: bool = True,
        **cluster_kwargs: Any,
    ):
        timeout = parse_timeout(timeout, "Client timeout")
        if not timeout:
            raise ValueError(f"Client timeout must be a number of seconds > 0, not {timeout!r}")
        #: the cluster this client started and closes; None when it connected to one
        self.cluster: LocalCluster | None = None
        if address is None:
            logger.info("starting a local cluster%s", f" of {n_workers} workers" if n_workers else "")
            cluster = self.cluster = LocalCluster(n_workers, **cluster_kwargs)
        elif n_workers is not None or cluster_kwargs:
            given = ", ".join(["n_workers"] * (n_workers is not None) + sorted(cluster_kwargs))
            raise TypeError(f"Client({address!r}) connects to a running cluster; {given} apply only to Client()")
        elif isinstance(address, LocalCluster):
            cluster = address
        elif isinstance(address, str):
            cluster = None
        else:
            raise TypeError(f"Client() takes an address string or a LocalCluster, not a {type(address).__name__}")
        try:
            if cluster is None:
                self.core = ClusterClient(str(address), timeout=timeout)
            else:
                self.core = ClusterClient(
                    cluster.scheduler_address, node=cluster.node, prefix=cluster.prefix, timeout=timeout
                )
                # A cluster's workers are starting: wait for them, as Dask's Client(LocalCluster) does.
                self.core.wait_for_workers(cluster.n_workers, timeout=max(timeout, 60.0))
        except BaseException:
            if self.cluster is not None:
                self.cluster.close()
            raise
        self._start(set_as_default)

    @classmethod
    def _sharing(cls, core: ClusterClient) -> Client:
        """A Client on the connection ``core`` of someone else (``runtime.get_client()`` in a
        task shares its worker process's): closing it leaves that connection open."""
        self = cls.__new__(cls)
        self.cluster, self.core, self._owns_core = None, core, False
        self._start(set_as_default=False)
        return self

    def _start(self, set_as_default: bool) -> None:
        self.core.user_client = weakref.ref(self)  # Future.client gives this Client
        #: functions pickled once per client (by identity, while they live)
        self._pickled: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()
        self._closed = False
        #: Dask's scheduler setting before this client became the default, to restore on close
        self._previous_dask_scheduler: tuple[Any] | None = None
        if set_as_default:
            _defaults.append(weakref.ref(self))
            self._become_dask_default()

    @property
    def id(self) -> str:
        return self.core.id

    @property
    def address(self) -> str:
        return self.core.address

    # -- submitting ----------------------------------------------------------------------

    def _pickle_function(self, fn: Callable) -> bytes:
        try:
            pickled = self._pickled.get(fn)
        except TypeError:  # not weak-referenceable (a builtin): pickle it each time, it is small
            return serialize.dumps_function(fn)
        if pickled is None:
            pickled = serialize.dumps_function(fn)
            try:
                self._pickled[fn] = pickled
            except TypeError:
                pass
        return pickled

    def _task(
        self, fn: Callable, func_bytes: bytes, args: tuple, kwargs: dict, key: str | None, pure: bool, options: dict
    ) -> tuple[TaskSpec, Future | None, dict[str, Future]]:
        """The task's description, the actor-call result among its arguments that failed, if
        any, and the futures among its arguments: hold them until the task is sent (those of
        large arguments, stored by ``pickle_args``, have no other holder)."""
        name = _funcname(fn)
        pickled = serialize.dumps_args(name, args, kwargs)
        if key is None:
            if pure:  # of the arguments themselves, not of the references large ones go by
                key = f"{name}-{hashlib.blake2b(func_bytes + pickled[0], digest_size=16).hexdigest()}"
            else:
                key = self.core.new_key(name)
        args_bytes, deps = self.core.pickle_args(name, args, kwargs, pickled)
        retries = options.get("retries") or 0
        task = task_spec(key, func_bytes, args_bytes, deps, retries, name, restrictions(options))
        return task, self.core.failed_dependency(deps), deps

    def submit(
        self,
        fn: Callable,
        /,
        *args: Any,
        key: str | None = None,
        pure: bool = True,
        workers: str | list[str] | None = None,
        resources: dict[str, float] | None = None,
        priority: int = 0,
        retries: int | None = 0,
        allow_other_workers: bool = False,
        fifo_timeout: Any = "100ms",
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> Future:
        """Run ``fn(*args, **kwargs)`` as a task; returns its future.

        With ``pure`` (the default) the key is a hash of ``fn`` and its arguments, so the
        same call submitted twice runs once (pass ``pure=False`` for functions with side
        effects or random results).  Futures among the arguments, at any depth, are
        replaced by their values on the worker.  With ``actor=True`` (or ``actors=True``)
        ``fn`` is a class: its future's result is an actor on a worker (Dask's actors).
        ``fifo_timeout`` (Dask's) is accepted: priorities are kept as given.
        """
        self._check_open()
        fn = _plain(fn)
        if not callable(fn):
            raise TypeError(f"submit() needs a callable as its first argument, not a {type(fn).__name__}")
        if key is not None and (not isinstance(key, str) or not key):
            raise TypeError(f"submit() key must be a non-empty string, not {key!r}")
        parse_timeout(fifo_timeout, "submit() fifo_timeout")
        options = _options(workers, resources, priority, retries, allow_other_workers)
        if actor or actors:
            return dask_actors.submit_actor(self, fn, args, kwargs, key, options)
        task, failed, _held = self._task(fn, self._pickle_function(fn), args, kwargs, key, pure, options)
        if failed is not None:
            return self.core.failed_future(task.key, failed)
        return self.core.update_graph([task], [task.key], priority)[0]

    def map(  # type: ignore[override]  # Dask's map: futures at once (see get_executor for the stdlib's)
        self,
        fn: Callable,
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        pure: bool = True,
        workers: str | list[str] | None = None,
        resources: dict[str, float] | None = None,
        priority: int = 0,
        retries: int | None = 0,
        allow_other_workers: bool = False,
        batch_size: int = MAP_BATCH_SIZE,
        fifo_timeout: Any = "100ms",
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> list[Future]:
        """``fn`` over the items of ``iterables`` (zipped, as the built-in ``map``); one future each.

        ``key`` is a prefix for the keys, or a list with one key per item.  Tasks leave in
        messages of ``batch_size``; ``kwargs`` go to every call.  ``actor=True``: one actor
        of class ``fn`` per item; ``fifo_timeout`` is accepted, as by ``submit``.
        """
        if actor or actors:
            opts = {"workers": workers, "resources": resources, "allow_other_workers": allow_other_workers}
            return [self.submit(fn, *items, actor=True, pure=pure, **opts, **kwargs) for items in zip(*iterables)]  # noqa: B905
        parse_timeout(fifo_timeout, "map() fifo_timeout")
        self._check_open()
        fn = _plain(fn)
        if not callable(fn):
            raise TypeError(f"map() needs a callable as its first argument, not a {type(fn).__name__}")
        if not iterables:
            raise TypeError("map() needs at least one iterable of arguments")
        for i, it in enumerate(iterables):
            if not isinstance(it, Iterable) or isinstance(it, (str, bytes, dict)):
                raise TypeError(f"map() argument {i + 1} must be a list or other iterable, not a {type(it).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"map() batch_size must be a whole number >= 1, not {batch_size!r}")
        items = list(zip(*iterables))  # noqa: B905 - as the built-in map: stop at the shortest
        if isinstance(key, list):
            if len(key) != len(items) or not all(isinstance(k, str) and k for k in key):
                raise ValueError(f"map() key list must hold one non-empty string per item ({len(items)})")
            keys: list[str | None] = list(key)
        elif key is None or (isinstance(key, str) and key):
            keys = [None] * len(items)
        else:
            raise TypeError(f"map() key must be a string prefix or a list of strings, not {key!r}")
        options = _options(workers, resources, priority, retries, allow_other_workers)
        func_bytes = self._pickle_function(fn)
        futures: list[Future | None] = [None] * len(items)
        for start in range(0, len(items), batch_size):
            tasks, sent, held = [], [], []
            for i in range(start, min(start + batch_size, len(items))):
                task, failed, deps = self._task(fn, func_bytes, items[i], kwargs, keys[i], pure, options)
                held.append(deps)  # until the batch is sent
                if isinstance(key, str):  # a prefix: keep the hash (or counter) after it
                    task = msgspec.structs.replace(task, key=f"{key}-{task.key.rsplit('-', 1)[-1]}", prefix=key)
                if failed is not None:
                    futures[i] = self.core.failed_future(task.key, failed)
                else:
                    tasks.append(task)
                    sent.append(i)
            for i, future in zip(sent, self.core.update_graph(tasks, [t.key for t in tasks], priority), strict=True):
                futures[i] = future
        return futures  # type: ignore[return-value]  # every slot is filled

    def scatter(
        self, data: Any, workers: Any = None, broadcast: bool = False, direct: bool | None = None,
        hash: bool = True, timeout: Any = None,  # noqa: A002 - Dask's name
    ) -> Any:  # fmt: skip
        """Store data in the cluster: a list gives a list of futures, a dict a dict, else one.

        Large values go into this node's shared-memory store; with ``broadcast`` a copy is
        also placed in every other node's store, so no task waits on a transfer.  With
        ``hash`` the key is a hash of the value (scattering it again gives the same key).
        ``workers``: a copy is also placed on those workers' nodes.  ``direct`` and ``timeout``
        (Dask's) are accepted: data goes to the store, never through the scheduler's memory
        when large.
        """
        self._check_open()
        if workers is not None:
            scattered = self.scatter(data, broadcast=broadcast, hash=hash)
            found: list[Future] = []
            collect_futures(scattered, found)
            self.replicate(found, workers=workers)
            return scattered
        if isinstance(data, Future):
            raise TypeError("scatter() got a Future: it is in the cluster already; pass it to tasks as it is")
        if isinstance(data, dict):
            bad = next((k for k in data if not isinstance(k, str) or not k), None)
            if bad is not None:
                raise TypeError(f"scatter() of a dict uses its keys as keys: they must be strings, not {bad!r}")
            return {k: self._scatter_one(v, k, broadcast) for k, v in data.items()}
        if isinstance(data, (list, tuple, set, frozenset)):  # the same container type, as Dask's
            return type(data)(self._scatter_one(v, None if hash else "", broadcast) for v in data)
        if isinstance(data, Iterator):
            return [self._scatter_one(v, None if hash else "", broadcast) for v in data]
        return self._scatter_one(data, None if hash else "", broadcast)

    def _scatter_one(self, value: Any, key: str | None, broadcast: bool) -> Future:
        """``key`` None: a hash of the value; "": a fresh key."""
        if key is None:
            with serialize.collecting_refs():  # futures inside it (a collection of futures) hash by key
                pickled, buffers = serialize.dumps_value(value)
            h = hashlib.blake2b(pickled, digest_size=16)
            for b in buffers:
                h.update(b.raw())
            key = f"{type(value).__name__}-{h.hexdigest()}"
        future = self.core.put(value, key=key or None)
        if broadcast:
            self._broadcast(future)
        return future

    def _broadcast(self, future: Future, only: list[str] | None = None) -> None:
        """Copy a stored value into every node's store, or those in ``only`` (an inline value
        travels with each task)."""
        from runtime.objstore.transfer import fetch_sync

        located = future._state.value
        if type(located) is not StoreRef:
            return
        nodes = self.core.request("identity")["nodes"]
        source = nodes.get(located.node, {}).get("address")
        for node, info in nodes.items():
            if node != located.node and (only is None or node in only):  # each agent tells the scheduler of its copy
                fetch_sync(info["address"], node, future.key, located, source)

    # -- results -------------------------------------------------------------------------

    def gather(
        self, futures: Any, errors: str = "raise", direct: bool | None = None, timeout: float | str | None = None
    ) -> Any:
        """The values of ``futures``: a future, or lists, tuples, sets and dicts of them, nested.

        ``errors="raise"`` re-raises the first failed task's exception; ``errors="skip"``
        leaves each failed or cancelled one out of a list, and puts None in its place
        elsewhere (as Dask's).  ``timeout``: seconds or a duration string such as ``"1s"``.
        ``direct`` (Dask's) is accepted: values are read from the stores directly anyway.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f'gather() errors must be "raise" or "skip", not {errors!r}')
        timeout = parse_timeout(timeout, "gather() timeout")
        if isinstance(futures, Iterator):  # as Dask: an iterator of futures gives an iterator of values
            return (self.gather(f, errors=errors, timeout=timeout) for f in futures)
        found: list[Future] = []
        collect_futures(futures, found)
        if found:
            waiting.wait_done(found, timeout)
        results: dict[str, Any] = {}
        failed: set[str] = set()
        for f in found:
            if f.key in results:
                continue
            if f._state.status in (ERRED, CANCELLED):
                if errors == "raise":
                    raise f._state.error(f.key)
                results[f.key] = None
                failed.add(f.key)
            else:
                results[f.key] = f._owner.get([f])[0]
        return _pack(futures, results, failed)

    def cancel(self, futures: Any, force: bool = False) -> None:
        """Stop computing ``futures`` (a future, a list, or Dask collections holding futures,
        which are not computed) and what depends on them.

        They are cancelled when this returns: ``cancelled()`` is true and ``result()`` raises
        ``CancelledError``.  A task already running finishes unless ``force``; with
        ``force`` its worker interrupts it (and, failing that, restarts).
        """
        for owner, theirs in by_owner(waiting.check_futures(futures_of(futures), "cancel()")).items():
            owner.cancel(theirs, force=force)

    # -- the cluster ---------------------------------------------------------------------

    @property
    def dashboard_link(self) -> str | None:
        """The URL of the scheduler's dashboard (its status page, as Dask's), or None when it has none."""
        return self.core.dashboard_link

    def scheduler_info(self) -> dict[str, Any]:
        """The scheduler's address, its workers (node, threads, pid) and nodes."""
        return self.core.request("identity")

    def nthreads(self) -> dict[str, int]:
        """Threads of each worker: ``{worker address: nthreads}``."""
        return {a: w["nthreads"] for a, w in self.scheduler_info()["workers"].items()}

    def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        """The workers holding each future's value: ``{key: [worker, ...]}`` (all keys if None)."""
        keys = None if futures is None else [f.key for f in waiting.check_futures(futures, "who_has()")]
        return self.core.request("who-has", keys=keys)

    def has_what(self) -> dict[str, list[str]]:
        """The keys whose values each worker holds: ``{worker: [key, ...]}``."""
        return self.core.request("has-what")

    def processing(self) -> dict[str, list[str]]:
        """The keys sent to each worker to run: ``{worker: [key, ...]}``."""
        return self.core.request("processing")

    def wait_for_workers(self, n_workers: int, timeout: float = 60.0) -> None:
        """Block until ``n_workers`` workers have joined; TimeoutError after ``timeout`` s."""
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"wait_for_workers() needs a whole number >= 1, not {n_workers!r}")
        self.core.wait_for_workers(n_workers, timeout)

    def run(
        self,
        fn: Callable,
        *args: Any,
        workers: list[str] | None = None,
        on_error: str = "raise",
        timeout: float | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` once on every worker (or those in ``workers``).

        Returns ``{worker address: result}``.  It is not a task: each worker runs it at once
        on a thread of its own, even while its executor threads are busy.  ``on_error``:
        ``"raise"`` re-raises the first exception, ``"return"`` puts exceptions among the
        results.  ``timeout`` bounds the wait for every answer.
        """
        self._check_open()
        if not callable(fn):
            raise TypeError(f"run() needs a callable as its first argument, not a {type(fn).__name__}")
        if on_error not in ("raise", "return"):
            raise ValueError(f'run() on_error must be "raise" or "return", not {on_error!r}')
        if workers is not None:
            workers = waiting.check_workers(workers, "run()")
        timeout = parse_timeout(timeout, "run() timeout")
        if "dask_worker" in _parameters(fn):  # Dask passes the worker to a function asking for it
            fn = functools.partial(_with_worker, fn)
        function = serialize.dumps_function(functools.partial(fn, *args, **kwargs))
        answers = self.core.request("run", timeout=timeout, function=function, workers=workers)
        if "error" in answers and isinstance(answers["error"], str):
            raise ValueError(f"run(): {answers['error']}")
        results: dict[str, Any] = {}
        for worker, answer in answers.items():
            if answer[0] == "ok":
                results[worker] = serialize.loads(answer[1])
                continue
            exc = serialize.loads(answer[1]) if answer[1] is not None else RuntimeError(answer[2])
            if answer[1] is not None:
                exc.__cause__ = RemoteTraceback(answer[2])
            exc.add_note(f"raised by Client.run on worker {worker}")
            if on_error == "raise":
                raise exc
            results[worker] = exc
        return results

    def register_plugin(self, plugin: Any, name: str | None = None) -> Any:
        """Install a worker plugin (see ``runtime.WorkerPlugin``) on every worker, now and later,
        or a ``runtime.SchedulerPlugin`` in the scheduler.

        A worker plugin's ``setup(worker)`` runs on each current worker (its return values come
        back as ``{worker: result}``; an exception is re-raised here); workers that join or
        restart later get it from the scheduler.  A scheduler plugin is pickled to the
        scheduler and started there; its name is returned.  A plugin of the same name is replaced.
        """
        self._check_open()
        if isinstance(plugin, SchedulerPlugin):
            pickled = serialize.dumps(plugin)
            return self.core.request("register-scheduler-plugin", name=name or plugin.name, plugin=pickled)
        if not any(callable(getattr(plugin, hook, None)) for hook in ("setup", "teardown", "transition")):
            raise TypeError(
                f"register_plugin() needs a worker plugin with setup, teardown or transition methods, "
                f"not a {type(plugin).__name__}"
            )
        name = plugin_name(plugin, name)
        pickled = serialize.dumps(plugin)
        self.core.request("register-worker-plugin", name=name, plugin=pickled)
        return self.run(_install_plugin, pickled, name)

    def unregister_scheduler_plugin(self, name: str) -> None:
        """Remove the scheduler plugin ``name`` (its ``close`` runs)."""
        self.core.request("unregister-scheduler-plugin", name=name)

    # -- published datasets (Dask's) ---------------------------------------------------

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False, **kwargs: Any) -> None:
        """Publish values by name for every client of the cluster: ``publish_dataset(x=value)``
        or ``publish_dataset(value, name="x")``.  A published future stays alive until it is
        unpublished.  ValueError if a name is taken, unless ``override``."""
        self._check_open()
        if args and name is None or len(args) > 1:
            raise TypeError("publish_dataset() takes values by keyword, or one value with name=")
        published.publish(self.core, {**({name: args[0]} if args else {}), **kwargs}, override)

    def get_dataset(self, name: str, default: Any = published._NO_DEFAULT) -> Any:
        """The dataset published as ``name``; KeyError (or ``default``) if there is none."""
        self._check_open()
        return published.get(self.core, name, default)

    def list_datasets(self) -> list[str]:
        self._check_open()
        return published.names(self.core)

    def unpublish_dataset(self, name: str) -> None:
        """Remove the dataset ``name`` (its future may be released now); KeyError if there is none."""
        self._check_open()
        published.unpublish(self.core, name)

    @property
    def datasets(self) -> published.Datasets:
        """The published datasets as a mapping: ``client.datasets["x"]``."""
        return published.Datasets(self.core)

    def restart(self, timeout: float = 60.0) -> None:
        """Restart every worker, as Dask's does: this client's futures are cancelled first.

        Returns once as many fresh worker processes have joined as there were workers;
        TimeoutError after ``timeout`` s.  Values already stored in node stores are released
        with their futures.
        """
        self._check_open()
        core = self.core
        core.cancel_all("Client.restart()")
        old = core.request("restart-workers", client=self.id)
        logger.info("restarting %d workers", len(old))
        deadline = time.monotonic() + timeout
        while True:
            workers = core.request("identity")["workers"]
            fresh = [a for a, w in workers.items() if a not in old and w["pid"] not in old.values()]
            if len(fresh) >= len(old):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"restart(): {len(fresh)} of {len(old)} workers came back within {timeout:g}s")
            time.sleep(0.05)

    def get(self, dsk: dict, keys: Any, *, sync: bool = True, retries: int = 0, **kwargs: Any) -> Any:
        """Compute a Dask graph: ``dask.compute(x, scheduler=client.get)`` runs on this cluster.

        With ``sync=False`` the futures of ``keys``, in their shape, instead of their values.
        Each task is retried up to ``retries`` times.  Dask's other options (``optimize_graph``,
        ``resources``...) are accepted and have no effect.
        """
        self._check_open()
        check_options({"retries": retries})
        if sync:
            return graph.compute(self, dsk, keys, retries)
        return graph.submit(self, dsk, keys, retries)

    def compute(self, collections: Any, sync: bool = False, *, retries: int = 0, **kwargs: Any) -> Any:
        """Start computing Dask collections; a future for each (their values with ``sync``).

        ``collections`` is one collection or a list of them; items that are not collections
        are passed through as they are (as Dask's).  The graph is sent as it is, without
        Dask's optimizations; each result is its collection's finalized value (an array, a
        DataFrame, a list for a bag), as ``dask.compute`` gives.  Each task is retried up to
        ``retries`` times.
        """
        self._check_open()
        check_options({"retries": retries})
        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        out: list[Any] = []
        for c in items:
            if not hasattr(c, "__dask_graph__") or not hasattr(c, "__dask_postcompute__"):
                out.append(c)  # not a collection: passed through
                continue
            parts = graph.submit(self, c, c.__dask_keys__(), retries)  # the collection: its shuffles are ours
            func, extra = c.__dask_postcompute__()
            out.append(self.submit(graph.finalize, func, parts, extra, key=f"finalize-{_token(parts)}"))
        if sync:
            out = self.gather(out)
        return out[0] if single else out

    @property
    def futures(self) -> dict[str, Future]:
        """This client's futures by key (those it holds now), as Dask's ``Client.futures``."""
        table = self.core.futures
        with table.lock:
            return {
                key: table.future(key)
                for key, fs in table.states.items()
                if fs.refcount > 0 and not key.startswith(HANDLE_KEY_PREFIX)  # actor handles' keys
            }

    # -- Executor ------------------------------------------------------------------------

    def get_executor(self, **submit_options: Any) -> ClientExecutor:
        """A standard ``concurrent.futures.Executor`` running on this client (see ClientExecutor)."""
        return ClientExecutor(self, submit_options)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The Executor's ``close``: disconnect (and stop a cluster this client started)."""
        self.close()

    def close(self, timeout: Any = None) -> None:
        """Disconnect, and stop the local cluster if this client started it.  Safe to call twice.
        ``timeout`` (Dask's) is accepted."""
        if self._closed:
            return
        self._closed = True
        self._restore_dask_default()
        try:
            if self._owns_core:
                self.core.close("a Client that was closed by Client.close()")
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def _become_dask_default(self) -> None:
        """As a distributed Client does: Dask's ``compute()`` runs here from now on.

        Only when the program has imported dask already (this package never imports it).
        """
        dask = sys.modules.get("dask")
        config = getattr(dask, "config", None)
        if config is None:
            return
        self._previous_dask_scheduler = (config.config.get("scheduler"),)
        config.set(scheduler=self.get)

    def _restore_dask_default(self) -> None:
        dask = sys.modules.get("dask")
        if self._previous_dask_scheduler is None or dask is None:
            return
        if dask.config.config.get("scheduler") == self.get:  # nobody changed it since
            (previous,) = self._previous_dask_scheduler
            if previous is None:
                dask.config.config.pop("scheduler", None)
            else:
                dask.config.set(scheduler=previous)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this Client ({self.id}) is closed")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.address
        return f"<Client {self.id} {state}>"


class ClientExecutor(concurrent.futures.Executor):
    """The standard library's Executor contract on a Client.

    ``submit`` returns a ``concurrent.futures.Future`` (so ``concurrent.futures.wait`` and
    ``as_completed`` work), ``map`` yields results in order, ``shutdown`` cancels what has
    not run when asked but leaves the client open.
    """

    OPTIONS = ("pure", "workers", "resources", "priority", "retries", "allow_other_workers")

    def __init__(self, client: Client, submit_options: dict[str, Any]):
        unknown = sorted(set(submit_options) - set(self.OPTIONS))
        if unknown:
            raise TypeError(f"get_executor() got unknown option(s) {unknown}; valid: {', '.join(self.OPTIONS)}")
        check_options({k: v for k, v in submit_options.items() if k != "pure"})
        self.client = client
        self._options = {"pure": False, **submit_options}
        self._futures: weakref.WeakSet[Future] = weakref.WeakSet()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown() of this executor")
        remote = self.client.submit(fn, *args, **self._options, **kwargs)
        self._futures.add(remote)
        local: concurrent.futures.Future = concurrent.futures.Future()
        local.set_running_or_notify_cancel()
        remote.add_done_callback(lambda f: settle(f, local))
        return local

    def map(
        self, fn: Callable, *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        if self._shutdown:
            raise RuntimeError("cannot map after shutdown() of this executor")
        futures = self.client.map(fn, *iterables, **self._options)
        self._futures.update(futures)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:  # as the stdlib's: timeout counts from the call to map
            for f in futures:
                yield f.result(None if deadline is None else max(0.0, deadline - time.monotonic()))

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        pending = [f for f in self._futures if not f.done()]
        if cancel_futures and pending:
            self.client.cancel(pending)
        elif wait and pending:
            waiting.wait_done(pending)


def _parameters(fn: Callable) -> Iterable[str]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return ()


def _with_worker(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """On a worker, for ``Client.run``: ``fn`` given this worker as ``dask_worker``."""
    from runtime.worker.actors import get_worker

    return fn(*args, dask_worker=get_worker(), **kwargs)


def _install_plugin(pickled: bytes, name: str) -> Any:
    from runtime.worker.actors import get_worker

    return get_worker().plugins.add(serialize.loads(pickled), name)


def _options(workers: Any, resources: Any, priority: Any, retries: Any, allow_other_workers: Any) -> dict[str, Any]:
    if allow_other_workers and not workers:
        raise ValueError("allow_other_workers=True needs workers= (the workers to prefer), as in Dask")
    given = {"workers": workers, "resources": resources, "priority": priority, "retries": retries or 0}
    given["allow_other_workers"] = allow_other_workers
    return check_options(given)


def _plain(fn: Any) -> Any:
    """A ``@runtime.remote`` function submitted to a Client runs as the function it wraps."""
    return fn._func if isinstance(fn, RemoteFunction) else fn


def _token(parts: Any) -> str:
    found: list[Future] = []
    collect_futures(parts, found)
    return hashlib.blake2b("\0".join(f.key for f in found).encode(), digest_size=16).hexdigest()


def _funcname(fn: Callable) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


def _pack(x: Any, results: dict[str, Any], skip: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """``x`` with each future replaced by its result; futures whose keys are in ``skip``
    are left out of lists (Dask's ``errors="skip"``)."""
    if isinstance(x, Future):
        return results[x.key]
    if isinstance(x, list):
        return [_pack(item, results, skip) for item in x if not (isinstance(item, Future) and item.key in skip)]
    if isinstance(x, (tuple, set, frozenset)):
        return type(x)(_pack(item, results, skip) for item in x)
    if isinstance(x, dict):
        return {k: _pack(v, results, skip) for k, v in x.items()}
    return x


def futures_of(x: Any) -> Any:
    """``x``, or, for Dask collections (alone or in a list), the futures in their graphs."""
    items = x if isinstance(x, (list, tuple)) else [x]
    if not any(hasattr(c, "__dask_graph__") for c in items):
        return x
    graphs = [dict(c.__dask_graph__()) if hasattr(c, "__dask_graph__") else c for c in items]
    # Pickling finds futures at any depth, inside task-spec nodes too, as for task arguments.
    _, found = serialize.dumps_args("futures_of", tuple(graphs), {})
    return [f for f in found.values() if isinstance(f, Future)]
