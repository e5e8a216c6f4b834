"""Which nodes count as gone: the pure part of failure detection, with a made-up clock."""

from __future__ import annotations

import pytest

from runtime import config
from runtime.scheduler.liveness import Liveness, heartbeat_settings


def test_a_node_silent_past_the_timeout_is_named_once():
    live = Liveness(timeout=10, interval=1)
    live.seen("a", 0.0)
    live.seen("b", 0.0)
    for t in range(1, 11):
        live.seen("a", float(t))
        assert live.silent(float(t)) == []
    live.seen("a", 11.0)
    assert live.silent(11.0) == [("b", 11.0)]
    assert live.silent(12.0) == []  # forgotten: removed once
    live.forget("a")
    assert live.silent(100.0) == []


def test_the_schedulers_own_stall_is_not_held_against_the_nodes():
    live = Liveness(timeout=10, interval=1)
    live.seen("a", 0.0)
    assert live.silent(1.0) == []
    # The event loop was blocked for 30 s: a's heartbeats sit unread in its socket.
    assert live.silent(31.0) == []
    assert live.silent(32.0) == []
    # Silence after the stall counts as usual (silent() is called every interval).
    assert [live.silent(float(t)) for t in range(33, 40)] == [[]] * 7
    assert [node for node, _ in live.silent(40.0)] == ["a"]


def test_heartbeat_settings_come_from_the_config_and_bad_ones_are_named():
    env = {"RUNTIME_HEARTBEAT_TIMEOUT": "2"}
    try:
        config.refresh(env)
        assert heartbeat_settings() == (0.5, 2.0)  # four heartbeats in the timeout
        config.refresh({**env, "RUNTIME_HEARTBEAT__INTERVAL": "0.2"})
        assert heartbeat_settings() == (0.2, 2.0)
        for bad, why in (("soon", "expected a number"), ("0", "expected a value from 0.001")):
            with pytest.raises(config.ConfigError, match=f"'heartbeat.timeout' = '{bad}' .*{why}"):
                config.refresh({"RUNTIME_HEARTBEAT_TIMEOUT": bad})
    finally:
        config.refresh()
