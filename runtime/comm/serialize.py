"""Turning values and task arguments into bytes and back.

Everything is pickle protocol 5 (cloudpickle for functions and closures).  Two shapes:

* ``dumps_args`` pickles a task's ``(args, kwargs)``.  A ``Future`` found at any depth is
  written as a reference to its key and collected as a dependency; on the worker
  ``loads_args`` puts the dependency's value in its place.
* ``dumps_value`` pickles a result or a ``put`` value with its large buffers kept out of
  band, so the object store can lay them out for zero-copy reads.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from runtime.errors import TaskError, task_exit_error

_local = threading.local()


class SerializationError(TypeError):
    """A value could not be pickled; the message names which one and why."""


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=5)


def loads(data: bytes | memoryview, buffers: list | None = None) -> Any:
    return pickle.loads(data, buffers=buffers)


def dumps_function(func: Any) -> bytes:
    try:
        return cloudpickle.dumps(func, protocol=5)
    except Exception as e:
        raise SerializationError(f"cannot pickle function {getattr(func, '__qualname__', func)!r}: {e}") from e


def dumps_args(func_name: str, args: tuple, kwargs: dict) -> tuple[bytes, dict[str, Any]]:
    """Pickle ``(args, kwargs)``; returns the bytes and ``{key: future}`` of futures inside.

    The standard pickler does it when it can stand in for cloudpickle: it is 2-3x faster
    (Dask graph nodes, actor calls' and tasks' plain arguments).  When it fails (a lambda, a
    closure) or its pickle names ``__main__`` or a module cloudpickle pickles by value (code a
    worker cannot import), cloudpickle does it.
    """
    data: bytes | None = None
    try:
        data, deps = _collecting_deps(pickle.dumps, (args, kwargs))
    except Exception:
        pass
    by_value = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", None)
    if data is None or by_value is None or b"__main__" in data or any(m.encode() in data for m in by_value):
        try:
            data, deps = _collecting_deps(cloudpickle.dumps, (args, kwargs))
        except Exception as e:
            raise _name_bad_argument(func_name, args, kwargs, e) from e
    return data, deps


def _collecting_deps(dumps: Callable[..., bytes], obj: Any) -> tuple[bytes, dict[str, Any]]:
    """``dumps(obj)``, and the futures found inside it (``reduce_future``), by key."""
    deps: dict[str, Any] = {}
    _local.collecting = deps
    try:
        return dumps(obj, protocol=5), deps
    finally:
        _local.collecting = None


def _name_bad_argument(func_name: str, args: tuple, kwargs: dict, error: Exception) -> SerializationError:
    named = [(f"argument {i}", a) for i, a in enumerate(args)] + [
        (f"keyword argument {k!r}", v) for k, v in kwargs.items()
    ]
    for label, value in named:
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as e:
            return SerializationError(f"{label} of {func_name}() cannot be pickled ({type(value).__name__}): {e}")
    return SerializationError(f"the arguments of {func_name}() cannot be pickled: {error}")


def reduce_future(future: Any) -> tuple:
    """``Future.__reduce__``: in task arguments, record the key as a dependency (the task
    gets its value); inside a value (``collecting_refs``), record it as a reference (the
    reader gets a future)."""
    key = future.key
    deps = getattr(_local, "collecting", None)
    if deps is not None:
        deps[key] = future
        return _resolve_future, (key,)
    refs = getattr(_local, "refs", None)
    if refs is None:
        raise SerializationError(f"future {key!r} cannot be pickled here: pass it to tasks, or return or put() it")
    refs.append(future)
    return _borrow_future, (key,)


def note_ref(future: Any) -> None:
    """An object that lives while ``future`` does (an actor handle) is being pickled: in task
    arguments its key becomes a dependency, which the scheduler keeps until the task is done;
    inside a value (``collecting_refs``), a reference the value holds.  Elsewhere, nothing."""
    deps = getattr(_local, "collecting", None)
    if deps is not None:
        deps[future.key] = future
        return
    refs = getattr(_local, "refs", None)
    if refs is not None:
        refs.append(future)


def _resolve_future(key: str) -> Any:
    return _local.values[key]


@contextlib.contextmanager
def collecting_refs() -> Iterator[list[Any]]:
    """While a value is pickled: the futures inside it (see ``hold_refs``)."""
    outer = getattr(_local, "refs", None)
    _local.refs = refs = []
    try:
        yield refs
    finally:
        _local.refs = outer


def hold_refs(holder: str, refs: list[Any]) -> None:
    """The value stored as ``holder`` refers to the futures ``refs``: their owners have the
    scheduler keep them while it lives (``runtime/scheduler/borrowed.py``)."""
    by_owner: dict[Any, list[str]] = {}
    for f in refs:
        by_owner.setdefault(f._owner, []).append(f.key)
    for owner, keys in by_owner.items():
        hold = getattr(owner, "hold_refs", None)
        if hold is None:
            raise SerializationError(
                f"futures of a local scheduler ({keys[0]!r}) cannot be stored in a value; "
                "return or put() futures of the cluster"
            )
        hold(holder, list(dict.fromkeys(keys)))


@contextlib.contextmanager
def reading_refs(owner: Any) -> Iterator[None]:
    """While a value is unpickled: futures inside it become futures of ``owner``."""
    outer = getattr(_local, "reader", None)
    _local.reader = owner
    try:
        yield
    finally:
        _local.reader = outer


def _borrow_future(key: str) -> Any:
    """A future inside a value being read: one of this process's client (``reading_refs``),
    which tells the scheduler it wants the key too."""
    owner = getattr(_local, "reader", None)
    if owner is None:
        from runtime.api.context import current_runtime  # a worker reading a task's argument

        owner = current_runtime().client
    return owner.borrow(key)


def loads_args(data: bytes, values: dict[str, Any]) -> tuple[tuple, dict]:
    """Unpickle arguments, putting ``values[key]`` where a future with that key was."""
    _local.values = values
    try:
        return pickle.loads(data)
    finally:
        _local.values = None


class _ValuePickler(cloudpickle.CloudPickler):
    """Pickles a value with its buffers out of band, non-contiguous numpy arrays included.

    numpy pickles a strided array in band (a copy inside the pickle); it is made
    contiguous once here instead, so it too is stored as a buffer and read without a copy.
    """

    def reducer_override(self, obj: Any) -> Any:
        np = sys.modules.get("numpy")  # never import numpy just to pickle
        if (
            np is not None
            and type(obj) is np.ndarray
            and not (obj.flags.c_contiguous or obj.flags.f_contiguous)
            and not obj.dtype.hasobject
        ):
            return np.ascontiguousarray(obj).__reduce_ex__(5)
        return super().reducer_override(obj)


#: types whose pickles hold no code, no futures and no out-of-band buffers: the C pickler
#: does them alone (~1 us; building a cloudpickle pickler costs ~8)
PLAIN_VALUES = frozenset((int, float, bool, str, bytes, type(None)))


def dumps_value(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle with large buffers out of band: ``(pickle_bytes, buffers)``."""
    if type(obj) in PLAIN_VALUES:
        return pickle.dumps(obj, protocol=5), []
    buffers: list[pickle.PickleBuffer] = []
    np = sys.modules.get("numpy")
    if np is not None and type(obj) is np.ndarray and obj.flags.c_contiguous and not obj.dtype.hasobject:
        # the common large value: the C pickler is three times quicker than cloudpickle's (~10 us)
        return pickle.dumps(obj, protocol=5, buffer_callback=buffers.append), buffers
    out = io.BytesIO()
    try:
        _ValuePickler(out, protocol=5, buffer_callback=buffers.append).dump(obj)
    except Exception as e:
        raise SerializationError(f"cannot pickle value of type {type(obj).__name__}: {e}") from e
    return out.getvalue(), buffers


def buffers_nbytes(buffers: list[pickle.PickleBuffer]) -> int:
    return sum(memoryview(b).nbytes for b in buffers)


def pickled_error(e: BaseException) -> tuple[bytes, str, str]:
    """A task's exception as it travels: pickled (or a TaskError standing in when it cannot be
    rebuilt), its traceback's text, and ``Type: message`` for status pages.  A ``SystemExit``
    becomes a TaskError: re-raised by the caller, it would end the caller's program."""
    if isinstance(e, SystemExit):
        e = task_exit_error(e)
    tb = "".join(traceback.format_exception(e))
    try:
        exc_bytes = dumps(e)
        loads(exc_bytes)  # an exception that pickles but cannot be rebuilt is no use
    except Exception:
        exc_bytes = pickle.dumps(TaskError(f"{type(e).__qualname__}: {e}"))
    return exc_bytes, tb, f"{type(e).__name__}: {e}"
