"""The options a remote function accepts, in one table, and their checks.

Each option names its type, its default and what a valid value is; ``check_options``
rejects an unknown name (suggesting the closest known one) or a bad value with a
``TypeError``/``ValueError`` that names the option.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Option:
    types: tuple[type, ...]
    default: Any
    valid: Callable[[Any], bool]
    expected: str


def _non_negative(x: Any) -> bool:
    return x >= 0


TASK_OPTIONS: dict[str, Option] = {
    "num_cpus": Option((int, float), 1, _non_negative, "a number >= 0"),
    "retries": Option((int,), 0, _non_negative, "a whole number >= 0"),
    "max_retries": Option((int,), 0, _non_negative, "a whole number >= 0 (Ray's name for retries)"),
    "priority": Option((int,), 0, lambda x: True, "a whole number (higher runs first)"),
    "name": Option((str,), None, lambda x: bool(x), "a non-empty string"),
    "resources": Option(
        (dict,),
        None,
        lambda d: all(isinstance(k, str) and isinstance(v, int | float) and v > 0 for k, v in d.items()),
        'a dict of resource name to a positive amount, e.g. {"GPU": 1}',
    ),
    "workers": Option(
        (list, tuple, str),
        None,
        lambda w: isinstance(w, str) or all(isinstance(x, str) for x in w),
        "a worker address or host name, or a list of them",
    ),
    "allow_other_workers": Option((bool,), False, lambda x: True, "True or False"),
}


def check_options(options: dict[str, Any], table: dict[str, Option] = TASK_OPTIONS) -> dict[str, Any]:
    for name, value in options.items():
        opt = table.get(name)
        if opt is None:
            close = difflib.get_close_matches(name, table, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(table))}"
            raise TypeError(f"unknown option {name!r}{hint}")
        if value is None and opt.default is None:
            continue
        if (
            (isinstance(value, bool) and bool not in opt.types)
            or not isinstance(value, opt.types)
            or not opt.valid(value)
        ):
            raise ValueError(f"option {name}={value!r} is invalid: expected {opt.expected}")
    return dict(options)
