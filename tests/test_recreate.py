"""Replay of a task in the calling process: recreate_error_locally and recreate_task_locally."""

from __future__ import annotations

import sys
import traceback

import cloudpickle
import numpy as np
import pytest
from conftest import validated

from runtime import Client

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module


@pytest.fixture(scope="module")
def client():
    with Client(n_workers=2) as c, validated(c.core):
        yield c


def divide(a, b):
    return a / b


def inc(x):
    return x + 1


def total(a):
    return float(a.sum())


def _last_frame(e: BaseException) -> traceback.FrameSummary:
    """Where the exception was raised: what a post-mortem debugger shows first."""
    return traceback.extract_tb(e.__traceback__)[-1]


def test_recreate_error_locally_raises_in_the_task_here(client):
    f = client.submit(divide, 1, 0)
    with pytest.raises(ZeroDivisionError):
        f.result()
    with pytest.raises(ZeroDivisionError) as info:
        client.recreate_error_locally(f)
    assert _last_frame(info.value).name == "divide"  # pdb.post_mortem lands in the task's code
    assert info.value.__cause__ is None  # raised here, not rebuilt from the worker's error
    frame = info.tb
    while frame.tb_next is not None:
        frame = frame.tb_next
    assert frame.tb_frame.f_locals == {"a": 1, "b": 0}  # the task's real inputs


def test_the_task_to_blame_is_the_one_that_failed_first(client):
    bad = client.submit(divide, client.submit(inc, 0), 0)  # 1 / 0
    downstream = client.submit(inc, bad)
    with pytest.raises(ZeroDivisionError):
        downstream.result()
    with pytest.raises(ZeroDivisionError) as info:
        client.recreate_error_locally([downstream])
    assert _last_frame(info.value).name == "divide"
    # The input released after the failure is computed again for the replay.
    assert client.recreate_task_locally(client.submit(divide, client.submit(inc, 5), 2)) == 3.0


def test_recreate_task_locally_returns_what_the_task_returns_with_its_stored_inputs(client):
    big = client.scatter(np.arange(1_000_000, dtype=np.float64))  # stored in the node's store
    f = client.submit(total, big)
    assert client.recreate_task_locally(f) == f.result() == float(np.arange(1_000_000).sum())
    g = client.submit(inc, client.submit(inc, 1))  # its input is released once g ran
    assert g.result() == 3
    assert client.recreate_task_locally(g) == 3


def test_bad_input_to_recreate_is_a_clear_error(client):
    ok = client.submit(inc, 1)
    with pytest.raises(ValueError, match="no erred future"):
        client.recreate_error_locally(ok)
    with pytest.raises(TypeError, match="Future"):
        client.recreate_error_locally("divide-123")
    with pytest.raises(TypeError, match="Future"):
        client.recreate_task_locally([ok])
    with pytest.raises(ValueError, match="not a task"):
        client.recreate_task_locally(client.scatter(5))
    assert "does not know" in client.core.request("get-runspec", key="nonsense")["error"]
