"""The options a remote function accepts, in one table, and their checks.

Each option names its type, its default and what a valid value is; ``check_options``
rejects an unknown name (suggesting the closest known one) or a bad value with a
``TypeError``/``ValueError`` that names the option.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.scheduler.entities import USER_PRIORITY_LIMIT


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
    "priority": Option(
        (int,),
        0,
        lambda x: -USER_PRIORITY_LIMIT <= x < USER_PRIORITY_LIMIT,
        f"a whole number from {-USER_PRIORITY_LIMIT} to {USER_PRIORITY_LIMIT - 1} (higher runs first)",
    ),
    "name": Option((str,), None, lambda x: bool(x), "a non-empty string"),
    "resources": Option(
        (dict,),
        None,
        lambda d: all(isinstance(k, str) and isinstance(v, int | float) and v > 0 for k, v in d.items()),
        'a dict of resource name to a positive amount, e.g. {"GPU": 1}',
    ),
    "workers": Option(
        (list, tuple, set, frozenset, str),
        None,
        lambda w: isinstance(w, str) or all(isinstance(x, str) for x in w),
        "a worker address or host name, or a list of them",
    ),
    "allow_other_workers": Option((bool,), False, lambda x: True, "True or False"),
    "num_returns": Option((int,), 1, lambda x: x >= 1, "a whole number >= 1"),
    # Ray's: GPUs are the resource "GPU" (workers offer it with init(resources={"GPU": n}))
    "num_gpus": Option((int, float), 0, _non_negative, "a number >= 0 (the resource 'GPU')"),
    # Ray's: accepted, not reserved (a worker's memory limit is what guards it here)
    "memory": Option((int, float), None, _non_negative, "a number of bytes >= 0"),
    # Ray's: placement follows locality and load (ties go to the least loaded worker), which spreads
    "scheduling_strategy": Option((str,), "DEFAULT", lambda x: x in ("DEFAULT", "SPREAD"), '"DEFAULT" or "SPREAD"'),
    # Ray's: here a task with retries is retried on any exception it raises
    "retry_exceptions": Option((bool,), False, lambda x: True, "True or False"),
    # Ray's: a worker ends after that many calls (to free what a library leaked); accepted, not applied
    "max_calls": Option((int,), 0, _non_negative, "a whole number >= 0"),
}

#: where an actor may live is chosen as for a task; the rest is about its life
ACTOR_OPTIONS: dict[str, Option] = {
    **{
        k: TASK_OPTIONS[k]
        for k in (
            "num_cpus",
            "num_gpus",
            "memory",
            "scheduling_strategy",
            "resources",
            "workers",
            "allow_other_workers",
            "name",
        )
    },  # fmt: skip
    "max_concurrency": Option((int,), None, lambda x: x >= 1, "a whole number >= 1 (threads, or async calls)"),
    "max_restarts": Option((int,), 0, lambda x: x >= -1, "a whole number >= 0, or -1 for no limit"),
    "max_task_retries": Option((int,), 0, lambda x: x >= -1, "a whole number >= 0, or -1 for no limit"),
    "lifetime": Option((str,), None, lambda x: x == "detached", '"detached" (outlive the process that made it)'),
    # Ray's: with a name, the live actor of that name if there is one, else a new one
    "get_if_exists": Option((bool,), False, lambda x: True, "True or False"),
}


class CallCheck:
    """A function's signature, to check calls against at ``.remote()``: the ``TypeError``
    Python would raise calling it, raised there, not later on a worker (Ray checks the same
    way).  Positional calls of plain signatures are checked by counting (a ``bind`` costs
    several microseconds, a fair part of a submit)."""

    __slots__ = ("signature", "what", "positional")

    def __init__(self, func: Any, what: str, drop_first: bool = False):
        try:
            sig: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none that can be read
            sig = None
        if sig is not None and drop_first and sig.parameters:  # a method's self
            params = list(sig.parameters.values())
            if params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
                sig = sig.replace(parameters=params[1:])
        #: the signature (None: calls are not checked)
        self.signature = sig
        self.what = what
        #: (required, most) positional arguments when every parameter is a plain one
        self.positional: tuple[int, int] | None = None
        if sig is not None and all(p.kind == p.POSITIONAL_OR_KEYWORD for p in sig.parameters.values()):
            required = sum(p.default is p.empty for p in sig.parameters.values())
            self.positional = (required, len(sig.parameters))

    def __call__(self, args: tuple, kwargs: dict) -> None:
        if self.signature is None:
            return
        if not kwargs and self.positional is not None and self.positional[0] <= len(args) <= self.positional[1]:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.what}: {e}") from None


def restrictions(options: dict[str, Any]) -> dict[str, Any] | None:
    """Where a task (or actor) may run, as the scheduler reads it; None when anywhere."""
    workers = options.get("workers")
    resources = dict(options.get("resources") or {})
    if options.get("num_cpus", 1) > 1:  # every task takes one thread; more must be asked for
        resources["CPU"] = options["num_cpus"]
    if options.get("num_gpus"):
        resources["GPU"] = options["num_gpus"]
    where = {
        "workers": [workers] if isinstance(workers, str) else list(workers or ()),
        "resources": resources,
        "allow_other_workers": options.get("allow_other_workers", False),
    }
    return {k: v for k, v in where.items() if v} or None


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
