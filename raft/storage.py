"""Durable Raft storage: a segmented, checksummed write-ahead log, hard state and snapshot files.

Layout in one directory: WAL segments `wal-<first index, 20 digits>`, and `hardstate` and
`snapshot` (each replaced atomically: temp file, fsync, rename, fsync of the directory). A WAL
record is `length u32 | crc32(payload) u32 | crc32(first 8 bytes) u32 | payload`, the payload
being a msgpack Entry. `save()` writes hard state, then a snapshot, then entries, and fsyncs
before it returns, so the caller may send votes and acknowledgements afterwards.

Entries go to the last segment; a new one starts when the next record would take it past
`segment_bytes` (the old one is fsynced first, and the directory after the new file is made).
Compaction after a snapshot at index i deletes the segments wholly at or below i, never
rewriting data; the segment holding i keeps its older entries, which are skipped on load.
Truncating a conflicting suffix deletes the later segments (last first, then a directory
fsync) and cuts the one holding the conflict. A leader snapshot deletes every segment. Deleting
from the end, or whole prefixes, means a crash can only leave a prefix or a suffix of segments
behind, never a hole.

On open, the segments are scanned in order. Damage with no valid record anywhere after it in
the last segment is a torn write from a crash: it was never fsynced, hence never acknowledged,
and is cut. Any other damage (a bad record followed by a valid one or by a later segment, a
break in the index sequence inside or between segments) is corruption: `open` raises
`StorageCorruption` rather than silently dropping entries that may be committed.
`open(..., repair=True)` cuts the log at the damage and marks the hard state quarantined, so
the core refuses to vote or lead until a leader has brought it back up to date.

Storage keeps only segment bounds in memory; the entries read at open are handed once to the
core (`initial_state`). All file access goes through a small `Disk` interface so the simulator
can run this exact code on a disk that loses whatever was not fsynced.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Protocol

import msgspec

from .messages import ConfState, Entry, HardState, Snapshot, decode_entry, decode_hard_state, decode_snapshot, encode

WAL = "wal"  # segment files are named WAL + "-" + 20-digit first index
HARD_STATE = "hardstate"
SNAPSHOT = "snapshot"

_HEADER = struct.Struct("<III")
_CRC = struct.Struct("<I")
record_bytes_max = 64 << 20  # a larger length field can only be damage
segment_bytes_default = 64 << 20


class StorageCorruption(Exception):
    """The stored state is damaged in a way that could hide committed entries."""


class Disk(Protocol):
    def read(self, name: str) -> bytes | None: ...
    def append(self, name: str, data: bytes) -> None: ...  # creates the file if missing
    def truncate(self, name: str, size: int) -> None: ...
    def sync(self, name: str) -> None: ...
    def replace(self, name: str, data: bytes) -> None: ...  # atomic, durable (directory included)
    def names(self) -> list[str]: ...
    def remove(self, name: str) -> None: ...
    def sync_dir(self) -> None: ...  # makes file creations and removals durable


class OsDisk:
    """A real directory. `replace` is temp file, fsync, rename, fsync of the directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._files: dict[str, object] = {}

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    handles_max = 4  # open files kept; older WAL segments are closed once appends moved on

    def _handle(self, name: str):
        f = self._files.get(name)
        if f is None:
            while len(self._files) >= self.handles_max:
                self._files.pop(next(iter(self._files))).close()  # the least recently opened
            f = open(self._p(name), "ab", buffering=0)
            self._files[name] = f
        return f

    def read(self, name: str) -> bytes | None:
        try:
            with open(self._p(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def append(self, name: str, data: bytes) -> None:
        self._handle(name).write(data)

    def truncate(self, name: str, size: int) -> None:
        self._handle(name).truncate(size)

    def sync(self, name: str) -> None:
        os.fsync(self._handle(name).fileno())

    def replace(self, name: str, data: bytes) -> None:
        f = self._files.pop(name, None)
        if f is not None:
            f.close()
        tmp = self._p(name + ".tmp")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._p(name))
        self.sync_dir()

    def names(self) -> list[str]:
        return [n for n in os.listdir(self.path) if not n.endswith(".tmp")]

    def remove(self, name: str) -> None:
        f = self._files.pop(name, None)
        if f is not None:
            f.close()
        try:
            os.remove(self._p(name))
        except FileNotFoundError:
            pass

    def sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def segment_name(first: int) -> str:
    return f"{WAL}-{first:020d}"


def segment_first(name: str) -> int | None:
    head, _, digits = name.partition("-")
    if head != WAL or len(digits) != 20 or not digits.isdigit():
        return None
    return int(digits)


def wal_segments(disk: Disk) -> list[str]:
    """The WAL segment names on `disk`, in log order."""
    return sorted((n for n in disk.names() if segment_first(n) is not None), key=segment_first)


def wal_records(disk: Disk) -> list[tuple[str, int, int, Entry]]:
    """Every valid record, in log order: (segment, start byte, end byte, entry). For tests and
    tools (what is on disk, where to damage it); stops at the first damage in each segment."""
    out = []
    for name in wal_segments(disk):
        data = disk.read(name) or b""
        scan = scan_wal(data)
        ends = scan.offsets[1:] + [scan.end]
        out.extend((name, a, b, e) for a, b, e in zip(scan.offsets, ends, scan.entries))
    return out


def _frame(payload: bytes) -> bytes:
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + _CRC.pack(zlib.crc32(head)) + payload


def _sealed(payload: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(payload)) + payload


def _unseal(name: str, data: bytes) -> bytes:
    if len(data) < 4 or _CRC.unpack_from(data)[0] != zlib.crc32(data[4:]):
        raise StorageCorruption(f"{name}: checksum mismatch ({len(data)} bytes)")
    return data[4:]


class WalScan(msgspec.Struct):
    entries: list[Entry]
    offsets: list[int]
    end: int  # bytes of valid records
    torn: bool  # a damaged last record follows `end`
    corrupt: str | None  # damage that is not a torn tail


def _valid_record_at(data: bytes, pos: int) -> bool:
    if len(data) - pos < _HEADER.size:
        return False
    length, pcrc, hcrc = _HEADER.unpack_from(data, pos)
    if hcrc != zlib.crc32(data[pos : pos + 8]) or pos + _HEADER.size + length > len(data):
        return False
    return zlib.crc32(data[pos + _HEADER.size : pos + _HEADER.size + length]) == pcrc


def _damage(entries: list[Entry], offsets: list[int], data: bytes, pos: int, what: str) -> WalScan:
    """A damaged record with any valid record after it is corruption; otherwise a torn tail."""
    for p in range(pos + 1, len(data) - _HEADER.size + 1):
        if _valid_record_at(data, p):
            return WalScan(entries, offsets, pos, False, f"{what} at byte {pos}, valid records follow")
    return WalScan(entries, offsets, pos, True, None)


def scan_wal(data: bytes) -> WalScan:
    """Scan one segment's bytes."""
    entries: list[Entry] = []
    offsets: list[int] = []
    pos = 0
    n = len(data)
    while pos < n:
        if n - pos < _HEADER.size:
            return WalScan(entries, offsets, pos, True, None)
        length, pcrc, hcrc = _HEADER.unpack_from(data, pos)
        if hcrc != zlib.crc32(data[pos : pos + 8]) or length > record_bytes_max:
            return _damage(entries, offsets, data, pos, "bad record header")
        end = pos + _HEADER.size + length
        if end > n:
            return _damage(entries, offsets, data, pos, "record cut short")
        payload = data[pos + _HEADER.size : end]
        if zlib.crc32(payload) != pcrc:
            return _damage(entries, offsets, data, pos, "bad record checksum")
        try:
            e = decode_entry(payload)
        except msgspec.DecodeError as exc:
            return WalScan(entries, offsets, pos, False, f"undecodable record at byte {pos}: {exc}")
        if entries and e.index != entries[-1].index + 1:
            return WalScan(entries, offsets, pos, False, f"index {e.index} follows {entries[-1].index} at byte {pos}")
        entries.append(e)
        offsets.append(pos)
        pos = end
    return WalScan(entries, offsets, pos, False, None)


def _offset_of(data: bytes, first: int, index: int) -> int:
    """Byte offset of the record of `index` in a segment starting at `first` (our own bytes,
    already validated: only the headers are walked)."""
    pos = 0
    for _ in range(index - first):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += _HEADER.size + length
    return pos


class _Segment:
    __slots__ = ("name", "first", "last", "size")

    def __init__(self, name: str, first: int, last: int, size: int) -> None:
        self.name = name
        self.first = first
        self.last = last  # first - 1 when empty
        self.size = size


def _remove_from_end(disk: Disk, names: list[str]) -> None:
    """Remove segments last first, each removal durable before the next: a crash leaves a
    prefix of the log, never a hole."""
    for name in reversed(names):
        disk.remove(name)
        disk.sync_dir()


def _load(disk: Disk, initial_conf: ConfState, repair: bool) -> tuple[HardState, Snapshot, list[Entry], list[_Segment]]:
    problems: list[str] = []
    raw = disk.read(HARD_STATE)
    hard = HardState()
    if raw is not None:
        try:
            hard = decode_hard_state(_unseal(HARD_STATE, raw))
        except (StorageCorruption, msgspec.DecodeError) as exc:
            problems.append(str(exc))
    snap = Snapshot(0, 0, initial_conf)
    raw = disk.read(SNAPSHOT)
    snap_lost = False
    if raw is not None:
        try:
            snap = decode_snapshot(_unseal(SNAPSHOT, raw))
        except (StorageCorruption, msgspec.DecodeError) as exc:
            problems.append(str(exc))
            snap_lost = True

    names = wal_segments(disk)
    covered = 0  # leading segments wholly below the snapshot (the next starts at or before it)
    while not snap_lost and covered + 1 < len(names) and segment_first(names[covered + 1]) <= snap.index + 1:
        covered += 1
    stale, names = names[:covered], names[covered:]  # a compaction was deleting them: not read
    segments: list[_Segment] = []
    entries: list[Entry] = []
    sizes: dict[str, int] = {}  # bytes on disk, where more than the valid records
    for k, name in enumerate(names):
        first = segment_first(name)
        assert first is not None
        expected = segments[-1].last + 1 if segments else None
        if expected is not None and first != expected:
            problems.append(f"{name}: starts at index {first}, the log before it ends at {expected - 1}")
            break
        data = disk.read(name) or b""
        scan = scan_wal(data)
        if scan.entries and scan.entries[0].index != first:
            problems.append(f"{name}: holds index {scan.entries[0].index} first")
            break
        segments.append(_Segment(name, first, first - 1 + len(scan.entries), scan.end))
        entries.extend(scan.entries)
        if scan.end < len(data):
            sizes[name] = len(data)
        if scan.corrupt is not None:
            problems.append(f"{name}: {scan.corrupt}")
            break
        if scan.torn and k < len(names) - 1:
            problems.append(f"{name}: damaged record at byte {scan.end}, later segments follow")
            break
    lost = names[len(segments):]  # segments after the damage
    gap = bool(segments) and not snap_lost and segments[0].first > snap.index + 1
    if gap:
        problems.append(f"{WAL}: the log starts at index {segments[0].first}, after a snapshot at {snap.index}")
    if problems and not repair:
        raise StorageCorruption("; ".join(problems) + " (open with repair=True to rejoin as a quarantined follower)")

    if problems:
        # Quarantine first, so a crash during the repair cannot leave a shortened log that is
        # allowed to vote. Keep the vote when the hard state survived: forgetting it could allow
        # two votes in one term once the quarantine ends.
        term = max([hard.term, snap.term] + [e.term for e in entries])
        hard = HardState(term, hard.vote if term == hard.term else 0, True)
        disk.replace(HARD_STATE, _sealed(encode(hard)))
    if stale:
        for name in stale:
            disk.remove(name)
        disk.sync_dir()
    _remove_from_end(disk, lost)
    for seg in segments:
        if seg.name in sizes:  # a torn tail (never acknowledged) or, under repair, the damage
            disk.truncate(seg.name, seg.size)
            disk.sync(seg.name)
    if snap_lost:
        disk.replace(SNAPSHOT, _sealed(encode(snap)))
    # Entries after the snapshot are kept only if they continue its history. A leader snapshot
    # that disagrees with our log replaces it (a crash may have left the old segments behind);
    # so does a lost snapshot (the log may start past it) or, under repair, a gap.
    at = next((e for e in entries if e.index == snap.index), None) if entries else None
    if snap_lost or gap or (at is not None and at.term != snap.term) or (entries and entries[-1].index <= snap.index):
        drop = len(segments)
    else:
        drop = 0
        while drop < len(segments) and segments[drop].last <= snap.index:
            drop += 1  # wholly covered: compaction had not deleted it yet
    if drop == len(segments):
        _remove_from_end(disk, [seg.name for seg in segments])
        segments = []
    elif drop:
        for seg in segments[:drop]:
            disk.remove(seg.name)
        disk.sync_dir()
        del segments[:drop]
    kept = [e for e in entries if e.index > snap.index] if segments else []
    return hard, snap, kept, segments


class Storage:
    """Owns the files of one Raft node. Not thread-safe: one caller at a time."""

    def __init__(self, disk: Disk, hard_state: HardState, snapshot: Snapshot, entries: list[Entry],
                 segments: list[_Segment], segment_bytes: int = segment_bytes_default) -> None:
        assert segment_bytes > 0
        self.disk = disk
        self.hard_state = hard_state
        self.snapshot = snapshot
        self.segment_bytes = segment_bytes
        self._entries_at_open = entries
        self._segments = segments
        self.fsyncs = 0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, disk: Disk, initial_conf: ConfState, repair: bool = False, *,
             segment_bytes: int = segment_bytes_default) -> "Storage":
        hard, snap, entries, segments = _load(disk, initial_conf, repair)
        return cls(disk, hard, snap, entries, segments, segment_bytes)

    def initial_state(self) -> tuple[HardState, Snapshot, list[Entry]]:
        """What the core starts from. The entries are handed over once."""
        entries, self._entries_at_open = self._entries_at_open, []
        return self.hard_state, self.snapshot, entries

    @property
    def last_index(self) -> int:
        return max(self._segments[-1].last, self.snapshot.index) if self._segments else self.snapshot.index

    def segment_names(self) -> list[str]:
        return [s.name for s in self._segments]

    # -- writing -------------------------------------------------------------------------------
    def save(self, hard_state: HardState | None, snapshot: Snapshot | None, entries: list[Entry]) -> None:
        """Make a Ready durable. Returns only after fsync."""
        if hard_state is not None and hard_state != self.hard_state:
            self.disk.replace(HARD_STATE, _sealed(encode(hard_state)))
            self.hard_state = hard_state
            self.fsyncs += 2
        if snapshot is not None:
            self._write_snapshot(snapshot)
            self._drop_segments_from(0)  # a snapshot from the leader replaces the whole log
        if entries:
            self._append(entries)

    def _append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        assert self.snapshot.index < first <= self.last_index + 1, (first, self.snapshot.index, self.last_index)
        if first <= self.last_index:
            self._truncate_from(first)
        segs, disk = self._segments, self.disk
        cur = segs[-1] if segs else None
        chunks: list[bytes] = []
        for e in entries:
            rec = _frame(encode(e))
            if cur is None or (cur.size > 0 and cur.size + len(rec) > self.segment_bytes):
                if cur is not None:  # roll: the old segment is whole and durable before the next exists
                    if chunks:
                        disk.append(cur.name, b"".join(chunks))
                        chunks = []
                    disk.sync(cur.name)
                    self.fsyncs += 1
                cur = _Segment(segment_name(e.index), e.index, e.index - 1, 0)
                disk.append(cur.name, b"")
                disk.sync_dir()
                self.fsyncs += 1
                segs.append(cur)
            chunks.append(rec)
            cur.size += len(rec)
            cur.last = e.index
        assert cur is not None
        disk.append(cur.name, b"".join(chunks))
        disk.sync(cur.name)
        self.fsyncs += 1

    def _truncate_from(self, index: int) -> None:
        """Cut the log before `index` (a conflicting suffix): later segments go, last first."""
        segs = self._segments
        k = next(k for k, s in enumerate(segs) if s.first <= index <= s.last)
        self._drop_segments_from(k + 1)
        seg = segs[k]
        data = self.disk.read(seg.name) or b""
        cut = _offset_of(data, seg.first, index)
        self.disk.truncate(seg.name, cut)  # made durable by the fsync after the append
        seg.size = cut
        seg.last = index - 1

    def _drop_segments_from(self, k: int) -> None:
        """Delete segments k.. last first, each removal durable before the next, so a crash
        leaves a prefix of the log, never a hole (rare: a conflict longer than a segment, or a
        leader snapshot)."""
        doomed = self._segments[k:]
        del self._segments[k:]
        _remove_from_end(self.disk, [seg.name for seg in doomed])
        self.fsyncs += len(doomed)

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        assert snapshot.index >= self.snapshot.index, (snapshot.index, self.snapshot.index)
        self.disk.replace(SNAPSHOT, _sealed(encode(snapshot)))
        self.snapshot = snapshot
        self.fsyncs += 2

    def compact(self, snapshot: Snapshot) -> None:
        """Persist a local snapshot, then delete the segments it wholly covers (oldest first: a
        crash leaves a suffix). The last segment stays, so appends go on where they were."""
        if snapshot.index <= self.snapshot.index:
            return
        assert snapshot.index <= self.last_index, (snapshot.index, self.last_index)
        self._write_snapshot(snapshot)
        segs = self._segments
        n = 0
        while n < len(segs) - 1 and segs[n].last <= snapshot.index:
            n += 1
        if n:
            for seg in segs[:n]:
                self.disk.remove(seg.name)
            self.disk.sync_dir()
            self.fsyncs += 1
            del segs[:n]
