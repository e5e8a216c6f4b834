"""The wire protocol's records: the message tables of docs/architecture.md name exactly the ops
each receiver decodes, and a malformed message is refused naming its op and field."""

from __future__ import annotations

import pathlib
import re

import msgpack
import pytest

from runtime.comm import codec
from runtime.comm import messages as m
from runtime.scheduler.server import _SENT_BY

DOC = pathlib.Path(__file__).parents[1] / "docs" / "architecture.md"


def _rows() -> dict[str, set[str]]:
    """Each table row of the doc's message tables: its first cell -> the ops named in the rest."""
    rows: dict[str, set[str]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2:
            rows[cells[0]] = set(re.findall(r"`([a-z]+(?:-[a-z]+)*)`", cells[1]))
    return rows


def _ops(decoder: m.Decoder) -> set[str]:
    return {m.op_of(kind) for kind in decoder.kinds}


def test_the_docs_message_tables_name_every_op_each_side_decodes():
    rows = _rows()
    to_scheduler = rows["client → scheduler"] | rows["worker → scheduler"] | rows["agent → scheduler"]
    assert to_scheduler == _ops(m.TO_SCHEDULER)
    assert rows["scheduler → client"] == _ops(m.TO_CLIENT)
    assert rows["scheduler → worker"] == _ops(m.TO_WORKER)
    assert rows["scheduler → agent"] == _ops(m.TO_AGENT)
    assert rows["client → actor's worker (direct)"] == _ops(m.TO_ACTOR_SERVER)
    assert rows["actor's worker → client (direct)"] == _ops(m.FROM_ACTOR_SERVER)
    assert rows["agent → fork server"] == _ops(m.TO_FORK_SERVER)
    assert rows["fork server → agent"] == _ops(m.FROM_FORK_SERVER)
    # the object server's table: "`op` (its fields): from whom" | its answers
    object_rows = {found.group(1): ops for cell, ops in rows.items() if (found := re.match(r"`([a-z-]+)` \(", cell))}
    requests = set(object_rows)
    answers = set().union(*object_rows.values())
    assert requests == _ops(m.TO_OBJECT_SERVER)
    assert answers == _ops(m.FROM_OBJECT_SERVER)


def test_each_kind_of_peer_sends_what_its_row_says():
    rows = _rows()
    for kind, row in (
        ("client", "client → scheduler"),
        ("worker", "worker → scheduler"),
        ("node", "agent → scheduler"),
    ):
        registration = {"client": {"register-client", "register-channel"}, "worker": {"register-worker"},
                        "node": {"register-node"}}[kind]  # fmt: skip
        sent = {m.op_of(t) for t in _SENT_BY[kind]} | registration
        assert rows[row] <= sent, kind
    assert rows["`runtime` command → scheduler"] <= {m.op_of(t) for t in _SENT_BY["client"]}


def test_a_record_goes_over_the_wire_and_back_as_itself():
    ref = m.StoreRef("n1", 10, "rt-1-abcdef-" + "0" * 28)
    msgs = [
        m.UpdateGraph((m.TaskSpec("a", (b"f", b"x"), ("b",), 1, "a", ("w",), {"GPU": 1.0}, True),), ("a",), 2),
        m.TaskFinished("a", ref, 10, 1.0, 2.0),
        m.TaskFinished("b", b"inline", 6),
        m.Request(7, "who-has", {"keys": ["a"]}),
    ]
    payload = codec.encode(msgs)[codec.HEADER.size :]
    assert m.TO_SCHEDULER.decode(payload) == msgs
    assert msgpack.unpackb(payload)[1] == ["task-finished", "a", ["n1", 10, ref.name], 10, 1.0, 2.0, [], 0.0]


@pytest.mark.parametrize(
    "msg, says",
    [
        (["task-finished", ["k"], b"", 1], "malformed 'task-finished' message: field 'key': Expected `str`"),
        (["update-data", "k", ["n", 1, "../etc/passwd"], 1], "malformed 'update-data' message: field 'value'"),
        (["update-graph"], "malformed 'update-graph' message: Expected `array` of at least length 3"),
        (["explode"], "unknown op 'explode'"),
        ({"op": "ping"}, "a message is an array"),
    ],
)
def test_a_malformed_message_is_refused_naming_its_op_and_field(msg, says):
    with pytest.raises(codec.ProtocolError, match=re.escape(says)):
        m.TO_SCHEDULER.decode(msgpack.packb([msg]))
