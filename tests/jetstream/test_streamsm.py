"""The replicated stream state machine (broker/jetstream/cluster/streamsm.py) and the stores'
truncate_after: every entry kind gives identical state on every replica; snapshots, restore,
catch-up and restart converge to the same state."""

from __future__ import annotations

import random

import msgspec
import pytest

from broker.jetstream.api import StreamConfig
from broker.jetstream.cluster.streamsm import (CatchupChunk, CorruptEntry, DeleteMsg, Expire, MsgError,
                                               PubBatch, Purge, RemoveAcked, StreamDiverged, StreamSM,
                                               UpdateConfig, encode_op)
from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore
from broker.jetstream.streamconfig import normalize
from raft.messages import Entry

S = 1_000_000_000
T0 = 1_700_000_000 * S


def cfg(storage: str = "memory", **kw) -> StreamConfig:
    return normalize(StreamConfig(name="S", subjects=["s.>"], storage=storage, num_replicas=3, **kw), clustered=True)


def hdr(**h: str) -> bytes:
    lines = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in h.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


class Group:
    """Three replicas fed the same committed log (what Raft guarantees)."""

    def __init__(self, config: StreamConfig, tmp_path=None, n: int = 3, block: int = 4096) -> None:
        self.config = config
        self.tmp = tmp_path
        self.block = block
        self.log: list[bytes] = []
        self.reps = [self.new_sm(i) for i in range(n)]
        self.commit(UpdateConfig(config, T0))

    def store(self, i: int):
        if self.config.storage == "file":
            return FileStore(self.tmp / f"r{i}", block_size_max_bytes=self.block)
        return MemoryStore()

    def new_sm(self, i: int, store=None) -> StreamSM:
        return StreamSM(self.config, store if store is not None else self.store(i), T0)

    def commit(self, op, reps=None) -> object:
        """Append op to the log and apply it on the given replicas (default all); every
        replica must return the same outcome, which is returned."""
        self.log.append(encode_op(op))
        index = len(self.log)
        results = [sm.apply(Entry(1, index, data=self.log[-1])) for sm in (self.reps if reps is None else reps)]
        assert all(r == results[0] for r in results), results
        return results[0]

    def publish(self, msgs, ts: int, leader: int = 0) -> list:
        return self.commit(self.reps[leader].pub_batch(msgs, ts))

    def replay(self, sm: StreamSM) -> None:
        """Hand sm every log entry after its applied index (Raft replay / catch-up of the log)."""
        for index in range(1, len(self.log) + 1):
            sm.apply(Entry(1, index, data=self.log[index - 1]))

    def assert_identical(self) -> None:
        first = self.reps[0].fingerprint()
        for sm in self.reps[1:]:
            assert sm.fingerprint() == first
        assert all(sm.applied_index == len(self.log) for sm in self.reps)


def catch_up(sm: StreamSM, server: StreamSM, chunk_msgs: int = 3) -> int:
    rounds = 0
    while sm.need is not None:
        sm.apply_catchup(server.catchup_chunk(sm.need.from_seq, chunk_msgs))
        rounds += 1
        assert rounds < 10_000
    return rounds


@pytest.fixture(params=["memory", "file"])
def storage(request):
    return request.param


