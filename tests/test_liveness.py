"""Which nodes count as gone: the pure part of failure detection, with a made-up clock."""

from __future__ import annotations

import pytest

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


def test_heartbeat_settings_come_from_the_environment_and_bad_ones_are_named(monkeypatch):
    monkeypatch.setenv("RUNTIME_HEARTBEAT_TIMEOUT", "2")
    monkeypatch.delenv("RUNTIME_HEARTBEAT_INTERVAL", raising=False)
    assert heartbeat_settings() == (0.5, 2.0)
    monkeypatch.setenv("RUNTIME_HEARTBEAT_INTERVAL", "5")
    assert heartbeat_settings() == (1.0, 2.0)  # never more than half the timeout
    monkeypatch.setenv("RUNTIME_HEARTBEAT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="RUNTIME_HEARTBEAT_TIMEOUT='soon' is not a number of seconds"):
        heartbeat_settings()
    monkeypatch.setenv("RUNTIME_HEARTBEAT_TIMEOUT", "0")
    with pytest.raises(ValueError, match="must be more than 0 seconds"):
        heartbeat_settings()
