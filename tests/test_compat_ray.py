"""Ray's API as Ray's users know it: cases from Ray's documentation and test suite, written
in Ray's idiom against ``runtime`` (``import runtime as ray`` is all a port should need).

Where runtime still differs from Ray, ``docs/coming-from-ray.md`` says how and why.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest
from conftest import validated

import runtime as ray

# The workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    rt = ray.init(num_workers=2)
    try:
        with validated(rt.client):
            yield rt
    finally:
        ray.shutdown()


@ray.remote
def f(x):
    return x


@ray.remote
def raises_value_error():
    raise ValueError("bad input")


# -- errors ----------------------------------------------------------------------------------


def test_task_error_is_both_the_tasks_exception_and_task_error(cluster):
    # Ray: a RayTaskError derived class, "except ValueError" and "except RayTaskError" both work
    ref = raises_value_error.remote()
    with pytest.raises(ValueError, match="bad input"):
        ray.get(ref)
    with pytest.raises(ray.TaskError) as info:
        ray.get(ref)
    assert isinstance(info.value, ValueError) and str(info.value) == "bad input"
    assert not isinstance(info.value, RuntimeError)  # nothing but what the task raised, and TaskError


def test_dependent_task_raises_the_dependencys_error(cluster):
    with pytest.raises(ValueError, match="bad input"):
        ray.get(f.remote(raises_value_error.remote()))


def test_sys_exit_in_a_task_fails_the_task_not_the_driver(cluster):
    @ray.remote
    def exits():
        sys.exit(1)

    with pytest.raises(ray.TaskError, match=r"sys.exit\(1\)"):
        ray.get(exits.remote())
    assert ray.get(f.remote(1)) == 1  # the worker lives on


def test_sys_exit_under_the_local_scheduler(cluster):
    @ray.remote
    def exits():
        sys.exit()

    with ray.config.set(scheduler="sync"), pytest.raises(ray.TaskError, match="sys.exit"):
        ray.get(exits.remote())
