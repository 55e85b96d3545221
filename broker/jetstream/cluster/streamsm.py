"""A replicated stream (R3) as a Raft state machine over the pure `Stream`.

How this works
- Replicate inputs, not outputs. The stream leader proposes what it was asked to do: raw
  publishes (`PubBatch`, many per entry), `Expire(ts)` from its timer (followers never expire
  on their own clock), `Purge`, `DeleteMsg`, `RemoveAcked` (interest/workqueue removals it
  decided), `UpdateConfig`. Every replica runs the deterministic `Stream` on apply with the
  timestamp carried in the entry, so dedupe, expected-sequence checks, limits and discard
  policies are judged against the same state in log order everywhere and hold across leader
  changes. `apply` returns the outcome (per message `(seq, duplicate)` or a `MsgError`).
- One batch in flight. A PubBatch is proposed only when everything before it has applied on
  the leader (Raft applied == last index); `pub_batch()` stamps `base_seq` = last_seq. Apply
  asserts it and raises `StreamDiverged` otherwise: a replica that drifts stops loudly
  (RaftHost stops the group with the error set). Undecodable data raises `CorruptEntry`.
- Idempotent by index: the machine knows the Raft index its state reflects (`applied_index`);
  an entry at or below it is already in the state and is skipped.
- Snapshots are state summaries: `snapshot()` fsyncs the store first (so RaftHost compacts the
  log only below what the store made durable) and returns first/last seq, last ts, counts,
  the deleted ranges, config, created, the duplicate window (ids with seq and ts, in order)
  and the last msg id; TTL timers are rebuilt from stored headers.
- Restore reconciles the store with a summary: what lies above its last_seq is cut
  (`store.truncate_after`: a crash may have persisted appends of later entries, maybe part of
  one), what it says is gone is removed. If every message it says is live is then here, its
  in-memory state is installed and the log replays after its index, exactly. Otherwise the
  replica is catching up (`need`): the wiring asks an up-to-date replica (the leader) for
  `catchup_chunk(from_seq, max_msgs)` and hands each to `apply_catchup` until `need` is None.
  A chunk carries the server's *current* summary, so the replica converges to the server's
  state at the server's index (messages removed there since the snapshot could not be sent)
  and then skips log entries up to that index. RaftHost calls restore and apply in one pass,
  so entries handed over meanwhile are held and applied after the catch-up (apply returns
  None for them); a snapshot taken meanwhile is the target plus those entries.
- Durability: open an R3 FileStore with `hold_removals=True`. Then only snapshot() (and
  truncate_after) make removals durable, so after any crash the store is its last snapshot
  plus appends, which restore cuts: a restart never needs a peer. Without it, a removal that
  reached the disk after the snapshot makes the restart catch up from a peer (which a
  whole-cluster crash may not leave). Remaining window: a crash inside snapshot()'s sync,
  before Raft stored the snapshot, needs a catch-up.

What the wiring does, in order
1. Open the store (FileStore(dir, hold_removals=True) or MemoryStore) and build
   `StreamSM(config, store, created)`; `RaftHost.add_group(name, ..., sm, snapshot_entries=...,
   snapshot_bytes=...)` restores Raft's snapshot if there is one; then call
   `sm.ensure_started()` (with no snapshot it empties the store: the log replays from 1).
2. The first entry of a new stream's log is `UpdateConfig(the config it was created with)`,
   so a replay from the start applies early entries under the config they were proposed under.
3. Leader: collect publishes while a batch is in flight; when `g.applied_index ==
   g.last_index`, propose `encode_op(sm.pub_batch(msgs, now))`; on_done gets the outcomes in
   order: ack `(seq, dup)`, answer a `MsgError` with its JSError. Propose `Expire(now)` at
   `sm.stream.next_expiry_ns()`, admin operations as their entries; answer from the result.
4. While `sm.catching_up`: never propose or serve; if leading, step down to a replica that is
   not catching up. Serve others with `sm.catchup_chunk` (synchronously, in the Raft loop)
   and feed chunks with `sm.apply_catchup` (also in the Raft loop, between applies). Like
   apply, apply_catchup raises StreamDiverged / CorruptEntry on divergence: stop the group.
   Drain `sm.stream.markers` after applies on every replica (only the leader notifies).
   Never call store.sync() outside snapshot(): R1's periodic sync loop must skip R3 stores.
5. When `sm.snapshot_wanted` (a catch-up finished, or Raft took a leader's snapshot older than
   this state), snapshot the group soon: until then a crash needs another catch-up.
   (RaftGroup has no "snapshot now" call yet.) snapshot() fsyncs on the Raft loop: a slow
   disk stalls every group of the host for that long (a later split: flush + summary on the
   loop, fdatasync in the compaction thread before the snapshot is saved).

Pure: no trio, no sockets; disk only through the Store.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Union

import msgspec

from broker.jetstream import errors
from broker.jetstream.api import StreamConfig
from broker.jetstream.stream import Stream
from broker.jetstream.storetypes import Store, StoredMsg

__all__ = [
    "PubBatch", "Expire", "Purge", "DeleteMsg", "RemoveAcked", "UpdateConfig", "StreamOp",
    "MsgError", "Summary", "CatchupNeed", "CatchupChunk", "StreamSM", "StreamDiverged",
    "CorruptEntry", "encode_op", "decode_op",
]


# ---- entries --------------------------------------------------------------------------------
class PubBatch(msgspec.Struct, tag="pub", array_like=True):
    base_seq: int  # the stream's last_seq when the leader proposed it
    ts: int  # the leader's clock, ns
    msgs: list[tuple[str, bytes | None, bytes]]  # (subject, header block or None, payload)
    # consumer states the leader replicates with this entry: (name, created, state); a
    # delivery leaves the leader only once the state recording it committed
    consumers: list[tuple[str, int, bytes]] = []


class Copies(msgspec.Struct, tag="copy", array_like=True):
    """Messages a mirror or source link of the leader read from its origin: (link, subject,
    header, data, origin seq for a mirror else 0, origin timestamp for a mirror else 0). Once
    one copy of a link fails, the rest of that link's copies in the entry are not tried."""
    ts: int
    items: list[tuple[str, str, bytes | None, bytes, int, int]]


