"""Type checks of stimuli built from the wire, before they reach the state machine.

A message from a buggy or hostile peer can have every field present and still hold the
wrong kind of thing (a list where a key should be, a string for a count).  The state
machine trusts its stimuli, so such a message could corrupt it half-way through a
transition.  ``check(stimulus)`` compares each field with its annotation (the few shapes
the stimuli use) and raises ``TypeError`` naming the field; the shell then drops that
connection.  The checkers are built once per stimulus class.

A stored value's object name is checked to be exactly that (``store.is_object_name``), not
just a string: the scheduler hands it on to node agents, which make a file's path of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from runtime.objstore.store import is_object_name, is_stored_ref

Checker = Callable[[Any], bool]


def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_int(x: Any) -> bool:
    return isinstance(x, int)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float))


def _is_located(x: Any) -> bool:
    """A value's wire form: inline bytes, or ``[node, nbytes, name]`` of a stored one."""
    return isinstance(x, bytes) or is_stored_ref(x)


def _is_resources(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and _is_number(v) for k, v in x.items())


def _is_strs(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(k, str) for k in x)


def _is_run_spec(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and all(isinstance(b, bytes) for b in x)


def _is_task_specs(x: Any) -> bool:
    if not isinstance(x, tuple):
        return False
    for spec in x:
        check(spec)
    return True


_BY_ANNOTATION: dict[str, Checker] = {
    "str": _is_str,
    "int": _is_int,
    "float": _is_number,
    "bool": lambda x: isinstance(x, bool),
    "bytes": lambda x: isinstance(x, bytes),
    "tuple[str, ...]": _is_strs,
    "tuple[str, ...] | None": lambda x: x is None or _is_strs(x),
    "tuple[bytes, bytes]": _is_run_spec,
    "dict[str, float]": _is_resources,
    "dict[str, float] | None": lambda x: x is None or _is_resources(x),
    "tuple[TaskSpec, ...]": _is_task_specs,
    "ObjectName": is_object_name,
}
#: fields annotated ``Any`` that hold a value's wire form
_LOCATED_FIELDS = {"value", "source"}
#: what a field should hold, in words, where its annotation does not say it plainly
_EXPECTED = {"ObjectName": "an object name of a store", "Any": "bytes or [node, nbytes, object name of a store]"}
_checkers: dict[type, list[tuple[str, Checker, str]]] = {}


def _checkers_of(cls: type) -> list[tuple[str, Checker, str]]:
    found = _checkers.get(cls)
    if found is None:
        found = []
        for f in dataclasses.fields(cls):
            annotation = str(f.type)
            expected = _EXPECTED.get(annotation, f"a {annotation}")
            if annotation == "Any":
                if f.name in _LOCATED_FIELDS:
                    found.append((f.name, _is_located, expected))
            else:
                found.append((f.name, _BY_ANNOTATION[annotation], expected))
        _checkers[cls] = found
    return found


def check(obj: Any) -> None:
    """Raise ``TypeError`` naming the first field of ``obj`` whose value has the wrong type."""
    for name, ok, expected in _checkers_of(type(obj)):
        value = getattr(obj, name)
        if not ok(value):
            raise TypeError(f"field {name!r} of {type(obj).__name__} is not {expected}: {value!r:.80}")