# ---- every entry kind, identical on every replica -----------------------------------------
def test_batches_get_consecutive_sequences_and_leader_timestamp(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    res = g.publish([("s.a", None, b"1"), ("s.b", hdr(X="y"), b"2"), ("s.a", None, b"")], T0 + 5)
    assert res == [(1, False), (2, False), (3, False)]
    res = g.publish([("s.c", None, b"4")], T0 + 9, leader=2)
    assert res == [(4, False)]
    for sm in g.reps:
        assert [sm.store.get(q).ts for q in (1, 2, 3, 4)] == [T0 + 5] * 3 + [T0 + 9]
        assert sm.store.get(2).hdr == hdr(X="y")
    g.assert_identical()


def test_plain_batches_take_the_run_path_with_the_same_result(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    msgs = [(f"s.{i % 3}", None, bytes(i)) for i in range(50)]
    assert g.reps[0].stream.batch_ok()
    assert g.publish(msgs, T0 + 1) == [(q, False) for q in range(1, 51)]
    one_by_one = StreamSM(g.config, g.store(8), T0)
    one_by_one.apply(Entry(1, 1, data=g.log[0]))
    for subject, h, data in msgs:
        one_by_one.stream.process(subject, h, data, T0 + 1)
    assert one_by_one.fingerprint()[:3] == g.reps[0].fingerprint()[:3]
    g.assert_identical()


def test_dedupe_and_expected_checks_are_judged_in_log_order(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    g.publish([("s.a", hdr(Nats_Msg_Id="m1"), b"1")], T0 + 1)
    # The same id retried through another leader, and a batch whose checks depend on the
    # message before it in the same entry.
    res = g.publish([("s.a", hdr(Nats_Msg_Id="m1"), b"1"),
                     ("s.b", hdr(Nats_Expected_Last_Sequence="1"), b"2"),
                     ("s.b", hdr(Nats_Expected_Last_Sequence="1"), b"3"),
                     ("s.b", hdr(Nats_Expected_Last_Subject_Sequence="2"), b"4"),
                     ("s.c", hdr(Nats_Msg_Id="m2"), b"5"),
                     ("s.c", hdr(Nats_Expected_Last_Msg_Id="m2"), b"6"),
                     ("s.c", hdr(Nats_Expected_Last_Msg_Id="m2"), b"7")], T0 + 2, leader=1)
    assert res[0] == (1, True)
    assert res[1] == (2, False)
    assert isinstance(res[2], MsgError) and res[2].err_code == 10071  # wrong last sequence: 2
    assert "2" in res[2].description
    assert res[3] == (3, False)
    assert res[4:6] == [(4, False), (5, False)]
    assert isinstance(res[6], MsgError) and res[6].err_code == 10070  # last msg id is now ""
    # After the window the id is new again (Expire entries prune it everywhere).
    g.commit(Expire(T0 + 200 * S))
    assert g.publish([("s.a", hdr(Nats_Msg_Id="m1"), b"1")], T0 + 200 * S) == [(6, False)]
    g.assert_identical()


def test_apply_asserts_base_seq_and_skips_replays(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    g.publish([("s.a", None, b"1"), ("s.a", None, b"2")], T0 + 1)
    before = [sm.fingerprint() for sm in g.reps]
    # A replay of an entry already applied changes nothing.
    for sm in g.reps:
        assert sm.apply(Entry(1, len(g.log), data=g.log[-1])) is None
    assert [sm.fingerprint() for sm in g.reps] == before
    # A new entry proposed against a stale last_seq means this replica drifted: stop loudly.
    stale = encode_op(PubBatch(1, T0 + 2, [("s.a", None, b"3")]))
    with pytest.raises(StreamDiverged, match="last_seq 1.*at 2"):
        g.reps[0].apply(Entry(1, len(g.log) + 1, data=stale))
    assert g.reps[0].fingerprint() == before[0]


def test_garbage_entry_is_corruption_not_skipped():
    g = Group(cfg())
    for data in (b"", b"\xc1", msgspec.msgpack.encode({"x": 1}), msgspec.msgpack.encode(["nope", 1])):
        with pytest.raises(CorruptEntry):
            g.reps[0].apply(Entry(1, len(g.log) + 1, data=data))


def test_limits_discard_and_age_expiry_identical(storage, tmp_path):
    g = Group(cfg(storage, max_msgs=5, max_msgs_per_subject=2, max_age=10 * S), tmp_path)
    for i in range(4):
        g.publish([(f"s.{i % 3}", None, b"x" * i) for _ in range(3)], T0 + i * S, leader=i % 3)
    seqs = [m[0] for m in g.reps[0].fingerprint()[1]]
    assert len(seqs) == 5 and seqs[-1] == 12
    g.commit(Expire(T0 + 12 * S))  # ages out what was published at T0 + 0..2 s
    assert [m[0] for m in g.reps[1].fingerprint()[1]] == [11, 12]  # 10: per-subject limit
    g.commit(UpdateConfig(cfg(storage, max_msgs=2, discard="new", max_age=10 * S), T0 + 12 * S))
    assert g.reps[2].store.state().messages == 2
    res = g.publish([("s.9", None, b"n")], T0 + 12 * S)
    assert isinstance(res[0], MsgError) and res[0].err_code == 10077  # maximum messages exceeded
    g.assert_identical()


def test_purge_delete_and_acked_removals_identical(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    g.publish([(f"s.{i % 2}", None, str(i).encode()) for i in range(20)], T0 + 1)
    assert g.commit(DeleteMsg(3)) is True
    err = g.commit(DeleteMsg(3))
    assert isinstance(err, MsgError)
    assert g.commit(RemoveAcked([1, 2, 3, 99])) == 2
    assert g.commit(Purge("s.1", 0, 2)) == 7  # even sequences 4..20 minus the newest two
    assert g.commit(Purge("", 15, 0)) > 0
    g.assert_identical()
    assert [m[0] for m in g.reps[0].fingerprint()[1]] == [15, 17, 18, 19, 20]
    assert g.commit(Purge("", 30, 0)) == 5  # everything, next sequence 30
    assert g.publish([("s.x", None, b"")], T0 + 2) == [(30, False)]
    g.commit(UpdateConfig(cfg(storage, deny_delete=True), T0 + 3))
    assert isinstance(g.commit(DeleteMsg(30)), MsgError)
    g.assert_identical()


def test_ttl_and_markers_identical(storage, tmp_path):
    g = Group(cfg(storage, allow_msg_ttl=True, allow_rollup_hdrs=True, max_age=30 * S,
                  subject_delete_marker_ttl=5 * S), tmp_path)
    g.publish([("s.a", hdr(Nats_TTL="2s"), b"1"), ("s.b", None, b"2"), ("s.c", hdr(Nats_TTL="1h"), b"3")], T0)
    g.commit(Expire(T0 + 10 * S))  # s.a's TTL (raised to the marker TTL) ran out: a marker
    fp = g.reps[0].fingerprint()
    assert [m[0] for m in fp[1]][:2] == [2, 3] and len(fp[1]) == 3 and b"Nats-Marker-Reason" in fp[1][2][2]
    g.commit(Expire(T0 + 40 * S))  # max_age: s.b and s.c replaced by delete markers
    fp = g.reps[1].fingerprint()
    assert 2 not in [m[0] for m in fp[1]] and 3 not in [m[0] for m in fp[1]]
    assert all(b"Nats-Marker-Reason" in m[2] for m in fp[1])
    g.assert_identical()


# ---- stores: truncate_after -------------------------------------------------------------------
def _contents(store) -> tuple:
    st = store.state()
    st.bytes = 0
    msgs = []
    m = store.next_msg(0)
    while m is not None:
        msgs.append((m.seq, m.subject, m.hdr, m.data, m.ts))
        m = store.next_msg(m.seq + 1)
    return st, msgs, store.subjects()


def test_truncate_after_across_blocks_then_reopen(tmp_path):
    d = tmp_path / "fs"
    fs = FileStore(d, block_size_max_bytes=200)
    ms = MemoryStore()
    for s in (fs, ms):
        for i in range(1, 31):
            s.append(f"s.{i % 3}", hdr(A="b") if i % 4 == 0 else None, b"x" * 20, T0 + i)
        s.remove(5)
        s.remove(12)
        s.remove(13)
        s.remove(22)  # above the cut
    assert len(list(d.glob("*.blk"))) > 4
    fs.sync()
    for s in (fs, ms):
        s.truncate_after(17, T0 + 17)
    assert _contents(fs) == _contents(ms)
    assert fs.state().last_seq == 17 and [m[0] for m in _contents(fs)[1]][-1] == 17
    fs._release()  # a crash right after: truncate_after is durable
    fs = FileStore(d, block_size_max_bytes=200)
    assert _contents(fs) == _contents(ms)
    for s in (fs, ms):
        assert s.append("s.n", None, b"n", T0 + 100) == 18
        s.truncate_after(15, T0 + 15)
        s.truncate_after(20, T0 + 50)  # forward: 16..20 hold nothing
        assert s.append("s.m", None, b"m", T0 + 101) == 21
    fs.close()
    fs = FileStore(d, block_size_max_bytes=200)
    assert _contents(fs) == _contents(ms)
    assert fs.state().num_deleted == ms.state().num_deleted == 5 + 3
    fs.truncate_after(0, 0)
    ms.truncate_after(0, 0)
    assert _contents(fs) == _contents(ms) and fs.state().messages == 0
    fs.close()


def test_live_seqs_and_contains_on_both_stores(tmp_path):
    for s in (MemoryStore(), FileStore(tmp_path / "fs", block_size_max_bytes=200)):
        for i in range(700):
            s.append(f"s.{i % 3}", None, b"x", T0 + i)
        for q in [1, 2, 5] + list(range(100, 600)):
            s.remove(q)
        assert list(s.live_seqs()) == [3, 4] + list(range(6, 100)) + list(range(600, 701))
        assert list(s.live_seqs(650)) == list(range(650, 701))
        assert s.contains(3) and not s.contains(5) and not s.contains(701) and not s.contains(0)
        s.close()


@pytest.mark.parametrize("seed", range(40))
def test_truncate_after_random(tmp_path, seed):
    r = random.Random(seed)
    d = tmp_path / "fs"
    fs = FileStore(d, block_size_max_bytes=r.choice([120, 400, 5000]))
    ms = MemoryStore()
    ts = {0: 0}
    for i in range(r.randrange(1, 80)):
        x = r.random()
        if x < 0.7:
            subject, h, data = f"s.{r.randrange(4)}", hdr(A="b") if r.random() < 0.2 else None, b"d" * r.randrange(30)
            seq = fs.append(subject, h, data, T0 + i)
            assert ms.append(subject, h, data, T0 + i) == seq
            ts[seq] = T0 + i
        elif x < 0.92 and ms.state().messages:
            q = r.randrange(ms.state().first_seq, ms.state().last_seq + 1)
            assert fs.remove(q) == ms.remove(q)
        elif x < 0.95:
            upto = r.randrange(0, ms.state().last_seq + 2)
            assert fs.purge(None, upto) == ms.purge(None, upto)
        if r.random() < 0.1:
            fs.sync()
    assert _contents(fs) == _contents(ms)
    cut = r.randrange(0, ms.state().last_seq + 1)
    fs.truncate_after(cut, ts.get(cut, 7))
    ms.truncate_after(cut, ts.get(cut, 7))
    assert _contents(fs) == _contents(ms)
    fs._release()
    fs = FileStore(d, block_size_max_bytes=300)
    assert _contents(fs) == _contents(ms)
    assert fs.append("z", None, b"q", T0 + 999) == ms.append("z", None, b"q", T0 + 999)
    fs.close()
    fs = FileStore(d)
    assert _contents(fs) == _contents(ms)
    fs.close()


@pytest.mark.parametrize("seed", range(40))
def test_hold_removals_crash_then_truncate_gives_the_synced_state(tmp_path, seed):
    """With hold_removals, whatever a crash keeps of the writes after the last sync, cutting
    the appends (truncate_after) gives back exactly the state of that sync."""
    r = random.Random(seed)
    d = tmp_path / "fs"
    block = r.choice([150, 600, 5000])
    fs = FileStore(d, block_size_max_bytes=block, hold_removals=True)
    ms = MemoryStore()
    synced = _contents(ms)
    for i in range(r.randrange(5, 120)):
        x = r.random()
        st = ms.state()
        if x < 0.6:
            subject, data = f"s.{r.randrange(4)}", b"d" * r.randrange(40)
            assert fs.append(subject, None, data, T0 + i) == ms.append(subject, None, data, T0 + i)
        elif x < 0.8 and st.messages:
            q = r.randrange(st.first_seq, st.last_seq + 1)
            assert fs.remove(q) == ms.remove(q)
        elif x < 0.86:
            upto = r.choice([0, r.randrange(0, st.last_seq + 2)])
            assert fs.purge(None, upto) == ms.purge(None, upto)
        elif x < 0.9:
            f, keep = f"s.{r.randrange(4)}", r.randrange(3)
            assert fs.purge(f, 0, keep) == ms.purge(f, 0, keep)
        elif x < 0.93:
            q = st.last_seq + r.randrange(1, 5)
            fs.skip_to(q)
            ms.skip_to(q)
        elif x < 0.97:
            fs.sync()
            synced = _contents(ms)
        assert _contents(fs) == _contents(ms)
    if r.random() < 0.7:
        fs.flush()  # the OS got every write since the sync: a process crash keeps them
    fs._release()
    fs = FileStore(d, block_size_max_bytes=block, hold_removals=True)
    assert fs.state().last_seq >= synced[0].last_seq
    fs.truncate_after(synced[0].last_seq, synced[0].last_ts)
    assert _contents(fs) == synced
    fs.close()


# ---- snapshots, restore, catch-up, restart ----------------------------------------------------
def _workload(g: Group, rng: random.Random, n: int, t: int) -> int:
    for _ in range(n):
        x = rng.random()
        if x < 0.75:
            msgs = []
            for _ in range(rng.randrange(1, 5)):
                h = hdr(Nats_Msg_Id=f"id{rng.randrange(30)}") if rng.random() < 0.4 else None
                msgs.append((f"s.{rng.randrange(5)}", h, bytes(rng.randrange(40))))
            g.publish(msgs, t, leader=rng.randrange(len(g.reps)))
        elif x < 0.85:
            st = g.reps[0].store.state()
            g.commit(DeleteMsg(rng.randrange(st.first_seq, st.last_seq + 2)))
        elif x < 0.9:
            g.commit(Purge(f"s.{rng.randrange(5)}", 0, rng.randrange(3)))
        else:
            g.commit(Expire(t))
        t += rng.randrange(S)
    return t


def test_snapshot_round_trip_into_an_empty_replica(storage, tmp_path):
    g = Group(cfg(storage, max_msgs_per_subject=6), tmp_path)
    rng = random.Random(1)
    t = _workload(g, rng, 60, T0)
    snap = g.reps[0].snapshot()
    fresh = g.new_sm(9)
    stream = fresh.stream  # the wiring may hold it: restore and catch-up keep the object
    need = fresh.restore(snap)
    assert need is not None and need.from_seq == 1
    assert catch_up(fresh, g.reps[1]) > 1
    assert fresh.fingerprint() == g.reps[0].fingerprint()
    assert fresh.stream is stream
    g.reps.append(fresh)
    _workload(g, rng, 30, t)
    g.assert_identical()


def test_dedupe_of_removed_messages_survives_restore(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    g.publish([("s.a", hdr(Nats_Msg_Id="gone"), b"1"), ("s.b", hdr(Nats_Msg_Id="kept"), b"2")], T0)
    g.commit(DeleteMsg(1))
    fresh = g.new_sm(9)
    fresh.restore(g.reps[0].snapshot())
    catch_up(fresh, g.reps[0])
    g.reps.append(fresh)
    # Stored headers alone no longer know "gone": the summary carries the window.
    assert g.publish([("s.a", hdr(Nats_Msg_Id="gone"), b"1")], T0 + S) == [(1, True)]
    g.assert_identical()


def test_restore_behind_catches_up_including_removals(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    rng = random.Random(2)
    t = _workload(g, rng, 30, T0)
    lagging = g.reps.pop()  # stops receiving entries
    t = _workload(g, rng, 40, t)
    g.commit(Purge("", g.reps[0].store.state().first_seq + 3, 0))
    need = lagging.restore(g.reps[0].snapshot())  # the leader's snapshot (InstallSnapshot)
    assert need is not None and need.from_seq > 1
    catch_up(lagging, g.reps[0], chunk_msgs=7)
    g.reps.append(lagging)
    g.assert_identical()


def test_entries_arriving_during_catch_up_are_held_and_applied_after(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    rng = random.Random(3)
    t = _workload(g, rng, 30, T0)
    fresh = g.new_sm(9)
    fresh.restore(g.reps[0].snapshot())
    # Raft keeps handing over committed entries before the first chunk arrives.
    t = _workload(g, rng, 10, t)
    g.replay(fresh)
    assert fresh.catching_up
    # A snapshot taken while catching up is the target plus the held entries.
    mid = fresh.snapshot()
    while fresh.need is not None:
        chunk = g.reps[1].catchup_chunk(fresh.need.from_seq, 4)
        t = _workload(g, rng, 2, t)  # the server moves on between chunks
        g.replay(fresh)
        fresh.apply_catchup(chunk)
    g.reps.append(fresh)
    g.assert_identical()
    again = g.new_sm(10)
    again.restore(mid)
    catch_up(again, g.reps[0])
    g.replay(again)
    assert again.fingerprint() == g.reps[0].fingerprint()


def test_snapshot_taken_while_catching_up_carries_its_held_entries(storage, tmp_path):
    """Raft compacts a catching-up replica's log under its snapshot (target + held entries);
    a replica that gets it by InstallSnapshot while already past the target but not past
    the held entries must apply those."""
    g = Group(cfg(storage), tmp_path)
    rng = random.Random(9)
    t = _workload(g, rng, 20, T0)
    fresh = g.new_sm(9)
    fresh.restore(g.reps[0].snapshot())
    t = _workload(g, rng, 3, t)
    lagging = g.reps.pop()
    t = _workload(g, rng, 5, t)
    g.replay(fresh)
    assert fresh.catching_up
    mid = fresh.snapshot()
    assert len(msgspec.msgpack.decode(mid)["pending"]) == 8
    assert lagging.restore(mid) is None
    assert lagging.applied_index == len(g.log)
    assert lagging.fingerprint() == g.reps[0].fingerprint()


def test_repeated_and_stale_chunks_are_harmless():
    g = Group(cfg())
    g.publish([(f"s.{i}", None, bytes([i])) for i in range(12)], T0)
    fresh = g.new_sm(9)
    fresh.restore(g.reps[0].snapshot())
    first = g.reps[0].catchup_chunk(1, 5)
    fresh.apply_catchup(first)
    g.commit(DeleteMsg(3))  # the server moves on
    fresh.apply_catchup(g.reps[0].catchup_chunk(fresh.need.from_seq, 4))
    fresh.apply_catchup(first)  # delivered again, after seq 3 was removed here
    catch_up(fresh, g.reps[0])
    g.replay(fresh)
    assert fresh.fingerprint() == g.reps[0].fingerprint()
    forged = g.reps[0].catchup_chunk(1, 2)
    forged.records[0] = msgspec.structs.replace(forged.records[0], data=b"other")
    fresh2 = g.new_sm(10)
    fresh2.restore(g.reps[0].snapshot())
    fresh2.apply_catchup(g.reps[0].catchup_chunk(1, 3))
    with pytest.raises(StreamDiverged, match="differs"):
        fresh2.apply_catchup(forged)


def test_catchup_from_an_older_server_state_still_converges(tmp_path):
    g = Group(cfg(), tmp_path)
    rng = random.Random(4)
    t = _workload(g, rng, 20, T0)
    old_server = g.reps.pop()
    _workload(g, rng, 30, t)
    fresh = g.new_sm(9)
    fresh.restore(g.reps[0].snapshot())
    fresh.apply_catchup(g.reps[0].catchup_chunk(fresh.need.from_seq, 5))
    # The next chunk comes from a replica behind the target: it cannot finish from it ...
    while fresh.need is not None:
        before = fresh.need
        fresh.apply_catchup(old_server.catchup_chunk(fresh.need.from_seq, 100))
        if fresh.need == before:
            break
    # ... until that replica has applied the rest of the log and serves again.
    g.replay(old_server)
    catch_up(fresh, old_server)
    g.replay(fresh)
    assert fresh.fingerprint() == g.reps[0].fingerprint()


def test_restart_cuts_appends_after_the_snapshot_then_replays(tmp_path):
    g = Group(cfg("file"), tmp_path, block=300)
    t = _workload(g, random.Random(8), 30, T0)
    sm = g.reps[1]
    snap = sm.snapshot()
    at_snap = sm.fingerprint()
    for i in range(10):  # publishes only: nothing below the snapshot changes afterwards
        g.publish([("s.z", hdr(Nats_Msg_Id=f"late{i}"), b"late" * i), ("s.y", None, b"")], t + i)
    sm.store.flush()
    sm.store._release()
    store = FileStore(tmp_path / "r1", block_size_max_bytes=300)
    assert store.state().last_seq == at_snap[0].last_seq + 20
    restarted = g.new_sm(1, store)
    assert restarted.restore(snap) is None
    assert restarted.fingerprint() == at_snap
    g.replay(restarted)
    g.reps[1] = restarted
    g.assert_identical()


def test_restart_after_removals_reached_the_disk(tmp_path):
    g = Group(cfg("file"), tmp_path, block=300)
    rng = random.Random(5)
    t = _workload(g, rng, 30, T0)
    sm = g.reps[2]
    snap = sm.snapshot()  # fsyncs the store
    snap_index = sm.applied_index
    g.publish([("s.z", hdr(Nats_Msg_Id=f"late{i}"), b"late") for i in range(20)], t)
    _workload(g, rng, 10, t + S)
    sm.store.flush()  # the OS got these writes (a process crash keeps them)
    sm.store._release()  # crash: no index, nothing more written
    store = FileStore(tmp_path / "r2", block_size_max_bytes=300)
    assert store.state().last_seq > msgspec.msgpack.decode(snap)["last_seq"]
    restarted = g.new_sm(2, store)
    restarted.restore(snap)
    # Everything applied after the snapshot is cut before the log replays it.
    assert store.state().last_seq <= msgspec.msgpack.decode(snap)["last_seq"]
    assert not [m for m in restarted.fingerprint()[1] if m[1] == "s.z"]
    assert restarted.need is not None  # a removal after the snapshot reached the disk
    catch_up(restarted, g.reps[0])
    assert restarted.applied_index >= snap_index
    g.replay(restarted)
    g.reps[2] = restarted
    g.assert_identical()


def test_snapshot_makes_the_store_durable_first(tmp_path):
    g = Group(cfg("file"), tmp_path, block=300)
    _workload(g, random.Random(7), 40, T0)
    sm = g.reps[0]
    snap = sm.snapshot()
    want = sm.fingerprint()
    sm.store._release()  # crash right after the snapshot: nothing flushed by anyone else
    store = FileStore(tmp_path / "r0", block_size_max_bytes=300)
    restarted = g.new_sm(0, store)
    assert restarted.restore(snap) is None  # the store already holds the summary's state
    assert restarted.fingerprint() == want


def test_removed_newest_messages_are_in_the_summary(storage, tmp_path):
    g = Group(cfg(storage), tmp_path)
    g.publish([(f"s.{i}", None, b"x") for i in range(6)], T0)
    g.commit(DeleteMsg(6))
    g.commit(DeleteMsg(5))
    g.commit(DeleteMsg(2))
    snap = g.reps[0].snapshot()
    assert msgspec.msgpack.decode(snap)["deleted"] == [[2, 2], [5, 6]]
    # A replica whose store matches (a restart) restores without fetching anything.
    again = g.new_sm(1, g.reps[1].store)
    assert again.restore(snap) is None
    assert again.fingerprint() == g.reps[1].fingerprint()
    twin = g.new_sm(7)
    assert twin.restore(snap) is not None
    catch_up(twin, g.reps[0])
    assert twin.fingerprint() == g.reps[0].fingerprint()


def test_restart_without_snapshot_replays_from_an_empty_store(tmp_path):
    g = Group(cfg("file"), tmp_path)
    _workload(g, random.Random(6), 20, T0)
    g.reps[1].store.close()
    restarted = g.new_sm(1, FileStore(tmp_path / "r1"))
    restarted.ensure_started()
    assert restarted.store.state().messages == 0
    g.replay(restarted)
    g.reps[1] = restarted
    g.assert_identical()


def test_restore_of_an_older_snapshot_is_ignored():
    g = Group(cfg())
    old = g.reps[0].snapshot()
    g.publish([("s.a", None, b"1")], T0)
    before = g.reps[0].fingerprint()
    assert g.reps[0].restore(old) is None
    assert g.reps[0].fingerprint() == before
    # Raft now keeps that older snapshot: the wiring is asked for a fresh one.
    assert g.reps[0].snapshot_wanted
    g.reps[0].snapshot()
    assert not g.reps[0].snapshot_wanted


def test_catchup_chunk_is_consistent_with_its_summary():
    g = Group(cfg())
    g.publish([(f"s.{i}", None, b"x") for i in range(10)], T0)
    g.commit(DeleteMsg(4))
    chunk = g.reps[0].catchup_chunk(2, 5)
    assert isinstance(chunk, CatchupChunk)
    assert [m.seq for m in chunk.records] == [2, 3, 5, 6, 7] and not chunk.done
    assert chunk.summary.deleted == [(4, 4)] and chunk.summary.msgs == 9
    assert chunk.summary.index == len(g.log)
    assert g.reps[0].catchup_chunk(8, 5).done
