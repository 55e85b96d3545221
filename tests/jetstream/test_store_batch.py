"""append_many (the batched publish path) against append() one message at a time: same
sequences, same records on disk, same index, on both stores, across block rollovers and
with a sync thread running concurrently."""

from __future__ import annotations

import os
import threading

import pytest

from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore


def _msgs(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [(f"b.{(start + i) % 7}", bytes([65 + (start + i) % 26]) * ((start + i) % 300)) for i in range(n)]


def _contents(s) -> list[tuple]:
    out = []
    seq = 1
    while (m := s.next_msg(seq)) is not None:
        out.append((m.seq, m.subject, m.hdr, m.data, m.ts))
        seq = m.seq + 1
    return out


def _block_bytes(d: str) -> list[bytes]:
    out = []
    for f in sorted(os.listdir(d)):
        if f.endswith(".blk"):
            with open(os.path.join(d, f), "rb") as fh:
                out.append(fh.read())
    return out


@pytest.mark.parametrize("block", [512, 4096, 1 << 20])
def test_file_append_many_matches_append(tmp_path, block):
    one = FileStore(str(tmp_path / "one"), block_size_max_bytes=block)
    many = FileStore(str(tmp_path / "many"), block_size_max_bytes=block)
    for batch in range(12):
        msgs = _msgs(1 + batch * 13, batch * 100)
        ts = 1_000 + batch
        seqs = [one.append(subject, None, data, ts) for subject, data in msgs]
        first = many.append_many(msgs, ts)
        assert list(range(first, first + len(msgs))) == seqs
        if batch % 3 == 0:
            one.remove(seqs[0])
            many.remove(seqs[0])
        assert many.state() == one.state()
        assert many.subjects(">") == one.subjects(">")
    assert _contents(many) == _contents(one)
    one.sync()
    many.sync()
    assert _block_bytes(str(tmp_path / "many")) == _block_bytes(str(tmp_path / "one"))
    expected = _contents(one)
    state = one.state()
    one.close()
    many.close()
    for reopened in (FileStore(str(tmp_path / "many"), block_size_max_bytes=block),):
        assert reopened.state() == state
        assert _contents(reopened) == expected
        reopened.close()
    os.remove(str(tmp_path / "many" / "index.db"))  # force a full replay of the records
    replayed = FileStore(str(tmp_path / "many"), block_size_max_bytes=block)
    assert replayed.state() == state
    assert _contents(replayed) == expected
    replayed.close()


def test_memory_append_many_matches_append():
    one, many = MemoryStore(), MemoryStore()
    for batch in range(5):
        msgs = _msgs(10 + batch, batch * 10)
        seqs = [one.append(subject, None, data, 7) for subject, data in msgs]
        first = many.append_many(msgs, 7)
        assert list(range(first, first + len(msgs))) == seqs
    assert many.state() == one.state()
    assert _contents(many) == _contents(one)


def test_file_append_many_with_a_sync_thread(tmp_path):
    d = str(tmp_path / "s")
    s = FileStore(d, block_size_max_bytes=8192)
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                s.sync()
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=syncer)
    t.start()
    try:
        expected = []
        for batch in range(200):
            msgs = _msgs(1 + batch % 40, batch)
            first = s.append_many(msgs, batch)
            expected.extend((first + i, subject, None, data, batch) for i, (subject, data) in enumerate(msgs))
            if batch % 10 == 0:
                s.flush()
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert _contents(s) == expected
    s.close()
    s = FileStore(d, block_size_max_bytes=8192)
    assert _contents(s) == expected
    s.close()


def test_pub_acks_match_pub_ack():
    from broker.jetstream import api
    from broker.jetstream.stream import Stream

    cfg = api.StreamConfig(name="ACKS", subjects=["a.>"], storage="memory", max_msg_size=-1, max_msgs=-1,
                           max_bytes=-1, max_msgs_per_subject=-1)
    stream = Stream(cfg, MemoryStore(), 0)
    for first, n in ((1, 1), (1, 7), (9, 3), (999_999, 4)):
        assert stream.pub_acks(first, n) == [stream.pub_ack(seq) for seq in range(first, first + n)]
