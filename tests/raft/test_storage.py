"""WAL, hard state and snapshot files: fsync boundaries, torn tails, corruption, repair."""

from __future__ import annotations

import os
import random

import pytest

from raft.messages import ConfState, Entry, HardState, Snapshot
from raft.storage import HARD_STATE, SNAPSHOT, WAL, OsDisk, Storage, StorageCorruption, scan_wal
from tests.raft.simdisk import SimDisk

CONF = ConfState((1, 2, 3))


def ents(term, lo, hi):
    return [Entry(term, i, 0, b"payload-%d" % i) for i in range(lo, hi + 1)]


def reopen(disk, repair=False):
    return Storage.open(disk, CONF, repair=repair).initial_state()


def test_empty_directory_starts_from_the_initial_configuration(tmp_path):
    hs, snap, entries = reopen(OsDisk(str(tmp_path)))
    assert hs == HardState() and snap == Snapshot(0, 0, CONF) and entries == []


def test_round_trip_on_real_files_with_truncation(tmp_path):
    disk = OsDisk(str(tmp_path))
    s = Storage.open(disk, CONF)
    s.save(HardState(2, 1), None, ents(1, 1, 10))
    s.save(None, None, ents(2, 6, 8))  # conflicting suffix replaced
    disk.close()
    hs, snap, entries = reopen(OsDisk(str(tmp_path)))
    assert hs == HardState(2, 1)
    assert [(e.index, e.term) for e in entries] == [(i, 1) for i in range(1, 6)] + [(6, 2), (7, 2), (8, 2)]
    assert not os.path.exists(tmp_path / "hardstate.tmp")


def test_compaction_and_snapshot_survive_reopen(tmp_path):
    disk = OsDisk(str(tmp_path))
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 20))
    s.compact(Snapshot(15, 1, CONF, b"sm-state"))
    s.save(None, None, ents(1, 21, 22))
    disk.close()
    hs, snap, entries = reopen(OsDisk(str(tmp_path)))
    assert snap.index == 15 and snap.data == b"sm-state"
    assert [e.index for e in entries] == list(range(16, 23))


def test_unsynced_writes_are_lost_on_crash_synced_ones_are_not():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 3))
    disk.append(WAL, b"\x05\x00\x00\x00garbage-never-synced")
    disk.crash(random.Random(0))
    _, _, entries = reopen(disk)
    assert [e.index for e in entries] == [1, 2, 3]


@pytest.mark.parametrize("seed", range(40))
def test_torn_tail_is_truncated_never_synced_data_only(seed):
    rng = random.Random(seed)
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 5))
    # an append whose fsync never happened, then a crash that keeps a torn piece of it
    from raft.messages import encode
    from raft.storage import _frame

    s.disk.append(WAL, b"".join(_frame(encode(e)) for e in ents(1, 6, 8)))
    disk.crash(rng, torn=True)
    hs, _, entries = reopen(disk)
    got = [e.index for e in entries]
    assert got[:5] == [1, 2, 3, 4, 5] and got == list(range(1, len(got) + 1)) and len(got) < 8
    assert hs == HardState(1, 1)
    assert scan_wal(disk.read(WAL)).end == len(disk.read(WAL))  # the tail was cut on disk too


def test_bit_flip_in_the_middle_is_a_clear_error_and_drops_nothing():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(3, 2), None, ents(1, 1, 10))
    size = len(disk.read(WAL))
    disk.flip_bit(WAL, random.Random(1), 0, size // 2)
    before = disk.read(WAL)
    with pytest.raises(StorageCorruption, match="wal"):
        reopen(disk)
    assert disk.read(WAL) == before  # refusing to open touched nothing


def test_repair_cuts_at_the_damage_and_quarantines():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(3, 2), None, ents(1, 1, 10))
    offsets = scan_wal(disk.read(WAL)).offsets
    disk.flip_bit(WAL, random.Random(2), offsets[4] + 12, offsets[5])  # inside record 5's payload
    hs, _, entries = reopen(disk, repair=True)
    assert [e.index for e in entries] == [1, 2, 3, 4]
    assert hs == HardState(3, 2, quarantined=True)  # the vote is kept: no second vote in term 3
    hs, _, _ = reopen(disk)  # the quarantine is durable
    assert hs.quarantined


