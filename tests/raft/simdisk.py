"""A simulated disk for the Storage code: writes stay volatile until fsync.

`crash()` throws away every write that was not fsynced. With `torn=True` it may keep a random
prefix of unsynced appends (a torn write), possibly with its last byte damaged. `arm_crash()`
makes the next fsync or atomic replace raise SimCrash before it takes effect: a power loss in
the middle of a save. Appends are O(size of the append), so long simulations stay cheap.
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

    def synced(self, name: str) -> bool:
        f = self.files[name]
        return f.dur_copy is None and f.dur_len == len(f.cur)

    def crash(self, rng: random.Random, torn: bool = False) -> None:
        self.armed = False
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
