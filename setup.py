"""Build: the scheduler's state machine compiled by mypyc where it can be; plain Python elsewhere.

Everything else about the package is declared in ``pyproject.toml`` (how mypy sees the
code for mypyc too: ``[tool.mypy]``).  The modules named in
``runtime/scheduler/compiled.py`` (``MODULES``) are compiled from their sources as they are,
when mypy (a build requirement) and a C compiler are there.  Where either is missing, or
the compiler fails, the install goes on with the plain Python sources and says so once.
``RUNTIME_PURE_PYTHON=1`` at install time builds nothing.  Next to the extension modules
the build writes its stamp (each source's SHA-256), by which an import tells whether a
source changed since (``compiled.why_pure``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
# By path: importing the package would import its dependencies, which may not be installed yet.
_spec = importlib.util.spec_from_file_location("_runtime_compiled", ROOT / "runtime" / "scheduler" / "compiled.py")
assert _spec is not None and _spec.loader is not None
compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compiled)

SOURCES = [f"runtime/scheduler/{name}.py" for name in compiled.MODULES]


def _warn(why: str) -> None:
    print(f"warning: runtime: the scheduler is not compiled ({why}); it runs as plain Python", file=sys.stderr)


def ext_modules() -> list[Any]:
    if os.environ.get(compiled.PURE_ENV, "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        _warn(f"no mypyc: {e}")
        return []
    try:
        return mypycify(SOURCES, group_name="runtime.scheduler._core", opt_level="3")
    except (Exception, SystemExit) as e:  # mypy found a type error, which it reports above
        _warn(f"mypyc failed: {e!r}")
        return []


class BuildExt(build_ext):
    """Compiles what ``ext_modules`` generated and stamps it; when compiling fails, removes
    what it built and leaves the plain Python sources."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no C compiler (CCompilerError, DistutilsExecError, ...), or it failed
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            _warn(f"compiling failed: {type(e).__name__}, the compiler's output is above")
            return
        if self.extensions:
            stamp = Path(self.get_ext_fullpath(f"runtime.scheduler.{compiled.MODULES[0]}")).parent / compiled.STAMP
            hashes = {
                name: compiled.source_hash(ROOT / "runtime" / "scheduler" / f"{name}.py") for name in compiled.MODULES
            }
            stamp.write_text(json.dumps(hashes, indent=1) + "\n")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExt})
