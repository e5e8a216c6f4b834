"""The stimulus log: a scheduler's run written down, and replayed into a fresh state machine.

::

    scheduler shell ──stimulus──► SchedulerState.handle ──messages──► peers
           │                                                  │
           └──► StimulusLog.write(stimulus, digest of messages) ◄┘   one record per stimulus

    runtime replay FILE ──► a new SchedulerState (validation on), the same settings
                            └─ handle each stimulus in turn; its messages must hash to the
                               recorded digest, or the replay stops at the first decision
                               that differs

The state machine is deterministic by construction (no clock, no randomness, and every set
of tasks or workers it iterates is ordered by insertion), so the same stimuli give the same
decisions: any scheduling decision, and any ``story(key)``, can be reproduced after the fact,
offline, with validation on, and stopped at any stimulus for inspection.

The file is a stream of msgpack records: a header (format, version, the state machine's
settings), then ``[op, [field values], digest]`` per stimulus, the digest a hash of the
messages the stimulus made (None if the state machine raised on it), or, with
``scheduler.record-messages``, those messages themselves, so a replay that decides otherwise
shows what differs.  Fields are revived,
and checked, by the stimulus classes' own type hints (``msgspec.convert``), so a record
holds no class names and loading a file runs no code from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO, Any

import msgpack
import msgspec

from runtime.scheduler import stimuli as st
from runtime.scheduler.state import SchedulerState

FORMAT = "runtime-stimuli"
VERSION = 1

#: every stimulus class by its op
STIMULI: dict[str, type[st.Stimulus]] = {
    cls.op: cls for cls in vars(st).values() if isinstance(cls, type) and issubclass(cls, st.Stimulus) and cls.op
}


class ReplayError(Exception):
    """A log that cannot be read, or a replay whose decisions differ from the recorded ones."""


_encode = msgspec.msgpack.Encoder().encode
#: bytes of a digest; a longer record is the messages themselves
DIGEST_SIZE = 12


def digest(client_msgs: dict, worker_msgs: dict, full: bool = False) -> bytes:
    """A short hash of the messages one stimulus made (equal digests, equal decisions), or with
    ``full`` the encoded messages themselves."""
    encoded = _encode([client_msgs, worker_msgs])
    return encoded if full else hashlib.blake2b(encoded, digest_size=DIGEST_SIZE).digest()


def _difference(recorded: bytes, made: bytes) -> str:
    """The first peer whose messages differ between two full records, and both versions."""
    then, now = msgspec.msgpack.decode(recorded), msgspec.msgpack.decode(made)
    for side, (a, b) in zip(("to clients", "to workers"), zip(then, now, strict=True), strict=True):
        for peer in dict.fromkeys([*a, *b]):
            if a.get(peer) != b.get(peer):
                return f"{side}, {peer}: recorded {a.get(peer)!r:.600}, replayed {b.get(peer)!r:.600}"
    return "the same messages in another order"


def _fields(stimulus: st.Stimulus) -> list:
    """A stimulus as the list of its field values (wire types, such as a TaskSpec, encode as on the wire)."""
    return [getattr(stimulus, name) for name in stimulus.__struct_fields__]


class StimulusLog:
    """Appends the stimuli a scheduler handles to a file, for ``replay``."""

    def __init__(self, path: str, settings: dict[str, Any], full_messages: bool = False):
        #: where the log goes
        self.path = path
        #: whether each record holds the messages themselves, not their digest
        self.full_messages = full_messages
        self._file: IO[bytes] = open(path, "wb")  # noqa: SIM115 - open for the scheduler's life
        self._file.write(_encode({"format": FORMAT, "version": VERSION, "settings": settings}))
        #: stimuli written so far
        self.count = 0

    def write(self, stimulus: st.Stimulus, messages: bytes | None) -> None:
        """One stimulus and the digest of what it made (``digest(..., full=self.full_messages)``;
        None: the state machine raised)."""
        self._file.write(_encode([stimulus.op, _fields(stimulus), messages]))
        self._file.flush()  # what led up to a crash is what the log is for
        self.count += 1

    def close(self) -> None:
        self._file.close()


def read(path: str) -> tuple[dict[str, Any], Iterator[tuple[st.Stimulus, bytes | None]]]:
    """A log's settings, and its stimuli with their digests, in order (read as they are used)."""
    f = open(path, "rb")  # noqa: SIM115 - closed when the iterator ends
    unpacker = msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=2**31 - 1)
    try:
        header = next(unpacker)
    except (StopIteration, ValueError, msgpack.UnpackException) as e:
        f.close()
        raise ReplayError(f"{path} is not a stimulus log: {e or 'empty'}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        f.close()
        raise ReplayError(f"{path} is not a stimulus log (no {FORMAT!r} header)")
    if header.get("version") != VERSION:
        f.close()
        raise ReplayError(f"{path} is a stimulus log of version {header.get('version')}; this runtime reads {VERSION}")

    def records() -> Iterator[tuple[st.Stimulus, bytes | None]]:
        with f:
            for n, record in enumerate(unpacker, 1):
                try:
                    op, values, messages = record
                    yield revive(STIMULI[op], values), messages
                except (KeyError, TypeError, ValueError, msgspec.ValidationError) as e:
                    raise ReplayError(f"{path}: record {n} is not a stimulus ({type(e).__name__}: {e})") from None

    return header["settings"], records()


def replay(path: str, stop_at: str | None = None, validate: bool = True) -> tuple[SchedulerState, int]:
    """Feed a log's stimuli into a fresh state machine; returns it and how many it handled.

    ``stop_at`` (a stimulus id, or a 1-based count) stops after that stimulus.  Raises
    ReplayError at the first stimulus whose messages differ from the recorded ones, or that
    raises now and did not then (with ``validate``, an invariant the live run did not check).
    """
    settings, records = read(path)
    state = SchedulerState(validate=validate, **settings)
    n = 0
    for n, (stimulus, recorded) in enumerate(records, 1):  # noqa: B007 - n is the count handled
        where = f"stimulus {n} ({stimulus.op} {stimulus.stimulus_id!r})"
        full = recorded is not None and len(recorded) != DIGEST_SIZE
        try:
            made: bytes | None = digest(*state.handle(stimulus), full=full)
        except Exception as e:
            if recorded is not None:
                raise ReplayError(f"{where} raises on replay, not when recorded: {type(e).__name__}: {e}") from e
            made = None  # it raised when recorded too: the failure is reproduced; go on, as the scheduler did
        if made != recorded:
            why = f": {_difference(recorded, made)}" if full and made is not None else ""  # type: ignore[arg-type]
            raise ReplayError(f"{where} makes other decisions on replay than when recorded{why}")
        if stop_at is not None and stop_at in (stimulus.stimulus_id, str(n)):
            break
    return state, n


def revive(cls: type[st.Stimulus], values: list) -> st.Stimulus:
    """A stimulus of class ``cls`` from its recorded field values, each checked against its type."""
    names = cls.__struct_fields__
    if len(values) != len(names):
        raise ValueError(f"{cls.__name__} has {len(names)} fields, the record {len(values)}")
    return msgspec.convert(dict(zip(names, values, strict=True)), cls)
