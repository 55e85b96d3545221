"""A simulated disk for the Storage code: writes stay volatile until fsync.

`crash()` throws away every write that was not fsynced. With `torn=True` it may keep a random
prefix of unsynced appends (a torn write), possibly with its last byte damaged. `arm_crash()`
makes the next fsync or atomic replace raise SimCrash before it takes effect: a power loss in
the middle of a save. Appends are O(size of the append), so long simulations stay cheap.

The directory is modelled too: a file created by `append` vanishes in a crash until
`sync_dir()` (or a `replace`, which syncs the directory), and a file `remove`d comes back, with
its durable bytes, unless `sync_dir()` followed the removal. With `torn=True`, each of those
unsynced directory changes independently may or may not survive.
"""

from __future__ import annotations

import random


class SimCrash(Exception):
    """The simulated machine lost power during a write."""


class _File:
    __slots__ = ("cur", "dur_len", "dur_copy")

    def __init__(self, data: bytes = b"") -> None:
        self.cur = bytearray(data)
        self.dur_len = len(data)  # cur[:dur_len] is durable unless dur_copy says otherwise
        self.dur_copy: bytes | None = None  # durable bytes, when cur was cut below dur_len


class SimDisk:
    def __init__(self) -> None:
        self.files: dict[str, _File] = {}
        self.in_dir: set[str] = set()  # names whose directory entry is durable
        self.removed: dict[str, bytes] = {}  # removed since the last sync_dir: durable bytes
        self.syncs = 0
        self.armed = False
        self.armed_after = 0

    def arm_crash(self, after: int = 0) -> None:
        """Lose power at the next fsync or replace, or `after` durable writes later."""
        self.armed = True
        self.armed_after = after

    def _boom(self) -> None:
        if self.armed:
            if self.armed_after > 0:
                self.armed_after -= 1
                return
            self.armed = False
            raise SimCrash()

    def read(self, name: str) -> bytes | None:
        f = self.files.get(name)
        return None if f is None else bytes(f.cur)

    def append(self, name: str, data: bytes) -> None:
        f = self.files.get(name)
        if f is None:
            f = self.files[name] = _File()
        f.cur += data

    def truncate(self, name: str, size: int) -> None:
        f = self.files.setdefault(name, _File())
        if size < f.dur_len and f.dur_copy is None:
            f.dur_copy = bytes(f.cur[: f.dur_len])
        del f.cur[size:]

    def sync(self, name: str) -> None:
        self._boom()
        self.syncs += 1
        f = self.files.setdefault(name, _File())
        f.dur_len = len(f.cur)
        f.dur_copy = None

    def replace(self, name: str, data: bytes) -> None:
        self._boom()
        self.syncs += 2
        self.files[name] = _File(data)
        self.in_dir.add(name)
        self.removed.pop(name, None)

    def names(self) -> list[str]:
        return list(self.files)

    def remove(self, name: str) -> None:
        f = self.files.pop(name, None)
        if f is not None and name in self.in_dir:
            self.in_dir.discard(name)
            self.removed[name] = f.dur_copy if f.dur_copy is not None else bytes(f.cur[: f.dur_len])

    def sync_dir(self) -> None:
        self._boom()
        self.syncs += 1
        self.in_dir = set(self.files)
        self.removed.clear()

    def synced(self, name: str) -> bool:
        f = self.files[name]
        return f.dur_copy is None and f.dur_len == len(f.cur)

    def crash(self, rng: random.Random, torn: bool = False) -> None:
        self.armed = False
        # Directory changes since the last sync_dir are lost; with torn=True each one may
        # independently have reached the disk (no order among them is promised).
        for name in [n for n in self.files if n not in self.in_dir]:
            if not (torn and rng.random() < 0.5):
                del self.files[name]  # created, but the directory entry never reached the disk
        for name, data in self.removed.items():
            if not (torn and rng.random() < 0.5):
                self.files[name] = _File(data)  # removed, but the removal never reached the disk
        self.in_dir = set(self.files)
        self.removed.clear()
        for f in self.files.values():
            if f.dur_copy is not None:
                f.cur = bytearray(f.dur_copy)
            elif len(f.cur) > f.dur_len:
                keep = 0
                extra = len(f.cur) - f.dur_len
                if torn and rng.random() < 0.5:
                    keep = rng.randrange(extra)
                del f.cur[f.dur_len + keep :]
                if keep and rng.random() < 0.3:
                    f.cur[-1] ^= 0x40
            f.dur_len = len(f.cur)
            f.dur_copy = None

    def flip_bit(self, name: str, rng: random.Random, lo: int = 0, hi: int | None = None) -> int:
        f = self.files[name]
        assert self.synced(name)
        pos = rng.randrange(lo, hi if hi is not None else len(f.cur))
        f.cur[pos] ^= 1 << rng.randrange(8)
        return pos
