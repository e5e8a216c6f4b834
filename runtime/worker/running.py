"""Which tasks a worker is executing, in a small file its node agent can read after a crash.

A worker that dies takes its memory with it, so it says what it runs where it survives: one
fixed-size slot per executor thread, written with one ``pwrite`` as a task starts and
cleared as it ends.  When the worker dies, the agent reads the slots and the scheduler
blames only those tasks (``suspicious``), not the ones merely queued on that worker.
"""

from __future__ import annotations

import os

SLOT = 1024


class RunningBoard:
    def __init__(self, path: str, slots: int):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, SLOT * slots)

    def mark(self, slot: int, key: str) -> None:
        os.pwrite(self.fd, key.encode()[: SLOT - 1] + b"\0", slot * SLOT)

    def clear(self, slot: int) -> None:
        os.pwrite(self.fd, b"\0", slot * SLOT)


def read_running(path: str) -> list[str]:
    """The keys a (dead) worker's board says were executing."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError:
        return []
    keys = (raw[i : i + SLOT].split(b"\0", 1)[0] for i in range(0, len(raw), SLOT))
    return [k.decode(errors="replace") for k in keys if k]
