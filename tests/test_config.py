"""The config tree: default < file < environment < set() < per call, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import runtime as rt
from runtime import config, local


@pytest.fixture
def fresh(tmp_path):
    """Read files and variables from what a test gives; afterwards, the real ones again."""
    yield tmp_path
    config.refresh()


def _env(tmp_path, **variables: str) -> dict[str, str]:
    """A clean environment whose config file directory is ``tmp_path``."""
    return {"RUNTIME_CONFIG": str(tmp_path), **variables}


def test_precedence_default_file_env_set(fresh):
    key = "scheduler.worker-saturation"
    config.refresh(_env(fresh))
    assert config.get(key) == config.SETTINGS[key].default == 1.1
    (fresh / "a.toml").write_text("[scheduler]\nworker-saturation = 2.0\nallowed_failures = 5\n")
    config.refresh(_env(fresh))
    assert config.get(key) == 2.0 and config.get("scheduler.allowed-failures") == 5
    config.refresh(_env(fresh, RUNTIME_SCHEDULER__WORKER_SATURATION="3"))
    assert config.get(key) == 3.0
    with config.set({key: 4}):
        assert config.get("scheduler.worker_saturation") == 4.0
        with config.set(scheduler__worker_saturation="inf"):
            assert config.get(key) == float("inf")
        assert config.get(key) == 4.0
    assert config.get(key) == 3.0  # the block is over: the variable again


def test_file_with_a_key_that_is_also_a_table(fresh):
    (fresh / "a.toml").write_text(
        'scheduler = "threads"\n"scheduler.worker-saturation" = 2.5\n[store]\nmemory = "1 GiB"\n'
    )
    config.refresh(_env(fresh))
    assert config.get("scheduler") == "threads"
    assert config.get("scheduler.worker-saturation") == 2.5
    assert config.get("store.memory") == 2**30


def test_per_call_wins(fresh):
    (fresh / "a.toml").write_text('scheduler = "processes"\n')
    config.refresh(_env(fresh, RUNTIME_SCHEDULER="threads"))
    assert config.get("scheduler") == "threads"
    with config.set(scheduler="synchronous"):  # Dask's name for it
        assert config.get("scheduler") == "sync"

        @rt.remote
        def tid():
            import threading

            return threading.get_ident()

        import threading

        assert rt.get(tid.remote()) == threading.get_ident()  # the setting: sync
        assert rt.get(tid.remote(), scheduler="threads") != threading.get_ident()  # the call
    local.shutdown()


def test_old_single_name_variables_still_work(fresh):
    config.refresh(_env(fresh, RUNTIME_VALIDATE="1", RUNTIME_INLINE_THRESHOLD="1 KiB", RUNTIME_WORKER_SATURATION="7"))
    assert config.get("scheduler.validate") is True
    assert config.get("inline-threshold") == 1024
    assert config.get("scheduler.worker-saturation") == 7.0
    # The nested spelling wins over the old name.
    config.refresh(_env(fresh, RUNTIME_WORKER_SATURATION="7", RUNTIME_SCHEDULER__WORKER_SATURATION="8"))
    assert config.get("scheduler.worker-saturation") == 8.0


def test_unknown_keys_are_rejected_with_a_suggestion(fresh):
    with pytest.raises(config.UnknownKeyError, match="'schedular'; did you mean 'scheduler'"):
        config.set(schedular="sync")
    with pytest.raises(KeyError, match="did you mean 'store.memory'"):
        config.get("store.memroy")
    (fresh / "bad.toml").write_text("[scheduler]\nworker-saturaton = 2\n")
    with pytest.raises(config.UnknownKeyError, match=r"did you mean 'scheduler.worker-saturation'.*bad.toml"):
        config.refresh(_env(fresh))
    with pytest.warns(UserWarning, match="did you mean RUNTIME_SCHEDULER__WORKER_SATURATION"):
        config.refresh({"RUNTIME_CONFIG": str(fresh / "none"), "RUNTIME_SCHEDULER__WORKR_SATURATION": "2"})


def test_bad_values_name_the_key_and_the_source(fresh):
    with pytest.raises(config.ConfigError, match=r"'scheduler' = 'dask' \(in config.set\(\)\).*sync, threads"):
        config.set(scheduler="dask")
    with pytest.raises(config.ConfigError, match=r"RUNTIME_STORE__MEMORY.*number of bytes"):
        config.refresh(_env(fresh, RUNTIME_STORE__MEMORY="lots"))
    (fresh / "broken.toml").write_text("scheduler = \n")
    with pytest.raises(config.ConfigError, match="cannot read config file .*broken.toml"):
        config.refresh(_env(fresh))
    assert config.get("scheduler") == "distributed"  # nothing applied from a failed read
    # A failed set() applies none of its keys.
    with pytest.raises(config.ConfigError):
        config.set(num_workers=2, scheduler="nope")
    assert config.get("num-workers") is None


def test_processes_started_by_the_driver_inherit_set_values():
    with config.set(inline_threshold="2 KiB", scheduler__allowed_failures=9):
        env = {**os.environ, config.INHERIT_VARIABLE: config.serialize()}
    code = "from runtime import config; print(config.get('inline-threshold'), config.get('scheduler.allowed-failures'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["2048", "9"]