class ConsumerUpsert(msgspec.Struct, tag="cup", array_like=True):
    """A replicated consumer made or reconfigured: its config (JSON) and creation time."""
    name: str
    created: int
    config: bytes


class ConsumerDelete(msgspec.Struct, tag="cdel", array_like=True):
    name: str
    created: int


class Expire(msgspec.Struct, tag="exp", array_like=True):
    ts: int


class Purge(msgspec.Struct, tag="purge", array_like=True):
    filter: str = ""
    seq: int = 0
    keep: int = 0


class DeleteMsg(msgspec.Struct, tag="del", array_like=True):
    seq: int
    no_erase: bool = True


class RemoveAcked(msgspec.Struct, tag="ack", array_like=True):
    seqs: list[int]


class UpdateConfig(msgspec.Struct, tag="cfg", array_like=True):
    config: StreamConfig
    ts: int


StreamOp = Union[PubBatch, Expire, Purge, DeleteMsg, RemoveAcked, UpdateConfig, ConsumerUpsert, ConsumerDelete,
                 Copies]

_encoder = msgspec.msgpack.Encoder()
_op_decoder = msgspec.msgpack.Decoder(StreamOp)


def encode_op(op: StreamOp) -> bytes:
    return _encoder.encode(op)


def decode_op(data: bytes) -> StreamOp:
    try:
        return _op_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CorruptEntry(f"undecodable stream entry ({len(data)} bytes): {exc}") from None


class MsgError(msgspec.Struct, frozen=True, array_like=True):
    """A refused publish or operation, as the JSError the leader answers with."""
    code: int
    err_code: int
    description: str

    @classmethod
    def of(cls, e: errors.JSError) -> "MsgError":
        return cls(e.code, e.err_code, e.description)

    def error(self) -> errors.JSError:
        return errors.JSError(self.code, self.err_code, self.description)


class StreamDiverged(AssertionError):
    """An entry's precondition does not hold on this replica: its state drifted."""


