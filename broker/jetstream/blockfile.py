"""On-disk format of the file store: block records, block replay and the index.db codec.

How this works
- A store directory holds block files `<num>.blk` (num ascending, never reused).
  Every record is `crc32 u32 | body_len u32 | type u8 | body`; the crc covers
  everything after itself. Types:
    META  first record of each block: magic, last_seq, last_ts, purge_below
    MSG   seq, ts, subject, optional header, payload
    DEL   seq of a message stored in the *same* block (tombstone)
  Because a tombstone always lives next to its message, every block is
  self-contained and can be unlinked once all its messages are removed. A META with
  purge_below set says "drop every older block" (a purge of everything or a skip).
- load_block() replays one block file into a Block (the in-memory index of its
  records). A bad record at the end of a file (torn write after a crash: never
  acknowledged) is truncated; a bad record followed by a valid one, or a complete
  last record with a bad checksum, is corruption and raises CorruptStoreError naming
  the file and offset. Nothing is dropped silently except a short torn tail.
- index.db is a snapshot of every block's index written by a clean close, so that
  reopening does not replay every record (encode_index / decode_index below).
- A Compaction rewrites one block without its removed records into `<num>.blk.compact`.

This module holds no store state: filestore.py decides when to write, replay, compact.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from typing import Callable

__all__ = ["DEL", "FLAG_HDR", "META", "MSG", "MSG_BODY", "MSG_BODY_LEN", "MSG_HEAD", "MSG_REC",
           "U32", "Block", "Compaction", "CorruptStoreError", "StoreLockedError", "decode_index",
           "del_record", "encode_index", "load_block", "meta_record"]

# Records of a block file
META, MSG, DEL = 1, 2, 3  # record types
_MAGIC = b"NJSB"
_VERSION = 1
U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_REC = struct.Struct("<IIB")  # crc, body_len, type
# body_len, type, then the MSG body header: seq, ts, subject len, flags, header len
MSG_HEAD = struct.Struct("<IBQqHBI")
MSG_REC = struct.Struct("<IIBQqHBI")  # crc, body_len, type, then the MSG body header
MSG_BODY = struct.Struct("<QqHBI")
MSG_BODY_LEN = MSG_BODY.size  # 23
_DEL_HEAD = struct.Struct("<IBQ")
_META_HEAD = struct.Struct("<IB4sBQqQ")
_META_BODY = struct.Struct("<4sBQqQ")
FLAG_HDR = 1  # MSG flags: the message has a header (maybe empty)
_TYPE_BYTE = re.compile(b"[\x01\x02\x03]")
_MIN_BODY = {META: _META_BODY.size, MSG: MSG_BODY_LEN, DEL: 8}

# index.db
_INDEX_MAGIC = b"NJSI"
_BYTEORDER = 0 if sys.byteorder == "little" else 1
_INDEX_HEAD = struct.Struct("<4sBBQqI")  # magic, version, byte order, last_seq, last_ts, blocks
_INDEX_BLOCK = struct.Struct("<QQIQBQQQ")  # num, size, fcrc, base, dense, nlive, count, live bytes


class CorruptStoreError(Exception):
    """A block file holds a damaged record that is not a torn tail."""

    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(f"corrupt message store file {path} at offset {offset}: {why}")
        self.path = path
        self.offset = offset


class StoreLockedError(Exception):
    """Another FileStore (maybe in another process) has this directory open."""


def meta_record(last_seq: int, last_ts: int, purge_below: int) -> bytes:
    head = _META_HEAD.pack(_META_BODY.size, META, _MAGIC, _VERSION, last_seq, last_ts, purge_below)
    return U32.pack(zlib.crc32(head)) + head


def del_record(seq: int) -> bytes:
    head = _DEL_HEAD.pack(8, DEL, seq)
    return U32.pack(zlib.crc32(head)) + head


class Block:
    """The in-memory index of one block file: per MSG record, parallel arrays of seq, file
    offset, record length, ts and accounted size, plus its interned subject and a live
    flag; and the appends not yet handed to the file (pend)."""

    __slots__ = ("num", "path", "base", "size", "seqs", "offs", "lens", "tss", "msz", "subs",
                 "live", "nlive", "dense", "pend", "pend_off", "fcrc", "live_bytes",
                 "compacting")

    def __init__(self, num: int, path: str, base: int) -> None:
        self.num = num
        self.path = path
        self.base = base  # every seq in this block is >= base
        self.size = 0  # file length including what is still buffered in pend
        self.seqs = array("Q")
        self.offs = array("I")
        self.lens = array("I")
        self.tss = array("q")
        self.msz = array("I")
        self.subs: list[str] = []
        self.live = bytearray()
        self.nlive = 0
        self.dense = True  # seqs are consecutive: index = seq - seqs[0]
        self.pend = bytearray()
        self.pend_off = 0  # file offset of pend[0]
        self.fcrc = 0  # crc32 of the bytes handed to the file so far (checks index.db)
        self.live_bytes = 0  # META plus live MSG records; the rest of `size` is garbage
        self.compacting = False  # a compaction request is out for this block

    def index(self, seq: int) -> int:
        """Position of a live `seq` in this block's arrays, -1 if absent."""
        seqs = self.seqs
        n = len(seqs)
        if not n:
            return -1
        if self.dense:
            j = seq - seqs[0]
            if j < 0 or j >= n:
                return -1
        else:
            j = bisect_left(seqs, seq)
            if j == n or seqs[j] != seq:
                return -1
        return j if self.live[j] else -1

    def add(self, seq: int, off: int, ln: int, ts: int, size: int, subject: str) -> None:
        seqs = self.seqs
        if seqs and seq != seqs[-1] + 1:
            self.dense = False
        seqs.append(seq)
        self.offs.append(off)
        self.lens.append(ln)
        self.tss.append(ts)
        self.msz.append(size)
        self.subs.append(subject)
        self.live.append(1)
        self.nlive += 1
        self.live_bytes += ln


