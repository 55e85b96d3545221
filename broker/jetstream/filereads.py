"""The read path of the file store: get() and get_run(), with their read-ahead.

How this works: a record is read back with pread and its crc32 checked. A read that
starts where the previous one ended (a consumer walking the stream) fetches the bytes
after it in one pread and keeps them in `_rcache`; a sealed block is read whole and
checked against its file crc32 once. FileStore (filestore.py) mixes FileReads in and
provides `_blocks`, `_bases`, `_lock`, `_fd()` and `_closed`; it sets `_rcache` and
`_rnext` to None when it cuts block files.
"""

from __future__ import annotations

import os
import threading
import zlib
from bisect import bisect_right

from broker.jetstream.blockfile import (FLAG_HDR, MSG_BODY, MSG_BODY_LEN, MSG_REC, U32, Block,
                                        CorruptStoreError)
from broker.jetstream.storetypes import StoredMsg

__all__ = ["FileReads"]

_READ_AHEAD_BYTES = 256 * 1024  # one pread per this much when get() walks a block in order
_VERIFY_BLOCK_MAX = 16 * 1024 * 1024  # a sealed block up to this size is read whole and checked once


class FileReads:
    """get(), get_run() and _read_record() of FileStore."""

    _blocks: list[Block]
    _bases: list[int]  # _blocks[i].base
    _lock: threading.Lock
    _closed: bool
    _rcache: tuple | None  # read-ahead: (block, its offs, start, end, bytes, verified)
    _rnext: tuple | None  # (block, offset) right after the last record read

    def _fd(self, b: Block) -> int:
        raise AssertionError("FileStore implements it")  # pragma: no cover

    def get(self, seq: int) -> StoredMsg | None:
        if self._closed:
            raise ValueError("store is closed")
        i = bisect_right(self._bases, seq) - 1
        if i < 0:
            return None
        b = self._blocks[i]
        j = b.index(seq)
        if j < 0:
            return None
        off, ln = b.offs[j], b.lens[j]
        rc = self._rcache
        if rc is not None and rc[0] is b and rc[1] is b.offs and rc[2] <= off and off + ln <= rc[3]:
            p = off - rc[2]  # read-ahead hit: those file bytes never change (compaction swaps offs)
            raw = rc[4][p:p + ln]
            checked = rc[5]
        else:
            raw = self._read_record(b, off, ln)
            checked = False
        if len(raw) != ln or (not checked and zlib.crc32(memoryview(raw)[4:]) != U32.unpack_from(raw)[0]):
            raise CorruptStoreError(b.path, off, f"checksum mismatch reading seq {seq}")
        _, ts, slen, flags, hlen = MSG_BODY.unpack_from(raw, 9)
        p = 9 + MSG_BODY_LEN + slen
        hdr = raw[p:p + hlen] if flags & FLAG_HDR else None
        return StoredMsg(seq, b.subs[j], hdr, raw[p + hlen:], ts)

    def get_run(self, start_seq: int, max_n: int) -> list[StoredMsg]:
        """Messages at start_seq, start_seq + 1, ... (at most max_n), ending before the first
        sequence not stored. Same checks as get(); records inside the read-ahead buffer of a
        dense block are decoded straight from it (a consumer reading its next batch)."""
        out: list[StoredMsg] = []
        seq = start_seq
        while len(out) < max_n:
            m = self.get(seq)  # also fills the read-ahead buffer
            if m is None:
                break
            out.append(m)
            seq += 1
            b = self._blocks[bisect_right(self._bases, m.seq) - 1]
            rc = self._rcache
            if not b.dense or rc is None or rc[0] is not b or rc[1] is not b.offs:
                continue
            start, end, buf, checked = rc[2], rc[3], rc[4], rc[5]
            mv = memoryview(buf)
            msg_rec = MSG_REC
            offs, lens, live, subs = b.offs, b.lens, b.live, b.subs
            j = seq - b.seqs[0]
            stop = min(len(offs), j + max_n - len(out))
            while j < stop and live[j]:
                off, ln = offs[j], lens[j]
                if off < start or off + ln > end:
                    break
                p = off - start
                crc, _, _, _, ts, slen, flags, hlen = msg_rec.unpack_from(buf, p)
                if not checked and zlib.crc32(mv[p + 4:p + ln]) != crc:
                    raise CorruptStoreError(b.path, off, f"checksum mismatch reading seq {seq}")
                q = p + msg_rec.size + slen
                out.append(StoredMsg(seq, subs[j], buf[q:q + hlen] if flags & FLAG_HDR else None,
                                     buf[q + hlen:p + ln], ts))
                seq += 1
                j += 1
        return out

    def _read_record(self, b: Block, off: int, ln: int) -> bytes:
        """Record bytes at `off`. A read right where the previous one ended (a consumer walking
        the stream) fetches up to _READ_AHEAD_BYTES of the already-written file with one pread
        and keeps it in _rcache (block, its offs array, start, end, bytes, verified) for the
        next gets. A sealed block (not the one being appended to) is read whole instead and
        checked against its file crc32 in one call: when that matches, the records in the
        buffer need no crc of their own (verified); when not, each record is still checked
        as it is read, so the damaged one is reported."""
        with self._lock:  # the sync thread may flush pend or recycle descriptors
            if off >= b.pend_off:
                p = off - b.pend_off
                return bytes(b.pend[p:p + ln])
            fd = self._fd(b)
            seq_read = self._rnext == (b, off)
            self._rnext = (b, off + ln)
            if not seq_read:
                return os.pread(fd, ln, off)
            if b is not self._blocks[-1] and b.pend_off <= _VERIFY_BLOCK_MAX:
                buf = os.pread(fd, b.pend_off, 0)
                verified = len(buf) == b.pend_off and zlib.crc32(buf) == b.fcrc
                self._rcache = (b, b.offs, 0, len(buf), buf, verified)
                return buf[off:off + ln]
            n = max(ln, min(_READ_AHEAD_BYTES, b.pend_off - off))
            buf = os.pread(fd, n, off)
        self._rcache = (b, b.offs, off, off + len(buf), buf, False)
        return buf[:ln]