class CorruptEntry(ValueError):
    """Entry data that is no stream operation."""


# ---- snapshots and catch-up -----------------------------------------------------------------
class Summary(msgspec.Struct):
    index: int  # the Raft index this state reflects
    config: StreamConfig
    created: int
    first_seq: int
    last_seq: int
    last_ts: int
    msgs: int
    msg_bytes: int
    deleted: list[tuple[int, int]]  # removed sequences in first_seq..last_seq, inclusive ranges
    dedupe: list[tuple[str, int, int]]  # msg id, seq, ts (the duplicate window)
    dedupe_order: list[tuple[int, str]]  # (ts, msg id) in the order the window prunes them
    last_msg_id: str
    pending: list[tuple[int, bytes]] = []  # entries (index, data) a catching-up replica holds
    consumers: list[tuple[str, int, bytes, bytes]] = []  # replicated consumers: name, created, config, state


_summary_decoder = msgspec.msgpack.Decoder(Summary)


class CatchupNeed(msgspec.Struct, frozen=True):
    from_seq: int  # the first sequence the replica lacks
    to_seq: int  # the last sequence of the state it converges to (grows with each chunk)


class CatchupChunk(msgspec.Struct):
    summary: Summary  # the serving replica's state when it built the chunk
    records: list[StoredMsg]  # its live messages from from_seq on, ascending
    done: bool  # no live message follows the last record


def _live_count(s: Summary, upto: int) -> int:
    """How many sequences <= upto the summary says are live."""
    hi = min(upto, s.last_seq)
    if s.msgs == 0 or hi < s.first_seq:
        return 0
    n = hi - s.first_seq + 1
    for lo, top in s.deleted:
        if lo > hi:
            break
        n -= min(top, hi) - lo + 1
    return n


class _Held(msgspec.Struct, frozen=True):
    """An entry carried in a snapshot (what apply() needs of a raft Entry)."""
    index: int
    data: bytes


