"""Which build of the state machine runs: compiled by mypyc, or the plain Python sources.

The install (``setup.py``) compiles the modules in ``MODULES`` with mypyc when mypy and a C
compiler are there, the same sources with no change: extension modules next to them, one
shared library (``_core__mypyc``), and a build stamp (``STAMP``: each source's SHA-256 as it
was compiled).  Python imports an extension module before a ``.py`` of the same name, so an
edited source would not run in an editable install; ``use_pure_python`` (called by the
package's ``__init__``) decides once per process, before any of them is imported::

    RUNTIME_PURE_PYTHON=1 in the environment  ──► plain Python, no warning
    no extension module built                 ──► plain Python (the build said why)
    a source differs from its stamp, or none  ──► plain Python, with one warning
    otherwise                                 ──► the compiled modules

All or none: a compiled module reads the compiled classes of the others by their C layout,
so one stale source sends every module in ``MODULES`` to its ``.py``.  Plain Python is then
imported through a finder placed first on ``sys.meta_path`` that takes only those modules.

This module uses the standard library alone: ``setup.py`` loads it by path, before anything
is installed, for ``MODULES`` and ``source_hash``.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the state machine's hot modules, compiled together (names in ``runtime.scheduler``)
MODULES = ("entities", "state", "placement", "order", "clients")
#: the build stamp next to them: module name -> SHA-256 of the source it was compiled from
STAMP = "_compiled.json"
#: set in the environment to "1" to run the plain Python sources even where a build exists
PURE_ENV = "RUNTIME_PURE_PYTHON"
PACKAGE = "runtime.scheduler"
HERE = Path(__file__).parent

#: "compiled", or why the plain Python sources run (set by ``use_pure_python``)
BUILD = "not decided"


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extension(name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (path := HERE / f"{name}{suffix}").exists():
            return path
    return None


def why_pure() -> tuple[str, bool] | None:
    """Why the plain Python sources must run, and whether that deserves a warning; None to run
    the compiled modules."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV}={os.environ[PURE_ENV]}", False
    built = [name for name in MODULES if extension(name) is not None]
    if not built:
        return "not compiled", False
    if len(built) < len(MODULES):
        missing = sorted(set(MODULES) - set(built))
        return f"the compiled build is incomplete (no extension module for {', '.join(missing)})", True
    try:
        stamp = json.loads((HERE / STAMP).read_text())
    except (OSError, ValueError) as e:
        return f"the compiled build has no readable stamp {STAMP} ({e})", True
    stale = [name for name in MODULES if stamp.get(name) != source_hash(HERE / f"{name}.py")]
    if stale:
        names = ", ".join(f"{name}.py" for name in stale)
        return f"{names} changed since the build was compiled (rebuild: make .venv/.installed)", True
    return None


class _PureSources:
    """Imports the modules in ``MODULES`` from their ``.py`` sources, not their extensions.
    (A meta path finder needs only ``find_spec``; ``importlib.abc`` would cost the scheduler's
    start 20 ms of imports.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, HERE / f"{name}.py")


def use_pure_python() -> bool:
    """Decide, once per process, which build runs (see the module's docstring); True if plain
    Python.  Must run before any module in ``MODULES`` is imported."""
    global BUILD
    if BUILD != "not decided":
        return BUILD != "compiled"
    reason = why_pure()
    if reason is None:
        BUILD = "compiled"
        return False
    BUILD, warn = reason
    if warn:
        warnings.warn(f"runtime: the scheduler runs as plain Python: {BUILD}", RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, _PureSources())
    return True


def running() -> str:
    """Which build the imported state machine is: "compiled" or "pure"."""
    from runtime.scheduler import state

    return "pure" if state.__file__.endswith(".py") else "compiled"  # type: ignore[union-attr]
