"""One conformance suite for every message store, plus file-store durability tests."""

from __future__ import annotations

import gc
import os
import re
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tracemalloc

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from broker.jetstream.filestore import (BLOCK_SIZE_MAX_BYTES_DEFAULT as BLOCK_DEFAULT,
                                        CorruptStoreError, FileStore, StoreLockedError)
from broker.jetstream.store import MemoryStore
from broker.jetstream.storetypes import StoreState, file_msg_size, memory_msg_size
from broker.subjects import match

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

    def now_and_reopened(self):
        """The store as it is, then (durable kinds) the same store closed and reopened."""
        yield self.store
        yield self.reopen()

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
    for s in h.now_and_reopened():
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
    for s in h.now_and_reopened():
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
    for s in h.now_and_reopened():
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
    for s in h.now_and_reopened():
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
    for s in h.now_and_reopened():
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
    for s in h.now_and_reopened():
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
    s.skip_to(51)  # the next sequence already: removes what is left
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 51, 50)
    s.skip_to(51)  # empty and already there: nothing to do
    s.skip_to(80)  # like nats-server's compact past the end
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
    for s in h.now_and_reopened():
        seqs = s.subject_seqs("one")
        assert len(seqs) == n - 1002 and seqs[0] == 1001 and seqs[-1] == n - 1
        assert 2000 not in seqs
        assert s.num_pending(1500, "one") == (n - 1) - 1500 + 1 - 1
        assert s.next_msg(2000, "one").seq == 2001
        assert s.get(2001).data == (2000).to_bytes(4, "big")
        st = s.state()
        assert (st.first_seq, st.last_seq, st.num_deleted) == (1001, n, 2)


# ---------------------------------------------------------------- file store only

def blk_files(d) -> list[str]:
    return sorted(f for f in os.listdir(d) if f.endswith(".blk"))


def snapshot(s) -> tuple:
    msgs = []
    m = s.next_msg(0)
    while m is not None:
        msgs.append((m.seq, m.subject, m.hdr, m.data, m.ts))
        m = s.next_msg(m.seq + 1)
    return s.state(), msgs, s.subjects()


def test_file_reopen_keeps_everything(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=1000)
    hdr = b"NATS/1.0\r\nA: b\r\n\r\n"
    for i in range(200):
        s.append(f"sub.{i % 7}", hdr if i % 3 == 0 else (b"" if i % 3 == 1 else None),
                 bytes([i % 256]) * (i % 50), 10_000 + i)
    for q in (1, 2, 3, 50, 51, 199):
        assert s.remove(q)
    s.purge("sub.3", keep=4)
    s.append_at(300, "late", None, b"late", 99_999)
    before = snapshot(s)
    s.close()
    s = FileStore(d, block_size_max_bytes=1000)
    assert snapshot(s) == before
    assert s.get(8).hdr == b"" and s.get(9).hdr is None and s.get(10).hdr == hdr
    assert s.append("next", None, b"", 1) == 301
    s.close()


def test_file_blocks_roll_and_emptied_blocks_are_deleted(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=512)
    for i in range(100):
        s.append("a", None, b"x" * 40, i)
    s.sync()
    n_blocks = len(blk_files(d))
    assert n_blocks > 5
    for q in range(1, 51):
        s.remove(q)
    s.sync()
    assert len(blk_files(d)) < n_blocks * 2 // 3
    assert s.purge() == 50
    s.sync()
    assert len(blk_files(d)) == 1
    s.close()
    s = FileStore(d, block_size_max_bytes=512)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq, st.last_ts) == (0, 101, 100, 99)
    s.close()


