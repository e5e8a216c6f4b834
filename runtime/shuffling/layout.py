"""Where a shuffle's shards go: the groups of outputs and the names of shard files.

Plain arithmetic and names, no numpy or Arrow: the scheduler's shuffle extension imports
it, and the scheduler starts without either (``shards.py`` says what the groups are for).
"""

from __future__ import annotations

import hashlib

#: the most shard files an input writes (the outputs' groups; see the module's docstring)
GROUPS = 16


#: an input smaller than this (bytes) writes one file for all outputs
SMALL = 1 << 20
#: the group of such a file
WHOLE = -1


def groups_of(nbytes: int, npartitions: int) -> list[int]:
    """The groups of the files an input of ``nbytes`` writes."""
    return [WHOLE] if nbytes < SMALL else list(range(ngroups(npartitions)))


def file_of(groups: int, j: int, npartitions: int) -> int:
    """Which of an input's ``groups`` files holds output ``j``."""
    return group_of(j, npartitions) if groups > 1 else 0


def group_size(npartitions: int) -> int:
    """Output partitions per group (the last group may have fewer)."""
    return -(-npartitions // GROUPS)


def ngroups(npartitions: int) -> int:
    return -(-npartitions // group_size(npartitions))


def group_of(j: int, npartitions: int) -> int:
    """The group of output partition ``j``."""
    return j // group_size(npartitions)


def group_outputs(group: int, npartitions: int) -> range:
    """The output partitions of ``group``."""
    size = group_size(npartitions)
    return range(group * size, min((group + 1) * size, npartitions))


def shard_name(prefix: str, sid: str, index: int, group: int) -> str:
    """The name of input ``index``'s shard file of ``group`` of shuffle ``sid`` in the store with ``prefix``."""
    return prefix + hashlib.blake2b(f"shuffle/{sid}/{index}/{group}".encode(), digest_size=14).hexdigest()
