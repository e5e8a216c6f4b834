"""Worker memory: how it is measured, its limit, and the thresholds that act on it.

::

    worker (every monitor-interval)             node agent, the worker's nanny (same interval)
    ───────────────────────────────             ───────────────────────────────────────────────
    sample own memory ──► heartbeat to the      sample each worker ──► > spill: spill the store
      scheduler (every heartbeat.interval)                         ──► > terminate: SIGKILL it,
    > spill:  drop cached store mappings                                 cause "memory limit reached"
    > pause:  start no new task, tell the
              scheduler ("paused"); resume below

What counts against the limit is the process's *own* memory: its resident set minus the
pages it shares with others (``psutil``'s ``rss - shared``: mapped store objects, shared
libraries).  Store objects are accounted, limited and spilled by the store itself; a
worker reading a 1 GB array from the store is not using 1 GB of its own.

The limit and the thresholds (fractions of the limit, with Dask's defaults 0.6, 0.8 and
0.95) come from keyword arguments or flags, else the ``worker.memory.*`` settings
(``docs/configuration.md``); ``False``/``0`` turns a threshold off.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from runtime import config


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def memory_limit(value: str | int | float | None, num_workers: int) -> int:
    """Each worker's limit in bytes (0: none).

    ``None``: the ``worker.memory.limit`` setting; ``"auto"``: the machine's memory shared out
    between ``num_workers``; a float in (0, 1]: that fraction of the machine's memory;
    ``0``: no limit; else bytes (``"2GB"``).
    """
    if value is None:
        value = config.get("worker.memory.limit")
    try:
        limit = config.SETTINGS["worker.memory.limit"].parse(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"memory_limit={value!r} is invalid: {e}") from None
    total = psutil.virtual_memory().total
    if limit is None:
        return total // max(1, num_workers)
    return int(limit * total) if isinstance(limit, float) else limit


def _fraction(name: str, value: float | bool | None) -> float | None:
    if value is None:
        value = config.get(f"worker.memory.{name}")
    try:
        fraction = config.SETTINGS[f"worker.memory.{name}"].parse(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"memory_{name}_fraction={value!r} is invalid: {e}") from None
    return fraction or None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fractions of a worker's memory limit; None turns that action off."""

    #: drop cached store mappings and ask the node's store to spill
    spill: float | None = 0.6
    #: start no new tasks until memory falls below this again
    pause: float | None = 0.8
    #: the nanny kills and restarts the worker
    terminate: float | None = 0.95

    @classmethod
    def from_args(
        cls, spill: float | bool | None = None, pause: float | bool | None = None, terminate: float | bool | None = None
    ) -> Thresholds:
        """Given values, else the ``worker.memory.*`` settings."""
        return cls(_fraction("spill", spill), _fraction("pause", pause), _fraction("terminate", terminate))

    def to_args(self) -> list[str]:
        """The same thresholds as command-line flags of the agent or the worker."""
        out = []
        for name in ("spill", "pause", "terminate"):
            value = getattr(self, name)
            out += [f"--memory-{name}-fraction", "0" if value is None else str(value)]
        return out


def process_memory(proc: psutil.Process) -> tuple[int, int]:
    """``(own, rss)`` bytes of ``proc``: own is what its limit counts (resident, not shared)."""
    info = proc.memory_info()
    return max(0, info.rss - getattr(info, "shared", 0)), info.rss


def over(own: int, limit: int, fraction: float | None) -> bool:
    return bool(limit) and fraction is not None and own > fraction * limit