def test_file_compaction_reclaims_space(tmp_path):
    """Blocks kept alive by a few long-lived messages are rewritten without the removed
    ones (compaction happens in sync(), the swap on the next append/remove/close)."""
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=8192)
    prev = 0
    keep: dict[int, bytes] = {}
    for i in range(3000):
        if i % 40 == 0:
            keep[s.append(f"keep.{i}", None, b"k%d" % i, i)] = b"k%d" % i
        seq = s.append("churn", None, b"c" * 100, i)
        if prev:
            s.remove(prev)
        prev = seq
        if i % 100 == 0:
            s.sync()
    s.sync()
    s.remove(prev)  # a mutation applies the finished compactions
    s.sync()
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for f in blk_files(d))
    written = 3000 * (32 + 5 + 100 + 17)
    assert on_disk < written // 4, (on_disk, written)
    assert not [f for f in os.listdir(d) if f.endswith(".compact")]
    for s in (s, None):
        if s is None:
            s = FileStore(d, block_size_max_bytes=8192)
        assert s.state().messages == len(keep)
        for q, data in keep.items():
            assert s.get(q).data == data
        assert s.next_msg(0, "keep.>").seq == min(keep)
        assert s.num_pending(0, "keep.*") == len(keep)
        s.close()


def _last_block(d) -> str:
    return os.path.join(d, blk_files(d)[-1])


