"""Graph order: the order in which the tasks of one graph should run to keep memory low.

The goal ``dask.order`` serves, by its simplest means: run one branch of a reduction to
the end before starting the next, so intermediate results are consumed soon after they
are made.  A depth-first walk from the graph's outputs down its dependencies, numbering
each task after all of its dependencies (a post-order), does that: a binary-tree
reduction over N leaves holds O(log N) results at a time instead of O(N).

The walk runs on task indices (``order_indices``): a list of lists and two bytearrays, not
sets and dicts keyed by strings, which at a million tasks cost a cache miss per probe.
Linear in tasks plus edges, iterative (no recursion limit), deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.scheduler.stimuli import TaskSpec

_UNSEEN, _ENTERED, _DONE = 0, 1, 2


def order_indices(dependencies: Sequence[Sequence[int | None]], names: Sequence[str]) -> list[int]:
    """The tasks ``0..n-1`` in graph order; ``dependencies[i]`` lists the indices task i needs.

    ``None`` in a list stands for a dependency outside the graph and is skipped.  Outputs
    (tasks nothing in the graph depends on) are walked in index order; a task's
    dependencies in the order listed.  ``names`` name the tasks in a ``CycleError``.
    """
    n = len(dependencies)
    needed = bytearray(n)
    for task_deps in dependencies:
        for d in task_deps:
            if d is not None:
                needed[d] = 1
    mark = bytearray(n)
    order: list[int] = []
    append = order.append
    for root in range(n):
        if needed[root]:
            continue
        # Each stack entry: (task, iterator over its dependencies still to visit).
        stack = [(root, iter(dependencies[root]))]
        mark[root] = _ENTERED
        while stack:
            i, deps = stack[-1]
            for d in deps:
                if d is None or mark[d] == _DONE:
                    continue
                if mark[d] == _ENTERED:
                    raise CycleError(f"the graph has a cycle: {names[d]!r} depends, through others, on itself")
                if not dependencies[d]:  # a leaf: done at once, no stack entry
                    mark[d] = _DONE
                    append(d)
                    continue
                mark[d] = _ENTERED
                stack.append((d, iter(dependencies[d])))
                break
            else:
                stack.pop()
                mark[i] = _DONE
                append(i)
    if len(order) < n:  # every task is needed by another: there is no way in
        first = next(i for i in range(n) if mark[i] != _DONE)
        raise CycleError(f"the graph has a cycle: {names[first]!r} depends, through others, on itself")
    return order


def order_specs(
    specs: list[TaskSpec],
) -> tuple[list[TaskSpec], Sequence[int], list[list[int | None]] | None, dict[str, int]]:
    """A new graph's tasks, the order to number them in, and their dependencies as indices.

    Returns ``(specs, in_order, deps, index)``: the specs, a key given twice counted where
    it first appears, with its last spec; the indices into them in graph order; for each
    task the indices of its dependencies (None where one is outside the graph), or None
    for a graph with no dependencies at all (its order is the order given); and each key's
    index.  Keys map to indices through this one table: each probe of a string-keyed table
    of a million keys is a cache miss.  Raises ``CycleError``.
    """
    index = dict(zip([spec.key for spec in specs], range(len(specs)), strict=True))
    if len(index) < len(specs):
        specs = [specs[i] for i in index.values()]
        index = dict(zip(index, range(len(specs)), strict=True))
    if not any(spec.dependencies for spec in specs):
        return specs, range(len(specs)), None, index
    get = index.get
    deps = [[*map(get, spec.dependencies)] for spec in specs]
    return specs, order_indices(deps, list(index)), deps, index


def graph_order(keys: Sequence[str], dependencies: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """``{key: rank}`` for ``keys``; ``dependencies`` maps a key to the keys it needs.

    Dependencies outside ``keys`` are ignored (they are already known to the scheduler).
    A key given twice counts once, where it first appears.  Raises ``CycleError`` naming
    a key on a cycle.
    """
    names = list(dict.fromkeys(keys))
    index = dict(zip(names, range(len(names)), strict=True))
    get = index.get
    order = order_indices([[*map(get, dependencies.get(k, ()))] for k in names], names)
    return {names[i]: rank for rank, i in enumerate(order)}


class CycleError(ValueError):
    """A graph whose tasks depend on each other in a circle can never run."""
