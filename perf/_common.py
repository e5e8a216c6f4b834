"""Helpers for the perf scripts: timing, summary statistics and table printing.

Kept free of any imports of the systems under test, so the parent process
that prints the table never loads runtime, Dask or Ray itself.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Run ``fn()`` and return (elapsed seconds, its result)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@dataclass(frozen=True)
class Metric:
    """One line of the result table."""

    key: str  # key in the child's JSON
    label: str  # what the table shows
    unit: str
    higher_is_better: bool

    def summarize(self, samples: Sequence[float]) -> float:
        """Median of the repeats (the figure we report)."""
        return statistics.median(samples)

    def better_of(self, a: float, b: float) -> int:
        """Return 0 if ``a`` is better, 1 if ``b`` is better (ties go to ``a``)."""
        if self.higher_is_better:
            return 0 if a >= b else 1
        return 0 if a <= b else 1


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(metric: Metric, ours: float | None, theirs: float | None, theirs_name: str) -> str:
    """``ours/theirs`` with the name of whichever system wins this line."""
    if ours is None or theirs is None or theirs == 0:
        return "-"
    winner = "runtime" if metric.better_of(ours, theirs) == 0 else theirs_name
    return f"{ours / theirs:.2f} ({winner})"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
