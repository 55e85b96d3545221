"""A simulated disk for the Storage code: writes stay volatile until fsync.

`crash()` throws away every write that was not fsynced. With `torn=True` it may keep a random
prefix of unsynced appends (a torn write), possibly with a garbage tail, as a real disk can.
"""

from __future__ import annotations

import random


class SimDisk:
    def __init__(self) -> None:
        self.durable: dict[str, bytes] = {}
        self.current: dict[str, bytes] = {}
        self.syncs = 0

    def read(self, name: str) -> bytes | None:
        return self.current.get(name)

    def append(self, name: str, data: bytes) -> None:
        self.current[name] = self.current.get(name, b"") + data

    def truncate(self, name: str, size: int) -> None:
        self.current[name] = self.current.get(name, b"")[:size]

    def sync(self, name: str) -> None:
        self.syncs += 1
        self.durable[name] = self.current.get(name, b"")

    def replace(self, name: str, data: bytes) -> None:
        self.syncs += 2
        self.durable[name] = data
        self.current[name] = data

    def crash(self, rng: random.Random, torn: bool = False) -> None:
        for name in set(self.current) | set(self.durable):
            old = self.durable.get(name)
            cur = self.current.get(name, b"")
            if old is None:
                self.current.pop(name, None)
                self.durable.pop(name, None)
                continue
            if torn and len(cur) > len(old) and cur.startswith(old) and rng.random() < 0.5:
                extra = cur[len(old):]
                keep = extra[: rng.randrange(len(extra))]
                if keep and rng.random() < 0.3:
                    keep = keep[:-1] + bytes([keep[-1] ^ 0x40])
                old = old + keep
                self.durable[name] = old
            self.current[name] = old

    def flip_bit(self, name: str, rng: random.Random, lo: int = 0, hi: int | None = None) -> int:
        data = bytearray(self.durable[name])
        pos = rng.randrange(lo, hi if hi is not None else len(data))
        data[pos] ^= 1 << rng.randrange(8)
        self.durable[name] = self.current[name] = bytes(data)
        return pos
