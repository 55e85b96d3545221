"""One conformance suite for every message store, plus file-store durability tests."""

from __future__ import annotations

import pytest

from broker.jetstream.filestore import CorruptStoreError, FileStore
from broker.jetstream.store import MemoryStore
from broker.jetstream.storetypes import StoreState, file_msg_size, memory_msg_size

KINDS = ["memory", "file", "file-tiny-blocks"]

SEED_SUBJECTS = [
    "events.page_loaded", "events.mouse_clicked", "events.mouse_clicked", "events.page_loaded",
    "events.mouse_clicked", "events.input_focused", "events.input_changed",
    "events.input_blurred", "events.key_pressed", "events.input_focused",
    "events.input_changed", "events.input_blurred",
]


class Harness:
    """Opens a store of one kind and, for durable kinds, reopens it from disk."""

    def __init__(self, kind: str, path) -> None:
        self.kind = kind
        self.path = path
        self.store = self._open()

    def _open(self):
        if self.kind == "memory":
            return MemoryStore()
        if self.kind == "file":
            return FileStore(str(self.path))
        # a block holds a handful of messages: exercises rollover and block drops
        return FileStore(str(self.path), block_size_max_bytes=200)

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def size(self, subject: str, hdr: bytes | None, data: bytes) -> int:
        fn = memory_msg_size if self.kind == "memory" else file_msg_size
        return fn(subject, hdr, data)

    def reopen(self):
        """Close and reopen (durable stores); the memory store just stays."""
        if self.durable:
            self.store.sync()
            self.store.close()
            self.store = self._open()
        return self.store


@pytest.fixture(params=KINDS)
def h(request, tmp_path):
    harness = Harness(request.param, tmp_path / "store")
    yield harness
    harness.store.close()


def fill(s, subjects, data=b"x", hdr=None, ts0=1000):
    return [s.append(subj, hdr, data, ts0 + i) for i, subj in enumerate(subjects)]


def test_empty_state(h):
    st = h.store.state()
    assert st == StoreState(messages=0, bytes=0, first_seq=1, first_ts=0, last_seq=0,
                            last_ts=0, num_deleted=0, num_subjects=0)
    assert h.store.get(1) is None
    assert h.store.next_msg(1) is None
    assert h.store.last_msg(">") is None
    assert h.store.num_pending(1) == 0
    assert h.store.purge() == 0


def test_append_get(h):
    s = h.store
    assert s.append("a.b", None, b"hello", 10) == 1
    assert s.append("a.c", b"NATS/1.0\r\nX: 1\r\n\r\n", b"", 20) == 2
    assert s.append("a.b", None, b"", 30) == 3
    for s in (s, h.reopen()):
        m = s.get(2)
        assert (m.seq, m.subject, m.hdr, m.data, m.ts) == (
            2, "a.c", b"NATS/1.0\r\nX: 1\r\n\r\n", b"", 20)
        m = s.get(1)
        assert (m.seq, m.subject, m.hdr, m.data, m.ts) == (1, "a.b", None, b"hello", 10)
        assert s.get(0) is None and s.get(4) is None
        st = s.state()
        assert (st.messages, st.first_seq, st.first_ts, st.last_seq, st.last_ts) == (3, 1, 10, 3, 30)
        assert st.num_subjects == 2
        assert st.bytes == (h.size("a.b", None, b"hello") + h.size("a.c", b"NATS/1.0\r\nX: 1\r\n\r\n", b"")
                            + h.size("a.b", None, b""))


def test_byte_accounting_three_small(h):
    s = h.store
    for subj in ("orders", "orders", "events"):
        s.append(subj, None, b"1", 1)
    expected = 111 if h.kind != "memory" else 3 * (6 + 1 + 16)
    assert s.state().bytes == expected
    assert h.reopen().state().bytes == expected


def test_byte_accounting_headers(h):
    s = h.store
    hdr = b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n"
    s.append("foo", hdr, b"abc", 1)
    if h.kind == "memory":
        assert s.state().bytes == 3 + len(hdr) + 3 + 16
    else:
        assert s.state().bytes == 22 + 3 + 3 + 8 + 4 + len(hdr)


def test_seed_article_bytes(h):
    s = h.store
    fill(s, SEED_SUBJECTS, data=b"")
    total = sum(h.size(x, None, b"") for x in SEED_SUBJECTS)
    if h.kind != "memory":
        assert total == 594
    assert s.state().bytes == total
    assert s.purge(keep=10) == 2
    st = h.reopen().state()
    assert st.messages == 10 and st.first_seq == 3
    if h.kind != "memory":
        assert st.bytes == 496
    s = h.store
    assert s.purge(keep=6) == 4
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq) == (6, 7, 12)
    assert st.bytes == sum(h.size(x, None, b"") for x in SEED_SUBJECTS[6:])
    if h.kind != "memory":
        assert st.bytes == 298
    assert st.num_subjects == 4


