"""The meta state machine (pure): assignments applied the same way on every node, the
actions a node must carry out, snapshots, placement, and which node a request belongs to."""

from __future__ import annotations

import msgspec
import pytest

from broker.jetstream.api import StreamConfig
from broker.jetstream.cluster import meta as m
from broker.jetstream.cluster.metaapi import classify


def _sa(name: str, host: str, created: int = 1) -> m.StreamAssignment:
    return m.StreamAssignment(name, StreamConfig(name=name, subjects=[f"{name.lower()}.>"]), [host], created)


def _ops():
    return [m.encode_op(op) for op in (
        m.PeerNames(["n1", "n2", "n3"]),
        m.AssignStream(_sa("A", "n1"), reply="_INBOX.a"),
        m.AssignStream(_sa("B", "n2")),
        m.AssignStream(_sa("A", "n1"), reply="_INBOX.s", origin="n3"),  # the same create again
        m.UpdateStream("A", StreamConfig(name="A", subjects=["a.>", "aa"]), reply="_INBOX.u"),
        m.AssignStream(_sa("A", "n3", created=9), reply="_INBOX.c", origin="n2"),  # lost a race: first stands
        m.RemoveStream("B", reply="_INBOX.d"),
    )]


def test_every_node_holds_the_same_assignments_and_acts_only_for_its_own():
    states = {n: m.MetaState(n) for n in ("n1", "n2", "n3")}
    actions = {n: [] for n in states}
    for data in _ops():
        for n, st in states.items():
            actions[n] += [(a.kind, a.stream.name, a.reply) for a in st.apply(data)]
    snaps = {st.snapshot() for st in states.values()}
    assert len(snaps) == 1
    st = states["n1"]
    assert sorted(st.streams) == ["A"]
    assert st.streams["A"].config.subjects == ["a.>", "aa"] and st.streams["A"].created == 1
    assert st.host_of("A") == "n1" and st.host_of("B") is None
    assert st.peer_names[m.raft_id("n2")] == "n2"
    assert actions["n1"] == [("create", "A", "_INBOX.a"), ("create", "A", "_INBOX.s"), ("update", "A", "_INBOX.u"),
                             ("removed", "B", "_INBOX.d")]
    assert actions["n2"] == [("create", "B", ""), ("conflict", "A", "_INBOX.c"), ("remove", "B", "_INBOX.d")]
    assert actions["n3"] == [("removed", "B", "_INBOX.d")]


def test_restore_tells_a_returning_node_what_to_remove_and_what_to_create():
    leader = m.MetaState("n1")
    for data in _ops():
        leader.apply(data)
    # n2 was away: it still believes in B (its own) and knows nothing of the update
    behind = m.MetaState("n2")
    for data in _ops()[:4]:
        behind.apply(data)
    acts = behind.restore(leader.snapshot())
    assert [(a.kind, a.stream.name) for a in acts] == [("remove", "B")]
    assert behind.snapshot() == leader.snapshot()
    n1 = m.MetaState("n1")
    assert [(a.kind, a.stream.name) for a in n1.restore(leader.snapshot())] == [("create", "A")]


def test_snapshot_round_trip_keeps_configs_exactly():
    st = m.MetaState("n1")
    for data in _ops():
        st.apply(data)
    other = m.MetaState("n2")
    other.restore(st.snapshot())
    assert other.streams == st.streams and other.peer_names == st.peer_names


def test_garbage_entry_is_refused_loudly():
    with pytest.raises(msgspec.DecodeError):
        m.MetaState("n1").apply(b"\x00not msgpack")


def test_placement_spreads_by_load_and_refuses_what_cannot_fit():
    online = ["n1", "n2", "n3"]
    assert m.place(4, online, {}, 0) is None
    assert m.place(1, online, {"n1": 2, "n2": 1, "n3": 0}, 5) == ["n3"]
    assert sorted(m.place(3, online, {}, 7)) == online
    firsts = {m.place(1, online, {}, t)[0] for t in range(3)}
    assert firsts == set(online)  # equal load: the tiebreak rotates


def test_peer_ids_are_stable_and_distinct():
    assert m.raft_id("n1") == m.raft_id("n1") > 0
    assert len({m.raft_id(f"n{i}") for i in range(100)}) == 100
    assert len(m.peer_hash("n1")) == 8 and m.peer_hash("n1") != m.peer_hash("n2")
    assert m.peer_hash("n1") == "fjFyEjc1"  # nats-server's getHash("n1") (tests/jscluster checks its /jsz)


