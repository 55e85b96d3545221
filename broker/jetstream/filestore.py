"""Durable JetStream message store: append-only block files with checksummed records.

How this works (the record format, block replay and index.db: blockfile.py; reads
and their read-ahead: filereads.py)
- The directory holds block files `<num>.blk` (num ascending, never reused) and a LOCK.
  Each block starts with a META record and keeps a message's tombstone next to it, so
  a block whose messages are all removed can simply be unlinked (the current block
  never is: it carries last_seq). Purging everything, or moving the sequence
  (skip_to), starts a new block whose META says "drop every older block"; the old
  files are unlinked only after that META is durable.
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
  block: a torn tail is truncated, any other damage raises CorruptStoreError.
- A block that is more than half garbage (removed records and tombstones) but still
  holds live messages is rewritten: the event loop snapshots its live records, sync()
  writes and fsyncs `<num>.blk.compact` in its thread, and the event loop renames it
  over the block if the block did not change meanwhile (either file is valid).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import sys
import threading
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict

from broker.jetstream.blockfile import (FLAG_HDR, MSG, MSG_BODY_LEN, MSG_HEAD, U32, Block,
                                        Compaction, CorruptStoreError, StoreLockedError,
                                        decode_index, del_record, encode_index, load_block,
                                        meta_record)
from broker.jetstream.filereads import FileReads
from broker.jetstream.store import SubjectIndex, _IndexedStore

__all__ = ["BLOCK_SIZE_MAX_BYTES_DEFAULT", "CorruptStoreError", "FileStore", "StoreLockedError"]

BLOCK_SIZE_MAX_BYTES_DEFAULT = 8 * 1024 * 1024
_PENDING_FLUSH_BYTES = 1024 * 1024  # hand appends to the OS once this much is buffered
_OPEN_FDS_MAX = 64
_COMPACT_BYTES_MIN = 64 * 1024  # smaller blocks are not worth rewriting
_RECORD_BYTES_MAX = 256 * 1024 * 1024


class FileStore(FileReads, _IndexedStore):
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
        self._held: dict[int, tuple[Block, bytearray]] = {}  # block num -> its held tombstones
        self._dir = os.fspath(directory)
        self._block_size_max = block_size_max_bytes
        self._lock = threading.Lock()  # pend buffers, fds, pending/unsynced/unlink sets
        self._sync_lock = threading.Lock()  # one sync at a time
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pending: dict[int, Block] = {}  # blocks with buffered bytes
        self._unsynced: set[str] = set()  # written to the OS, not yet fdatasynced
        self._unlink: list[str] = []  # dropped blocks, unlinked after the next fsync
        self._dir_dirty = False
        self._closed = False
        self._compact_min = min(_COMPACT_BYTES_MIN, block_size_max_bytes // 2)
        self._compact_requests: list[Compaction] = []  # loop thread -> sync thread
        self._compacted: list[Compaction] = []  # sync thread -> loop thread
        self._idx = SubjectIndex()
        self._n = 0
        self._bytes = 0
        self._first = 1
        self._last = 0
        self._last_ts = 0
        self._blocks: list[Block] = []
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
            b, purge_below, self._last, self._last_ts = load_block(
                num, path, self._last, self._last_ts)
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

    # ------------------------------------------------------------------ index snapshot
    # index.db (format: blockfile.py) is written by a clean close and deleted when loaded,
    # so it is never used twice; without a usable one, opening replays every block.

    def _index_path(self) -> str:
        return os.path.join(self._dir, "index.db")

    def _save_index(self) -> None:
        data = encode_index(self._blocks, self._last, self._last_ts)
        tmp = self._index_path() + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
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
        got = decode_index(data, nums, self._block_path)
        if got is None:
            return False
        blocks, last, last_ts = got
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

    # ------------------------------------------------------------------ blocks and I/O
    def _new_block(self, num: int, last_seq: int, last_ts: int, purge_below: int) -> Block:
        """Start block `num` as the current one. Caller holds _lock."""
        path = self._block_path(num)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._remember_fd(num, fd)
        b = Block(num, path, last_seq + 1)
        b.pend += meta_record(last_seq, last_ts, purge_below)
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

    def _fd(self, b: Block) -> int:
        """Open descriptor for block b. Caller holds _lock."""
        fd = self._fds.get(b.num)
        if fd is None:
            fd = os.open(b.path, os.O_RDWR)
            self._remember_fd(b.num, fd)
        else:
            self._fds.move_to_end(b.num)
        return fd

    def _write_out(self, b: Block) -> None:
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

    def _buffer(self, b: Block, *parts: bytes) -> int:
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

    def _drop_block(self, b: Block) -> None:
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

    def _locate(self, seq: int) -> tuple[Block, int] | None:
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

    def _request_compaction(self, b: Block) -> None:
        req = Compaction(b)
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
        by_block: dict[int, tuple[Block, list[int]]] = {}
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
            dels = b"".join(del_record(seqs_a[j]) for j in js)
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
            body_len = MSG_BODY_LEN + slen + hlen + dlen
            rec = b"".join((MSG_HEAD.pack(body_len, MSG, seq, ts, slen, FLAG_HDR, hlen), sb, hdr, data))
            size = 34 + slen + dlen + hlen
        else:
            body_len = MSG_BODY_LEN + slen + dlen
            rec = b"".join((MSG_HEAD.pack(body_len, MSG, seq, ts, slen,
                                          0 if hdr is None else FLAG_HDR, 0), sb, data))
            size = 30 + slen + dlen
        crc = U32.pack(zlib.crc32(rec))  # one crc over everything after the crc field
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
        seqs = b.seqs  # Block.add() inlined
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

    def _append_run(self, b: Block, msgs: list[tuple[str, bytes]], i: int, ts: int) -> int:
        """Append msgs[i:] to block b until it is full; returns the index of the first
        message not appended."""
        seq0 = seq = self._last + 1
        start = off = b.size
        limit = self._block_size_max
        seqs, offs, lens, tss, msz, subs = b.seqs, b.offs, b.lens, b.tss, b.msz, b.subs
        if seqs and seq != seqs[-1] + 1:
            b.dense = False
        head_pack, u32_pack, crc32, join = MSG_HEAD.pack, U32.pack, zlib.crc32, b"".join
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
            body_len = MSG_BODY_LEN + slen + dlen
            rec = join((head_pack(body_len, MSG, seq, ts, slen, 0, 0), sb, data))
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

    def _roll(self) -> Block:
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
        keep: list[Block] = []
        gone: list[Block] = []
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

    def _cut_block(self, b: Block, j0: int) -> None:
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
        dels = [del_record(seqs[j]) for j in range(j0) if not b.live[j]]
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
