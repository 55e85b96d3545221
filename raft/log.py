"""The in-memory Raft log: a snapshot base plus a contiguous run of entries.

How this works: entries[k] has index `snap_index + 1 + k`. Three cursors move forward over it:
`stable` (persisted by the driver), `commit` (known replicated on a majority) and `applied`
(handed to the state machine). `stable` can move back when a conflicting suffix is truncated,
`commit` and `applied` never do, and no committed entry is ever truncated (asserted). The log
also tracks where configuration entries sit, because a server uses the latest configuration in
its log, committed or not (Raft dissertation section 4.1), and truncating a conflicting suffix
must roll that configuration back.
"""

from __future__ import annotations

from .messages import CONF, ConfState, Entry, Snapshot, decode_conf


class RaftLog:
    __slots__ = ("snapshot", "entries", "stable", "commit", "applied", "confs")

    def __init__(self, snapshot: Snapshot, entries: list[Entry]) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        self.confs: list[tuple[int, ConfState]] = []  # (index, conf) of CONF entries, ascending
        self.commit = snapshot.index
        self.applied = snapshot.index
        self.stable = snapshot.index
        self._append(entries)
        self.stable = self.last_index

    # -- queries ---------------------------------------------------------------------------
    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term(self, index: int) -> int | None:
        """The term of the entry at `index`, or None when compacted away or not yet written."""
        base = self.snapshot.index
        if index == base:
            return self.snapshot.term
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1].term
        return None

    def entry(self, index: int) -> Entry:
        assert self.first_index <= index <= self.last_index, (index, self.first_index, self.last_index)
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Entry]:
        """Entries [lo, hi), cut short after `bytes_max` of payload (always at least one)."""
        assert self.first_index <= lo <= hi <= self.last_index + 1, (lo, hi)
        base = self.snapshot.index + 1
        out = self.entries[lo - base : hi - base]
        if bytes_max is not None:
            size = 0
            for n, e in enumerate(out):
                size += len(e.data)
                if size > bytes_max and n > 0:
                    return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft section 5.4.1: compare last terms, then lengths."""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    @property
    def conf(self) -> ConfState:
        return self.confs[-1][1] if self.confs else self.snapshot.conf

    @property
    def conf_index(self) -> int:
        return self.confs[-1][0] if self.confs else self.snapshot.index

    def conf_at(self, index: int) -> ConfState:
        for i, c in reversed(self.confs):
            if i <= index:
                return c
        return self.snapshot.conf

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with its term (0 if unknown).

        Used on both sides of a rejected append to skip a whole term per round trip.
        """
        index = min(index, self.last_index)
        while index > self.snapshot.index and self.entries[index - self.snapshot.index - 1].term > term:
            index -= 1
        t = self.term(index)
        return index, (t if t is not None else 0)

    def unstable(self) -> list[Entry]:
        return self.entries[self.stable - self.snapshot.index :]

    def next_committed(self, count_max: int) -> list[Entry]:
        lo = max(self.applied, self.snapshot.index) + 1
        hi = min(self.commit, lo + count_max - 1)
        return self.slice(lo, hi + 1) if hi >= lo else []

    # -- mutations ---------------------------------------------------------------------------
    def _append(self, entries: list[Entry]) -> None:
        for e in entries:
            assert e.index == self.last_index + 1, ("log gap", e.index, self.last_index)
            assert e.term >= self.last_term, ("term went down", e.term, self.last_term)
            self.entries.append(e)
            if e.kind == CONF:
                self.confs.append((e.index, decode_conf(e.data)))

    def append(self, entries: list[Entry]) -> None:
        """Append entries that start at most one past the end; a conflicting suffix is cut."""
        if not entries:
            return
        first = entries[0].index
        assert first > self.commit, ("would truncate committed entries", first, self.commit)
        assert first <= self.last_index + 1, ("log gap", first, self.last_index)
        if first <= self.last_index:
            del self.entries[first - self.snapshot.index - 1 :]
            while self.confs and self.confs[-1][0] >= first:
                self.confs.pop()
            self.stable = min(self.stable, first - 1)
        self._append(entries)

    def maybe_append(self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries (Raft section 5.3). Returns the last index now known to
        match the leader, or None when the log has no entry (index, log_term)."""
        if self.term(index) != log_term:
            return None
        last_new = index + len(entries)
        # Skip entries we already hold; only a real conflict truncates (duplicates and reordered
        # old messages must never cut entries that a newer message already delivered).
        for k, e in enumerate(entries):
            t = self.term(e.index)
            if t is None and e.index <= self.snapshot.index:
                continue  # compacted: it is committed, hence identical
            if t != e.term:
                self.append(list(entries[k:]))
                break
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.commit:
            assert index <= self.last_index, ("commit beyond log", index, self.last_index)
            self.commit = index

    def stable_to(self, index: int, term: int) -> None:
        if self.term(index) == term and index > self.stable:
            self.stable = index

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.commit, (self.applied, index, self.commit)
        self.applied = index

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries up to `snapshot.index`, which must already be applied."""
        i = snapshot.index
        assert self.snapshot.index < i <= self.applied, (self.snapshot.index, i, self.applied)
        assert self.term(i) == snapshot.term, ("snapshot term mismatch", i, snapshot.term)
        del self.entries[: i - self.snapshot.index]
        self.confs = [(ci, c) for ci, c in self.confs if ci > i]
        self.snapshot = snapshot
        self.stable = max(self.stable, i)

    def restore(self, snapshot: Snapshot) -> None:
        """Replace everything with a snapshot from the leader (it is past our commit)."""
        assert snapshot.index > self.commit, (snapshot.index, self.commit)
        self.snapshot = snapshot
        self.entries = []
        self.confs = []
        self.commit = snapshot.index
        self.stable = snapshot.index