def test_next_msg_filters(h):
    s = h.store
    fill(s, ["a.1", "b.1", "a.2", "b.2", "a.1", "c"])
    for s in (s, h.reopen()):
        assert s.next_msg(1).seq == 1
        assert s.next_msg(0).seq == 1
        assert s.next_msg(2, None).seq == 2
        assert s.next_msg(1, ">").seq == 1
        assert s.next_msg(2, "a.1").seq == 5
        assert s.next_msg(6, "a.1") is None
        assert s.next_msg(1, "b.*").seq == 2
        assert s.next_msg(3, "b.*").seq == 4
        assert s.next_msg(5, "b.*") is None
        assert s.next_msg(1, "c.>") is None
        assert s.next_msg(1, "c").seq == 6
        assert s.next_msg(1, "nope") is None
        assert s.next_msg(7) is None


def test_next_msg_skips_deleted_and_long_gaps(h):
    s = h.store
    fill(s, ["x"] + ["y"] * 1000 + ["x"])
    assert s.purge("y") == 1000
    for s in (s, h.reopen()):
        assert s.next_msg(2).seq == 1002
        assert s.next_msg(2, "x").seq == 1002
        assert s.next_msg(2, "*").seq == 1002
        assert s.last_msg("y") is None
        assert s.num_pending(2) == 1
        st = s.state()
        assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (2, 1, 1002, 1000)
    assert s.remove(1)
    st = s.state()
    assert (st.messages, st.first_seq, st.num_deleted) == (1, 1002, 0)


def test_last_msg(h):
    s = h.store
    fill(s, ["a.1", "b.1", "a.2", "b.2", "a.1", "c"])
    for s in (s, h.reopen()):
        assert s.last_msg("a.1").seq == 5
        assert s.last_msg("a.*").seq == 5
        assert s.last_msg("b.>").seq == 4
        assert s.last_msg(">").seq == 6
        assert s.last_msg("zzz") is None
    s.remove(5)
    assert s.last_msg("a.1").seq == 1
    assert s.last_msg("a.*").seq == 3


def test_remove(h):
    s = h.store
    fill(s, ["a", "b", "c", "d"])
    assert s.remove(2)
    assert not s.remove(2)
    assert not s.remove(99)
    assert s.get(2) is None
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (3, 1, 4, 1)
    assert s.remove(1)
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (2, 3, 4, 0)
    s = h.store
    assert s.remove(4)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.last_ts) == (1, 3, 4, 1003)
    assert s.remove(3)
    st = h.reopen().state()
    assert st == StoreState(messages=0, bytes=0, first_seq=5, first_ts=0, last_seq=4,
                            last_ts=1003, num_deleted=0, num_subjects=0)
    assert h.store.append("e", None, b"", 5000) == 5


def test_purge_all_then_append(h):
    s = h.store
    fill(s, ["a", "b", "a"])
    assert s.purge() == 3
    st = s.state()
    assert (st.messages, st.bytes, st.first_seq, st.last_seq, st.num_subjects) == (0, 0, 4, 3, 0)
    s = h.reopen()
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.last_ts) == (0, 4, 3, 1002)
    assert s.append("a", None, b"", 1) == 4
    assert s.subject_seqs("a") == [4]


def test_purge_filter_upto_keep(h):
    s = h.store
    subs = ["a.1", "a.2", "b.1", "a.1", "b.1", "a.2", "a.1"]
    fill(s, subs)
    assert s.purge("a.1", keep=1) == 2
    assert s.subject_seqs("a.1") == [7]
    assert s.purge("a.*", upto_seq=6) == 1  # only a.2@2; a.2@6 is not < 6
    assert s.subject_seqs("a.2") == [6]
    assert s.purge("b.*", keep=5) == 0
    assert s.purge("nomatch") == 0
    s = h.reopen()
    assert s.subjects() == {"a.2": 1, "b.1": 2, "a.1": 1}
    assert s.purge(upto_seq=6) == 2  # b.1@3 and b.1@5
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (2, 6, 7, 0)


def test_purge_wildcard_keep_is_across_filter(h):
    s = h.store
    fill(s, ["k.a", "k.b", "k.a", "k.c", "k.b"])
    assert s.purge("k.*", keep=2) == 3
    assert sorted(s.subjects().items()) == [("k.b", 1), ("k.c", 1)]
    assert [s.next_msg(1).seq, s.last_msg(">").seq] == [4, 5]


