"""A JetStream stream as a pure state machine over a Store.

How this works: the manager feeds every inbound message to `Stream.process(subject,
hdr, data, now_ns)`, which runs nats-server's checks in its order (sealed, expected
stream, TTL allowed, expected last subject sequence, expected last sequence, duplicate
Nats-Msg-Id, expected last msg id, rollup, max_msg_size, discard-new limits), appends to
the store, applies the rollup and then the discard-old limits. Time never comes from a
clock here: callers pass `now_ns`, so the same entries applied on every replica give
the same state. `expire(now_ns)` removes messages past max_age or their Nats-TTL and
prunes the duplicate window; the manager calls it from a timer and before reads.
No trio, no I/O beyond the Store calls.
"""

from __future__ import annotations

import heapq
import re
from collections import deque

from broker import headers
from broker.jetstream import errors
from broker.jetstream.api import StreamConfig, StreamState, rfc3339
from broker.jetstream.storetypes import Store

MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJ_SEQ_SUBJ = "Nats-Expected-Last-Subject-Sequence-Subject"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
ROLLUP = "Nats-Rollup"
TTL = "Nats-TTL"
MARKER_REASON = "Nats-Marker-Reason"
STREAM_SOURCE = "Nats-Stream-Source"

_GO_DURATION = re.compile(r"^([0-9]*(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> int | None:
    """Go's time.ParseDuration for the forms clients send; None when it does not parse."""
    sign = 1
    if text[:1] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if not text or not _GO_DURATION.match(text):
        return None
    total = 0.0
    for number, unit in _GO_PART.findall(text):
        if number in ("", "."):
            return None
        total += float(number) * _GO_UNITS[unit]
    return sign * int(total)


def go_duration(secs: int) -> str:
    """Whole seconds as Go's time.Duration prints them: 1s, 1m0s, 1h2m3s."""
    h, rest = divmod(secs, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


def parse_ttl(value: str) -> int:
    """Nats-TTL in seconds: -1 = never; raises JSError for an invalid TTL (as nats-server)."""
    if value.lower() == "never":
        return -1
    dur = parse_go_duration(value)
    if dur is not None:
        if dur < 1_000_000_000:
            raise errors.ttl_invalid()
        return dur // 1_000_000_000
    if value.isdigit():
        return int(value)
    raise errors.ttl_invalid()


def _ttl_of(hdr: bytes | None) -> int:
    """Seconds until a stored message's Nats-TTL expires it (0 = none), lenient on read."""
    value = headers.get(hdr, TTL) if hdr else None
    if not value:
        return 0
    try:
        return parse_ttl(value)
    except errors.JSError:
        return 0


class Stream:
    def __init__(self, config: StreamConfig, store: Store, created_ns: int) -> None:
        self.name = config.name
        self.config = config
        self.store = store
        self.created_ns = created_ns
        self.last_msg_id = ""
        self._dedupe: dict[str, tuple[int, int]] = {}  # msg id -> (seq, ts)
        self._dedupe_order: deque[tuple[int, str]] = deque()
        self._ttls: list[tuple[int, int]] = []  # heap of (expires_ns, seq)
        self._pub_prefix = b""
        self.ack_prefix = b""
        self.markers: list[tuple[int, str]] = []  # (seq, subject) stored by expire(); the caller drains
        self._configure()
        self._rebuild_indexes()

    def _configure(self) -> None:
        cfg = self.config
        self._pub_prefix = ('{"stream":"' + self.name + '","seq":').encode()
        self.ack_prefix = self._pub_prefix  # PubAck = ack_prefix + str(seq) + "}" (manager hot path)
        self._max_msgs = cfg.max_msgs
        self._max_bytes = cfg.max_bytes
        self._max_per = cfg.max_msgs_per_subject
        self._max_size = cfg.max_msg_size
        self._discard_new = cfg.discard == "new"
        self._discard_new_per = cfg.discard_new_per_subject is True
        self._rollup_ok = cfg.allow_rollup_hdrs and not cfg.deny_purge
        self._window = cfg.duplicate_window or 0
        self._size = _size_fn(cfg.storage)
        self._has_limits = self._max_per > 0 or self._max_msgs > 0 or self._max_bytes > 0
        # The common case - no headers, no discard-new limits, not sealed - takes a short path.
        self._plain = not cfg.sealed and not self._discard_new

    def _rebuild_indexes(self) -> None:
        """After a restart: per-message TTLs and the duplicate window come from stored headers.
        Only messages with headers matter; the duplicate window is judged against the newest
        stored timestamp, and `expire()` prunes it against the real clock later."""
        st = self.store.state()
        if st.messages == 0:
            return
        horizon = st.last_ts - self._window
        seq = st.first_seq if self.config.allow_msg_ttl else self._first_seq_after(horizon)
        while True:
            msg = self.store.next_msg(seq)
            if msg is None:
                break
            seq = msg.seq + 1
            if not msg.hdr:
                continue
            if self.config.allow_msg_ttl:
                ttl = _ttl_of(msg.hdr)
                if ttl > 0:
                    heapq.heappush(self._ttls, (msg.ts + ttl * 1_000_000_000, msg.seq))
            msg_id = headers.get(msg.hdr, MSG_ID)
            if msg_id and msg.ts > horizon:
                self._dedupe[msg_id] = (msg.seq, msg.ts)
                self._dedupe_order.append((msg.ts, msg_id))
                self.last_msg_id = msg_id  # the newest id in the window, as nats-server rebuilds it

    def _first_seq_after(self, ts: int) -> int:
        """Smallest stored seq whose timestamp is > ts (timestamps grow with seq)."""
        st = self.store.state()
        lo, hi = st.first_seq, st.last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            msg = self.store.next_msg(mid)
            if msg is None or msg.ts > ts:
                hi = mid
            else:
                lo = msg.seq + 1
        return lo

    # ---- configuration ----
    def update(self, config: StreamConfig, now_ns: int) -> None:
        """Install a validated new config and apply its limits at once."""
        self.config = config
        self._configure()
        self._enforce_limits()
        self.expire(now_ns)

    def pub_ack(self, seq: int, duplicate: bool = False) -> bytes:
        if duplicate:
            return self._pub_prefix + str(seq).encode() + b',"duplicate": true}'
        return self._pub_prefix + str(seq).encode() + b"}"

    def pub_acks(self, first: int, n: int) -> list[bytes]:
        """pub_ack(seq) for seq in first .. first + n - 1, built by one join and one split."""
        prefix = '{"stream":"' + self.name + '","seq":'
        if "\0" in prefix:  # not in a valid stream name; keeps the separator unambiguous
            return [self.pub_ack(seq) for seq in range(first, first + n)]
        text = prefix + ("}\0" + prefix).join(map(str, range(first, first + n))) + "}"
        return text.encode().split(b"\0")

    # ---- ingest ----
    def process(self, subject: str, hdr: bytes | None, data: bytes, now_ns: int) -> tuple[int, bool]:
        """Store one published message: (seq, duplicate) or JSError; a failure changes nothing."""
        if hdr is None and self._plain and (self._max_size < 0 or len(data) <= self._max_size):
            seq = self.store.append(subject, None, data, now_ns)
            self.last_msg_id = ""
            if self._has_limits:
                self._enforce_limits(subject)
            return seq, False
        if self.config.sealed:
            raise errors.sealed()
        msg_id = ""
        ttl = 0
        rollup = ""
        if hdr:
            msg_id, ttl, rollup, dup_seq = self._check_headers(subject, hdr, now_ns)
            if dup_seq:
                return dup_seq, True
        self._check_fits(subject, hdr, data, rollup)
        if ttl > 0 and hdr:
            ttl, hdr = self._raise_ttl(ttl, hdr)
        seq = self.store.append(subject, hdr, data, now_ns)
        if msg_id:
            self._dedupe[msg_id] = (seq, now_ns)
            self._dedupe_order.append((now_ns, msg_id))
        self.last_msg_id = msg_id
        if rollup == "sub":
            self.store.purge(subject, seq)
        elif rollup == "all":
            self.store.purge(None, seq)
        if ttl > 0:
            heapq.heappush(self._ttls, (now_ns + ttl * 1_000_000_000, seq))
        if self._has_limits:
            self._enforce_limits(subject)
        return seq, False

    def _check_fits(self, subject: str, hdr: bytes | None, data: bytes, rollup: str) -> None:
        """Size, header-size and discard-new limits, shared by publishes and copies."""
        if 0 <= self._max_size < len(data) + (len(hdr) if hdr else 0):
            raise errors.msg_too_big()
        if hdr and len(hdr) > 65535:
            raise errors.header_too_big()
        if self._discard_new and not rollup:
            self._check_discard_new(subject, hdr, data)

    def store_copy(self, subject: str, hdr: bytes | None, data: bytes, now_ns: int,
                   at_seq: int = 0, ts: int = 0) -> tuple[int, bool]:
        """Store a message copied from another stream (sourcing.py): (seq, duplicate) or
        JSError. A mirror's copy (`at_seq`, `ts`) keeps the origin's sequence (skipped
        sequences become deleted ones) and timestamp and is never deduplicated; a source's
        copy gets the next sequence. As nats-server treats sourced messages: no expected-*
        or TTL-enabled checks, rollups stored but applied only where this stream permits
        them, size and discard-new limits as for publishes."""
        if self.config.sealed:
            raise errors.sealed()
        msg_id = rollup = ""
        ttl = 0
        if hdr:
            msg_id = headers.get(hdr, MSG_ID) or ""
            if msg_id and not at_seq:
                entry = self._dedupe.get(msg_id)
                if entry is not None and now_ns - entry[1] < self._window:
                    return entry[0], True
            rollup = headers.get(hdr, ROLLUP) or ""
            if rollup and rollup not in ("sub", "all"):
                raise errors.rollup_failed(f'rollup value invalid: "{rollup}"')
            if self.config.allow_msg_ttl:
                ttl = _ttl_of(hdr)
        self._check_fits(subject, hdr, data, rollup)
        stamp = ts or now_ns
        if at_seq:
            if self.store.state().messages == 0:
                self.store.skip_to(at_seq)
                seq = self.store.append(subject, hdr, data, stamp)
            else:
                self.store.append_at(at_seq, subject, hdr, data, stamp)
                seq = at_seq
        else:
            seq = self.store.append(subject, hdr, data, stamp)
        if msg_id:
            self._dedupe[msg_id] = (seq, now_ns)
            self._dedupe_order.append((now_ns, msg_id))
        self.last_msg_id = msg_id
        if rollup and self._rollup_ok:
            self.store.purge(subject if rollup == "sub" else None, seq)
        if ttl > 0:
            heapq.heappush(self._ttls, (stamp + ttl * 1_000_000_000, seq))
        if self._has_limits:
            self._enforce_limits(subject)
        return seq, False

    def batch_ok(self) -> bool:
        """May header-less messages within max_msg_size go through append_plain() as one
        batch? Only when storing each one is a plain append (no per-message limits)."""
        return self._plain and not self._has_limits

    def append_plain(self, msgs: list[tuple[str, bytes]], now_ns: int) -> int:
        """Store header-less (subject, data) messages, each within max_msg_size, when
        batch_ok(): the same as process() per message. Returns the first sequence."""
        self.last_msg_id = ""
        append_many = getattr(self.store, "append_many", None)
        if append_many is not None:
            return append_many(msgs, now_ns)
        append = self.store.append
        first = self.store.state().last_seq + 1
        for subject, data in msgs:
            append(subject, None, data, now_ns)
        return first

    def _raise_ttl(self, ttl: int, hdr: bytes) -> tuple[int, bytes]:
        """With subject delete markers a message TTL is at least the marker TTL (unless only
        one message per subject is kept); nats-server rewrites the header to whole seconds."""
        marker = self.config.subject_delete_marker_ttl
        if not isinstance(marker, int) or marker <= 0 or self._max_per == 1:
            return ttl, hdr
        floor = marker // 1_000_000_000
        if ttl >= floor:
            return ttl, hdr
        lines = [ln for ln in hdr[:-4].split(b"\r\n") if not ln.startswith(TTL.encode() + b":")]
        return floor, b"\r\n".join(lines) + f"\r\n{TTL}: {floor}\r\n\r\n".encode()

    def _check_headers(self, subject: str, hdr: bytes, now_ns: int) -> tuple[str, int, str, int]:
        h = headers.to_dict(hdr)
        expected = h.get(EXPECTED_STREAM)
        if expected and expected != self.name:
            raise errors.expected_stream_mismatch()
        ttl = 0
        raw_ttl = h.get(TTL)
        if raw_ttl:
            try:
                ttl = parse_ttl(raw_ttl)
            except errors.JSError:
                ttl = 0
                if self.config.allow_msg_ttl:
                    raise
            if ttl != 0 and not self.config.allow_msg_ttl:
                raise errors.ttl_disabled()
        self._check_expected_seqs(subject, h)
        if h.get(STREAM_SOURCE):  # only copies made by sourcing.py may carry it
            raise errors.source_header_not_allowed()
        msg_id = h.get(MSG_ID, "")
        if msg_id:
            entry = self._dedupe.get(msg_id)
            if entry is not None and now_ns - entry[1] < self._window:
                return msg_id, ttl, "", entry[0]
        last_id = h.get(EXPECTED_LAST_MSG_ID)
        if last_id and last_id != self.last_msg_id:
            raise errors.wrong_last_msg_id(self.last_msg_id)
        rollup = h.get(ROLLUP, "")
        if rollup:
            if not self._rollup_ok:
                raise errors.rollup_failed("rollup not permitted")
            if rollup not in ("sub", "all"):
                raise errors.rollup_failed(f'rollup value invalid: "{rollup}"')
        return msg_id, ttl, rollup, 0

    def _check_expected_seqs(self, subject: str, h: dict[str, str]) -> None:
        want = _as_int(h.get(EXPECTED_LAST_SUBJ_SEQ))
        if want >= 0:
            target = h.get(EXPECTED_LAST_SUBJ_SEQ_SUBJ) or subject
            last = self.store.last_msg(target)
            have = last.seq if last is not None else 0
            if have != want:
                raise errors.wrong_last_sequence(have)
        elif h.get(EXPECTED_LAST_SUBJ_SEQ_SUBJ):
            raise errors.expected_last_subject_seq_invalid()
        want = _as_int(h.get(EXPECTED_LAST_SEQ))
        if want >= 0:
            last_seq = self.store.state().last_seq
            if want != last_seq:
                raise errors.wrong_last_sequence(last_seq)

    def _check_discard_new(self, subject: str, hdr: bytes | None, data: bytes) -> None:
        st = self.store.state()
        if 0 < self._max_msgs <= st.messages:
            raise errors.store_failed(errors.MAX_MSGS)
        if self._max_bytes > 0 and st.bytes + self._size(subject, hdr, data) > self._max_bytes:
            raise errors.store_failed(errors.MAX_BYTES)
        if self._discard_new_per and self._max_per > 0:
            if len(self.store.subject_seqs(subject)) >= self._max_per:
                raise errors.store_failed(errors.MAX_MSGS_PER_SUBJECT)

    def _enforce_limits(self, subject: str | None = None) -> None:
        store = self.store
        if self._max_per > 0:
            subjects = [subject] if subject is not None else list(store.subjects(">"))
            for s in subjects:
                seqs = store.subject_seqs(s)
                for seq in seqs[: max(0, len(seqs) - self._max_per)]:
                    store.remove(seq)
        if self._max_msgs > 0 or self._max_bytes > 0:
            st = store.state()
            while st.messages > 0 and ((0 < self._max_msgs < st.messages)
                                       or (0 < self._max_bytes < st.bytes)):
                store.remove(st.first_seq)
                st = store.state()

    # ---- time-based removal ----
    def expire(self, now_ns: int) -> int:
        """Drop messages past max_age or their TTL; prune the duplicate window. Returns count."""
        removed = 0
        max_age = self.config.max_age
        if max_age > 0:
            cutoff = now_ns - max_age
            st = self.store.state()
            while st.messages > 0 and 0 < st.first_ts <= cutoff:
                if not self._mark_subject_delete(st.first_seq, now_ns) and self.store.remove(st.first_seq):
                    removed += 1
                st = self.store.state()
        while self._ttls and self._ttls[0][0] <= now_ns:
            _, seq = heapq.heappop(self._ttls)
            if not self._mark_subject_delete(seq, now_ns) and self.store.remove(seq):
                removed += 1
        order = self._dedupe_order
        while order and now_ns - order[0][0] >= self._window:
            ts, msg_id = order.popleft()
            entry = self._dedupe.get(msg_id)
            if entry is not None and entry[1] == ts:
                del self._dedupe[msg_id]
        return removed

    def _mark_subject_delete(self, seq: int, now_ns: int) -> bool:
        """With subject_delete_marker_ttl, the last message of a subject aged out by max_age
        is replaced by a marker (Nats-Marker-Reason: MaxAge) that itself expires after the
        marker TTL, so watchers learn the key is gone. Returns True when it did so."""
        ttl = self.config.subject_delete_marker_ttl
        if not isinstance(ttl, int) or ttl <= 0:
            return False
        msg = self.store.get(seq)
        if msg is None or (msg.hdr and headers.get(msg.hdr, MARKER_REASON)):
            return False
        if len(self.store.subject_seqs(msg.subject)) != 1:
            return False
        secs = max(1, ttl // 1_000_000_000)
        hdr = (f"NATS/1.0\r\n{MARKER_REASON}: MaxAge\r\n{TTL}: {go_duration(secs)}\r\n"
               f"{ROLLUP}: sub\r\n\r\n").encode()
        new_seq = self.store.append(msg.subject, hdr, b"", now_ns)
        self.store.remove(seq)
        heapq.heappush(self._ttls, (now_ns + secs * 1_000_000_000, new_seq))
        self.markers.append((new_seq, msg.subject))
        return True

    def next_expiry_ns(self) -> int:
        """Earliest time something expires (0 = nothing scheduled)."""
        best = 0
        if self.config.max_age > 0:
            st = self.store.state()
            if st.messages > 0 and st.first_ts > 0:
                best = st.first_ts + self.config.max_age
        if self._ttls and (best == 0 or self._ttls[0][0] < best):
            best = self._ttls[0][0]
        if self._dedupe_order:
            at = self._dedupe_order[0][0] + self._window
            if best == 0 or at < best:
                best = at
        return best

    # ---- admin operations ----
    def delete_msg(self, seq: int) -> None:
        if self.config.sealed:
            raise errors.sealed()
        if self.config.deny_delete:
            raise errors.msg_delete_failed("message delete not permitted")
        if self.store.remove(seq):
            return
        st = self.store.state()
        if seq > st.last_seq:
            raise errors.msg_delete_failed("stream store EOF")
        if st.messages == 0 or seq < st.first_seq:
            raise errors.msg_delete_failed("no message found")
        raise errors.sequence_not_found(seq)

    def purge(self, filter_subject: str = "", seq: int = 0, keep: int = 0) -> int:
        if self.config.sealed:
            raise errors.sealed()
        if self.config.deny_purge:
            raise errors.purge_failed("stream purge not permitted")
        if seq > 0 and keep > 0:
            raise errors.bad_request()
        if filter_subject == ">":
            filter_subject = ""
        purged = self.store.purge(filter_subject or None, seq, keep)
        st = self.store.state()
        if not filter_subject and seq > 0 and st.messages == 0 and seq > st.last_seq + 1:
            self.store.skip_to(seq)
        elif not filter_subject and seq == 0 and keep == 0 and st.messages == 0:
            self.store.skip_to(st.last_seq + 1)
        return purged

    def remove_acked(self, seq: int) -> bool:
        """Interest/workqueue retention: a message nobody needs any more."""
        return self.store.remove(seq)

    # ---- views ----
    def deleted_seqs(self) -> list[int]:
        """Interior gaps between first_seq and last_seq (STREAM.INFO deleted_details)."""
        st = self.store.state()
        if not st.num_deleted:
            return []
        gaps = []
        expected = st.first_seq
        seq = st.first_seq
        while (msg := self.store.next_msg(seq)) is not None:
            gaps.extend(range(expected, msg.seq))
            expected = seq = msg.seq + 1
        return gaps

    def state(self, consumer_count: int = 0, subjects_filter: str = "") -> StreamState:
        st = self.store.state()
        first_seq = st.first_seq
        if st.messages == 0 and st.last_seq == 0:
            first_seq = 0
        out = StreamState(messages=st.messages, bytes=st.bytes, first_seq=first_seq,
                          first_ts=rfc3339(st.first_ts if st.messages else 0),
                          last_seq=st.last_seq, last_ts=rfc3339(st.last_ts),
                          consumer_count=consumer_count)
        if st.num_subjects:
            out.num_subjects = st.num_subjects
        if subjects_filter and st.messages:
            found = self.store.subjects(subjects_filter)
            if found:
                out.subjects = found
        if st.num_deleted:
            out.num_deleted = st.num_deleted
        return out


def _as_int(raw: str | None) -> int:
    """A header's unsigned integer, or -1 when absent or not a number (nats-server then
    ignores the header)."""
    if not raw or not raw.strip().isdigit():
        return -1
    return int(raw.strip())


def _size_fn(storage: str):
    from broker.jetstream.storetypes import file_msg_size, memory_msg_size
    return memory_msg_size if storage == "memory" else file_msg_size