# ---- the state machine ----------------------------------------------------------------------
class StreamSM:
    def __init__(self, config: StreamConfig, store: Store, created_ns: int) -> None:
        self.store = store
        self.stream = Stream(config, store, created_ns)
        self.applied_index = 0
        self.need: CatchupNeed | None = None
        self._target: Summary | None = None  # what a catch-up converges to
        self._deferred: list[tuple[int, bytes]] = []  # entries handed over while catching up
        self._started = False
        # The store may be durable past Raft's snapshot (a finished catch-up synced it, or Raft
        # took a leader's snapshot older than this state): snapshot soon, or a crash before
        # the next one needs a catch-up from a peer.
        self.snapshot_wanted = False
        self.last_op: StreamOp | None = None  # the operation apply() last carried out (the wiring reads it)
        # replicated consumers of the stream: name -> [created, config JSON, state (b"" until one)]
        self.consumers: dict[str, list] = {}

    @property
    def catching_up(self) -> bool:
        """While True this replica must not lead nor serve catch-ups (the wiring steps down)."""
        return self.need is not None

    # -- the leader's side ---------------------------------------------------------------------
    def pub_batch(self, msgs: list[tuple[str, bytes | None, bytes]], now_ns: int) -> PubBatch:
        """The next batch, for a leader whose log is fully applied (one batch in flight)."""
        assert self.need is None, "a catching-up replica cannot propose"
        st = self.store.state()
        return PubBatch(st.last_seq, max(now_ns, st.last_ts), msgs)

    # -- Raft's StateMachine protocol ----------------------------------------------------------
    def apply(self, entry: Any) -> Any:
        """Apply one committed entry (raft Entry: .index, .data). Returns the outcome for the
        proposer: PubBatch -> list of (seq, duplicate) | MsgError; Purge -> purged count;
        DeleteMsg -> True; RemoveAcked / Expire -> removed count; UpdateConfig -> None; any
        refused operation -> MsgError. None when skipped (replay) or held (catching up)."""
        self.ensure_started()
        self.last_op = None
        index = entry.index
        if index <= self.applied_index:
            return None
        if self.need is not None:
            if not self._deferred or index > self._deferred[-1][0]:
                self._deferred.append((index, entry.data))
            return None
        op = decode_op(entry.data)
        result = self._apply_op(op)
        self.applied_index = index
        self.last_op = op
        return result

    def _apply_op(self, op: StreamOp) -> Any:
        stream = self.stream
        if type(op) is PubBatch:
            last = self.store.state().last_seq
            if last != op.base_seq:
                raise StreamDiverged(f"stream {stream.name}: batch proposed at last_seq {op.base_seq}, "
                                     f"this replica is at {last} (applied index {self.applied_index})")
            for name, created, state in op.consumers:
                known = self.consumers.get(name)
                if known is not None and known[0] == created:
                    known[2] = state
            msgs = op.msgs
            if not msgs:
                return []
            if stream.batch_ok():  # no limits, not sealed: header-less messages append as a run
                size_max = stream.config.max_msg_size
                if all(h is None and (size_max < 0 or len(d) <= size_max) for _, h, d in msgs):
                    first = stream.append_plain([(subject, data) for subject, _, data in msgs], op.ts)
                    return [(first + k, False) for k in range(len(msgs))]
            out: list = []
            for subject, hdr, data in msgs:
                try:
                    out.append(stream.process(subject, hdr, data, op.ts))
                except errors.JSError as e:
                    out.append(MsgError.of(e))
            return out
        if type(op) is Copies:
            return self._copies(op)
        try:
            if type(op) is Expire:
                return stream.expire(op.ts)
            if type(op) is Purge:
                return stream.purge(op.filter, op.seq, op.keep)
            if type(op) is DeleteMsg:
                stream.delete_msg(op.seq)
                return True
            if type(op) is RemoveAcked:
                return sum(1 for seq in op.seqs if stream.remove_acked(seq))
            if type(op) is ConsumerUpsert:
                known = self.consumers.get(op.name)
                if known is not None and known[0] == op.created:
                    known[1] = op.config
                else:
                    self.consumers[op.name] = [op.created, op.config, b""]
                return None
            if type(op) is ConsumerDelete:
                known = self.consumers.get(op.name)
                if known is not None and known[0] == op.created:
                    del self.consumers[op.name]
                return None
            assert type(op) is UpdateConfig, op
            stream.update(op.config, op.ts)
            st = self.store.state()
            first = op.config.first_seq
            if st.last_seq == 0 and st.messages == 0 and isinstance(first, int) and first > 1:
                self.store.skip_to(first)  # a new stream's first_seq (its first entry is its config)
            return None
        except errors.JSError as e:
            return MsgError.of(e)

    def _copies(self, op: Copies) -> list:
        """Per copy: (seq, duplicate), None (a mirror already has that sequence), a MsgError,
        or False (not tried: an earlier copy of its link failed)."""
        stream, out, failed = self.stream, [], set()
        for link, subject, hdr, data, at_seq, ots in op.items:
            if link in failed:
                out.append(False)
                continue
            if at_seq and at_seq <= self.store.state().last_seq:
                out.append(None)
                continue
            try:
                out.append(stream.store_copy(subject, hdr, data, op.ts, at_seq=at_seq, ts=ots))
            except errors.JSError as e:
                failed.add(link)
                out.append(MsgError.of(e))
        return out

    def snapshot(self) -> bytes:
        """The state summary at applied_index, once the store has made it durable."""
        self.ensure_started()
        self.store.sync()
        self.snapshot_wanted = False
        if self._target is not None:
            # Catching up: the state is the target plus the entries held back.
            s = msgspec.structs.replace(self._target, pending=[p for p in self._deferred
                                                                 if p[0] > self._target.index])
            return _encoder.encode(s)
        return _encoder.encode(self.summary())

    def restore(self, data: bytes) -> CatchupNeed | None:
        """Make this replica's state the summary's (Raft calls it at start and when a leader
        sends a snapshot). Returns what must be fetched, if anything (also in `need`)."""
        try:
            s = _summary_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise CorruptEntry(f"undecodable stream snapshot: {exc}") from None
        if self._started and 0 < s.index <= self.applied_index:
            # This replica is already there or past it (a catch-up went further). Raft now
            # keeps this older snapshot while the store may be durable beyond it: snapshot soon.
            # Entries the snapshot holds (taken while its replica was catching up) that are
            # past this state are now covered by it in Raft: apply them here.
            if s.index < self.applied_index:
                self.snapshot_wanted = True
            for index, data in s.pending:
                if index > self.applied_index:
                    self.apply(_Held(index, data))
            return self.need
        self._started = True
        st = self.store.state()
        if st.last_seq > s.last_seq or (st.last_seq == s.last_seq and st.last_ts != s.last_ts):
            self.store.truncate_after(s.last_seq, s.last_ts)
        self._target = s
        self._deferred = list(s.pending)
        self.applied_index = s.index
        self.need = CatchupNeed(self.store.state().last_seq + 1, s.last_seq)
        self._converge(s)
        return self.need

    # -- catch-up ------------------------------------------------------------------------------
    def catchup_chunk(self, from_seq: int, max_msgs: int) -> CatchupChunk:
        """Serve a catching-up replica: this replica's summary now and up to max_msgs of its
        live messages from from_seq on. Synchronous, so the summary and the records agree."""
        assert self.need is None, "a catching-up replica cannot serve"
        assert max_msgs > 0
        records: list[StoredMsg] = []
        seq = from_seq
        while len(records) < max_msgs:
            m = self.store.next_msg(seq)
            if m is None:
                break
            records.append(m)
            seq = m.seq + 1
        done = len(records) < max_msgs or self.store.next_msg(seq) is None
        return CatchupChunk(self.summary(), records, done)

    def apply_catchup(self, chunk: CatchupChunk) -> CatchupNeed | None:
        """Store a chunk (messages keep their sequence and timestamp) and converge toward the
        server's state; returns the remaining need, None when caught up (held entries applied)."""
        assert self.need is not None, "apply_catchup without a catch-up in progress"
        s = chunk.summary
        store = self.store
        for m in chunk.records:
            if m.seq > store.state().last_seq:
                store.append_at(m.seq, m.subject, m.hdr, m.data, m.ts)
            else:  # a repeated or stale chunk: what is still here must be the same message
                have = store.get(m.seq)
                if have is not None and (have.data, have.ts, have.subject, have.hdr) != \
                        (m.data, m.ts, m.subject, m.hdr):
                    raise StreamDiverged(f"stream {self.stream.name}: catch-up record {m.seq} "
                                         f"differs from the stored one")
        if s.index >= self._target.index:
            self._target = s
        self._converge(self._target)
        if self.need is None:
            self.snapshot_wanted = True
        return self.need

    def _converge(self, s: Summary) -> None:
        """Remove what the summary says is gone, find the first live sequence still missing,
        and finish when nothing is."""
        store = self.store
        st = store.state()
        if st.messages and st.first_seq < s.first_seq:
            store.purge(None, s.first_seq)
        for lo, hi in s.deleted:
            gone = []
            for seq in store.live_seqs(lo):
                if seq > hi:
                    break
                gone.append(seq)
            for seq in gone:
                store.remove(seq)
        st = store.state()
        local_last = min(st.last_seq, s.last_seq)
        if st.messages != _live_count(s, local_last):
            missing = self._first_missing(s)
            # The store cannot fill a hole below its last_seq: cut there and fetch from it.
            prev = store.get(missing - 1)
            store.truncate_after(missing - 1, prev.ts if prev is not None else st.last_ts)
            self.need = CatchupNeed(missing, s.last_seq)
            return
        if st.messages == s.msgs:  # every live message is here (a subset of equal size)
            if st.last_seq != s.last_seq or st.last_ts != s.last_ts:
                store.truncate_after(s.last_seq, s.last_ts)  # the newest ones were removed there
            self._finish(s)
            return
        self.need = CatchupNeed(st.last_seq + 1, s.last_seq)

    def _first_missing(self, s: Summary) -> int:
        seq = s.first_seq
        gaps = iter(s.deleted)
        gap = next(gaps, None)
        while seq <= s.last_seq:
            if gap is not None and gap[0] <= seq:
                seq = max(seq, gap[1] + 1)
                gap = next(gaps, None)
                continue
            if not self.store.contains(seq):
                return seq
            seq += 1
        raise StreamDiverged("no missing message, yet counts differ")  # pragma: no cover

    def _finish(self, s: Summary) -> None:
        st = self.store.state()
        got = (st.first_seq if st.messages else s.first_seq, st.last_seq, st.last_ts, st.messages, st.bytes)
        want = (s.first_seq, s.last_seq, s.last_ts, s.msgs, s.msg_bytes)
        if got != want:
            raise StreamDiverged(f"stream {s.config.name}: after catch-up the store holds {got}, "
                                 f"the summary says {want}")
        self._install(s)
        self.applied_index = s.index
        self.need = None
        self._target = None
        held, self._deferred = self._deferred, []
        for index, data in held:
            if index > self.applied_index:
                self._apply_op(decode_op(data))
                self.applied_index = index

    def _install(self, s: Summary) -> None:
        """The summary's config and duplicate window (the in-memory state stored headers cannot
        give back: ids of removed messages) on the same Stream object, rebuilt over the store."""
        self._reset_stream(s.config, s.created)
        stream = self.stream
        self.consumers = {name: [created, cfg, state] for name, created, cfg, state in s.consumers}
        stream._dedupe = {msg_id: (seq, ts) for msg_id, seq, ts in s.dedupe}
        stream._dedupe_order = deque(s.dedupe_order)
        stream.last_msg_id = s.last_msg_id

    def _reset_stream(self, config: StreamConfig, created_ns: int) -> None:
        """Rebuild the Stream's indexes from the store in place (callers may hold the object)."""
        stream = self.stream
        stream.config, stream.name, stream.created_ns = config, config.name, created_ns
        stream._configure()
        stream._ttls = []
        stream._dedupe = {}
        stream._dedupe_order = deque()
        stream.last_msg_id = ""
        stream._rebuild_indexes()

    def ensure_started(self) -> None:
        """With no snapshot the log replays from its start: empty the store first. Call after
        RaftHost.add_group (which restores a snapshot if there is one); apply calls it too."""
        if self._started:
            return
        self._started = True
        st = self.store.state()
        if st.last_seq or st.messages:
            self.store.truncate_after(0, 0)
            self._reset_stream(self.stream.config, self.stream.created_ns)

    # -- views ---------------------------------------------------------------------------------
    def summary(self) -> Summary:
        stream, store = self.stream, self.store
        st = store.state()
        deleted: list[tuple[int, int]] = []
        if st.num_deleted:
            expected = st.first_seq
            for seq in store.live_seqs(expected):
                if seq > expected:
                    deleted.append((expected, seq - 1))
                expected = seq + 1
            if expected <= st.last_seq:  # the newest ones were removed
                deleted.append((expected, st.last_seq))
        dedupe = [(k, v[0], v[1]) for k, v in stream._dedupe.items()]
        return Summary(self.applied_index, stream.config, stream.created_ns,
                       st.first_seq, st.last_seq, st.last_ts, st.messages, st.bytes, deleted,
                       dedupe, list(stream._dedupe_order), stream.last_msg_id,
                       consumers=[(n, v[0], v[1], v[2]) for n, v in sorted(self.consumers.items())])

    def fingerprint(self) -> tuple:
        """Everything two replicas must agree on (tests compare it)."""
        stream, store = self.stream, self.store
        msgs = []
        m = store.next_msg(0)
        while m is not None:
            msgs.append((m.seq, m.subject, m.hdr, m.data, m.ts))
            m = store.next_msg(m.seq + 1)
        ttls = sorted(t for t in stream._ttls if store.get(t[1]) is not None)
        return (store.state(), msgs, sorted((k, v) for k, v in stream._dedupe.items()),
                list(stream._dedupe_order), stream.last_msg_id, _encoder.encode(stream.config),
                stream.created_ns, ttls, sorted((n, tuple(v)) for n, v in self.consumers.items()))

