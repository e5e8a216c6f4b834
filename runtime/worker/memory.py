"""Worker memory: how it is measured, its limit, and the thresholds that act on it.

::

    worker (every MONITOR_INTERVAL)             node agent, the worker's nanny (same interval)
    ───────────────────────────────             ───────────────────────────────────────────────
    sample own memory ──► heartbeat to the      sample each worker ──► > spill: spill the store
      scheduler (every HEARTBEAT_INTERVAL)                         ──► > terminate: SIGKILL it,
    > spill:  drop cached store mappings                                 cause "memory limit reached"
    > pause:  start no new task, tell the
              scheduler ("paused"); resume below

What counts against the limit is the process's *own* memory: its resident set minus the
pages it shares with others (``psutil``'s ``rss - shared``: mapped store objects, shared
libraries).  Store objects are accounted, limited and spilled by the store itself; a
worker reading a 1 GB array from the store is not using 1 GB of its own.

The thresholds are fractions of the limit with Dask's defaults (0.6, 0.8, 0.95), taken from
keyword arguments or flags, else ``RUNTIME_MEMORY_{SPILL,PAUSE,TERMINATE}_FRACTION``;
``False``/``0`` turns one off.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psutil

#: seconds between two samples of a worker's memory (by the worker and by its nanny)
MONITOR_INTERVAL = float(os.environ.get("RUNTIME_MEMORY_MONITOR_INTERVAL", "0.1"))
#: seconds between two heartbeats a worker sends the scheduler
HEARTBEAT_INTERVAL = float(os.environ.get("RUNTIME_HEARTBEAT_INTERVAL", "1.0"))

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS.update({"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12})
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})


def parse_bytes(text: str | int | float) -> int:
    """``"200MB"``, ``"1.5 GiB"``, ``"1e9"`` or a number -> bytes; ValueError naming the text."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a number of bytes (e.g. 2000000, '200MB', '1.5GiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def memory_limit(value: str | int | float | None, num_workers: int) -> int:
    """Each worker's limit in bytes.

    ``None``/``"auto"``: the machine's memory shared out between ``num_workers``; a float in
    (0, 1]: that fraction of the machine's memory; ``0``: no limit; else bytes (``"2GB"``).
    """
    total = psutil.virtual_memory().total
    if isinstance(value, str):  # from a flag or an environment variable
        try:
            number = float(value)
            value = number if 0 < number <= 1 else int(number)
        except ValueError:
            pass
    if value is None or value == "auto":
        return total // max(1, num_workers)
    if isinstance(value, float) and 0 < value <= 1:
        return int(value * total)
    n = parse_bytes(value)
    if n < 0:
        raise ValueError(f"memory_limit must be >= 0 bytes, not {value!r}")
    return n


def _fraction(name: str, value: float | bool | None) -> float | None:
    if value is None:
        raw = os.environ.get(f"RUNTIME_MEMORY_{name.upper()}_FRACTION", "")
        if not raw:
            return DEFAULTS[name]
        value = False if raw.lower() in ("false", "off", "none") else float(raw)
    if value is False or value == 0:
        return None
    if value is True or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"memory_{name}_fraction must be a fraction in (0, 1] or False, not {value!r}")
    return float(value)


DEFAULTS = {"spill": 0.6, "pause": 0.8, "terminate": 0.95}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Fractions of a worker's memory limit; None turns that action off."""

    #: drop cached store mappings and ask the node's store to spill
    spill: float | None = DEFAULTS["spill"]
    #: start no new tasks until memory falls below this again
    pause: float | None = DEFAULTS["pause"]
    #: the nanny kills and restarts the worker
    terminate: float | None = DEFAULTS["terminate"]

    @classmethod
    def from_args(
        cls, spill: float | bool | None = None, pause: float | bool | None = None, terminate: float | bool | None = None
    ) -> Thresholds:
        """Given values, else the ``RUNTIME_MEMORY_*_FRACTION`` variables, else Dask's defaults."""
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