class Compaction:
    """Rewrite of one block without its removed records. The event loop asks for it
    (a snapshot of the live records), sync() writes and fsyncs `<block>.compact` in its
    thread, and the event loop swaps it in, unless the block changed meanwhile."""

    __slots__ = ("num", "path", "size", "meta_len", "js", "offs", "lens", "new_offs",
                 "new_size", "new_crc")

    def __init__(self, b: Block) -> None:
        live = b.live
        self.num, self.path, self.size = b.num, b.path, b.size
        self.meta_len = b.offs[0]
        self.js = array("I", [j for j in range(len(live)) if live[j]])
        self.offs = array("I", [b.offs[j] for j in self.js])
        self.lens = array("I", [b.lens[j] for j in self.js])
        self.new_offs = array("I")
        self.new_size = 0
        self.new_crc = 0

    def write(self) -> bool:
        """Runs in the sync thread: write the compacted copy; False if that failed."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            data = os.pread(fd, self.size, 0)
        finally:
            os.close(fd)
        if len(data) != self.size:
            return False
        out = bytearray(data[:self.meta_len])
        new_offs = self.new_offs
        mv = memoryview(data)
        for off, ln in zip(self.offs, self.lens):
            rec = mv[off:off + ln]
            if zlib.crc32(rec[4:]) != U32.unpack_from(rec)[0]:
                return False  # leave a damaged block alone; get() reports it
            new_offs.append(len(out))
            out += rec
        mv.release()
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(out)
            done = 0
            while done < len(out):
                done += os.write(fd, view[done:])
            view.release()
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.new_size = len(out)
        self.new_crc = zlib.crc32(out)
        return True


def load_block(num: int, path: str, last: int, last_ts: int) -> tuple[Block, int, int, int]:
    """Replay block file `path` written after last_seq `last` (last_ts `last_ts`); returns
    the block, its META's purge_below and the last seq and ts once it is read. Truncates a
    torn tail; raises CorruptStoreError for anything else that is damaged."""
    with open(path, "rb") as f:
        data = f.read()
    n = len(data)
    mv = memoryview(data)
    b = Block(num, path, last + 1)
    purge_below = 0
    crc32 = zlib.crc32
    rec_unpack = _REC.unpack_from
    msg_unpack = MSG_BODY.unpack_from
    intern = sys.intern
    seqs_append, offs_append, lens_append = b.seqs.append, b.offs.append, b.lens.append
    tss_append, msz_append, subs_append = b.tss.append, b.msz.append, b.subs.append
    live_append = b.live.append
    subjects: dict[bytes, str] = {}
    prev = -1
    off = 0
    first_rec = True
    try:
        while off < n:
            bad = n - off < 9
            if not bad:
                crc, blen, typ = rec_unpack(data, off)
                end = off + 9 + blen
                bad = (end > n or blen < _MIN_BODY.get(typ, 1 << 40)
                       or crc32(mv[off + 4:end]) != crc)
            if bad:
                if _valid_record_after(data, off + 1):
                    raise CorruptStoreError(path, off, "bad checksum or length before valid data")
                if n - off >= 9 and end <= n and any(mv[off:end]):
                    # Complete but damaged: a crash leaves a short record, not this.
                    raise CorruptStoreError(path, off, "bad checksum in last record")
                with open(path, "r+b") as f:  # torn tail: never acknowledged
                    f.truncate(off)
                n = off
                break
            if typ == MSG:
                seq, ts, slen, flags, hlen = msg_unpack(data, off + 9)
                if seq <= last:
                    raise CorruptStoreError(path, off, f"sequence {seq} not above {last}")
                p = off + 9 + MSG_BODY_LEN
                dlen = blen - MSG_BODY_LEN - slen - hlen
                if dlen < 0:
                    raise CorruptStoreError(path, off, "record fields exceed its length")
                raw_subject = data[p:p + slen]
                subject = subjects.get(raw_subject)
                if subject is None:
                    subject = subjects[raw_subject] = intern(str(raw_subject, "utf-8"))
                if seq != prev + 1 and prev >= 0:
                    b.dense = False
                prev = seq
                seqs_append(seq)  # Block.add() inlined: replay is per record
                offs_append(off)
                lens_append(end - off)
                tss_append(ts)
                msz_append(30 + slen + dlen + (4 + hlen if hlen else 0))
                subs_append(subject)
                live_append(1)
                b.nlive += 1
                b.live_bytes += end - off
                last = seq
                last_ts = ts
            elif typ == DEL:
                (seq,) = _U64.unpack_from(data, off + 9)
                j = b.index(seq)
                if j >= 0:
                    b.live[j] = 0
                    b.nlive -= 1
                    b.live_bytes -= b.lens[j]
            else:  # META
                magic, version, meta_seq, meta_ts, pb = _META_BODY.unpack_from(data, off + 9)
                if magic != _MAGIC or version != _VERSION:
                    raise CorruptStoreError(path, off, "unknown block format")
                if not first_rec:
                    raise CorruptStoreError(path, off, "META record inside a block")
                if meta_seq >= last or pb:
                    last = meta_seq
                    last_ts = meta_ts
                b.base = meta_seq + 1
                b.live_bytes += end - off
                purge_below = pb
            first_rec = False
            off = end
    finally:
        mv.release()
    b.size = b.pend_off = n
    b.fcrc = zlib.crc32(data[:n]) if n < len(data) else zlib.crc32(data)
    return b, purge_below, last, last_ts


def _valid_record_after(data: bytes, start: int) -> bool:
    """Is there any well-formed record starting at or after `start`?"""
    n = len(data)
    rec_unpack = _REC.unpack_from
    crc32 = zlib.crc32
    # Only offsets whose type byte (at +8) is valid can start a record; the regex
    # skips zero-filled or garbage stretches at C speed.
    for m in _TYPE_BYTE.finditer(data, start + 8, n):
        p = m.start() - 8
        crc, blen, typ = rec_unpack(data, p)
        if blen < _MIN_BODY[typ] or p + 9 + blen > n:
            continue
        if crc32(data[p + 4:p + 9 + blen]) == crc:
            return True
    return False


# ---------------------------------------------------------------------- index.db
# Written by a clean close so that reopening does not replay every record:
#   magic, version, byte order, last_seq, last_ts, subject table, then per block its
#   number, file size, file crc32 and index arrays; a crc32 of all that at the end.
# It is used only if every block file is exactly the one it describes (same set of
# files, sizes and crc32 of their contents); it is deleted when loaded, so it is
# never used twice. Anything else means a full replay, which checks every record.

def encode_index(blocks: list[Block], last: int, last_ts: int) -> bytes:
    """The contents of index.db for these blocks, trailing crc32 included."""
    ids: dict[str, int] = {}
    parts = [_INDEX_HEAD.pack(_INDEX_MAGIC, _VERSION, _BYTEORDER, last, last_ts, len(blocks))]
    sids_of = []
    for b in blocks:
        sids = array("I", [ids.setdefault(x, len(ids)) for x in b.subs])
        sids_of.append((b, sids))
    table = [x.encode() for x in ids]
    parts.append(U32.pack(len(table)))
    parts.append(b"".join(_U16.pack(len(x)) + x for x in table))
    for b, sids in sids_of:
        parts.append(_INDEX_BLOCK.pack(b.num, b.size, b.fcrc, b.base, b.dense, b.nlive,
                                       len(b.seqs), b.live_bytes))
        for a in (b.seqs, b.offs, b.lens, b.tss, b.msz, sids):
            parts.append(a.tobytes())
        parts.append(bytes(b.live))
    crc = 0
    for x in parts:
        crc = zlib.crc32(x, crc)
    parts.append(U32.pack(crc))
    return b"".join(parts)


def decode_index(data: bytes, nums: list[int],
                 block_path: Callable[[int], str]) -> tuple[list[Block], int, int] | None:
    """The blocks, last seq and last ts that index.db `data` describes, or None unless it
    is intact and describes exactly the block files `nums` as they are on disk. May also
    raise struct.error, ValueError, UnicodeDecodeError or IndexError on a damaged index."""
    if len(data) < _INDEX_HEAD.size + 4:
        return None
    if zlib.crc32(memoryview(data)[:-4]) != U32.unpack_from(data, len(data) - 4)[0]:
        return None
    magic, version, order, last, last_ts, nblocks = _INDEX_HEAD.unpack_from(data, 0)
    if magic != _INDEX_MAGIC or version != _VERSION or order != _BYTEORDER:
        return None
    off = _INDEX_HEAD.size
    (nsub,) = U32.unpack_from(data, off)
    off += 4
    table = []
    for _ in range(nsub):
        (ln,) = _U16.unpack_from(data, off)
        table.append(sys.intern(str(data[off + 2:off + 2 + ln], "utf-8")))
        off += 2 + ln
    blocks: list[Block] = []
    for _ in range(nblocks):
        num, size, fcrc, base, dense, nlive, count, lb = _INDEX_BLOCK.unpack_from(data, off)
        off += _INDEX_BLOCK.size
        b = Block(num, block_path(num), base)
        b.size = b.pend_off = size
        b.fcrc, b.dense, b.nlive, b.live_bytes = fcrc, bool(dense), nlive, lb
        sids = array("I")
        for a in (b.seqs, b.offs, b.lens, b.tss, b.msz, sids):
            end = off + count * a.itemsize
            a.frombytes(data[off:end])
            off += count * a.itemsize
        b.live = bytearray(data[off:off + count])
        off += count
        b.subs = [table[i] for i in sids]
        blocks.append(b)
    if off != len(data) - 4 or [b.num for b in blocks] != nums or not blocks:
        return None
    for b in blocks:
        if not _file_matches(b.path, b.size, b.fcrc):
            return None
    return blocks, last, last_ts


def _file_matches(path: str, size: int, fcrc: int) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                return False
            crc = 0
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
    except FileNotFoundError:
        return False
    return crc == fcrc
