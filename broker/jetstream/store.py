"""JetStream message stores: the shared subject index and the memory store.

How this works: a store keeps messages by sequence plus a per-subject index
(subject -> ascending sequences). `_IndexedStore` implements every query of the
Store protocol (storetypes.py) on top of that index and four small hooks that say
whether a sequence is live, what its subject is, and how to load or drop it; the
memory store (here) and the file store (filestore.py) only differ in those hooks.

Counters (messages, bytes, first/last seq and ts) are maintained incrementally so
`state()` is O(1). Sequences only grow; a removed message leaves a gap that shows up
as `num_deleted` until first_seq moves past it.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from functools import lru_cache
from typing import Iterable, Iterator

from broker.jetstream.storetypes import StoredMsg, StoreState, memory_msg_size
from broker.subjects import has_wildcard, match

__all__ = ["MemoryStore", "SubjectIndex"]

# How many sequences a forward/backward scan may look at before it switches to the
# per-subject index (which costs O(number of subjects)).
_SCAN_STEPS_MAX = 256


@lru_cache(maxsize=1 << 16)
def _matches(pattern: str, subject: str) -> bool:
    return match(pattern, subject)


@lru_cache(maxsize=4096)
def _is_wild(pattern: str) -> bool:
    return ("*" in pattern or ">" in pattern) and has_wildcard(pattern)


def _is_all(filter_subject: str | None) -> bool:
    return not filter_subject or filter_subject == ">"


class _Seqs:
    """Ascending sequences of one subject with at least two entries.

    Removing the oldest only moves `head` (amortised O(1)); the newest is a pop; an
    interior removal is a memmove."""

    __slots__ = ("a", "head")

    def __init__(self, a: array) -> None:
        self.a = a
        self.head = 0

    def count(self) -> int:
        return len(self.a) - self.head

    def remove(self, seq: int) -> bool:
        a, h = self.a, self.head
        if a[h] == seq:
            h += 1
            if h >= 32 and h * 2 > len(a):
                del a[:h]
                h = 0
            self.head = h
            return True
        if a[-1] == seq:
            a.pop()
            return True
        i = bisect_left(a, seq, h)
        if i < len(a) and a[i] == seq:
            del a[i]
            return True
        return False


class SubjectIndex:
    """subject -> ascending sequences. A subject with one message maps to a plain int,
    which keeps KV-like streams (many subjects, one message each) small."""

    __slots__ = ("d",)

    def __init__(self) -> None:
        self.d: dict[str, int | _Seqs] = {}

    def __len__(self) -> int:
        return len(self.d)

    def clear(self) -> None:
        self.d.clear()

    def add(self, subject: str, seq: int) -> None:
        d = self.d
        v = d.get(subject)
        if v is None:
            d[subject] = seq
        elif type(v) is int:
            d[subject] = _Seqs(array("Q", (v, seq)))
        else:
            v.a.append(seq)

    def remove(self, subject: str, seq: int) -> bool:
        d = self.d
        v = d.get(subject)
        if v is None:
            return False
        if type(v) is int:
            if v != seq:
                return False
            del d[subject]
            return True
        if not v.remove(seq):
            return False
        if v.count() == 1:
            d[subject] = v.a[v.head]
        return True

    def count(self, subject: str) -> int:
        v = self.d.get(subject)
        if v is None:
            return 0
        return 1 if type(v) is int else v.count()

    def seqs(self, subject: str) -> list[int]:
        v = self.d.get(subject)
        if v is None:
            return []
        if type(v) is int:
            return [v]
        return v.a[v.head:].tolist()

    def first(self, subject: str) -> int:
        v = self.d.get(subject, 0)
        return v if type(v) is int else v.a[v.head]

    def last(self, subject: str) -> int:
        v = self.d.get(subject, 0)
        return v if type(v) is int else v.a[-1]

    def first_ge(self, subject: str, start: int) -> int:
        """Oldest sequence >= start for the subject, 0 if none."""
        v = self.d.get(subject)
        if v is None:
            return 0
        if type(v) is int:
            return v if v >= start else 0
        a = v.a
        if a[v.head] >= start:
            return a[v.head]
        i = bisect_left(a, start, v.head)
        return a[i] if i < len(a) else 0

    def count_ge(self, subject: str, start: int) -> int:
        v = self.d.get(subject)
        if v is None:
            return 0
        if type(v) is int:
            return 1 if v >= start else 0
        a = v.a
        if a[v.head] >= start:
            return len(a) - v.head
        return len(a) - bisect_left(a, start, v.head)

    def matching(self, filter_subject: str | None) -> Iterator[str]:
        if _is_all(filter_subject):
            yield from self.d
        elif not _is_wild(filter_subject):
            if filter_subject in self.d:
                yield filter_subject
        else:
            for s in self.d:
                if _matches(filter_subject, s):
                    yield s


class _IndexedStore:
    """Queries shared by the memory and the file store. Subclasses keep `_n`, `_bytes`,
    `_first`, `_last`, `_last_ts` and `_idx` current and provide the hooks below."""

    _n: int
    _bytes: int
    _first: int
    _last: int
    _last_ts: int
    _idx: SubjectIndex

    # ---- hooks ----
    def _subject_of(self, seq: int) -> str | None:
        """Subject of a live message, None if `seq` is not stored."""
        raise AssertionError("subclass must implement")  # pragma: no cover

    def _ts_of(self, seq: int) -> int:
        raise AssertionError("subclass must implement")  # pragma: no cover

    def _remove_seqs(self, seqs: list[int]) -> int:
        """Remove these (ascending, live) sequences; return how many were removed."""
        raise AssertionError("subclass must implement")  # pragma: no cover

    def _purge_all(self) -> None:
        raise AssertionError("subclass must implement")  # pragma: no cover

    def get(self, seq: int) -> StoredMsg | None:
        raise AssertionError("subclass must implement")  # pragma: no cover

    # ---- helpers ----
    def _recompute_first(self, start: int) -> None:
        """first_seq moved: the new first is the oldest live seq >= start."""
        if self._n == 0:
            self._first = self._last + 1
            return
        seq, last = start, self._last
        stop = min(last, start + _SCAN_STEPS_MAX)
        subject_of = self._subject_of
        while seq <= stop:
            if subject_of(seq) is not None:
                self._first = seq
                return
            seq += 1
        # A long gap: ask the subject index instead of walking it.
        self._first = min(self._idx.first(s) for s in self._idx.d)

    def _live_seqs(self, start: int) -> Iterator[int]:
        """Live sequences >= start, ascending."""
        subject_of = self._subject_of
        seq, last = max(start, self._first), self._last
        misses = 0
        while seq <= last:
            if subject_of(seq) is not None:
                misses = 0
                yield seq
                seq += 1
                continue
            misses += 1
            seq += 1
            if misses > _SCAN_STEPS_MAX:
                # Long gap: jump to the next live seq via the subject index.
                nxt = self._next_via_index(seq, None)
                if not nxt:
                    return
                seq = nxt
                misses = 0

    def _next_via_index(self, start: int, filter_subject: str | None) -> int:
        best = 0
        idx = self._idx
        for s in idx.matching(filter_subject):
            q = idx.first_ge(s, start)
            if q and (not best or q < best):
                best = q
        return best

    # ---- Store protocol: queries ----
    def live_seqs(self, start_seq: int = 0) -> Iterator[int]:
        """Stored sequences >= start_seq, ascending, without reading any message."""
        return self._live_seqs(start_seq)

    def contains(self, seq: int) -> bool:
        return self._subject_of(seq) is not None

    def next_msg(self, start_seq: int, filter_subject: str | None = None) -> StoredMsg | None:
        seq = self._next_seq(start_seq, filter_subject)
        return self.get(seq) if seq else None

    def _next_seq(self, start_seq: int, filter_subject: str | None) -> int:
        if self._n == 0:
            return 0
        start = max(start_seq, self._first)
        if start > self._last:
            return 0
        if filter_subject and filter_subject != ">" and not _is_wild(filter_subject):
            return self._idx.first_ge(filter_subject, start)
        every = _is_all(filter_subject)
        subject_of = self._subject_of
        stop = min(self._last, start + _SCAN_STEPS_MAX)
        seq = start
        while seq <= stop:
            s = subject_of(seq)
            if s is not None and (every or _matches(filter_subject, s)):
                return seq
            seq += 1
        if seq > self._last:
            return 0
        return self._next_via_index(seq, filter_subject)

    def last_msg(self, filter_subject: str) -> StoredMsg | None:
        seq = self._last_seq(filter_subject)
        return self.get(seq) if seq else None

    def _last_seq(self, filter_subject: str | None) -> int:
        if self._n == 0:
            return 0
        if filter_subject and filter_subject != ">" and not _is_wild(filter_subject):
            return self._idx.last(filter_subject) if filter_subject in self._idx.d else 0
        every = _is_all(filter_subject)
        subject_of = self._subject_of
        seq = self._last
        stop = max(self._first, seq - _SCAN_STEPS_MAX)
        while seq >= stop:
            s = subject_of(seq)
            if s is not None and (every or _matches(filter_subject, s)):
                return seq
            seq -= 1
        if seq < self._first:
            return 0
        idx = self._idx
        return max((idx.last(s) for s in idx.matching(filter_subject)), default=0)

    def subject_seqs(self, subject: str) -> list[int]:
        return self._idx.seqs(subject)

    def subjects(self, filter_subject: str = ">") -> dict[str, int]:
        idx = self._idx
        return {s: idx.count(s) for s in idx.matching(filter_subject)}

    def num_pending(self, start_seq: int, filter_subject: str | None = None,
                    last_per_subject: bool = False) -> int:
        if self._n == 0:
            return 0
        start = max(start_seq, self._first)
        if start > self._last:
            return 0
        idx = self._idx
        if last_per_subject:
            return sum(1 for s in idx.matching(filter_subject) if idx.last(s) >= start)
        if _is_all(filter_subject):
            if start <= self._first:
                return self._n
            span = self._last - start + 1
            if span <= 4 * len(idx) + 64:
                subject_of = self._subject_of
                return sum(1 for q in range(start, self._last + 1) if subject_of(q) is not None)
        return sum(idx.count_ge(s, start) for s in idx.matching(filter_subject))

    def state(self) -> StoreState:
        n = self._n
        if n == 0:
            return StoreState(messages=0, bytes=0, first_seq=self._last + 1, first_ts=0,
                              last_seq=self._last, last_ts=self._last_ts,
                              num_deleted=0, num_subjects=0)
        first = self._first
        return StoreState(messages=n, bytes=self._bytes, first_seq=first,
                          first_ts=self._ts_of(first), last_seq=self._last,
                          last_ts=self._last_ts, num_deleted=self._last - first + 1 - n,
                          num_subjects=len(self._idx))

    # ---- Store protocol: removal ----
    def purge(self, filter_subject: str | None = None, upto_seq: int = 0, keep: int = 0) -> int:
        if self._n == 0:
            return 0
        if _is_all(filter_subject):
            if keep <= 0 and (upto_seq <= 0 or upto_seq > self._last):
                n = self._n
                self._purge_all()
                return n
            budget = self._n - keep if keep > 0 else self._n
            if budget <= 0:
                return 0
            seqs = []
            for q in self._live_seqs(self._first):
                if upto_seq > 0 and q >= upto_seq:
                    break
                seqs.append(q)
                if len(seqs) >= budget:
                    break
        else:
            idx = self._idx
            subs = list(idx.matching(filter_subject))
            if not subs:
                return 0
            if len(subs) == 1:
                seqs = idx.seqs(subs[0])
            else:
                seqs = list(heapq.merge(*(idx.seqs(s) for s in subs)))
            if keep > 0:
                seqs = seqs[: max(0, len(seqs) - keep)]
            if upto_seq > 0:
                seqs = seqs[: bisect_left(seqs, upto_seq)]
        if not seqs:
            return 0
        return self._remove_seqs(seqs)


class MemoryStore(_IndexedStore):
    """Messages kept in a dict by sequence; bytes accounted as nats-server's memstore."""

    def __init__(self) -> None:
        self._msgs: dict[int, StoredMsg] = {}
        self._idx = SubjectIndex()
        self._n = 0
        self._bytes = 0
        self._first = 1
        self._last = 0
        self._last_ts = 0

    # ---- hooks ----
    def _subject_of(self, seq: int) -> str | None:
        m = self._msgs.get(seq)
        return m.subject if m is not None else None

    def _ts_of(self, seq: int) -> int:
        return self._msgs[seq].ts

    def _remove_seqs(self, seqs: Iterable[int]) -> int:
        removed = 0
        msgs, idx = self._msgs, self._idx
        recompute = False
        for seq in seqs:
            m = msgs.pop(seq, None)
            if m is None:
                continue
            idx.remove(m.subject, seq)
            self._bytes -= memory_msg_size(m.subject, m.hdr, m.data)
            self._n -= 1
            removed += 1
            if seq == self._first:
                recompute = True
        if recompute:
            self._recompute_first(self._first + 1)
        return removed

    def _purge_all(self) -> None:
        self._msgs.clear()
        self._idx.clear()
        self._n = 0
        self._bytes = 0
        self._first = self._last + 1

    # ---- Store protocol ----
    def append(self, subject: str, hdr: bytes | None, data: bytes, ts: int) -> int:
        seq = self._last + 1
        self._msgs[seq] = StoredMsg(seq, subject, hdr, data, ts)
        self._idx.add(subject, seq)
        if self._n == 0:
            self._first = seq
        self._n += 1
        self._bytes += memory_msg_size(subject, hdr, data)
        self._last = seq
        self._last_ts = ts
        return seq

    def append_many(self, msgs: list[tuple[str, bytes]], ts: int) -> int:
        """Header-less (subject, data) messages at last_seq + 1, ...; returns the first seq."""
        first = self._last + 1
        append = self.append
        for subject, data in msgs:
            append(subject, None, data, ts)
        return first

    def append_at(self, seq: int, subject: str, hdr: bytes | None, data: bytes, ts: int) -> None:
        if seq <= self._last:
            raise ValueError(f"append_at({seq}): sequence must be > last_seq {self._last}")
        self._last = seq - 1
        self.append(subject, hdr, data, ts)

    def skip_to(self, seq: int) -> None:
        """Next append gets `seq`. Messages still stored are removed (like nats-server's
        Compact past the end); moving backwards is a caller bug."""
        if seq <= self._last:
            raise ValueError(f"skip_to({seq}): sequence must be > last_seq {self._last}")
        if self._n == 0 and seq == self._last + 1:
            return  # already there
        if self._n:
            self._purge_all()
        self._last = seq - 1
        self._first = seq

    def truncate_after(self, seq: int, last_ts: int) -> None:
        """Forget every message above `seq`; last_seq becomes seq and last_ts last_ts (a seq
        above last_seq moves it forward over sequences that hold nothing)."""
        above = [q for q in self._msgs if q > seq]
        self._remove_seqs(sorted(above))
        self._last = seq
        self._last_ts = last_ts
        if self._n == 0:
            self._first = seq + 1

    def sync(self) -> None:
        """Nothing to make durable in memory."""

    def get(self, seq: int) -> StoredMsg | None:
        return self._msgs.get(seq)

    def get_run(self, start_seq: int, max_n: int) -> list[StoredMsg]:
        out: list[StoredMsg] = []
        msgs = self._msgs
        seq = start_seq
        while len(out) < max_n:
            m = msgs.get(seq)
            if m is None:
                break
            out.append(m)
            seq += 1
        return out

    def remove(self, seq: int) -> bool:
        return self._remove_seqs((seq,)) == 1

    def close(self) -> None:
        """Memory is released with the object; the contents stay readable until then."""

    def delete(self) -> None:
        self._purge_all()
