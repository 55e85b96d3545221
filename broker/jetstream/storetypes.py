"""The contract between a JetStream stream and its message store.

A stream (broker/jetstream/stream.py) decides *what* to keep: it enforces limits,
retention, dedupe and expected-* checks by calling these primitives. A store
(memory or file, broker/jetstream/store.py and filestore.py) only keeps messages by
sequence, indexes them by subject and accounts bytes exactly as nats-server does, so
the same stream code runs on either store and, later, behind Raft.

Sequences start at 1 and only grow; removing a message leaves a gap (interior delete)
or moves first_seq forward. Timestamps are integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import msgspec


class StoredMsg(msgspec.Struct, gc=False):
    seq: int
    subject: str
    hdr: bytes | None  # raw `NATS/1.0...` block or None
    data: bytes
    ts: int  # ns since epoch


class StoreState(msgspec.Struct):
    messages: int = 0
    bytes: int = 0
    first_seq: int = 0  # when empty: last_seq + 1 (nats-server reports it that way)
    first_ts: int = 0  # 0 means the zero time
    last_seq: int = 0
    last_ts: int = 0
    num_deleted: int = 0  # interior gaps between first_seq and last_seq
    num_subjects: int = 0


def file_msg_size(subject: str, hdr: bytes | None, data: bytes) -> int:
    """Bytes nats-server's file store accounts for one message (filestore.go)."""
    n = 22 + len(subject.encode()) + len(data) + 8
    if hdr:
        n += 4 + len(hdr)
    return n


def memory_msg_size(subject: str, hdr: bytes | None, data: bytes) -> int:
    """Bytes nats-server's memory store accounts for one message (memstore.go)."""
    return len(subject.encode()) + (len(hdr) if hdr else 0) + len(data) + 16


class Store(Protocol):
    """Both stores implement exactly this; tests/jetstream/test_store.py runs one suite on both."""

    def append(self, subject: str, hdr: bytes | None, data: bytes, ts: int) -> int:
        """Store a message at last_seq + 1 and return that sequence. Not yet durable."""
        ...

    def append_at(self, seq: int, subject: str, hdr: bytes | None, data: bytes, ts: int) -> None:
        """Store at an explicit sequence > last_seq (gap becomes deleted); for replication."""
        ...

    def skip_to(self, seq: int) -> None:
        """Move an empty or drained store's next sequence to `seq` (purge seq=, first_seq)."""
        ...

    def truncate_after(self, seq: int, last_ts: int) -> None:
        """Forget every message above `seq`: afterwards last_seq == seq, last_ts == last_ts
        and messages at or below seq are as they were (a seq above last_seq moves it forward
        over sequences that hold nothing). A replicated stream restarting from a snapshot cuts
        what it applied after it (the Raft log replays that); a catching-up one records that
        the newest messages were removed. Durable when it returns."""
        ...

    def sync(self) -> None:
        """Make every append so far durable (fsync). Blocking: call from a thread.
        One call covers all appends made before it started (group commit)."""
        ...

    def get(self, seq: int) -> StoredMsg | None: ...

    def get_run(self, start_seq: int, max_n: int) -> list[StoredMsg]:
        """get(start_seq), get(start_seq + 1), ... while they are stored, at most max_n of
        them: a consumer's next batch in one call."""
        ...

    def live_seqs(self, start_seq: int = 0) -> Iterator[int]:
        """Stored sequences >= start_seq, ascending, without reading any message."""
        ...

    def contains(self, seq: int) -> bool:
        """Is a message stored at seq (without reading it)?"""
        ...

    def next_msg(self, start_seq: int, filter_subject: str | None = None) -> StoredMsg | None:
        """First message with seq >= start_seq whose subject matches the filter (wildcards ok)."""
        ...

    def last_msg(self, filter_subject: str) -> StoredMsg | None:
        """Newest message whose subject matches the filter (wildcards ok)."""
        ...

    def remove(self, seq: int) -> bool:
        """Delete one message; False if it was not there."""
        ...

    def purge(self, filter_subject: str | None = None, upto_seq: int = 0, keep: int = 0) -> int:
        """Remove messages (all, or matching the filter), only those with seq < upto_seq when
        upto_seq > 0, keeping the newest `keep` (per filter). Returns how many were removed."""
        ...

    def subject_seqs(self, subject: str) -> list[int]:
        """Sequences stored for one literal subject, oldest first (per-subject limits, KV)."""
        ...

    def subjects(self, filter_subject: str = ">") -> dict[str, int]:
        """Literal subject -> message count for subjects matching the filter."""
        ...

    def num_pending(self, start_seq: int, filter_subject: str | None = None,
                    last_per_subject: bool = False) -> int:
        """Messages with seq >= start_seq matching the filter (only the newest per subject if
        last_per_subject)."""
        ...

    def state(self) -> StoreState: ...

    def close(self) -> None: ...

    def delete(self) -> None:
        """Close and remove everything this store persisted."""
        ...
