"""Durable JetStream message store: append-only block files with checksummed records.

How this works
- The directory holds block files `<num>.blk` (num ascending, never reused) and a LOCK.
  Every record is `crc32 u32 | body_len u32 | type u8 | body`; the crc covers
  everything after itself. Types:
    META  first record of each block: magic, last_seq, last_ts, purge_below
    MSG   seq, ts, subject, optional header, payload
    DEL   seq of a message stored in the *same* block (tombstone)
  Because a tombstone always lives next to its message, every block is
  self-contained: a block whose messages are all removed can simply be unlinked
  (the current block never is: it carries last_seq). Purging everything, or moving
  the sequence (skip_to), starts a new block whose META says "drop every older
  block"; the old files are unlinked only after that META is durable.
- Memory holds an index, not payloads: per block, parallel arrays of seq, offset,
  length, ts and accounted size plus the interned subject and a live flag (~40 bytes
  a message). get() reads the record back with pread and checks its crc.
- Appends go to a per-block bytearray (append_many: a whole header-less batch built
  and added at once, same records). sync() takes the lock only to hand those buffers
  to the OS (pwrite), then fdatasyncs outside it, so the event loop can keep
  appending the next batch while a worker thread waits on the disk (group commit).
  flush() does the pwrite part alone, so the publish path pays it on the event loop
  and its fsync thread only waits on the disk.
- A clean close writes `index.db` (the index arrays, checked against each block's
  size and crc32) so reopening skips the replay. Otherwise opening replays every
  block. A bad record at the end of a file (torn write after a crash: never
  acknowledged) is truncated; a bad record followed by a valid one, or a complete
  last record with a bad checksum, is corruption and raises CorruptStoreError naming
  the file and offset. Nothing is dropped silently except a short torn tail.
- A block that is more than half garbage (removed records and tombstones) but still
  holds live messages is rewritten: the event loop snapshots its live records, sync()
  writes and fsyncs `<num>.blk.compact` in its thread, and the event loop renames it
  over the block if the block did not change meanwhile (either file is valid).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import sys
import threading
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict

from broker.jetstream.store import SubjectIndex, _IndexedStore
from broker.jetstream.storetypes import StoredMsg

__all__ = ["CorruptStoreError", "FileStore"]

BLOCK_SIZE_MAX_BYTES_DEFAULT = 8 * 1024 * 1024
_PENDING_FLUSH_BYTES = 1024 * 1024  # hand appends to the OS once this much is buffered
_OPEN_FDS_MAX = 64
_COMPACT_BYTES_MIN = 64 * 1024  # smaller blocks are not worth rewriting
_RECORD_BYTES_MAX = 256 * 1024 * 1024
_READ_AHEAD_BYTES = 256 * 1024  # one pread per this much when get() walks a block in order
_VERIFY_BLOCK_MAX = 16 * 1024 * 1024  # a sealed block up to this size is read whole and checked once

_META, _MSG, _DEL = 1, 2, 3
_MAGIC = b"NJSB"
_VERSION = 1

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_INDEX_MAGIC = b"NJSI"
_BYTEORDER = 0 if sys.byteorder == "little" else 1
_INDEX_HEAD = struct.Struct("<4sBBQqI")  # magic, version, byte order, last_seq, last_ts, blocks
_INDEX_BLOCK = struct.Struct("<QQIQBQQQ")  # num, size, fcrc, base, dense, nlive, count, live bytes
_REC = struct.Struct("<IIB")  # crc, body_len, type
# body_len, type, then the MSG body header: seq, ts, subject len, flags, header len
_MSG_HEAD = struct.Struct("<IBQqHBI")
_MSG_BODY = struct.Struct("<QqHBI")
_MSG_BODY_LEN = _MSG_BODY.size  # 23
_DEL_HEAD = struct.Struct("<IBQ")
_META_HEAD = struct.Struct("<IB4sBQqQ")
_META_BODY = struct.Struct("<4sBQqQ")
_FLAG_HDR = 1
_TYPE_BYTE = re.compile(b"[\x01\x02\x03]")
_MIN_BODY = {_META: _META_BODY.size, _MSG: _MSG_BODY_LEN, _DEL: 8}


class CorruptStoreError(Exception):
    """A block file holds a damaged record that is not a torn tail."""

    def __init__(self, path: str, offset: int, why: str) -> None:
        super().__init__(f"corrupt message store file {path} at offset {offset}: {why}")
        self.path = path
        self.offset = offset


class StoreLockedError(Exception):
    """Another FileStore (maybe in another process) has this directory open."""


def _meta_record(last_seq: int, last_ts: int, purge_below: int) -> bytes:
    head = _META_HEAD.pack(_META_BODY.size, _META, _MAGIC, _VERSION, last_seq, last_ts, purge_below)
    return _U32.pack(zlib.crc32(head)) + head


def _del_record(seq: int) -> bytes:
    head = _DEL_HEAD.pack(8, _DEL, seq)
    return _U32.pack(zlib.crc32(head)) + head


class _Block:
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


class _Compaction:
    """Rewrite of one block without its removed records. The event loop asks for it
    (a snapshot of the live records), sync() writes and fsyncs `<block>.compact` in its
    thread, and the event loop swaps it in, unless the block changed meanwhile."""

    __slots__ = ("num", "path", "size", "meta_len", "js", "offs", "lens", "new_offs",
                 "new_size", "new_crc")

    def __init__(self, b: _Block) -> None:
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
            if zlib.crc32(rec[4:]) != _U32.unpack_from(rec)[0]:
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


class FileStore(_IndexedStore):
    def __init__(self, directory: str, *,
                 block_size_max_bytes: int = BLOCK_SIZE_MAX_BYTES_DEFAULT,
                 hold_removals: bool = False) -> None:
        """hold_removals: a removal reaches the files only with the next sync() (tombstones
        wait in memory, blocks are not compacted, purging everything or skipping ahead
        tombstones each message instead of starting over). A replicated stream syncs only
        when it snapshots, so after a crash its store is its last snapshot plus appends,
        which truncate_after cuts; the Raft log then replays the rest exactly."""
        assert block_size_max_bytes > 0
        self._hold = hold_removals
        self._held: dict[int, tuple[_Block, bytearray]] = {}  # block num -> its held tombstones
        self._dir = os.fspath(directory)
        self._block_size_max = block_size_max_bytes
        self._lock = threading.Lock()  # pend buffers, fds, pending/unsynced/unlink sets
        self._sync_lock = threading.Lock()  # one sync at a time
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pending: dict[int, _Block] = {}  # blocks with buffered bytes
        self._unsynced: set[str] = set()  # written to the OS, not yet fdatasynced
        self._unlink: list[str] = []  # dropped blocks, unlinked after the next fsync
        self._dir_dirty = False
        self._closed = False
        self._compact_min = min(_COMPACT_BYTES_MIN, block_size_max_bytes // 2)
        self._compact_requests: list[_Compaction] = []  # loop thread -> sync thread
        self._compacted: list[_Compaction] = []  # sync thread -> loop thread
        self._idx = SubjectIndex()
        self._n = 0
        self._bytes = 0
        self._first = 1
        self._last = 0
        self._last_ts = 0
        self._blocks: list[_Block] = []
        self._bases: list[int] = []
        self._rcache: tuple | None = None  # get() read-ahead: (block, its offs, start, end, bytes, verified)
        self._rnext: tuple | None = None  # (block, offset) right after the last record read
        os.makedirs(self._dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self._dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLockedError(f"message store {self._dir} is open elsewhere") from None
        try:
            self._recover()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ recovery
    def _block_path(self, num: int) -> str:
        return os.path.join(self._dir, f"{num:010d}.blk")

    def _recover(self) -> None:
        for f in os.listdir(self._dir):
            if f.endswith(".compact") or f.endswith(".tmp"):
                os.unlink(os.path.join(self._dir, f))  # never swapped in: the block is intact
        nums = sorted(int(f[:-4]) for f in os.listdir(self._dir)
                      if f.endswith(".blk") and f[:-4].isdigit())
        if self._load_index(nums):
            return
        stale: list[str] = []
        for num in nums:
            path = self._block_path(num)
            b, purge_below = self._load_block(num, path)
            if purge_below:
                # A purge/skip that may have crashed before unlinking the older blocks.
                stale.extend(x.path for x in self._blocks)
                self._blocks.clear()
                self._idx.clear()
                self._n = 0
                self._bytes = 0
            self._blocks.append(b)
            for j in range(len(b.seqs)):
                if b.live[j]:
                    self._idx.add(b.subs[j], b.seqs[j])
                    self._n += 1
                    self._bytes += b.msz[j]
        # Emptied blocks that were not unlinked before a crash go, except the newest,
        # which records last_seq (unless it is an empty file).
        blocks = self._blocks
        keep = [b for i, b in enumerate(blocks) if b.nlive or (i == len(blocks) - 1 and b.size)]
        kept = {id(b) for b in keep}
        stale.extend(b.path for b in blocks if id(b) not in kept)
        self._blocks = keep
        self._bases = [b.base for b in keep]
        self._recompute_first(0)
        if not keep or keep[-1] is not blocks[-1]:
            # Nothing left on disk that records last_seq: write it down before unlinking.
            with self._lock:
                self._new_block(nums[-1] + 1 if nums else 1, self._last, self._last_ts, 0)
            self.sync()
        for p in stale:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        if stale:
            self._fsync_dir()

    def _load_block(self, num: int, path: str) -> tuple[_Block, int]:
        with open(path, "rb") as f:
            data = f.read()
        n = len(data)
        mv = memoryview(data)
        b = _Block(num, path, self._last + 1)
        purge_below = 0
        crc32 = zlib.crc32
        rec_unpack = _REC.unpack_from
        msg_unpack = _MSG_BODY.unpack_from
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
                    if self._valid_record_after(data, off + 1):
                        raise CorruptStoreError(path, off, "bad checksum or length before valid data")
                    if n - off >= 9 and end <= n and any(mv[off:end]):
                        # Complete but damaged: a crash leaves a short record, not this.
                        raise CorruptStoreError(path, off, "bad checksum in last record")
                    with open(path, "r+b") as f:  # torn tail: never acknowledged
                        f.truncate(off)
                    n = off
                    break
                if typ == _MSG:
                    seq, ts, slen, flags, hlen = msg_unpack(data, off + 9)
                    if seq <= self._last:
                        raise CorruptStoreError(path, off, f"sequence {seq} not above {self._last}")
                    p = off + 9 + _MSG_BODY_LEN
                    dlen = blen - _MSG_BODY_LEN - slen - hlen
                    if dlen < 0:
                        raise CorruptStoreError(path, off, "record fields exceed its length")
                    raw_subject = data[p:p + slen]
                    subject = subjects.get(raw_subject)
                    if subject is None:
                        subject = subjects[raw_subject] = intern(str(raw_subject, "utf-8"))
                    if seq != prev + 1 and prev >= 0:
                        b.dense = False
                    prev = seq
                    seqs_append(seq)  # _Block.add() inlined: replay is per record
                    offs_append(off)
                    lens_append(end - off)
                    tss_append(ts)
                    msz_append(30 + slen + dlen + (4 + hlen if hlen else 0))
                    subs_append(subject)
                    live_append(1)
                    b.nlive += 1
                    b.live_bytes += end - off
                    self._last = seq
                    self._last_ts = ts
                elif typ == _DEL:
                    (seq,) = _U64.unpack_from(data, off + 9)
                    j = b.index(seq)
                    if j >= 0:
                        b.live[j] = 0
                        b.nlive -= 1
                        b.live_bytes -= b.lens[j]
                else:  # META
                    magic, version, last_seq, last_ts, pb = _META_BODY.unpack_from(data, off + 9)
                    if magic != _MAGIC or version != _VERSION:
                        raise CorruptStoreError(path, off, "unknown block format")
                    if not first_rec:
                        raise CorruptStoreError(path, off, "META record inside a block")
                    if last_seq >= self._last or pb:
                        self._last = last_seq
                        self._last_ts = last_ts
                    b.base = last_seq + 1
                    b.live_bytes += end - off
                    purge_below = pb
                first_rec = False
                off = end
        finally:
            mv.release()
        b.size = b.pend_off = n
        b.fcrc = zlib.crc32(data[:n]) if n < len(data) else zlib.crc32(data)
        return b, purge_below

    @staticmethod
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

    # ------------------------------------------------------------------ index snapshot
    # Written by a clean close so that reopening does not replay every record:
    #   magic, version, byte order, last_seq, last_ts, subject table, then per block its
    #   number, file size, file crc32 and index arrays; a crc32 of all that at the end.
    # It is used only if every block file is exactly the one it describes (same set of
    # files, sizes and crc32 of their contents); it is deleted when loaded, so it is
    # never used twice. Anything else means a full replay, which checks every record.

    def _index_path(self) -> str:
        return os.path.join(self._dir, "index.db")

    def _save_index(self) -> None:
        ids: dict[str, int] = {}
        parts = [_INDEX_HEAD.pack(_INDEX_MAGIC, _VERSION, _BYTEORDER, self._last, self._last_ts,
                                  len(self._blocks))]
        blocks = []
        for b in self._blocks:
            sids = array("I", [ids.setdefault(x, len(ids)) for x in b.subs])
            blocks.append((b, sids))
        table = [x.encode() for x in ids]
        parts.append(_U32.pack(len(table)))
        parts.extend(_U16.pack(len(x)) + x for x in table)
        for b, sids in blocks:
            parts.append(_INDEX_BLOCK.pack(b.num, b.size, b.fcrc, b.base, b.dense, b.nlive,
                                           len(b.seqs), b.live_bytes))
            for a in (b.seqs, b.offs, b.lens, b.tss, b.msz, sids):
                parts.append(a.tobytes())
            parts.append(bytes(b.live))
        body = b"".join(parts)
        tmp = self._index_path() + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
            f.write(_U32.pack(zlib.crc32(body)))
        os.replace(tmp, self._index_path())

    def _load_index(self, nums: list[int]) -> bool:
        path = self._index_path()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return False
        os.unlink(path)
        try:
            return self._apply_index(data, nums)
        except (struct.error, ValueError, UnicodeDecodeError, IndexError):
            return False

    def _apply_index(self, data: bytes, nums: list[int]) -> bool:
        if len(data) < _INDEX_HEAD.size + 4:
            return False
        if zlib.crc32(memoryview(data)[:-4]) != _U32.unpack_from(data, len(data) - 4)[0]:
            return False
        magic, version, order, last, last_ts, nblocks = _INDEX_HEAD.unpack_from(data, 0)
        if magic != _INDEX_MAGIC or version != _VERSION or order != _BYTEORDER:
            return False
        off = _INDEX_HEAD.size
        (nsub,) = _U32.unpack_from(data, off)
        off += 4
        table = []
        for _ in range(nsub):
            (ln,) = _U16.unpack_from(data, off)
            table.append(sys.intern(str(data[off + 2:off + 2 + ln], "utf-8")))
            off += 2 + ln
        blocks: list[_Block] = []
        for _ in range(nblocks):
            num, size, fcrc, base, dense, nlive, count, lb = _INDEX_BLOCK.unpack_from(data, off)
            off += _INDEX_BLOCK.size
            b = _Block(num, self._block_path(num), base)
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
            return False
        for b in blocks:
            if not self._file_matches(b.path, b.size, b.fcrc):
                return False
        idx = self._idx
        n = nbytes = 0
        for b in blocks:
            live, seqs, subs, msz = b.live, b.seqs, b.subs, b.msz
            for j in range(len(seqs)):
                if live[j]:
                    idx.add(subs[j], seqs[j])
                    n += 1
                    nbytes += msz[j]
        self._blocks = blocks
        self._bases = [b.base for b in blocks]
        self._n, self._bytes, self._last, self._last_ts = n, nbytes, last, last_ts
        self._recompute_first(0)
        return True

    @staticmethod
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

    # ------------------------------------------------------------------ blocks and I/O
    def _new_block(self, num: int, last_seq: int, last_ts: int, purge_below: int) -> _Block:
        """Start block `num` as the current one. Caller holds _lock."""
        path = self._block_path(num)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._remember_fd(num, fd)
        b = _Block(num, path, last_seq + 1)
        b.pend += _meta_record(last_seq, last_ts, purge_below)
        b.size = b.live_bytes = len(b.pend)
        self._blocks.append(b)
        self._bases.append(b.base)
        self._pending[num] = b
        self._dir_dirty = True
        return b

    def _remember_fd(self, num: int, fd: int) -> None:
        fds = self._fds
        fds[num] = fd
        if len(fds) > _OPEN_FDS_MAX:
            cur = self._blocks[-1].num if self._blocks else -1
            for old in list(fds):
                if old != num and old != cur:
                    os.close(fds.pop(old))
                    break

    def _fd(self, b: _Block) -> int:
        """Open descriptor for block b. Caller holds _lock."""
        fd = self._fds.get(b.num)
        if fd is None:
            fd = os.open(b.path, os.O_RDWR)
            self._remember_fd(b.num, fd)
        else:
            self._fds.move_to_end(b.num)
        return fd

    def _write_out(self, b: _Block) -> None:
        """Hand b's buffered bytes to the OS. Caller holds _lock."""
        pend = b.pend
        if pend:
            fd = self._fd(b)
            view = memoryview(pend)
            done = 0
            while done < len(pend):
                done += os.pwrite(fd, view[done:], b.pend_off + done)
            view.release()
            b.fcrc = zlib.crc32(pend, b.fcrc)
            b.pend_off += len(pend)
            pend.clear()
            self._unsynced.add(b.path)
        self._pending.pop(b.num, None)

    def _buffer(self, b: _Block, *parts: bytes) -> int:
        """Append record bytes to block b; returns the record's file offset. Holds no lock."""
        with self._lock:
            off = b.size
            pend = b.pend
            for x in parts:
                pend += x
            b.size = b.pend_off + len(pend)
            self._pending[b.num] = b
            if len(pend) >= _PENDING_FLUSH_BYTES:
                self._write_out(b)
        return off

    def _drop_block(self, b: _Block) -> None:
        """Forget an emptied (non-current) block; its file goes at the next sync."""
        with self._lock:
            i = self._blocks.index(b)
            del self._blocks[i]
            del self._bases[i]
            self._pending.pop(b.num, None)
            self._held.pop(b.num, None)
            b.pend.clear()
            fd = self._fds.pop(b.num, None)
            if fd is not None:
                os.close(fd)
            self._unsynced.discard(b.path)
            self._unlink.append(b.path)

    def _locate(self, seq: int) -> tuple[_Block, int] | None:
        i = bisect_right(self._bases, seq) - 1
        if i < 0:
            return None
        b = self._blocks[i]
        j = b.index(seq)
        return (b, j) if j >= 0 else None

    def _fsync_dir(self) -> None:
        fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ hooks for _IndexedStore
    def _subject_of(self, seq: int) -> str | None:
        i = bisect_right(self._bases, seq) - 1
        if i < 0:
            return None
        b = self._blocks[i]
        j = b.index(seq)
        return b.subs[j] if j >= 0 else None

    def _ts_of(self, seq: int) -> int:
        b, j = self._locate(seq)
        return b.tss[j]

    def _request_compaction(self, b: _Block) -> None:
        req = _Compaction(b)
        b.compacting = True
        with self._lock:
            self._compact_requests.append(req)

    def _apply_compactions(self) -> bool:
        """Swap in the compacted blocks whose source did not change meanwhile."""
        with self._lock:
            done, self._compacted = self._compacted, []
        applied = False
        by_num = {b.num: b for b in self._blocks}
        for req in done:
            b = by_num.get(req.num)
            if b is None or b.size != req.size or b is self._blocks[-1]:
                os.unlink(req.path + ".compact")
                if b is not None:
                    b.compacting = False
                continue
            js = req.js
            with self._lock:
                fd = self._fds.pop(b.num, None)
                if fd is not None:
                    os.close(fd)
                os.replace(req.path + ".compact", b.path)
                b.size = b.pend_off = b.live_bytes = req.new_size
                b.fcrc = req.new_crc
                self._dir_dirty = True
            seqs = array("Q", [b.seqs[j] for j in js])
            b.tss = array("q", [b.tss[j] for j in js])
            b.msz = array("I", [b.msz[j] for j in js])
            b.subs = [b.subs[j] for j in js]
            b.offs, b.lens = req.new_offs, req.lens
            b.seqs = seqs
            b.live = bytearray(b"\x01") * len(js)
            b.nlive = len(js)
            b.dense = not seqs or seqs[-1] - seqs[0] + 1 == len(seqs)
            b.compacting = False
            applied = True
        return applied

    def _recompute_first(self, start: int) -> None:
        for b in self._blocks:
            if b.nlive:
                self._first = b.seqs[b.live.index(1)]
                return
        self._first = self._last + 1

    def _remove_seqs(self, seqs) -> int:
        """Remove live sequences (ascending), block by block."""
        if self._compacted:
            self._apply_compactions()
        by_block: dict[int, tuple[_Block, list[int]]] = {}
        for seq in seqs:
            loc = self._locate(seq)
            if loc is None:
                continue
            b, j = loc
            ent = by_block.get(b.num)
            if ent is None:
                by_block[b.num] = ent = (b, [])
            ent[1].append(j)
        removed = 0
        first_hit = False
        cur = self._blocks[-1]
        idx = self._idx
        for b, js in by_block.values():
            live, seqs_a, subs, msz, lens = b.live, b.seqs, b.subs, b.msz, b.lens
            for j in js:
                live[j] = 0
                seq = seqs_a[j]
                idx.remove(subs[j], seq)
                self._bytes -= msz[j]
                b.live_bytes -= lens[j]
                if seq == self._first:
                    first_hit = True
            b.nlive -= len(js)
            self._n -= len(js)
            removed += len(js)
            if b.nlive == 0 and b is not cur:
                self._drop_block(b)
                continue
            dels = b"".join(_del_record(seqs_a[j]) for j in js)
            if self._hold:
                with self._lock:
                    self._held.setdefault(b.num, (b, bytearray()))[1].extend(dels)
                continue
            self._buffer(b, dels)
            if (b is not cur and not b.compacting and b.size >= self._compact_min
                    and b.live_bytes * 2 < b.size):
                self._request_compaction(b)
        if first_hit:
            self._recompute_first(0)
        return removed

    def num_pending(self, start_seq: int, filter_subject: str | None = None,
                    last_per_subject: bool = False) -> int:
        if filter_subject and filter_subject != ">" or last_per_subject:
            return super().num_pending(start_seq, filter_subject, last_per_subject)
        if start_seq <= self._first:
            return self._n
        i = bisect_right(self._bases, start_seq) - 1
        total = 0
        for b in self._blocks[max(i, 0):]:
            seqs = b.seqs
            if seqs and seqs[0] < start_seq:
                j = bisect_left(seqs, start_seq)
                total += b.live.count(1, j)
            else:
                total += b.nlive
        return total

    def _restart(self, last_seq: int, purge_below: int) -> None:
        """Drop every block and start a new one whose META records the new range."""
        old = list(self._blocks)
        with self._lock:
            num = old[-1].num + 1 if old else 1
            self._new_block(num, last_seq, self._last_ts, purge_below)
        for b in old:
            self._drop_block(b)
        self._idx.clear()
        self._n = 0
        self._bytes = 0
        self._last = last_seq
        self._first = last_seq + 1

    def _purge_all(self) -> None:
        if self._hold:
            self._remove_seqs(list(self._live_seqs(self._first)))
            return
        self._restart(self._last, self._last + 1)

    # ------------------------------------------------------------------ Store protocol
    def append(self, subject: str, hdr: bytes | None, data: bytes, ts: int) -> int:
        seq = self._last + 1
        self._append(seq, subject, hdr, data, ts)
        return seq

    def append_at(self, seq: int, subject: str, hdr: bytes | None, data: bytes, ts: int) -> None:
        if seq <= self._last:
            raise ValueError(f"append_at({seq}): sequence must be > last_seq {self._last}")
        self._append(seq, subject, hdr, data, ts)

    def _append(self, seq: int, subject: str, hdr: bytes | None, data: bytes, ts: int) -> None:
        if self._closed:
            raise ValueError("store is closed")
        if self._compacted:
            self._apply_compactions()
        sb = subject.encode()
        slen = len(sb)
        dlen = len(data)
        if hdr:
            hlen = len(hdr)
            body_len = _MSG_BODY_LEN + slen + hlen + dlen
            rec = b"".join((_MSG_HEAD.pack(body_len, _MSG, seq, ts, slen, _FLAG_HDR, hlen), sb, hdr, data))
            size = 34 + slen + dlen + hlen
        else:
            body_len = _MSG_BODY_LEN + slen + dlen
            rec = b"".join((_MSG_HEAD.pack(body_len, _MSG, seq, ts, slen,
                                           0 if hdr is None else _FLAG_HDR, 0), sb, data))
            size = 30 + slen + dlen
        crc = _U32.pack(zlib.crc32(rec))  # one crc over everything after the crc field
        b = self._blocks[-1]
        if b.size >= self._block_size_max:
            b = self._roll()
        with self._lock:  # _buffer() inlined: this is the publish hot path
            off = b.size
            pend = b.pend
            pend += crc
            pend += rec
            b.size = b.pend_off + len(pend)
            if len(pend) >= _PENDING_FLUSH_BYTES:
                self._pending[b.num] = b
                self._write_out(b)
            else:
                self._pending[b.num] = b
        seqs = b.seqs  # _Block.add() inlined
        if b.dense and seqs and seq != seqs[-1] + 1:
            b.dense = False
        seqs.append(seq)
        b.offs.append(off)
        ln = 9 + body_len
        b.lens.append(ln)
        b.tss.append(ts)
        b.msz.append(size)
        subject = sys.intern(subject)
        b.subs.append(subject)
        b.live.append(1)
        b.nlive += 1
        b.live_bytes += ln
        self._idx.add(subject, seq)
        if self._n == 0:
            self._first = seq
        self._n += 1
        self._bytes += size
        self._last = seq
        self._last_ts = ts

    def append_many(self, msgs: list[tuple[str, bytes]], ts: int) -> int:
        """Append header-less (subject, data) messages at last_seq + 1, ... with one
        timestamp; returns the first sequence. The records and index are exactly those
        of append() called per message; the per-call overhead is shared by the batch."""
        if self._closed:
            raise ValueError("store is closed")
        if self._compacted:
            self._apply_compactions()
        first = self._last + 1
        i, n = 0, len(msgs)
        while i < n:
            b = self._blocks[-1]
            if b.size >= self._block_size_max:
                b = self._roll()
            i = self._append_run(b, msgs, i, ts)
        return first

    def _append_run(self, b: _Block, msgs: list[tuple[str, bytes]], i: int, ts: int) -> int:
        """Append msgs[i:] to block b until it is full; returns the index of the first
        message not appended."""
        seq0 = seq = self._last + 1
        start = off = b.size
        limit = self._block_size_max
        seqs, offs, lens, tss, msz, subs = b.seqs, b.offs, b.lens, b.tss, b.msz, b.subs
        if seqs and seq != seqs[-1] + 1:
            b.dense = False
        head_pack, u32_pack, crc32, join = _MSG_HEAD.pack, _U32.pack, zlib.crc32, b"".join
        idx_add = self._idx.add
        names: dict[str, tuple[str, bytes]] = {}
        parts: list[bytes] = []
        nbytes = 0
        n = len(msgs)
        while i < n:
            subject, data = msgs[i]
            name = names.get(subject)
            if name is None:
                name = names[subject] = (sys.intern(subject), subject.encode())
            subject, sb = name
            slen = len(sb)
            dlen = len(data)
            body_len = _MSG_BODY_LEN + slen + dlen
            rec = join((head_pack(body_len, _MSG, seq, ts, slen, 0, 0), sb, data))
            parts.append(u32_pack(crc32(rec)))
            parts.append(rec)
            size = 30 + slen + dlen
            seqs.append(seq)
            offs.append(off)
            lens.append(9 + body_len)
            tss.append(ts)
            msz.append(size)
            subs.append(subject)
            idx_add(subject, seq)
            nbytes += size
            off += 9 + body_len
            seq += 1
            i += 1
            if off >= limit:
                break
        count = seq - seq0
        b.live += b"\x01" * count
        with self._lock:
            pend = b.pend
            pend += join(parts)
            b.size = b.pend_off + len(pend)
            self._pending[b.num] = b
            if len(pend) >= _PENDING_FLUSH_BYTES:
                self._write_out(b)
        b.nlive += count
        b.live_bytes += off - start
        if self._n == 0:
            self._first = seq0
        self._n += count
        self._bytes += nbytes
        self._last = seq - 1
        self._last_ts = ts
        return i

    def _roll(self) -> _Block:
        """The current block is full: start the next one."""
        with self._lock:
            b = self._new_block(self._blocks[-1].num + 1, self._last, self._last_ts, 0)
        prev = self._blocks[-2]
        if prev.nlive == 0:
            self._drop_block(prev)
        return b

    def skip_to(self, seq: int) -> None:
        """Next append gets `seq`. Messages still stored are removed (like nats-server's
        Compact past the end); moving backwards is a caller bug."""
        if seq <= self._last:
            raise ValueError(f"skip_to({seq}): sequence must be > last_seq {self._last}")
        if self._n == 0 and seq == self._last + 1:
            return  # already there
        if self._hold:
            self._purge_all()
            with self._lock:
                self._new_block(self._blocks[-1].num + 1, seq - 1, self._last_ts, 0)
            if self._blocks[-2].nlive == 0:
                self._drop_block(self._blocks[-2])
            self._last = seq - 1
            self._first = seq
            return
        self._restart(seq - 1, seq)

    def truncate_after(self, seq: int, last_ts: int) -> None:
        """Forget every message above `seq`: afterwards last_seq == seq, last_ts == last_ts and
        the messages at or below seq are as they were (a seq above last_seq only moves last_seq
        forward over sequences that hold nothing). Durable when it returns.

        Blocks holding only later messages are unlinked (directory fsynced) first; the block
        holding the cut is truncated at its first record above it (records below it keep their
        checksums; tombstones of older messages that sat past the cut are written again), then
        a new block's META records last_seq. A crash midway leaves no message above the cut
        that a META contradicts; the caller repeats the truncation after restarting."""
        if self._closed:
            raise ValueError("store is closed")
        self.sync()  # every buffered record is in its file; compactions are written
        if seq == self._last and last_ts == self._last_ts:
            return
        if self._compacted:
            self._apply_compactions()
        self._rcache = self._rnext = None
        next_num = self._blocks[-1].num + 1 if self._blocks else 1
        idx = self._idx
        keep: list[_Block] = []
        gone: list[_Block] = []
        for b in self._blocks:
            seqs = b.seqs
            j0 = bisect_right(seqs, seq)
            if j0 == len(seqs) and (seqs or b.base <= seq + 1):
                keep.append(b)  # nothing above the cut (a bare META records last_seq <= seq)
                continue
            live, subs, msz, lens = b.live, b.subs, b.msz, b.lens
            for j in range(j0, len(seqs)):
                if live[j]:
                    idx.remove(subs[j], seqs[j])
                    self._n -= 1
                    self._bytes -= msz[j]
                    b.live_bytes -= lens[j]
                    b.nlive -= 1
            if j0 == 0:
                gone.append(b)
                continue
            self._cut_block(b, j0)
            keep.append(b)
        with self._lock:
            for b in gone:
                self._pending.pop(b.num, None)
                fd = self._fds.pop(b.num, None)
                if fd is not None:
                    os.close(fd)
                self._unsynced.discard(b.path)
        for b in gone:
            try:
                os.unlink(b.path)
            except FileNotFoundError:
                pass
        if gone:
            self._fsync_dir()
        self._blocks = keep
        self._bases = [b.base for b in keep]
        self._last = seq
        self._last_ts = last_ts
        with self._lock:
            self._new_block(next_num, seq, last_ts, 0)
        self._recompute_first(0)
        self.sync()

    def _cut_block(self, b: _Block, j0: int) -> None:
        """Truncate block b's file before its record j0 (whose seq is above the cut) and write
        again the tombstones of its removed messages below it, which may have sat past it."""
        off = b.offs[j0]
        with self._lock:
            fd = self._fd(b)
            os.ftruncate(fd, off)
            self._unsynced.add(b.path)
            crc = 0
            done = 0
            while done < off:
                chunk = os.pread(fd, min(1 << 20, off - done), done)
                if not chunk:
                    raise CorruptStoreError(b.path, done, "file shorter than its index")
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
            b.fcrc = crc
            b.size = b.pend_off = off
            b.pend.clear()
        for name in ("seqs", "offs", "lens", "tss", "msz"):
            del getattr(b, name)[j0:]
        del b.subs[j0:]
        del b.live[j0:]
        seqs = b.seqs
        b.dense = seqs[-1] - seqs[0] + 1 == len(seqs)
        dels = [_del_record(seqs[j]) for j in range(j0) if not b.live[j]]
        if dels:
            self._buffer(b, b"".join(dels))

    def flush(self) -> None:
        """Hand buffered appends to the OS (no fsync). The publish path calls it on the event
        loop right before sync() runs in a thread, which then only waits on the disk."""
        with self._lock:
            if self._closed:
                return
            for b in list(self._pending.values()):
                self._write_out(b)

    def sync(self) -> None:
        with self._sync_lock:
            with self._lock:
                if self._closed:
                    return
                for b, dels in self._held.values():  # after every record they refer to
                    b.pend += dels
                    b.size = b.pend_off + len(b.pend)
                    self._pending[b.num] = b
                self._held.clear()
                for b in list(self._pending.values()):
                    self._write_out(b)
                paths = list(self._unsynced)
                self._unsynced.clear()
                dir_dirty = self._dir_dirty
                self._dir_dirty = False
                unlinks = self._unlink
                self._unlink = []
                compactions = self._compact_requests
                self._compact_requests = []
            for p in paths:
                try:
                    fd = os.open(p, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            if dir_dirty:
                self._fsync_dir()
            for p in unlinks:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            if unlinks:
                self._fsync_dir()
            for req in compactions:
                if req.write():
                    with self._lock:
                        self._compacted.append(req)

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
        if len(raw) != ln or (not checked and zlib.crc32(memoryview(raw)[4:]) != _U32.unpack_from(raw)[0]):
            raise CorruptStoreError(b.path, off, f"checksum mismatch reading seq {seq}")
        _, ts, slen, flags, hlen = _MSG_BODY.unpack_from(raw, 9)
        p = 9 + _MSG_BODY_LEN + slen
        hdr = raw[p:p + hlen] if flags & _FLAG_HDR else None
        return StoredMsg(seq, b.subs[j], hdr, raw[p + hlen:], ts)

    _RUN_REC = struct.Struct("<IIBQqHBI")  # crc, body_len, type, then the MSG body header

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
            _RUN_REC = self._RUN_REC
            offs, lens, live, subs = b.offs, b.lens, b.live, b.subs
            j = seq - b.seqs[0]
            stop = min(len(offs), j + max_n - len(out))
            while j < stop and live[j]:
                off, ln = offs[j], lens[j]
                if off < start or off + ln > end:
                    break
                p = off - start
                crc, _, _, _, ts, slen, flags, hlen = _RUN_REC.unpack_from(buf, p)
                if not checked and zlib.crc32(mv[p + 4:p + ln]) != crc:
                    raise CorruptStoreError(b.path, off, f"checksum mismatch reading seq {seq}")
                q = p + _RUN_REC.size + slen
                out.append(StoredMsg(seq, subs[j], buf[q:q + hlen] if flags & _FLAG_HDR else None,
                                     buf[q + hlen:p + ln], ts))
                seq += 1
                j += 1
        return out

    def _read_record(self, b: _Block, off: int, ln: int) -> bytes:
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

    def remove(self, seq: int) -> bool:
        return self._remove_seqs((seq,)) == 1

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        if self._compacted and self._apply_compactions():
            self._fsync_dir()
        with self._lock:
            self._closed = True
            try:
                self._save_index()
            finally:
                self._release()

    def _release(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # also drops the flock
            self._lock_fd = -1

    def delete(self) -> None:
        with self._sync_lock:  # let a sync running in a thread finish first
            with self._lock:
                self._closed = True
                self._pending.clear()
                self._release()
            shutil.rmtree(self._dir, ignore_errors=True)
