"""The compiled state machine and its plain Python fallback (``runtime/scheduler/compiled.py``).

Which build an import runs: the compiled one where it was built and matches its sources;
the sources where ``RUNTIME_PURE_PYTHON=1``, where nothing was compiled, or where a source
changed since (the editable-install trap: an extension module shadows its ``.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from runtime.scheduler import compiled

ROOT = Path(__file__).parent.parent
#: whether this tree has a compiled build (run or not)
BUILT = all(compiled.extension(name) is not None for name in compiled.MODULES)
PURE_ASKED = os.environ.get(compiled.PURE_ENV, "") not in ("", "0")


def _run(pythonpath: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh process that imports ``runtime`` from ``pythonpath``, with ``env``
    (and no RUNTIME_PURE_PYTHON unless given)."""
    environ = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    environ.update(PYTHONPATH=str(pythonpath), **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=pythonpath,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _which_build(pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    """Which build the state machine runs in a fresh process, and why: "running|BUILD"."""
    return _run(
        pythonpath, "from runtime.scheduler import compiled as c, state; print(c.running(), c.BUILD, sep='|')", **env
    )


def test_the_build_runs_what_it_was_asked_to_and_says_so():
    """Where a C compiler is, the install compiled the state machine, and tests run it
    (``make test`` runs this file again with RUNTIME_PURE_PYTHON=1)."""
    if PURE_ASKED:
        assert compiled.running() == "pure"
        assert compiled.BUILD == f"{compiled.PURE_ENV}={os.environ[compiled.PURE_ENV]}"
    elif shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc"):
        assert compiled.running() == "compiled", (
            f"a C compiler is here, yet the state machine runs pure: {compiled.BUILD}"
        )
    else:
        pytest.skip(f"no C compiler: {compiled.BUILD}")


def test_make_compiles_the_modules_compiled_lists():
    """The Makefile rebuilds when one of ``compiled.MODULES`` changes: the same list."""
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("COMPILED :="))
    assert tuple(re.search(r"foreach m,([^,]+),", line).group(1).split()) == compiled.MODULES


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: tuple[str, ...], stamped: bool) -> Path:
    """A directory with the sources of ``compiled.MODULES``, empty extension modules for
    ``built``, and a build stamp of those sources when ``stamped``; ``compiled`` looks there."""
    for name in compiled.MODULES:
        (tmp_path / f"{name}.py").write_text(f"# {name}\n")
    for name in built:
        (tmp_path / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}").write_bytes(b"")
    if stamped:
        stamp = {name: compiled.source_hash(tmp_path / f"{name}.py") for name in compiled.MODULES}
        (tmp_path / compiled.STAMP).write_text(json.dumps(stamp))
    monkeypatch.setattr(compiled, "HERE", tmp_path)
    monkeypatch.delenv(compiled.PURE_ENV, raising=False)
    return tmp_path


def test_which_build_a_process_would_run(tmp_path, monkeypatch):
    here = _fake_package(tmp_path, monkeypatch, compiled.MODULES, stamped=True)
    assert compiled.why_pure() is None  # built, stamped, unchanged: compiled
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    assert compiled.why_pure() == (f"{compiled.PURE_ENV}=1", False)  # asked for: no warning
    monkeypatch.setenv(compiled.PURE_ENV, "0")
    assert compiled.why_pure() is None
    (here / "state.py").write_text("# state, edited\n")
    reason, warn = compiled.why_pure()
    assert warn and reason.startswith("state.py changed since the build was compiled")
    (here / compiled.STAMP).unlink()
    reason, warn = compiled.why_pure()
    assert warn and "no readable stamp" in reason


def test_an_incomplete_build_or_none_runs_the_sources(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch, (), stamped=False)
    assert compiled.why_pure() == ("not compiled", False)  # the install said why already
    _fake_package(tmp_path, monkeypatch, ("state",), stamped=True)
    reason, warn = compiled.why_pure()
    assert warn and reason.startswith("the compiled build is incomplete") and "entities" in reason


@pytest.mark.skipif(not BUILT, reason="the state machine is not compiled here")
def test_an_edited_source_runs_as_written_not_its_stale_build(tmp_path):
    """A copy of the package with its extension modules: as built it runs compiled; with
    ``state.py`` edited, every compiled module runs from its source, with one warning;
    with RUNTIME_PURE_PYTHON=1, from its source with none."""
    shutil.copytree(ROOT / "runtime", tmp_path / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    done = _which_build(tmp_path)
    assert done.stdout.strip() == "compiled|compiled" and "RuntimeWarning" not in done.stderr
    done = _which_build(tmp_path, **{compiled.PURE_ENV: "1"})
    assert done.stdout.strip() == f"pure|{compiled.PURE_ENV}=1" and "RuntimeWarning" not in done.stderr
    with open(tmp_path / "runtime" / "scheduler" / "state.py", "a") as f:
        f.write("\nEDITED = True\n")
    done = _which_build(tmp_path)
    assert done.stdout.startswith("pure|state.py changed since the build was compiled")
    assert done.stderr.count("RuntimeWarning") == 1
    done = _run(tmp_path, "from runtime.scheduler import entities, state; print(state.EDITED, entities.__file__)")
    assert done.stdout.split() == ["True", str(tmp_path / "runtime" / "scheduler" / "entities.py")]  # all or none