@pytest.mark.parametrize("subject,expected", [
    ("$JS.API.INFO", ("INFO", "")),
    ("$JS.API.STREAM.CREATE.S", ("STREAM.CREATE", "S")),
    ("$JS.API.STREAM.NAMES", ("STREAM.NAMES", "")),
    ("$JS.API.STREAM.MSG.GET.S", ("STREAM.MSG.GET", "S")),
    ("$JS.API.STREAM.LEADER.STEPDOWN.S", ("STREAM.LEADER.STEPDOWN", "S")),
    ("$JS.API.CONSUMER.CREATE.S.C.f.>", ("CONSUMER.CREATE", "S")),
    ("$JS.API.CONSUMER.DURABLE.CREATE.S.D", ("CONSUMER.DURABLE.CREATE", "S")),
    ("$JS.API.CONSUMER.MSG.NEXT.S.D", ("CONSUMER.MSG.NEXT", "S")),
    ("$JS.API.CONSUMER.NAMES.S", ("CONSUMER.NAMES", "S")),
    ("$JS.API.META.LEADER.STEPDOWN", ("META.LEADER.STEPDOWN", "")),
])
def test_requests_are_classified_by_operation_and_stream(subject, expected):
    assert classify(subject) == expected


def test_restore_after_streams_moved_remade_or_updated_while_away():
    away = m.MetaState("n1")
    for op in (m.AssignStream(_sa("MOVED", "n1")), m.AssignStream(_sa("REMADE", "n1", created=1)),
               m.AssignStream(_sa("UPDATED", "n1")), m.AssignStream(_sa("SAME", "n1"))):
        away.apply(m.encode_op(op))
    leader = m.MetaState("n2")
    for data in [m.encode_op(op) for op in (
            m.AssignStream(_sa("MOVED", "n1")), m.AssignStream(_sa("REMADE", "n1", created=1)),
            m.AssignStream(_sa("UPDATED", "n1")), m.AssignStream(_sa("SAME", "n1")),
            m.RemoveStream("MOVED"), m.AssignStream(_sa("MOVED", "n3", created=5)),
            m.RemoveStream("REMADE"), m.AssignStream(_sa("REMADE", "n1", created=6)),
            m.UpdateStream("UPDATED", StreamConfig(name="UPDATED", subjects=["u.>"], max_msgs=5)))]:
        leader.apply(data)
    acts = [(a.kind, a.stream.name, a.stream.created) for a in away.restore(leader.snapshot())]
    assert acts == [("remove", "MOVED", 1), ("remove", "REMADE", 1), ("create", "REMADE", 6),
                    ("update", "UPDATED", 1)]


def _ca(stream: str, name: str, host: str, created: int = 10) -> m.ConsumerAssignment:
    return m.ConsumerAssignment(stream, name, b'{"durable_name":"%s"}' % name.encode(), created, host)


def test_consumer_assignments_follow_their_stream_and_answer_only_on_the_host():
    states = {n: m.MetaState(n) for n in ("n1", "n2")}
    acts = {n: [] for n in states}
    ops = [m.AssignStream(_sa("A", "n1")), m.AssignStream(_sa("B", "n2")),
           m.AssignConsumer(_ca("A", "c1", "n1"), reply="_INBOX.c1"),
           m.AssignConsumer(_ca("A", "c2", "n1")),
           m.AssignConsumer(_ca("B", "x", "n1")),  # stale: B lives on n2, not n1
           m.AssignConsumer(_ca("NOPE", "y", "n1")),  # no such stream
           m.RemoveConsumer("A", "c2", created=9),  # an older c2: the current one stays
           m.RemoveConsumer("A", "c1", created=10),
           m.AssignConsumer(_ca("B", "z", "n2"))]
    for op in ops:
        for n, st in states.items():
            acts[n] += [(a.kind, a.consumer.name if a.consumer else a.stream.name, a.reply)
                        for a in st.apply(m.encode_op(op))]
    assert acts["n1"] == [("create", "A", ""), ("consumer", "c1", "_INBOX.c1"), ("consumer", "c2", "")]
    assert acts["n2"] == [("create", "B", ""), ("consumer", "z", "")]
    st = states["n1"]
    assert {s: sorted(named) for s, named in st.consumers.items()} == {"A": ["c2"], "B": ["z"]}
    other = m.MetaState("n3")
    other.restore(st.snapshot())
    assert other.consumers == st.consumers and other.snapshot() == st.snapshot()
    # a stream removed or made anew takes its consumers along
    st.apply(m.encode_op(m.RemoveStream("B")))
    st.apply(m.encode_op(m.RemoveStream("A")))
    st.apply(m.encode_op(m.AssignStream(_sa("A", "n1", created=2))))
    assert st.consumers == {}
