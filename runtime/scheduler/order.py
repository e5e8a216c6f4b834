"""Graph order: the order in which the tasks of one graph should run to keep memory low.

The goal ``dask.order`` serves, by its simplest means: run one branch of a reduction to
the end before starting the next, so intermediate results are consumed soon after they
are made.  A depth-first walk from the graph's outputs down its dependencies, numbering
each task after all of its dependencies (a post-order), does that: a binary-tree
reduction over N leaves holds O(log N) results at a time instead of O(N).

Linear in tasks plus edges, iterative (no recursion limit), deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def graph_order(keys: Sequence[str], dependencies: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """``{key: rank}`` for ``keys``; ``dependencies`` maps a key to the keys it needs.

    Dependencies outside ``keys`` are ignored (they are already known to the scheduler).
    Outputs (keys nothing in the graph depends on) are walked in the order given; a
    task's dependencies in the order listed.  Raises ``CycleError`` naming a key on a cycle.
    """
    inside = set(keys)
    needed: set[str] = set()
    for key in keys:
        for dep in dependencies.get(key, ()):
            if dep in inside:
                needed.add(dep)
    rank: dict[str, int] = {}
    for root in keys:
        if root in needed or root in rank:
            continue
        # Each stack entry: (key, iterator over its dependencies still to visit).
        stack = [(root, iter(dependencies.get(root, ())))]
        entered = {root}
        while stack:
            key, deps = stack[-1]
            for dep in deps:
                if dep in inside and dep not in rank:
                    if dep in entered:
                        raise CycleError(f"the graph has a cycle: {dep!r} depends, through others, on itself")
                    entered.add(dep)
                    stack.append((dep, iter(dependencies.get(dep, ()))))
                    break
            else:
                stack.pop()
                rank[key] = len(rank)
    if len(rank) < len(inside):  # every key is needed by another: there is no way in
        first = next(k for k in keys if k not in rank)
        raise CycleError(f"the graph has a cycle: {first!r} depends, through others, on itself")
    return rank


class CycleError(ValueError):
    """A graph whose tasks depend on each other in a circle can never run."""
