"""Frames: the blocking side's reader (``comm.core.FrameReader``) gives frames split or batched
across ``recv``s whole, and a waiting thread polls before it sleeps only while its waits stay
within ``comm.busy-poll``; batches over the frame limit go as several frames, and a message
over it ends its connection instead of vanishing."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from runtime import config
from runtime.comm import codec
from runtime.comm import messages as m
from runtime.comm.core import Comm, FrameReader


def _frame(key: str) -> bytes:
    return codec.encode([m.ActorResult(key, b"x" * 10, 10)])


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        yield a, b


def _keys(reader: FrameReader) -> list[str]:
    return [msg.key for msg in reader.read()]


def test_frames_split_and_batched_across_recvs_come_out_whole(pair):
    a, b = pair
    reader = FrameReader(b, "peer", m.FROM_ACTOR_SERVER)
    one, two = _frame("one"), _frame("two")
    a.sendall(one[:3])  # a header split in two
    threading.Timer(0.05, a.sendall, [one[3:] + two]).start()
    assert _keys(reader) == ["one"]
    assert _keys(reader) == ["two"]  # already buffered: no recv
    a.close()
    with pytest.raises(ConnectionResetError, match="peer closed the connection"):
        reader.read()


def test_a_missed_poll_backs_off_and_a_caught_one_polls_every_wait_again(pair):
    # Polling while the machine is busy would take the CPU the answer needs: after a miss,
    # the next 1, 2, 4 ... waits sleep at once; a poll that catches its frame resets that.
    a, b = pair
    with config.set({"comm.busy-poll": 0.005}):
        reader = FrameReader(b, "peer", m.FROM_ACTOR_SERVER)
    assert reader.busy_poll == 0.005
    a.sendall(_frame("at-once"))
    assert _keys(reader) == ["at-once"] and (reader._misses, reader._skip) == (0, 0)  # caught

    def late(key: str) -> list[str]:
        threading.Timer(0.05, a.sendall, [_frame(key)]).start()
        return _keys(reader)

    assert late("late-1") == ["late-1"] and (reader._misses, reader._skip) == (1, 1)
    assert late("slept") == ["slept"] and reader._skip == 0  # no poll: slept at once
    assert late("late-2") == ["late-2"] and (reader._misses, reader._skip) == (2, 2)
    for key in ("slept-1", "slept-2"):
        a.sendall(_frame(key))
        assert _keys(reader) == [key]
    a.sendall(_frame("caught"))
    assert _keys(reader) == ["caught"] and (reader._misses, reader._skip) == (0, 0)


@pytest.mark.parametrize("setup", ["timeout", "off"])
def test_no_polling_on_a_socket_with_a_timeout_or_when_turned_off(pair, setup):
    a, b = pair
    if setup == "timeout":  # Python would wait for readability before each recv
        b.settimeout(5.0)
    with config.set({"comm.busy-poll": 0.0 if setup == "off" else 0.005}):
        reader = FrameReader(b, "peer", m.FROM_ACTOR_SERVER)
    assert reader.busy_poll == 0.0
    threading.Timer(0.02, a.sendall, [_frame("k")]).start()
    t = time.process_time()
    assert _keys(reader) == ["k"]
    assert time.process_time() - t < 0.015  # slept, did not spin through the 20 ms


def test_a_bad_busy_poll_setting_is_refused_naming_it():
    with pytest.raises(ValueError, match="comm.busy-poll"):
        config.set({"comm.busy-poll": -1})


def test_a_gathered_batch_over_the_frame_limit_goes_as_several_frames(pair, monkeypatch):
    a, b = pair
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", 200)  # a few replies per frame
    replies = [m.ActorResult(f"k{i}", b"x" * 40, 40) for i in range(10)]
    data = codec.encode_many(replies)
    threading.Thread(target=a.sendall, args=(data,)).start()
    reader = FrameReader(b, "peer", m.FROM_ACTOR_SERVER)
    got: list[str] = []
    while len(got) < 10:
        frame = _keys(reader)
        assert 0 < len(frame) < 10
        got += frame
    assert got == [f"k{i}" for i in range(10)]
    with pytest.raises(codec.ProtocolError, match="exceeds the 200-byte limit"):
        codec.encode_many([m.ActorResult("big", b"x" * 300, 300)])


def test_a_message_over_the_frame_limit_ends_its_connection_instead_of_vanishing(monkeypatch):
    # The peer would otherwise wait for it forever (a client's task argument once did).
    monkeypatch.setattr(codec, "MAX_FRAME_BYTES", 200)

    async def main() -> tuple[bytes, bool]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _, writer = await asyncio.open_unix_connection(sock=a)
        reader, _ = await asyncio.open_unix_connection(sock=b)
        comm = Comm(asyncio.StreamReader(), writer, "peer", m.FROM_ACTOR_SERVER)
        comm.send_many([m.ActorResult("small", b"x", 1), m.ActorResult("big", b"x" * 300, 300)])
        await asyncio.sleep(0)  # the flush
        return await asyncio.wait_for(reader.read(), 10), comm.closed

    data, closed = asyncio.run(main())
    assert data == b"" and closed  # nothing half-sent, and the peer sees the end at once


def test_wait_says_whether_a_frame_can_be_read_before_a_deadline(pair):
    a, b = pair
    reader = FrameReader(b, "peer", m.FROM_ACTOR_SERVER)
    assert not reader.wait(time.monotonic() + 0.05)  # nothing came
    assert not reader.wait(time.monotonic() - 1)  # a deadline passed already
    a.sendall(_frame("one") + _frame("two"))
    assert reader.wait(time.monotonic() + 5) and _keys(reader) == ["one"]
    assert reader.wait(time.monotonic() - 1)  # the second is buffered: no need to wait
    assert _keys(reader) == ["two"]
