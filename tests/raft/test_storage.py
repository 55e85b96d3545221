"""WAL segments, hard state and snapshot files: fsync boundaries, torn tails, corruption, repair."""

from __future__ import annotations

import os
import random

import pytest

from raft.messages import ConfState, Entry, HardState, Snapshot
from raft.storage import (
    HARD_STATE,
    SNAPSHOT,
    OsDisk,
    Storage,
    StorageCorruption,
    scan_wal,
    segment_name,
    wal_records,
    wal_segments,
)
from tests.raft.simdisk import SimDisk

CONF = ConfState((1, 2, 3))
WAL = segment_name(1)  # the first segment, where a log that starts at index 1 begins


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
    assert os.listdir(tmp_path) and set(os.listdir(tmp_path)) == {"hardstate", WAL}


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
        assert disk.syncs == before + (2 if i == 1 else 1)  # the first also syncs the new segment's directory entry
        assert disk.synced(WAL) and WAL in disk.in_dir


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
    with open(tmp_path / WAL, "ab") as f:
        f.write(rec[: len(rec) // 2])
    _, _, entries = reopen(OsDisk(str(tmp_path)))
    assert [e.index for e in entries] == [1, 2, 3, 4]
    assert scan_wal((tmp_path / WAL).read_bytes()).end == (tmp_path / WAL).stat().st_size


# -- segments ---------------------------------------------------------------------------------
SEG = 256  # bytes: a few records per segment


def seg_open(disk, repair=False):
    return Storage.open(disk, CONF, repair=repair, segment_bytes=SEG)


def indexes(entries):
    return [e.index for e in entries]


def filled(disk, hi=30, term=1):
    s = seg_open(disk)
    s.save(HardState(term, 1), None, [])
    for lo in range(1, hi + 1, 4):
        s.save(None, None, ents(term, lo, min(hi, lo + 3)))
    return s


def test_segments_roll_at_the_size_limit_and_reopen_whole():
    disk = SimDisk()
    s = filled(disk)
    names = wal_segments(disk)
    assert len(names) >= 4 and names == s.segment_names()
    recs = wal_records(disk)
    assert [r[3].index for r in recs] == list(range(1, 31))
    for name in names:  # each named by its first index, none far past the limit
        first = [r for r in recs if r[0] == name][0][3].index
        assert name == segment_name(first) and len(disk.read(name)) <= SEG + 64
    disk.crash(random.Random(0))  # every roll synced the directory: nothing vanishes
    _, _, entries = reopen(disk)
    assert indexes(entries) == list(range(1, 31))


def test_compaction_deletes_whole_segments_and_rewrites_nothing():
    disk = SimDisk()
    s = filled(disk)
    recs = wal_records(disk)
    head = next(r[0] for r in recs if r[3].index == 17)
    before = {n: disk.read(n) for n in wal_segments(disk)}
    s.compact(Snapshot(17, 1, CONF, b"sm"))
    after = wal_segments(disk)
    assert after[0] == head and all(disk.read(n) == before[n] for n in after)  # deleted, never rewritten
    assert all(r[3].index > 17 or r[0] == head for r in wal_records(disk))
    s.save(None, None, ents(1, 31, 33))
    disk.crash(random.Random(1))
    _, snap, entries = reopen(disk)
    assert snap.index == 17 and indexes(entries) == list(range(18, 34))  # the head's older entries are skipped


def test_compaction_keeps_the_last_segment_even_when_covered():
    disk = SimDisk()
    s = filled(disk)
    s.compact(Snapshot(30, 1, CONF, b"all"))
    assert len(wal_segments(disk)) == 1
    s.save(None, None, ents(1, 31, 31))
    _, snap, entries = reopen(disk)
    assert snap.index == 30 and indexes(entries) == [31]


@pytest.mark.parametrize("at", [2, 9, 13, 14, 29, 30])
def test_truncating_a_suffix_works_across_segments(at):
    disk = SimDisk()
    s = filled(disk)
    s.save(HardState(2, 1), None, ents(2, at, at + 2))
    _, _, entries = reopen(disk)
    assert [(e.index, e.term) for e in entries] == [(i, 1) for i in range(1, at)] + [(i, 2) for i in range(at, at + 3)]
    firsts = [int(n.split("-")[1]) for n in wal_segments(disk)]
    assert all(f <= at for f in firsts[:-1])  # later segments went


def test_truncation_at_a_segment_start_reuses_it():
    disk = SimDisk()
    s = filled(disk)
    first = int(wal_segments(disk)[2].split("-")[1])
    s.save(HardState(2, 1), None, ents(2, first, first))
    assert wal_segments(disk)[-1] == segment_name(first)
    assert indexes(reopen(disk)[2]) == list(range(1, first + 1))


@pytest.mark.parametrize("seed", range(20))
def test_torn_tail_in_a_later_segment_is_cut(seed):
    from raft.messages import encode
    from raft.storage import _frame

    disk = SimDisk()
    s = filled(disk)
    last = wal_segments(disk)[-1]
    assert last != segment_name(1)
    disk.append(last, b"".join(_frame(encode(e)) for e in ents(1, 31, 33)))  # never synced
    disk.crash(random.Random(seed), torn=True)
    _, _, entries = reopen(disk)
    got = indexes(entries)
    assert got[:30] == list(range(1, 31)) and got == list(range(1, len(got) + 1)) and len(got) < 34
    assert scan_wal(disk.read(last)).end == len(disk.read(last))


def test_damage_at_the_end_of_an_earlier_segment_is_corruption_and_repairable():
    disk = SimDisk()
    filled(disk)
    names = wal_segments(disk)
    data = disk.read(names[1])
    last_rec = scan_wal(data).offsets[-1]
    disk.flip_bit(names[1], random.Random(7), last_rec + 12, len(data))  # the segment's last record
    with pytest.raises(StorageCorruption, match="later segments follow"):
        reopen(disk)
    hs, _, entries = seg_open(disk, repair=True).initial_state()
    kept = indexes(entries)
    assert hs.quarantined and kept == list(range(1, len(kept) + 1)) and kept[-1] < 30
    assert wal_segments(disk) == names[:2]  # the later segments are gone, the damage cut off
    s = seg_open(disk)
    s.save(None, None, ents(1, kept[-1] + 1, kept[-1] + 1))
    assert indexes(reopen(disk)[2]) == kept + [kept[-1] + 1]


def test_a_missing_middle_segment_is_corruption_and_repair_keeps_the_prefix():
    disk = SimDisk()
    filled(disk)
    names = wal_segments(disk)
    disk.remove(names[2])
    disk.sync_dir()
    with pytest.raises(StorageCorruption, match="starts at index"):
        reopen(disk)
    hs, _, entries = seg_open(disk, repair=True).initial_state()
    assert hs.quarantined and indexes(entries) == list(range(1, int(names[2].split("-")[1])))
    assert wal_segments(disk) == names[:2]


def test_a_log_starting_after_a_gap_past_the_snapshot_is_corruption():
    disk = SimDisk()
    s = filled(disk)
    s.compact(Snapshot(5, 1, CONF, b"sm"))
    for name in wal_segments(disk)[:2]:  # lose the segments right after the snapshot
        disk.remove(name)
    disk.sync_dir()
    with pytest.raises(StorageCorruption, match="after a snapshot at 5"):
        reopen(disk)
    hs, snap, entries = seg_open(disk, repair=True).initial_state()
    assert hs.quarantined and snap.index == 5 and entries == [] and wal_segments(disk) == []


def test_leader_snapshot_deletes_every_segment():
    disk = SimDisk()
    s = filled(disk)
    s.save(HardState(5, 0), Snapshot(50, 4, CONF, b"big"), ents(5, 51, 52))
    assert wal_segments(disk) == [segment_name(51)]
    disk.crash(random.Random(0))
    hs, snap, entries = reopen(disk)
    assert snap.index == 50 and indexes(entries) == [51, 52]


def check_log(entries, old, new, keep):
    """After a crash in the middle of replacing old[keep:] with new: a contiguous log from 1
    whose first `keep` entries are old and whose rest is a prefix of old's or of new's rest."""
    got = [(e.index, e.term) for e in entries]
    assert got == [(i, t) for i, t in got if True] and [i for i, _ in got] == list(range(1, len(got) + 1))
    assert got[:keep] == old[:keep]
    rest = got[keep:]
    assert rest == old[keep:keep + len(rest)] or rest == new[: len(rest)], (rest, old, new)


@pytest.mark.parametrize("after", range(8))
@pytest.mark.parametrize("at", [3, 14, 26])
@pytest.mark.parametrize("seed", range(3))
def test_a_crash_anywhere_in_a_truncation_leaves_a_consistent_log(at, after, seed):
    from tests.raft.simdisk import SimCrash

    disk = SimDisk()
    s = filled(disk)
    old = [(i, 1) for i in range(1, 31)]
    new_entries = ents(2, at, at + 12)  # long enough to roll into new segments again
    new = [(e.index, e.term) for e in new_entries]
    disk.arm_crash(after=after)
    try:
        s.save(HardState(2, 1), None, new_entries)
        disk.crash(random.Random(seed))
        _, _, entries = reopen(disk)
        assert [(e.index, e.term) for e in entries] == old[: at - 1] + new  # it returned: all durable
    except SimCrash:
        disk.crash(random.Random(seed * 100 + after), torn=True)
        _, _, entries = reopen(disk)  # never StorageCorruption: the directory syncs kept order
        check_log(entries, old, new, at - 1)


@pytest.mark.parametrize("seed", range(12))
def test_a_crash_anywhere_in_a_compaction_loses_nothing(seed):
    from tests.raft.simdisk import SimCrash

    for after in range(3):
        disk = SimDisk()
        s = filled(disk)
        disk.arm_crash(after=after)
        try:
            s.compact(Snapshot(22, 1, CONF, b"sm"))
        except SimCrash:
            pass
        disk.crash(random.Random(seed), torn=True)  # any subset of the removals may have landed
        _, snap, entries = reopen(disk)
        assert snap.index in (0, 22) and indexes(entries) == list(range(snap.index + 1, 31))


def test_segments_on_real_files(tmp_path):
    disk = OsDisk(str(tmp_path))
    s = filled(disk)
    assert len(disk._files) <= OsDisk.handles_max  # rolled-away segments do not keep files open
    s.compact(Snapshot(20, 1, CONF, b"sm"))
    s.save(HardState(2, 1), None, ents(2, 25, 40))
    disk.close()
    files = sorted(os.listdir(tmp_path))
    assert {"hardstate", "snapshot"} <= set(files) and len(files) > 4
    hs, snap, entries = seg_open(OsDisk(str(tmp_path))).initial_state()
    assert snap.index == 20 and [(e.index, e.term) for e in entries] == (
        [(i, 1) for i in range(21, 25)] + [(i, 2) for i in range(25, 41)])


def test_refusing_to_open_touches_nothing_even_with_stale_segments_around():
    disk = SimDisk()
    s = filled(disk)
    s._write_snapshot(Snapshot(22, 1, CONF, b"sm"))  # a crash before the covered segments went
    names = wal_segments(disk)
    victim = next(r for r in wal_records(disk) if r[3].index == 27)
    disk.flip_bit(victim[0], random.Random(9), victim[1] + 12, victim[2])
    before = {n: disk.read(n) for n in disk.names()}
    with pytest.raises(StorageCorruption):
        reopen(disk)
    assert {n: disk.read(n) for n in disk.names()} == before
    hs, snap, entries = seg_open(disk, repair=True).initial_state()
    assert hs.quarantined and snap.index == 22 and indexes(entries) == [23, 24, 25, 26]
    assert len(wal_segments(disk)) < len(names)