def test_a_valid_record_out_of_sequence_is_corruption():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 3))
    from raft.messages import encode
    from raft.storage import _frame

    disk.append(WAL, _frame(encode(Entry(1, 7))) + _frame(encode(Entry(1, 8))))
    disk.sync(WAL)
    with pytest.raises(StorageCorruption, match="index 7 follows 3"):
        reopen(disk)


def test_corrupt_hard_state_and_snapshot_are_errors_and_repairable():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(4, 1), None, ents(2, 1, 6))
    s.compact(Snapshot(3, 2, CONF, b"snap"))
    disk.flip_bit(SNAPSHOT, random.Random(3))
    with pytest.raises(StorageCorruption, match="snapshot"):
        reopen(disk)
    hs, snap, entries = reopen(disk, repair=True)
    assert hs.quarantined and hs.term == 4 and snap.index == 0 and entries == []
    disk.flip_bit(HARD_STATE, random.Random(4))
    with pytest.raises(StorageCorruption, match="hardstate"):
        reopen(disk)


def test_crash_between_leader_snapshot_and_wal_reset_keeps_a_consistent_log():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(2, 1), None, ents(1, 1, 4) + ents(2, 5, 8))
    # A leader snapshot at (6, term 3) disagrees with our entry 6 (term 2): the old suffix must go.
    s._write_snapshot(Snapshot(6, 3, CONF, b"leader"))
    _, snap, entries = reopen(disk)
    assert snap.index == 6 and entries == []
    # A snapshot that agrees with the log keeps the suffix after it.
    disk2 = SimDisk()
    s2 = Storage.open(disk2, CONF)
    s2.save(HardState(2, 1), None, ents(2, 1, 8))
    s2._write_snapshot(Snapshot(6, 2, CONF, b"local"))
    _, snap, entries = reopen(disk2)
    assert [e.index for e in entries] == [7, 8]


def test_save_snapshot_from_leader_replaces_the_log():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 3))
    s.save(HardState(5, 0), Snapshot(50, 4, CONF, b"big"), ents(5, 51, 52))
    disk.crash(random.Random(0))
    hs, snap, entries = reopen(disk)
    assert hs.term == 5 and snap.index == 50 and [e.index for e in entries] == [51, 52]


def test_every_save_with_entries_ends_in_an_fsync():
    disk = SimDisk()
    s = Storage.open(disk, CONF)
    for i in range(1, 6):
        before = disk.syncs
        s.save(None, None, ents(1, i, i))
        assert disk.syncs == before + 1
        assert disk.synced(WAL)


@pytest.mark.parametrize("after", range(4))
def test_a_crash_during_repair_never_leaves_a_short_log_that_may_vote(after):
    from tests.raft.simdisk import SimCrash

    disk = SimDisk()
    s = Storage.open(disk, CONF)
    s.save(HardState(3, 2), None, ents(1, 1, 10))
    offsets = scan_wal(disk.read(WAL)).offsets
    disk.flip_bit(WAL, random.Random(5), offsets[3] + 12, offsets[4])
    disk.arm_crash(after=after)
    try:
        Storage.open(disk, CONF, repair=True)
    except SimCrash:
        disk.crash(random.Random(after), torn=True)
    try:
        hs, _, entries = reopen(disk)
    except StorageCorruption:
        hs, _, entries = reopen(disk, repair=True)
    assert hs.quarantined and [e.index for e in entries] == [1, 2, 3]


def test_torn_tail_on_real_files_is_cut(tmp_path):
    from raft.messages import encode
    from raft.storage import _frame

    disk = OsDisk(str(tmp_path))
    s = Storage.open(disk, CONF)
    s.save(HardState(1, 1), None, ents(1, 1, 4))
    disk.close()
    rec = _frame(encode(Entry(1, 5, 0, b"half-written")))
    with open(tmp_path / "wal", "ab") as f:
        f.write(rec[: len(rec) // 2])
    _, _, entries = reopen(OsDisk(str(tmp_path)))
    assert [e.index for e in entries] == [1, 2, 3, 4]
    assert scan_wal((tmp_path / "wal").read_bytes()).end == (tmp_path / "wal").stat().st_size
