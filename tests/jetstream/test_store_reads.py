"""Reads that walk a store in order (consumers) return exactly what was stored, on every
store kind, while appends, removals, syncs and block compaction happen in between (the file
store serves such walks from a read-ahead buffer)."""

from __future__ import annotations

import os
import random

import pytest

from broker.jetstream import filestore as fs
from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore

KINDS = ["memory", "file", "file-tiny-blocks", "file-small-blocks"]


def open_store(kind: str, path):
    if kind == "memory":
        return MemoryStore()
    if kind == "file":
        return FileStore(str(path))
    return FileStore(str(path), block_size_max_bytes=200 if kind == "file-tiny-blocks" else 8192)


def msg(i: int) -> tuple[str, bytes | None, bytes]:
    hdr = b"NATS/1.0\r\nK: %d\r\n\r\n" % i if i % 7 == 0 else None
    return f"walk.{i % 5}", hdr, b"p%d-" % i + b"z" * (i % 50)


def check(s, expect: dict[int, tuple], seqs) -> None:
    for q in seqs:
        m = s.get(q)
        if q not in expect:
            assert m is None, q
            continue
        subject, hdr, data, ts = expect[q]
        assert m is not None, q
        assert (m.seq, m.subject, m.hdr, m.data, m.ts) == (q, subject, hdr, data, ts)


@pytest.mark.parametrize("kind", KINDS)
def test_walk_in_order_with_writes_between(kind, tmp_path):
    s = open_store(kind, tmp_path / "s")
    rnd = random.Random(7)
    expect: dict[int, tuple] = {}
    nxt = 1  # the walker's position
    for i in range(3000):
        subject, hdr, data = msg(i)
        expect[s.append(subject, hdr, data, 1000 + i)] = (subject, hdr, data, 1000 + i)
        r = rnd.random()
        if r < 0.05:
            s.sync()
        elif r < 0.08 and len(expect) > 10:
            victim = rnd.choice(list(expect))
            assert s.remove(victim)
            del expect[victim]
        if i % 3 == 0:  # walk forward a little: reads both written and still-buffered records
            hi = min(nxt + rnd.randint(1, 6), max(expect) + 1)
            check(s, expect, range(nxt, hi))
            nxt = hi
    s.sync()
    check(s, expect, range(1, max(expect) + 2))
    for m_seq in list(expect)[::3]:  # random access after the walk sees the same messages
        check(s, expect, [m_seq])
    check(s, expect, range(1, max(expect) + 2))
    s.close()


@pytest.mark.parametrize("kind", KINDS)
def test_walk_survives_compaction(kind, tmp_path):
    """Churn leaves blocks mostly garbage; sync() rewrites them and a later mutation swaps
    the rewritten file in. A walk before and after the swap reads the right records."""
    s = open_store(kind, tmp_path / "s")
    expect: dict[int, tuple] = {}
    prev = 0
    for i in range(2000):
        if i % 40 == 0:
            subject, hdr, data = msg(i)
            expect[s.append(subject, hdr, data, i)] = (subject, hdr, data, i)
        seq = s.append("churn", None, b"c" * 100, i)
        expect[seq] = ("churn", None, b"c" * 100, i)
        if prev:
            s.remove(prev)
            del expect[prev]
        prev = seq
        if i % 100 == 0:
            s.sync()
    s.sync()
    last = max(expect)
    check(s, expect, range(1, last + 1))  # fills the read-ahead from the pre-compaction files
    s.remove(prev)  # applies the finished compactions (file store)
    del expect[prev]
    check(s, expect, range(1, last + 1))
    s.sync()
    check(s, expect, range(1, last + 1))
    s.close()
    if kind != "memory":
        s = open_store(kind, tmp_path / "s")
        check(s, expect, range(1, last + 1))
        s.close()


def test_file_walk_reads_ahead(tmp_path, monkeypatch):
    """An in-order walk over written blocks costs one pread per read-ahead window, not one
    per message; random gets still read one record each."""
    s = FileStore(str(tmp_path / "s"))
    n = 20000  # more than one read-ahead window
    for i in range(n):
        s.append("walk", None, b"x" * 16, i)
    s.sync()
    calls = []
    real = os.pread
    monkeypatch.setattr(fs.os, "pread", lambda fd, ln, off: calls.append(ln) or real(fd, ln, off))
    for q in range(1, n + 1):
        m = s.get(q)
        assert (m.seq, m.subject, m.data, m.ts) == (q, "walk", b"x" * 16, q - 1)
    assert 0 < len(calls) < n // 50, len(calls)
    calls.clear()
    for q in (9000, 17, 2500):  # outside the last window
        assert s.get(q).seq == q
    assert len(calls) == 3 and max(calls) < 200, calls
    s.close()


def expected_run(s, start: int, max_n: int) -> list:
    out = []
    seq = start
    while len(out) < max_n:
        m = s.get(seq)
        if m is None:
            break
        out.append(m)
        seq += 1
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_get_run_is_consecutive_gets(kind, tmp_path):
    """get_run(start, n) returns exactly get(start), get(start + 1), ... up to the first
    sequence not stored or n messages, whatever was synced, removed or still buffered."""
    s = open_store(kind, tmp_path / "s")
    rnd = random.Random(11)
    seqs: list[int] = []
    for i in range(1500):
        subject, hdr, data = msg(i)
        seqs.append(s.append(subject, hdr, data, 5000 + i))
        r = rnd.random()
        if r < 0.03:
            s.sync()
        elif r < 0.05:
            s.remove(rnd.choice(seqs))
        if i % 50 == 0:
            start = rnd.randint(1, seqs[-1] + 1)
            n = rnd.choice([1, 2, 7, 100, 1000])
            assert s.get_run(start, n) == expected_run(s, start, n)
    s.sync()
    last = seqs[-1]
    for start, n in [(1, 10_000), (1, 1), (last, 5), (last + 1, 5), (last + 50, 5), (700, 0)]:
        assert s.get_run(start, n) == expected_run(s, start, n)
    pos = 1  # a consumer's walk: each batch starts where the previous one ended
    got = []
    while pos <= last:
        run = s.get_run(pos, 64)
        got += run
        pos = run[-1].seq + 1 if run else pos + 1
    assert got == [m for m in (s.get(q) for q in range(1, last + 1)) if m is not None]
    s.close()


def test_file_get_run_detects_corruption(tmp_path):
    """A byte flipped on disk under an open store fails the record checksum in get_run, as
    it does in get (records past the first come out of the read-ahead buffer)."""
    d = tmp_path / "s"
    s = FileStore(str(d))
    for i in range(100):
        s.append("walk", None, b"payload-%03d" % i, i)
    s.sync()
    blk = sorted(f for f in os.listdir(d) if f.endswith(".blk"))[0]
    with open(d / blk, "r+b") as f:
        raw = f.read()
        k = raw.index(b"payload-050")
        f.seek(k)
        f.write(b"X")
    with pytest.raises(fs.CorruptStoreError, match="seq 51"):
        s.get_run(1, 100)
    assert [m.seq for m in s.get_run(1, 50)] == list(range(1, 51))
    s.close()