def test_purge_upto_and_keep_no_filter(h):
    s = h.store
    fill(s, ["x"] * 10)
    s.remove(9)
    assert s.purge(keep=5) == 4
    assert s.num_pending(1) == 5
    assert s.next_msg(1).seq == 5
    assert s.purge(upto_seq=7) == 2
    assert h.reopen().state().first_seq == 7
    assert h.store.purge(upto_seq=100) == 3
    st = h.store.state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 11, 10)


def test_subject_seqs_and_subjects(h):
    s = h.store
    fill(s, ["a.x", "a.y", "a.x", "b.x", "a.x"])
    s.remove(3)
    for s in (s, h.reopen()):
        assert s.subject_seqs("a.x") == [1, 5]
        assert s.subject_seqs("a.y") == [2]
        assert s.subject_seqs("zz") == []
        assert s.subjects() == {"a.x": 2, "a.y": 1, "b.x": 1}
        assert s.subjects("a.*") == {"a.x": 2, "a.y": 1}
        assert s.subjects("*.x") == {"a.x": 2, "b.x": 1}
        assert s.subjects("b.x") == {"b.x": 1}
        assert s.state().num_subjects == 3


def test_num_pending(h):
    s = h.store
    fill(s, ["a.1", "b.1", "a.2", "a.1", "b.1", "a.1"])
    for s in (s, h.reopen()):
        assert s.num_pending(1) == 6
        assert s.num_pending(0) == 6
        assert s.num_pending(4) == 3
        assert s.num_pending(7) == 0
        assert s.num_pending(1, "a.1") == 3
        assert s.num_pending(5, "a.1") == 1
        assert s.num_pending(1, "a.*") == 4
        assert s.num_pending(1, ">") == 6
        assert s.num_pending(1, "a.*", last_per_subject=True) == 2
        assert s.num_pending(1, None, last_per_subject=True) == 3
        assert s.num_pending(6, None, last_per_subject=True) == 1
        assert s.num_pending(4, "b.*", last_per_subject=True) == 1
        assert s.num_pending(1, "zz") == 0
    s.remove(4)
    assert s.num_pending(2) == 4
    assert s.num_pending(2, "a.1") == 1


def test_drain_first_seq(h):
    s = h.store
    seqs = fill(s, ["a", "b", "c"])
    for q in seqs:
        assert s.remove(q)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.first_ts) == (0, 4, 3, 0)
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 4, 3)


def test_append_at_creates_gap(h):
    s = h.store
    s.append("a", None, b"", 1)
    s.append_at(5, "b", None, b"z", 2)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (2, 1, 5, 3)
    with pytest.raises(ValueError):
        s.append_at(5, "c", None, b"", 3)
    assert s.append("c", None, b"", 3) == 6
    s = h.reopen()
    assert s.get(5).data == b"z"
    assert s.state().num_deleted == 3
    assert s.next_msg(2).seq == 5


def test_append_at_into_empty_store(h):
    s = h.store
    s.append_at(100, "a", None, b"", 7)
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq, st.num_deleted, st.first_ts) == (1, 100, 100, 0, 7)


def test_skip_to(h):
    s = h.store
    s.skip_to(50)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 50, 49)
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 50, 49)
    s = h.store
    assert s.append("a", None, b"", 1) == 50
    with pytest.raises(ValueError):
        s.skip_to(10)
    s.skip_to(80)  # removes what is left, like nats-server's compact past the end
    st = h.reopen().state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 80, 79)
    assert h.store.append("a", None, b"", 1) == 80
    assert h.store.subject_seqs("a") == [80]


def test_many_messages_one_subject(h):
    s = h.store
    n = 3000
    for i in range(n):
        s.append("one", None, i.to_bytes(4, "big"), i)
    # drop the oldest one by one (limits), an interior one and the newest
    for q in range(1, 1001):
        assert s.remove(q)
    assert s.remove(2000)
    assert s.remove(n)
    for s in (s, h.reopen()):
        seqs = s.subject_seqs("one")
        assert len(seqs) == n - 1002 and seqs[0] == 1001 and seqs[-1] == n - 1
        assert 2000 not in seqs
        assert s.num_pending(1500, "one") == (n - 1) - 1500 + 1 - 1
        assert s.next_msg(2000, "one").seq == 2001
        assert s.get(2001).data == (2000).to_bytes(4, "big")
        st = s.state()
        assert (st.first_seq, st.last_seq, st.num_deleted) == (1001, n, 2)
