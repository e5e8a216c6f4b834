"""Framing for every connection: a 4-byte little-endian length, then one msgpack payload.

A payload is a list of messages (the typed records of ``messages.py``), so one frame
carries a whole batch and many small messages cost one system call.  Binary values
(pickles, inline results) travel as msgpack ``bin`` without base64 or re-encoding.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import msgspec

from runtime.comm.auth import MAGIC, AuthenticationError

if TYPE_CHECKING:
    from runtime.comm.messages import Decoder

HEADER = struct.Struct("<I")
#: A frame larger than this is refused: a corrupt or hostile length field must not make a
#: peer allocate gigabytes.  Large values never travel inline; they go through the store.
MAX_FRAME_BYTES = 512 * 1024 * 1024


class ProtocolError(ConnectionError):
    """A peer sent bytes that are not a valid frame of this protocol."""


class SecretRequiredError(ProtocolError, AuthenticationError):
    """The server opened with the challenge of a cluster that requires a shared secret, and
    this process has none (so it read the challenge as a frame)."""

    def __init__(self, address: str):
        self.address = address
        super().__init__(
            f"the cluster at {address} requires a shared secret; "
            "set RUNTIME_SECRET or RUNTIME_SECRET_FILE (see docs/deployment.md)"
        )


_encode = msgspec.msgpack.Encoder().encode


def encode(msgs: list[Any]) -> bytes:
    payload = _encode(msgs)
    if len(payload) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    return HEADER.pack(len(payload)) + payload


def encode_many(msgs: list[Any]) -> bytes:
    """``encode`` for a batch gathered from many calls (replies, pipelined calls): as many
    frames, back to back, as the frame limit takes."""
    try:
        return encode(msgs)
    except ProtocolError:
        if len(msgs) == 1:
            raise
        half = len(msgs) // 2
        return encode_many(msgs[:half]) + encode_many(msgs[half:])


def frame_length(header: bytes, peer: str = "the peer") -> int:
    """The payload size a frame's header announces; ``peer`` names who sent it, for errors."""
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME_BYTES:
        if header == MAGIC[: HEADER.size]:  # not a frame: a secret-requiring server's challenge
            raise SecretRequiredError(peer)
        raise ProtocolError(f"peer announced a frame of {n} bytes, over the {MAX_FRAME_BYTES}-byte limit")
    return n


def decode(payload: bytes, decoder: Decoder) -> list[Any]:
    """The messages of one frame, each checked against the types ``decoder`` accepts."""
    return decoder.decode(payload)