@pytest.mark.parametrize("tail", ["partial-record", "short-header", "zeros", "random-short"])
def test_file_torn_tail_is_truncated(tmp_path, tail):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(5):
        s.append("t", None, b"payload-%d" % i, i)
    s.close()
    path = _last_block(d)
    good_size = os.path.getsize(path)
    record = open(path, "rb").read()[-(good_size - 38) // 5:]  # one whole MSG record
    garbage = {
        "partial-record": record[: len(record) - 3],
        "short-header": record[:6],
        "zeros": b"\0" * 100,
        "random-short": b"\x07\x01\x02",
    }[tail]
    with open(path, "ab") as f:
        f.write(garbage)
    s = FileStore(d)
    assert s.state().messages == 5
    assert os.path.getsize(path) == good_size
    assert s.append("t", None, b"after", 9) == 6
    s.close()
    s = FileStore(d)
    assert [s.get(q).data for q in (1, 5, 6)] == [b"payload-0", b"payload-4", b"after"]
    s.close()


def _corrupt(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_file_corruption_in_the_middle_raises(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(10):
        s.append("c", None, b"0123456789", i)
    s.close()
    path = _last_block(d)
    msg_len = (os.path.getsize(path) - 38) // 10
    bad_off = 38 + 4 * msg_len
    _corrupt(path, bad_off + msg_len - 2)  # a payload byte of the 5th message
    with pytest.raises(CorruptStoreError) as ei:
        FileStore(d)
    assert ei.value.path == path and ei.value.offset == bad_off
    assert path in str(ei.value) and str(bad_off) in str(ei.value)
    # The data is untouched: nothing was truncated.
    assert os.path.getsize(path) == 38 + 10 * msg_len


def test_file_corrupt_length_field_in_the_middle_raises(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(10):
        s.append("c", None, b"0123456789", i)
    s.close()
    path = _last_block(d)
    msg_len = (os.path.getsize(path) - 38) // 10
    _corrupt(path, 38 + 2 * msg_len + 6)  # high byte of the body length of message 3
    with pytest.raises(CorruptStoreError):
        FileStore(d)


def test_file_damaged_last_complete_record_raises(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(3):
        s.append("c", None, b"0123456789", i)
    s.close()
    path = _last_block(d)
    _corrupt(path, os.path.getsize(path) - 1)
    with pytest.raises(CorruptStoreError):
        FileStore(d)


def test_file_get_detects_later_damage(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(3):
        s.append("c", None, b"0123456789", i)
    s.sync()
    path = _last_block(d)
    _corrupt(path, os.path.getsize(path) - 1)
    with pytest.raises(CorruptStoreError):
        s.get(3)
    assert s.get(2).data == b"0123456789"
    s.delete()


def test_file_sealed_block_read_in_order_detects_damage(tmp_path):
    """Reading a sealed block in order checks the whole file against its crc once; a
    damaged record there is still reported (at its seq), and the intact ones still read."""
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=4096)
    for i in range(300):
        s.append("c", None, b"payload-%03d" % i, i)
    s.sync()
    blocks = sorted((f for f in os.listdir(d) if f.endswith(".blk")), key=lambda f: int(f.split(".")[0]))
    assert len(blocks) >= 3
    second = os.path.join(d, blocks[1])
    raw = open(second, "rb").read()
    victim = int(re.search(rb"payload-(\d{3})", raw[len(raw) // 2:]).group(1))  # one in the middle
    first_of_second = int(re.search(rb"payload-(\d{3})", raw).group(1))
    # the first block reads (verified whole), then the damage in the second is reported
    assert [m.data for m in s.get_run(1, first_of_second)] == [b"payload-%03d" % i for i in range(first_of_second)]
    _corrupt(second, raw.index(b"payload-%03d" % victim) + 10)
    with pytest.raises(CorruptStoreError) as ei:
        s.get_run(first_of_second + 1, 300)
    assert ei.value.path == second and f"seq {victim + 1}" in str(ei.value)
    # the records before the damaged one still read, checked one by one
    good = s.get_run(first_of_second + 1, victim - first_of_second)
    assert [m.data for m in good] == [b"payload-%03d" % i for i in range(first_of_second, victim)]
    assert os.path.getsize(second) == len(raw)  # nothing truncated
    s.delete()


def test_file_directory_is_locked(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    with pytest.raises(StoreLockedError):
        FileStore(d)
    s.close()
    FileStore(d).close()


def test_file_delete_removes_directory(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    s.append("a", None, b"x", 1)
    s.sync()
    s.delete()
    assert not os.path.exists(d)


def test_file_purge_all_survives_crash_before_unlink(tmp_path):
    """A purge writes a META that drops the older blocks even if they are still there."""
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=300)
    for i in range(20):
        s.append("a", None, b"y" * 20, i)
    s.sync()
    saved = {f: open(os.path.join(d, f), "rb").read() for f in blk_files(d)}
    s.purge()
    s.close()
    for f, data in saved.items():  # resurrect the old blocks, as if unlink never hit the disk
        with open(os.path.join(d, f), "wb") as fh:
            fh.write(data)
    s = FileStore(d, block_size_max_bytes=300)
    st = s.state()
    assert (st.messages, st.first_seq, st.last_seq) == (0, 21, 20)
    assert len(blk_files(d)) == 1
    s.close()


async def test_file_group_commit_from_a_thread(tmp_path):
    """sync() in a worker thread while the event loop keeps appending the next batch."""
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=64 * 1024)
    acked: list[int] = []

    async def committer(batch: list[int]) -> None:
        await trio.to_thread.run_sync(s.sync)
        acked.extend(batch)

    async with trio.open_nursery() as nursery:
        for b in range(30):
            batch = [s.append(f"g.{b}", None, b"z" * 100, b) for _ in range(50)]
            nursery.start_soon(committer, batch)
            await trio.sleep(0)
    assert len(acked) == 1500
    s.close()
    s = FileStore(d, block_size_max_bytes=64 * 1024)
    assert s.state().messages == 1500
    assert all(s.get(q).data == b"z" * 100 for q in acked)
    s.close()


def test_file_sync_thread_races_with_the_event_loop(tmp_path):
    """A thread syncs nonstop while appends, removes, purges and gets go on: nothing is
    lost or mixed up, in memory or after reopen."""
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=4096)
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                s.sync()
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=syncer)
    t.start()
    rng = random.Random(7)
    model: dict[int, tuple[str, bytes]] = {}
    try:
        for i in range(6000):
            r = rng.random()
            if r < 0.75:
                subj, data = f"r.{rng.randrange(6)}", b"%d" % i * rng.randrange(1, 9)
                model[s.append(subj, None, data, i)] = (subj, data)
            elif r < 0.9:
                q = rng.randrange(1, s.state().last_seq + 2)
                assert s.remove(q) == (model.pop(q, None) is not None)
            elif r < 0.91:
                subj = f"r.{rng.randrange(6)}"
                gone = [q for q, v in model.items() if v[0] == subj][:-2]
                assert s.purge(subj, keep=2) == len(gone)
                for q in gone:
                    del model[q]
            else:
                q = rng.randrange(1, s.state().last_seq + 2)
                m = s.get(q)
                assert (m and (m.subject, m.data)) == model.get(q)
    finally:
        stop.set()
        t.join()
    assert not errors
    s.close()
    s = FileStore(d, block_size_max_bytes=4096)
    assert s.state().messages == len(model)
    for q, (subj, data) in model.items():
        m = s.get(q)
        assert (m.subject, m.data) == (subj, data)
    s.close()


@pytest.mark.parametrize("how", ["snapshot", "replay"])
def test_file_reopen_keeps_payloads_on_disk(tmp_path, how):
    """Reopen holds an index, not the 40 MB of payloads, whether it loads the index
    snapshot of a clean close or replays every record (as after a crash). Few large
    messages keep it quick: tracemalloc makes every allocation ~10x slower."""
    d = str(tmp_path / "s")
    n, payload = 25_000, 1600
    s = FileStore(d)
    body = b"p" * payload
    for i in range(n):
        s.append("big.%d" % (i % 10), None, body, i)
    s.close()
    assert os.path.exists(os.path.join(d, "index.db"))
    if how == "replay":
        os.unlink(os.path.join(d, "index.db"))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = FileStore(d)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert not os.path.exists(os.path.join(d, "index.db"))
    assert s.state().messages == n
    assert s.get(n // 2).data == body
    # the index costs tens of bytes a message
    assert grown < n * payload // 20, grown
    s.close()


def test_file_stale_index_snapshot_is_ignored(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d)
    for i in range(10):
        s.append("a", None, b"v%d" % i, i)
    s.close()
    old_index = open(os.path.join(d, "index.db"), "rb").read()
    s = FileStore(d)
    s.remove(3)
    s.append("b", None, b"new", 99)
    s.close()
    with open(os.path.join(d, "index.db"), "wb") as f:  # an index from before the changes
        f.write(old_index)
    s = FileStore(d)
    assert s.get(3) is None and s.get(11).data == b"new"
    assert s.state().messages == 10
    s.close()
    # a damaged snapshot is ignored too
    with open(os.path.join(d, "index.db"), "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")
    s = FileStore(d)
    assert s.subjects() == {"a": 9, "b": 1}
    s.close()


@pytest.mark.slow
def test_file_reopen_1m_messages(tmp_path):
    """A million messages: the crash-style replay holds only the index; then the
    clean-close snapshot gives the same store back."""
    d = str(tmp_path / "s")
    n = 1_000_000
    s = FileStore(d)
    body = b"q" * 200
    for i in range(n):
        s.append("m.%d" % (i % 100), None, body, i)
        if i % 10_000 == 0:
            s.sync()
    s.close()
    os.unlink(os.path.join(d, "index.db"))  # as after kill -9: replay every record
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        s = FileStore(d)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    st = s.state()
    assert (st.messages, st.last_seq, st.num_subjects) == (n, n, 100)
    assert grown < n * 200 // 3, grown
    assert s.get(777_777).data == body
    s.close()
    s = FileStore(d)  # from the index snapshot
    assert s.state() == st
    assert s.num_pending(500_001, "m.7") == 5000
    assert s.get(n).subject == "m.99"
    s.close()


CHILD = r"""
import sys
from broker.jetstream.filestore import FileStore
s = FileStore(sys.argv[1], block_size_max_bytes=16 * 1024)
while True:
    added, removed = [], []
    for _ in range(8):
        seq = s.state().last_seq + 1
        assert s.append("k.x", None, str(seq).encode(), seq) == seq
        added.append(seq)
        if seq % 11 == 0 and s.remove(seq - 5):
            removed.append(seq - 5)
    s.sync()
    print(" ".join(["A%d" % q for q in added] + ["R%d" % q for q in removed]), flush=True)
"""


def test_file_sigkill_loses_no_synced_message(tmp_path):
    """Append+sync in a child process, SIGKILL it: everything it reported synced is there."""
    d = str(tmp_path / "s")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, d], stdout=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    added: list[int] = []
    removed: set[int] = set()
    lines = 0
    try:
        for line in proc.stdout:
            for tok in line.split():
                (added.append if tok[:1] == b"A" else removed.add)(int(tok[1:]))
            lines += 1
            if lines >= 150:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lines == 150 and removed
    s = FileStore(d, block_size_max_bytes=16 * 1024)
    seen = []
    m = s.next_msg(0)
    while m is not None:
        assert m.data == str(m.seq).encode()
        seen.append(m.seq)
        m = s.next_msg(m.seq + 1)
    assert len(seen) == len(set(seen))
    present = set(seen)
    for q in added:
        assert (q in present) == (q not in removed), q
    assert s.state().last_seq >= added[-1]
    s.close()


# ---------------------------------------------------------------- model-based

SUBJECTS = ["a.1", "a.2", "b.1", "c"]
FILTERS = [None, ">", "a.*", "a.1", "b.>", "*.1", "c", "zz"]
HDRS = [None, b"", b"NATS/1.0\r\nX: 1\r\n\r\n"]


class Model:
    def __init__(self) -> None:
        self.msgs: dict[int, tuple] = {}
        self.last = 0
        self.last_ts = 0

    def matching(self, filt) -> list[int]:
        return [q for q in sorted(self.msgs)
                if filt is None or match(filt, self.msgs[q][0])]

    def state(self, size) -> StoreState:
        n = len(self.msgs)
        first = min(self.msgs) if n else self.last + 1
        return StoreState(
            messages=n, bytes=sum(size(*m[:3]) for m in self.msgs.values()), first_seq=first,
            first_ts=self.msgs[first][3] if n else 0, last_seq=self.last, last_ts=self.last_ts,
            num_deleted=self.last - first + 1 - n if n else 0,
            num_subjects=len({m[0] for m in self.msgs.values()}))


class StoresMachine(RuleBasedStateMachine):
    """MemoryStore and FileStore (big and tiny blocks, random reopens) against a model."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="storesm-")
        self.model = Model()
        self.ts = 0
        self.stores = {
            "memory": MemoryStore(),
            "file": FileStore(os.path.join(self.dir, "f")),
            "tiny": FileStore(os.path.join(self.dir, "t"), block_size_max_bytes=150),
        }

    def _all(self, fn):
        return {k: fn(s) for k, s in self.stores.items()}

    @rule(subject=st.sampled_from(SUBJECTS), hdr=st.sampled_from(HDRS),
          data=st.binary(max_size=12))
    def append(self, subject, hdr, data):
        self._append(subject, hdr, data)

    def _append(self, subject, hdr, data):
        self.ts += 1
        m = self.model
        m.last += 1
        m.last_ts = self.ts
        m.msgs[m.last] = (subject, hdr, data, self.ts)
        assert set(self._all(lambda s: s.append(subject, hdr, data, self.ts)).values()) == {m.last}

    @rule(n=st.integers(1, 12))
    def churn(self, n):
        """Like a KV key updated n times: leaves garbage around live messages (compaction)."""
        for _ in range(n):
            self._append("c", None, b"churn")
            older = self.model.matching("c")[:-1]
            for q in older:
                del self.model.msgs[q]
                assert set(self._all(lambda s: s.remove(q)).values()) == {True}

    @rule(gap=st.integers(1, 4), subject=st.sampled_from(SUBJECTS))
    def append_at(self, gap, subject):
        self.ts += 1
        m = self.model
        seq = m.last + gap
        m.last, m.last_ts = seq, self.ts
        m.msgs[seq] = (subject, None, b"at", self.ts)
        self._all(lambda s: s.append_at(seq, subject, None, b"at", self.ts))

    @rule(data=st.data())
    def remove(self, data):
        seq = data.draw(st.integers(0, self.model.last + 1))
        expect = self.model.msgs.pop(seq, None) is not None
        assert set(self._all(lambda s: s.remove(seq)).values()) == {expect}

    @rule(filt=st.sampled_from(FILTERS), keep=st.integers(0, 3), data=st.data())
    def purge(self, filt, keep, data):
        upto = data.draw(st.sampled_from([0, 0, 1, 2]) | st.integers(0, self.model.last + 2))
        seqs = self.model.matching(None if filt == ">" else filt)
        if keep:
            seqs = seqs[: max(0, len(seqs) - keep)]
        if upto:
            seqs = [q for q in seqs if q < upto]
        for q in seqs:
            del self.model.msgs[q]
        assert set(self._all(lambda s: s.purge(filt, upto, keep)).values()) == {len(seqs)}

    @rule(ahead=st.integers(1, 3))
    def skip_to(self, ahead):
        m = self.model
        seq = m.last + ahead
        m.msgs.clear()
        m.last = seq - 1
        self._all(lambda s: s.skip_to(seq))

    @rule()
    def sync(self):
        self._all(lambda s: s.sync())

    @rule(which=st.sampled_from(["file", "tiny"]), replay=st.booleans())
    def reopen(self, which, replay):
        s = self.stores[which]
        s.close()
        if replay:  # without the clean-close snapshot, as after a crash
            os.unlink(os.path.join(self.dir, which[0], "index.db"))
        bs = 150 if which == "tiny" else BLOCK_DEFAULT
        self.stores[which] = FileStore(os.path.join(self.dir, which[0]), block_size_max_bytes=bs)

    @invariant()
    def agrees_with_model(self):
        m = self.model
        for kind, s in self.stores.items():
            size = memory_msg_size if kind == "memory" else file_msg_size
            assert s.state() == m.state(size), kind
            for q in range(0, m.last + 2):
                got = s.get(q)
                want = m.msgs.get(q)
                assert (got and (got.subject, got.hdr, got.data, got.ts)) == want, (kind, q)
            for filt in FILTERS:
                seqs = m.matching(None if filt == ">" else filt)
                for start in (0, 2, m.last // 2, m.last):
                    nxt = next((q for q in seqs if q >= start), None)
                    got = s.next_msg(start, filt)
                    assert (got.seq if got else None) == nxt, (kind, filt, start)
                    assert s.num_pending(start, filt) == sum(1 for q in seqs if q >= start)
                    lasts = {}
                    for q in seqs:
                        lasts[m.msgs[q][0]] = q
                    assert s.num_pending(start, filt, last_per_subject=True) == sum(
                        1 for q in lasts.values() if q >= start), (kind, filt, start)
                if filt is not None:
                    got = s.last_msg(filt)
                    assert (got.seq if got else None) == (seqs[-1] if seqs else None)
                    subs: dict[str, int] = {}
                    for q in seqs:
                        subs[m.msgs[q][0]] = subs.get(m.msgs[q][0], 0) + 1
                    assert s.subjects(filt) == subs
            for subj in SUBJECTS:
                assert s.subject_seqs(subj) == m.matching(subj)

    def teardown(self):
        for s in self.stores.values():
            s.close()
        shutil.rmtree(self.dir, ignore_errors=True)


StoresMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                           deadline=None)
TestStoresAgainstModel = StoresMachine.TestCase
