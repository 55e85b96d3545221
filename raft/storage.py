"""Durable Raft storage: a checksummed write-ahead log, hard state and snapshot files.

Layout in one directory: `wal` (the log), `hardstate` and `snapshot` (each replaced
atomically: temp file, fsync, rename, fsync of the directory). A WAL record is
`length u32 | crc32(payload) u32 | crc32(first 8 bytes) u32 | payload`, the payload being a
msgpack Entry. `save()` writes hard state, then a snapshot, then entries, and fsyncs before it
returns, so the caller may send votes and acknowledgements afterwards.

On open, the WAL is scanned. Damage with no valid record anywhere after it is a torn write from
a crash: it was never fsynced, hence never acknowledged, and is truncated. Damage followed by a
valid record, or a break in the index sequence, is corruption: `open` raises `StorageCorruption`
rather than silently dropping entries that may be committed. `open(..., repair=True)` cuts
the log at the damage and marks the hard state quarantined, so the core refuses to vote or
lead until a leader has brought it back up to date.

All file access goes through a small `Disk` interface so the simulator can run this exact code
on a disk that loses whatever was not fsynced.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Protocol

import msgspec

from .messages import ConfState, Entry, HardState, Snapshot, decode_entry, decode_hard_state, decode_snapshot, encode

WAL = "wal"
HARD_STATE = "hardstate"
SNAPSHOT = "snapshot"

_HEADER = struct.Struct("<III")
_CRC = struct.Struct("<I")
record_bytes_max = 64 << 20  # a larger length field can only be damage


class StorageCorruption(Exception):
    """The stored state is damaged in a way that could hide committed entries."""


class Disk(Protocol):
    def read(self, name: str) -> bytes | None: ...
    def append(self, name: str, data: bytes) -> None: ...
    def truncate(self, name: str, size: int) -> None: ...
    def sync(self, name: str) -> None: ...
    def replace(self, name: str, data: bytes) -> None: ...


class OsDisk:
    """A real directory. `replace` is temp file, fsync, rename, fsync of the directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._files: dict[str, object] = {}

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _handle(self, name: str):
        f = self._files.get(name)
        if f is None:
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
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


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


class Storage:
    """Owns the files of one Raft node. Not thread-safe: one caller at a time."""

    def __init__(self, disk: Disk, hard_state: HardState, snapshot: Snapshot, entries: list[Entry],
                 offsets: list[int], size: int) -> None:
        self.disk = disk
        self.hard_state = hard_state
        self.snapshot = snapshot
        self._entries_at_open = entries
        self._first = entries[0].index if entries else snapshot.index + 1
        self._offsets = offsets  # offsets[k] is where the record of index _first + k starts
        self._size = size
        self.fsyncs = 0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, disk: Disk, initial_conf: ConfState, repair: bool = False) -> "Storage":
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
        data = disk.read(WAL) or b""
        scan = scan_wal(data)
        if scan.corrupt is not None:
            problems.append(f"{WAL}: {scan.corrupt}")
        if problems and not repair:
            raise StorageCorruption("; ".join(problems) + " (open with repair=True to rejoin as a quarantined follower)")
        entries, offsets, end = scan.entries, scan.offsets, scan.end
        if problems:
            # Quarantine first, so a crash during the repair cannot leave a shortened log that
            # is allowed to vote. Keep the vote when the hard state survived: forgetting it could
            # allow two votes in one term once the quarantine ends.
            term = max([hard.term, snap.term] + [e.term for e in entries])
            hard = HardState(term, hard.vote if term == hard.term else 0, True)
            disk.replace(HARD_STATE, _sealed(encode(hard)))
        if snap_lost:
            entries, offsets, end = [], [], 0  # the log may start past a lost snapshot: start empty
            disk.replace(SNAPSHOT, _sealed(encode(snap)))
        if end < len(data):
            disk.truncate(WAL, end)  # torn tail (never acknowledged) or, under repair, the damage
            disk.sync(WAL)
        # Entries the snapshot covers are gone; entries after it are kept only if they continue
        # the snapshot's history (a crash between writing the snapshot and resetting the WAL).
        keep_from = 0
        while keep_from < len(entries) and entries[keep_from].index <= snap.index:
            keep_from += 1
        if keep_from < len(entries):
            at = entries[keep_from - 1] if keep_from else None
            continues = (at is not None and at.index == snap.index and at.term == snap.term) or (
                at is None and entries[0].index == snap.index + 1)
            if not continues:
                keep_from = len(entries)
        if keep_from:
            kept = entries[keep_from:]
            blob = data[offsets[keep_from] : end] if kept else b""
            disk.replace(WAL, blob)
            base = offsets[keep_from] if kept else 0
            entries, offsets, end = kept, [o - base for o in offsets[keep_from:]], len(blob)
        return cls(disk, hard, snap, entries, offsets, end)

    def initial_state(self) -> tuple[HardState, Snapshot, list[Entry]]:
        """What the core starts from. The entries are handed over once."""
        entries, self._entries_at_open = self._entries_at_open, []
        return self.hard_state, self.snapshot, entries

    @property
    def last_index(self) -> int:
        return self._first + len(self._offsets) - 1

    # -- writing -------------------------------------------------------------------------------
    def save(self, hard_state: HardState | None, snapshot: Snapshot | None, entries: list[Entry]) -> None:
        """Make a Ready durable. Returns only after fsync."""
        if hard_state is not None and hard_state != self.hard_state:
            self.disk.replace(HARD_STATE, _sealed(encode(hard_state)))
            self.hard_state = hard_state
            self.fsyncs += 2
        if snapshot is not None:
            self._write_snapshot(snapshot)
            self.disk.replace(WAL, b"")  # a snapshot from the leader replaces the whole log
            self._first, self._offsets, self._size = snapshot.index + 1, [], 0
            self.fsyncs += 2
        if entries:
            first = entries[0].index
            assert self._first <= first <= self.last_index + 1, (first, self._first, self.last_index)
            if first <= self.last_index:
                k = first - self._first
                self._size = self._offsets[k]
                del self._offsets[k:]
                self.disk.truncate(WAL, self._size)
            chunks = []
            for e in entries:
                rec = _frame(encode(e))
                self._offsets.append(self._size)
                self._size += len(rec)
                chunks.append(rec)
            self.disk.append(WAL, b"".join(chunks))
            self.disk.sync(WAL)
            self.fsyncs += 1

    def _write_snapshot(self, snapshot: Snapshot) -> None:
        assert snapshot.index >= self.snapshot.index, (snapshot.index, self.snapshot.index)
        self.disk.replace(SNAPSHOT, _sealed(encode(snapshot)))
        self.snapshot = snapshot

    def compact(self, snapshot: Snapshot) -> None:
        """Persist a local snapshot, then drop the WAL records it covers."""
        if snapshot.index <= self.snapshot.index:
            return
        self._write_snapshot(snapshot)
        cut = snapshot.index + 1 - self._first
        if cut <= 0:
            return
        data = self.disk.read(WAL) or b""
        if cut >= len(self._offsets):
            blob, self._offsets = b"", []
        else:
            base = self._offsets[cut]
            blob = data[base : self._size]
            self._offsets = [o - base for o in self._offsets[cut:]]
        self.disk.replace(WAL, blob)
        self._first = snapshot.index + 1
        self._size = len(blob)
        self.fsyncs += 4
