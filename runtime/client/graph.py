"""Running a raw Dask graph (``client.get``), so Dask collections compute on this runtime.

``dask.compute(x, scheduler=client.get)`` hands ``get`` a graph, or an object with
``__dask_graph__()`` that returns one, and the keys it wants.  Each graph node becomes one
runtime task, all sent in one ``update-graph`` message:

    dask key ('x', 0) ──► runtime key "('x', 0)"
    node              ──► task run_node(node, {dependency key: value ref})
                          on the worker: node(values) for a task-spec node,
                          the tuple-task rules for a legacy one

Nothing here imports dask: nodes are duck-typed.  A task-spec node (``Task``,
``DataNode``, ``Alias`` of ``dask._task_spec``) has ``.dependencies`` and is called with
a dict of its dependencies' values.  A legacy node is a tuple ``(callable, *args)`` whose
args may be keys of the graph, lists or more tuples; anything else is a literal (or an
alias, when it is itself a key).  Keys are pure, as Dask's are: a graph computed twice
while its results are held reuses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from runtime.client.client import task_spec
from runtime.client.future import Future
from runtime.comm import serialize

if TYPE_CHECKING:
    from runtime.client.futures_client import Client

_TOKEN = re.compile(r"-[0-9a-f]{8,}$")


class _Ref:
    """Stands for a dependency's value in pickled task arguments, as a Future does."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __reduce__(self) -> tuple:
        return serialize.reduce_future(self)


def run_node(node: Any, values: dict) -> Any:
    """On the worker: run one graph node given its dependencies' values by Dask key."""
    if _is_spec_node(node):
        return node(values)
    return _execute_legacy(node, values)


def _is_spec_node(node: Any) -> bool:
    return callable(node) and hasattr(node, "dependencies") and hasattr(node, "key")


def _execute_legacy(arg: Any, values: dict) -> Any:
    if isinstance(arg, list):
        return [_execute_legacy(a, values) for a in arg]
    if type(arg) is tuple and arg and callable(arg[0]):
        return arg[0](*(_execute_legacy(a, values) for a in arg[1:]))
    if _is_spec_node(arg):  # a task-spec node nested in a legacy one
        return arg(values)
    if isinstance(arg, Hashable):
        try:
            if arg in values:
                return values[arg]
        except TypeError:  # hashable type, unhashable content: a tuple holding a list
            pass
    return arg


def _legacy_dependencies(arg: Any, dsk: Mapping, out: set) -> None:
    if isinstance(arg, list):
        for a in arg:
            _legacy_dependencies(a, dsk, out)
    elif type(arg) is tuple and arg and callable(arg[0]):
        for a in arg[1:]:
            _legacy_dependencies(a, dsk, out)
    elif _is_spec_node(arg):
        out.update(arg.dependencies)
    elif isinstance(arg, Hashable):
        try:
            if arg in dsk:
                out.add(arg)
        except TypeError:
            pass


def dependencies(node: Any, dsk: Mapping) -> set:
    """The graph keys ``node`` needs."""
    if _is_spec_node(node):
        return set(node.dependencies)
    out: set = set()
    _legacy_dependencies(node, dsk, out)
    return out


def runtime_key(key: Hashable) -> str:
    return key if isinstance(key, str) else str(key)


def _prefix(key: Hashable) -> str:
    name = key[0] if isinstance(key, tuple) and key else key
    return _TOKEN.sub("", str(name)) or "task"


def _flatten(keys: Any, out: list) -> None:
    if isinstance(keys, list):
        for k in keys:
            _flatten(k, out)
    else:
        out.append(keys)


def _pack(keys: Any, results: dict) -> Any:
    if isinstance(keys, list):
        return [_pack(k, results) for k in keys]
    return results[keys]


def submit(client: Client, dsk: Any, keys: Any, retries: int = 0) -> Any:
    """Send graph ``dsk``; futures for ``keys`` (a key or nested lists of keys), in their shape.
    Each task is retried up to ``retries`` times."""
    if not isinstance(dsk, Mapping) and hasattr(dsk, "__dask_graph__"):
        from runtime.shuffling import dask_graphs

        dsk = dask_graphs.graph(client, dsk)  # DataFrame shuffles run as runtime.shuffle
    if not isinstance(dsk, Mapping):
        raise TypeError(f"get() takes a Dask graph (a dict of key to task), not a {type(dsk).__name__}")
    wanted: list = []
    _flatten(keys, wanted)
    for key in wanted:
        try:
            known = key in dsk
        except TypeError:
            known = False
        if not known:
            raise KeyError(f"get(): key {key!r} is not in the graph of {len(dsk)} tasks")
    func_bytes = client._pickle_function(run_node)
    tasks = []
    #: keys whose node is their own future (a persisted collection's): no task, the future itself
    persisted: dict[str, Future] = {}
    for key, node in dsk.items():
        if isinstance(node, Future) and node.key == runtime_key(key):
            persisted[node.key] = node
            continue
        deps = dependencies(node, dsk)
        missing = next((d for d in deps if d not in dsk), None)
        if missing is not None:
            raise KeyError(f"get(): task {key!r} depends on {missing!r}, which is not in the graph")
        refs = {d: _Ref(runtime_key(d)) for d in deps}
        args_bytes, dep_refs = serialize.dumps_args(_prefix(key), (node, refs), {})
        tasks.append(task_spec(runtime_key(key), func_bytes, args_bytes, dep_refs, retries, _prefix(key)))
    unique = [k for k in dict.fromkeys(runtime_key(k) for k in wanted) if k not in persisted]
    futures = dict(zip(unique, client.core.update_graph(tasks, unique), strict=True)) if unique else {}
    futures.update(persisted)
    return _pack(keys, {k: futures[runtime_key(k)] for k in wanted})


def compute(client: Client, dsk: Any, keys: Any, retries: int = 0) -> Any:
    """Run graph ``dsk`` and return the values of ``keys`` (a key or nested lists of keys)."""
    return client.gather(submit(client, dsk, keys, retries))


def finalize(func: Callable, results: Any, extra: tuple) -> Any:
    """On the worker: a collection's ``__dask_postcompute__`` step over its partitions' values."""
    return func(results, *extra)
