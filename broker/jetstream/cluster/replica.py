"""One replica of a replicated stream (Replicas > 1) on this node: its Raft group, the
leader's publish pipeline, and catch-up.

How this works. Every peer of the stream opens its store (FileStore with held removals, see
streamsm.py) and a Raft group named after the stream and its creation time, whose log holds
the stream's inputs (`StreamSM`). This object is the group's state machine: it applies each
entry to the `StreamSM` and then does what the entry means on this node (consumers here
learn of new messages, purges and expiries).

Only the leader takes publishes: it alone subscribes the stream's subjects, so during an
election nobody does and a publisher gets no-responders (503) at once. The leader's writer
hands each batch of publishes to `submit`; they queue and go out as one `PubBatch` entry
whenever nothing of the stream's is in flight and everything in the log has applied (one
entry in flight: the batch proposed next is checked against the state every replica will
have when it applies). Acks leave when the entry applied on the leader, i.e. it committed:
it is fsynced in the Raft logs of a quorum. Admin operations (purge, delete, config
updates, interest removals, expiry) go through the same pipeline as their own entries.

Catch-up: when the state machine needs messages it does not have (it restored a snapshot
its store does not match), this replica asks the leader for chunks over
`$JSC.CU.<leader id>.<group>` and applies them (`StreamSM.apply_catchup`); meanwhile it
neither leads nor serves reads. When done it asks Raft for a snapshot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque

import msgspec
import trio

from broker.jetstream import api, errors
from broker.jetstream.cluster import meta as m
from broker.jetstream.cluster import streamsm as ssm
from raft import ConfState, OsDisk, RaftConfig, Storage, StorageCorruption
from raft.core import NotLeader, ProposalRejected

log = logging.getLogger("broker.jetstream.cluster")

GROUP_PREFIX = "S-"
BATCH_MSGS_MAX = 8192  # publishes in one entry
BATCH_BYTES_MAX = 4 << 20  # payload bytes in one entry
SNAPSHOT_ENTRIES = 4096
SNAPSHOT_BYTES = 16 << 20
VOTERS_FILE = "voters.json"
CATCHUP_BYTES = 512 << 10  # about this much per catch-up chunk
CATCHUP_WAIT_S = 2.0  # a chunk request unanswered this long is sent again
CATCHUP_SUBJECT = "$JSC.CU"  # $JSC.CU.<server id>.<group>: chunk requests to that server
CATCHUP_REPLY = "$JSC.CR"  # $JSC.CR.<server id>.<group>: chunks for that server
REMOVE_SUBJECT = "$JSC.RA"  # $JSC.RA.<leader id>.<group>: seqs a consumer host found unneeded

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def group_name(sa: m.StreamAssignment) -> str:
    """The Raft group of one incarnation of a stream, named as nats-server names them
    (S-R<replicas><F|M>-<8 characters>): the same on every peer, new when a stream of the same
    name is made anew, and a single subject token."""
    digest = hashlib.sha256(f"{sa.name}\0{sa.created}\0{sa.epoch}".encode()).digest()
    storage = "M" if sa.config.storage == "memory" else "F"
    return f"{GROUP_PREFIX}R{len(sa.peers)}{storage}-" + "".join(_DIGITS[b % 62] for b in digest[:8])


class CatchupRequest(msgspec.Struct, array_like=True):
    from_seq: int
    max_msgs: int


_enc = msgspec.msgpack.Encoder()
_req_dec = msgspec.msgpack.Decoder(CatchupRequest)
_chunk_dec = msgspec.msgpack.Decoder(ssm.CatchupChunk)
_seqs_dec = msgspec.msgpack.Decoder(list[int])


class StreamReplica:
    def __init__(self, cluster, sa: m.StreamAssignment) -> None:
        self.cluster = cluster
        self.js = cluster.js
        self.sa = sa
        self.peer_ids = frozenset(m.raft_id(p) for p in sa.peers)
        self.name = sa.name
        self.group_name = group_name(sa)
        self.sm: ssm.StreamSM | None = None
        self.group = None
        self.stream = None
        self.runner = None  # the manager's _Runner (inbox and subscriptions)
        self.pending: deque = deque()  # publishes (subject, reply, hdr, payload) not yet proposed
        self.ops: deque = deque()  # (op, on_done(result, error)) admin entries not yet proposed
        self.removals: list[int] = []  # seqs no consumer needs any more (interest, workqueue)
        self.removals_queued = False
        self.in_flight = False
        self.config_seen = False  # the log holds the stream's config (its first entry)
        self.create_reply = ""  # a create's client: the first leader answers it
        self.leading = False  # leader with subscriptions taken
        self.closed = False
        self.leader_since_ns = 0
        self._catchup_busy = False
        self._catchup_got: trio.Event | None = None
        self._expire_in_flight = False
        self.consumers_started = False
        self.tenure = 0  # bumped whenever leading starts or stops
        self.copies_in_flight = False
        self.adopting = False  # grown from one copy: peers still to add (see open)
        self._adopt_busy = False
        self.consumer_dirty: dict[str, object] = {}  # name -> consumers.py _Entry whose state changed
        self.held: list = []  # consumer outputs waiting for the entry that records their state

    # ---- lifecycle ----
    def open(self, create_reply: str = "", adopt: bool = False):
        """Open (or make) the store and the Raft group. Returns the Stream. With `adopt`, the
        store of the stream as it was with one copy is the group's initial state: this node
        leads alone, takes a snapshot of it and then adds the other peers, which restore that
        snapshot and catch up from here."""
        from broker.jetstream.filestore import FileStore
        from broker.jetstream.store import MemoryStore

        js, cluster, sa = self.js, self.cluster, self.sa
        d = js.stream_dir(self.name)
        cfg = sa.config
        if cfg.storage == "memory":
            store = MemoryStore()
        else:
            store = FileStore(os.path.join(d, "msgs"), hold_removals=True)
        self.sm = ssm.StreamSM(cfg, store, sa.created)
        self.stream = self.sm.stream
        js.save_meta(self.stream)
        raft_dir = os.path.join(d, "raft") if cfg.storage == "file" else os.path.join(
            js.jetstream_dir, "$SYS", "_js_", self.group_name)
        disk = OsDisk(raft_dir)
        # The group's first voters, fixed at its first open and kept beside its log (Storage
        # needs the same initial configuration at every open; the assignment's may change later)
        raw = disk.read(VOTERS_FILE)
        try:
            voters = tuple(msgspec.json.decode(raw, type=list[int])) if raw else ()
        except (msgspec.DecodeError, msgspec.ValidationError):
            voters = ()
        if not voters:
            voters = tuple(sorted(m.raft_id(p) for p in (sa.voters or sa.peers)))
            disk.replace(VOTERS_FILE, msgspec.json.encode(list(voters)))
        conf = ConfState(voters)
        try:
            storage = Storage.open(disk, conf)
        except StorageCorruption as e:
            log.error("JetStream stream '$G > %s': Raft log damaged, rejoining as a quarantined follower: %s",
                      self.name, e)
            js.load_errors.append(f"JetStream stream '$G > {self.name}' Raft log damaged: {e}")
            storage = Storage.open(disk, conf, repair=True)
        from broker.jetstream.cluster.runtime import ELECTION_TICKS

        rcfg = RaftConfig(node_id=cluster.my_id, election_ticks=ELECTION_TICKS)
        self.group = cluster.host.add_group(self.group_name, rcfg, storage, self,
                                            seed=cluster.my_id ^ time.time_ns(),
                                            snapshot_entries=SNAPSHOT_ENTRIES, snapshot_bytes=SNAPSHOT_BYTES)
        if adopt and self.group.term == 0:
            self.sm._started = True  # the store is the state (ensure_started would empty it)
            self.adopting = True
            self.config_seen = True
        self.sm.ensure_started()
        if self.sm.applied_index > 0:
            self.config_seen = True  # restored from a snapshot, which carries the config
        if sa.voters and self.group.core.log.snapshot.index == 0 and self.group.term > 0 \
                and cluster.my_id in voters:
            self.adopting = True  # restarted while still adding the peers
        self.group.on_leader_change = self._leader_changed
        self.group.on_applied = self._on_applied
        self.create_reply = create_reply
        if self.group.term == 0 and min(voters) == cluster.my_id:
            self.group.campaign()  # a new group: the lowest id asks at once
        self._check_catchup()
        return self.stream

    def close(self, snapshot: bool) -> None:
        """Stop the group. With `snapshot`, first record a Raft snapshot of the applied state
        (a clean shutdown: the store is synced and restarts at it without replaying)."""
        self.closed = True
        g = self.group
        if g is None:
            return
        if snapshot and not g.error and self.sm is not None and self.sm.need is None:
            try:
                core = g.core
                if core.log.applied > core.log.snapshot.index and not g._busy:
                    snap = core.compact(core.log.applied, self.sm.snapshot())
                    g.storage.compact(snap)
            except Exception:
                log.exception("JetStream stream '$G > %s': snapshot at shutdown failed", self.name)
        self.cluster.host.remove_group(self.group_name)

    @property
    def is_leader(self) -> bool:
        g = self.group
        return g is not None and g.is_leader and not self.closed

    @property
    def ready(self) -> bool:
        """Leads and may answer for the stream: caught up, config in the log."""
        return self.is_leader and self.sm.need is None

    @property
    def leader_name(self) -> str | None:
        g = self.group
        if g is None or g.leader_id is None:
            return None
        return self.cluster.name_of(g.leader_id)

    # ---- the state machine (called from the Raft loop; never awaits) ----
    def apply(self, entry):
        sm = self.sm
        result = sm.apply(entry)
        op = sm.last_op
        if op is None:
            return result
        stream = self.stream
        js = self.js
        kind = type(op)
        try:
            if kind is ssm.PubBatch:
                stored = [(r[0], msg[0]) for msg, r in zip(op.msgs, result)
                          if type(r) is tuple and not r[1]]
                if stored:
                    self._stored(stored)
            elif kind is ssm.Copies:
                stored = [(r[0], item[1]) for item, r in zip(op.items, result) if type(r) is tuple and not r[1]]
                if stored:
                    self._stored(stored)
            elif kind is ssm.UpdateConfig:
                self.config_seen = True
                js.consumers.stream_purged(stream)
                if self.leading:
                    js.sourcing.attach(stream)  # its mirror or sources may have changed
                self._resubscribe()
                js.save_meta(stream)
            elif kind is ssm.RemoveAcked:
                pass
            elif (kind is ssm.Expire and result) or kind in (ssm.Purge, ssm.DeleteMsg):
                js.consumers.stream_purged(stream)
            if stream.markers:
                markers, stream.markers = stream.markers, []
                for seq, subject in markers:
                    js.consumers.on_stored(stream, seq, subject)
        except Exception:  # our bug: the entry is applied; keep the replica going
            log.exception("JetStream stream '$G > %s': after applying an entry", self.name)
        return result

    def snapshot(self) -> bytes:
        return self.sm.snapshot()

    def restore(self, data: bytes) -> None:
        self.sm.restore(data)
        self.config_seen = True
        if self.group is not None:  # a leader's snapshot (at start, open() checks)
            self._check_catchup()

    def _stored(self, stored: list[tuple[int, str]]) -> None:
        """New messages applied on this replica: consumers here learn of them; the leader
        also republishes, feeds mirrors/sources and drops what interest retention keeps no one for."""
        js, stream = self.js, self.stream
        on_stored = js.consumers.on_stored
        for seq, subject in stored:
            on_stored(stream, seq, subject)
        if not self.leading:
            return
        cfg = stream.config
        if isinstance(cfg.republish, dict):
            from broker.jetstream import streamapi

            streamapi.republish(js, stream, stored)
        js.sourcing.origin_stored(stream.name)
        if cfg.retention == "interest":
            unneeded = [seq for seq, subject in stored if not self._wanted(seq, subject)]
            if unneeded:
                self.remove(unneeded)
        if cfg.max_age > 0 or cfg.allow_msg_ttl:
            js.kick_timer()

    def _wanted(self, seq: int, subject: str) -> bool:
        js, stream = self.js, self.stream
        return (js.consumers.needs_msg(stream, seq, subject) or js.sourcing.wants(stream, seq, subject)
                or self.cluster.remote_interest(self.name, subject))

    def _on_applied(self) -> None:
        if self.sm.snapshot_wanted and self.sm.need is None:
            self.group.snapshot_soon()
        self._pump()

    # ---- leadership ----
    def _leader_changed(self, is_leader: bool, leader_id: int | None) -> None:
        if is_leader:
            self.leader_since_ns = time.time_ns()
            if self.sm.need is not None:
                self.group.step_down(None, None)  # a catching-up replica must not lead
                return
            log.info("JetStream cluster new stream leader for '$G > %s'", self.name)
        self._set_leading(is_leader and self.sm.need is None)
        if not is_leader and leader_id is not None:
            self.create_reply = ""  # that leader answers the create
        self._pump()

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading or self.closed:
            return
        self.leading = leading
        self.tenure += 1
        self._resubscribe()
        if leading:  # only the leader reads the origins of a mirror or sources
            self.js.sourcing.attach(self.stream)
        else:
            self.js.sourcing.detach(self.name)
        if not leading:
            # Publishes not yet proposed are dropped: their clients time out and retry (the
            # new leader deduplicates by Nats-Msg-Id). A proposal in flight still gets its
            # outcome if the new leader commits it. Consumers move to the new leader: their
            # outputs not yet recorded are dropped (the new leader redelivers after ack_wait).
            self.pending.clear()
            self.held.clear()
            self.consumer_dirty.clear()
            self.js.consumers.leader_lost(self.stream)
            ops, self.ops = self.ops, deque()
            for _, on_done in ops:
                _call(on_done, None, errors.JSError(503, 10008, "JetStream system temporarily unavailable"))
        else:
            self.js.kick_timer()
            self.consumers_started = False  # once everything committed has applied (_pump)

    def _resubscribe(self) -> None:
        if self.runner is not None and not self.closed:
            self.js.resubscribe(self.stream)

    @property
    def takes_publishes(self) -> bool:
        return self.leading

    @property
    def serves_reads(self) -> bool:
        return self.sm is not None and self.sm.need is None

    def step_down(self, preferred: int | None, on_done) -> None:
        self.group.step_down(preferred, on_done)

    # ---- the leader's pipeline ----
    def submit(self, batch) -> None:
        """Publishes from the stream's writer (only the leader subscribes the subjects)."""
        if not self.leading:
            return
        js = self.js
        if js.write_error is not None or js._over_limit(self.stream.config.storage):
            err = errors.insufficient_resources()
            acks = [(reply, js.pub_error(self.stream, err)) for _, reply, _, _ in batch if reply]
            js._finish(self.stream, acks, [])
            return
        self.pending.extend(batch)
        self._pump()

    def propose(self, op, on_done) -> None:
        """An admin entry; on_done(result, JSError | None) once applied (or refused)."""
        if not self.ready:
            _call(on_done, None, errors.JSError(503, 10008, "JetStream system temporarily unavailable"))
            return
        self.ops.append((op, on_done))
        self._pump()

    async def propose_wait(self, op):
        """propose() for a task: the result, or raises the JSError."""
        done = trio.Event()
        box: list = []

        def on_done(result, error) -> None:
            box.append((result, error))
            done.set()

        self.propose(op, on_done)
        await done.wait()
        result, error = box[0]
        if error is not None:
            raise error
        if isinstance(result, ssm.MsgError):
            raise result.error()
        return result

    def remove(self, seqs: list[int]) -> None:
        """Messages no consumer needs (interest, workqueue): removed through the leader."""
        self.removals.extend(seqs)
        if not self.removals_queued:
            self.removals_queued = True
            trio.lowlevel.current_trio_token().run_sync_soon(self._flush_removals)

    def _flush_removals(self) -> None:
        self.removals_queued = False
        seqs, self.removals = self.removals, []
        if not seqs or self.closed:
            return
        if self.leading:
            self.ops.append((ssm.RemoveAcked(seqs), None))
            self._pump()
            return
        g = self.group
        if g is not None and g.leader_id is not None:
            self.cluster.server.publish(f"{REMOVE_SUBJECT}.{g.leader_id}.{self.group_name}", "", None,
                                        _enc.encode(seqs))
        # no leader: the removal is lost; the consumer's next ack of an older message, or a
        # consumer delete, asks again (interest retention keeps it meanwhile: never a loss)

    def on_remove_request(self, payload: bytes) -> None:
        if not self.leading:
            return
        try:
            seqs = _seqs_dec.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if seqs:
            self.ops.append((ssm.RemoveAcked(seqs), None))
            self._pump()

    def expire_due(self, now: int) -> int:
        """The expiry timer: the leader proposes Expire(now) when something is due; followers
        never expire on their own clock. Returns when to look again (0: when kicked)."""
        if not self.leading:
            return 0
        at = self.stream.next_expiry_ns()
        if not at:
            return 0
        if at > now:
            return at
        if not self._expire_in_flight:
            self._expire_in_flight = True
            self.ops.append((ssm.Expire(now), self._expired))
            self._pump()
        return 0  # the Expire entry kicks the timer when it applied

    def _expired(self, result, error) -> None:
        self._expire_in_flight = False
        self.js.kick_timer()

    def _pump(self) -> None:
        """Propose the next entry if nothing is in flight and the log is fully applied."""
        g = self.group
        if self.in_flight or self.closed or not self.leading or g is None or g.stopped:
            return
        if g.applied_index < g.last_index or not g.is_leader:
            return  # a new leader's first entry, or another's: on_applied calls back
        sm = self.sm
        if (self.adopting or self._membership_differs()) and self._adopt_step():
            return
        if not self.consumers_started and self.config_seen:
            # A new leader starts the replicated consumers only now: its first entry applied,
            # so every state the old leader had committed (and confirmed) has applied here.
            self.consumers_started = True
            self.js.consumers.leader_gained(self.stream, self, sm.consumers)
        if not self.config_seen:
            op = ssm.UpdateConfig(self.sa.config, time.time_ns())
            self._propose(op, None, None)
            return
        if self.create_reply:
            reply, self.create_reply = self.create_reply, ""
            self.cluster.answer_created(self, reply)
        if self.ops:
            op, on_done = self.ops.popleft()
            self._propose(op, on_done, None)
            return
        if not self.pending and not self.consumer_dirty:
            return
        msgs, replies = [], []
        size = 0
        pending = self.pending
        while pending and len(msgs) < BATCH_MSGS_MAX and size < BATCH_BYTES_MAX:
            subject, reply, hdr, payload = pending.popleft()
            msgs.append((subject, hdr, payload))
            replies.append(reply)
            size += len(payload)
        op = sm.pub_batch(msgs, time.time_ns())
        release = None
        if self.consumer_dirty:
            dirty, self.consumer_dirty = self.consumer_dirty, {}
            op.consumers = [(name, e.c.created_ns, _enc.encode(_state_of(e.c)))
                            for name, e in dirty.items() if not e.deleted]
            release, self.held = self.held, []
        self._propose(op, None, replies, release)

    def _propose(self, op, on_done, replies, release=None) -> None:
        self.in_flight = True
        data = ssm.encode_op(op)
        tenure = self.tenure

        def done(index, result, error) -> None:
            self.in_flight = False
            try:
                # Consumer outputs leave only while this node still leads in the tenure that
                # made them: once leadership moved, the consumers are the new leader's (which
                # redelivers what is pending) and a late commit of this entry must not also
                # deliver here (it would show a delivery count older than the new leader's).
                if release and error is None and result is not None and tenure == self.tenure:
                    publish = self.js.consumers.publish_outs
                    for outs in release:
                        publish(outs)
                if replies is not None:
                    self._answer_publishes(replies, result, error)
                elif on_done is not None:
                    if error is not None:
                        _call(on_done, None, _as_js_error(error))
                    else:
                        _call(on_done, result, None)
            finally:
                self._pump()

        self.group.propose_nowait(data, done)

    def _answer_publishes(self, replies: list[str], result, error) -> None:
        js, stream = self.js, self.stream
        if error is not None or result is None:
            # Not committed by us, or the outcome is unknown (a new leader may still commit
            # it): no answer; the publishers retry and Nats-Msg-Id deduplicates.
            log.debug("JetStream stream '$G > %s': a batch of %d was not committed here: %s",
                      self.name, len(replies), error)
            return
        if stream.config.no_ack is True:
            return
        acks = []
        prefix = stream.ack_prefix
        for reply, r in zip(replies, result):
            if not reply:
                continue
            if type(r) is tuple:
                seq, dup = r
                acks.append((reply, stream.pub_ack(seq, True) if dup else prefix + str(seq).encode() + b"}"))
            else:
                acks.append((reply, js.pub_error(stream, r.error())))
        if acks:
            js._finish(stream, acks, [])

    def _adopt_step(self) -> bool:
        """Grown from one copy: snapshot the adopted store, then add the missing peers one at a
        time. True while that blocks other entries."""
        g = self.group
        if self._adopt_busy:
            return True
        if g.core.log.snapshot.index == 0:
            # one entry, then the snapshot at its index (asked when it applied, taken in the same
            # cycle, before on_applied calls back): the log then starts at the adopted store
            def applied(result, error) -> None:
                if error is None:
                    g.snapshot_soon()

            self._propose(ssm.UpdateConfig(self.sa.config, time.time_ns()), applied, None)
            return True
        from raft.messages import ConfChange

        want = {m.raft_id(p) for p in self.sa.peers}
        missing = [p for p in self.sa.peers if m.raft_id(p) not in g.voters]
        extra = [v for v in g.voters if v not in want and v != self.cluster.my_id]
        if not missing and not extra:
            if self.adopting:
                log.info("JetStream stream '$G > %s': now replicated on %s", self.name, ", ".join(self.sa.peers))
            self.adopting = False
            return False
        self._adopt_busy = True

        def changed(index, result, error) -> None:
            self._adopt_busy = False
            if error is not None:
                log.info("JetStream stream '$G > %s': changing its peers failed: %s", self.name, error)
            self._pump()

        # a replacement first (the group never has fewer voters than wanted), then the removal
        change = ConfChange(ConfChange.ADD, m.raft_id(missing[0])) if missing else \
            ConfChange(ConfChange.REMOVE, extra[0])
        g.propose_conf_change_nowait(change, changed)
        return True

    def _membership_differs(self) -> bool:
        """The leader's group members are not the assignment's peers (a peer was replaced)."""
        voters, ids = self.group.voters, self.peer_ids
        return len(voters) != len(ids) or any(v not in ids for v in voters)

    def reassign(self, sa: m.StreamAssignment) -> None:
        """The same group with other peers (STREAM.PEER.REMOVE): the leader changes its members."""
        self.sa = sa
        self.peer_ids = frozenset(m.raft_id(p) for p in sa.peers)
        self._pump()

    # ---- mirror and source copies (the leader reads its origins) ----
    def copies(self) -> None:
        """The leader's sourcing queued copies: proposed as one entry, one at a time; the links
        learn the outcome when it applied (Sourcing.settle)."""
        js = self.js
        if not self.leading or self.copies_in_flight:
            return
        items = js.sourcing.take(self.stream)
        if not items:
            return
        now = time.time_ns()
        if js.write_error is not None or js._over_limit(self.stream.config.storage):
            js.sourcing.settle(self.stream, items, [errors.insufficient_resources()] * len(items), now)
            return
        op = ssm.Copies(now, [(link.iname, subject, hdr, data, oseq if link.kind == "mirror" else 0,
                               ts if link.kind == "mirror" else 0)
                              for link, oseq, subject, hdr, data, ts in items])
        self.copies_in_flight = True

        def done(result, error) -> None:
            self.copies_in_flight = False
            if error is not None or not isinstance(result, list):
                results = [error or errors.insufficient_resources()] * len(items)
            else:
                results = [r.error() if isinstance(r, ssm.MsgError) else r for r in result]
            js.sourcing.settle(self.stream, items, results, time.time_ns())
            if self.stream.name in js.sourcing.queued:
                self.copies()  # queued while this entry was in flight

        self.ops.append((op, done))
        self._pump()

    # ---- replicated consumers (they live on the stream leader) ----
    def consumer_upsert(self, e) -> None:
        """A durable consumer made or reconfigured here: recorded in the stream's log."""
        cfg = msgspec.json.encode(e.c.cfg)
        self.ops.append((ssm.ConsumerUpsert(e.c.name, e.c.created_ns, cfg), None))
        self.consumer_changed(e)

    def consumer_delete(self, e) -> None:
        self.consumer_dirty.pop(e.c.name, None)
        self.ops.append((ssm.ConsumerDelete(e.c.name, e.c.created_ns), None))
        self._pump()

    def consumer_changed(self, e, propose: bool = True) -> None:
        """Its state changed (acks, deliveries, requests): replicated with the next entry,
        proposed now unless `propose` is False (the caller proposes soon)."""
        self.consumer_dirty[e.c.name] = e
        if propose:
            self._pump()

    def hold(self, e, outs: list) -> None:
        """Deliveries (and confirmed-ack replies) of a replicated consumer leave only once the
        entry recording the state that produced them has committed."""
        if not self.leading:
            return
        self.held.append(outs)
        self.consumer_dirty[e.c.name] = e
        self._pump()

    # ---- catch-up ----
    def _check_catchup(self) -> None:
        if self.sm.need is not None and not self._catchup_busy and not self.closed:
            self._catchup_busy = True
            if self.leading:
                self._set_leading(False)
            self._resubscribe()  # no direct gets while catching up
            self.cluster.start_soon(self._catchup)

    async def _catchup(self) -> None:
        sm, g = self.sm, self.group
        log.info("JetStream stream '$G > %s': catching up from seq %d to %d", self.name,
                 sm.need.from_seq, sm.need.to_seq)
        try:
            while sm.need is not None and not self.closed and not g.stopped:
                leader = g.leader_id
                if leader is None or leader == self.cluster.my_id:
                    if leader == self.cluster.my_id:
                        g.step_down(None, None)
                    await trio.sleep(0.1)
                    continue
                got = self._catchup_got = trio.Event()
                avg = max(64, self._avg_size())
                req = CatchupRequest(sm.need.from_seq, max(1, CATCHUP_BYTES // avg))
                self.cluster.server.publish(f"{CATCHUP_SUBJECT}.{leader}.{self.group_name}",
                                            f"{CATCHUP_REPLY}.{self.cluster.my_id}.{self.group_name}",
                                            None, _enc.encode(req))
                with trio.move_on_after(CATCHUP_WAIT_S):
                    await got.wait()
        finally:
            self._catchup_busy = False
            self._catchup_got = None
        if sm.need is None and not self.closed:
            log.info("JetStream stream '$G > %s': caught up", self.name)
            self.js.consumers.stream_purged(self.stream)
            self._resubscribe()
            if g.is_leader:
                self._set_leading(True)
            g.snapshot_soon()

    def _avg_size(self) -> int:
        st = self.sm.store.state()
        return st.bytes // st.messages if st.messages else 256

    def on_catchup_request(self, reply: str, payload: bytes) -> None:
        if not reply or self.sm is None or self.sm.need is not None or self.closed:
            return
        try:
            req = _req_dec.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        chunk = self.sm.catchup_chunk(max(1, req.from_seq), max(1, min(req.max_msgs, 65536)))
        self.cluster.server.publish(reply, "", None, _enc.encode(chunk))

    def on_catchup_chunk(self, payload: bytes) -> None:
        sm = self.sm
        if sm is None or sm.need is None or self.closed:
            return
        try:
            chunk = _chunk_dec.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("JetStream stream '$G > %s': bad catch-up chunk: %s", self.name, e)
            return
        try:
            sm.apply_catchup(chunk)
        except (ssm.StreamDiverged, ssm.CorruptEntry) as e:
            log.error("JetStream stream '$G > %s': catch-up failed, replica stopped: %s", self.name, e)
            self.js.load_errors.append(f"JetStream stream '$G > {self.name}' replica diverged: {e}")
            self.cluster.host.remove_group(self.group_name)
        if self._catchup_got is not None:
            self._catchup_got.set()

    # ---- what it shows ----
    def cluster_info(self) -> api.ClusterInfo:
        cluster = self.cluster
        g = self.group
        leader = self.leader_name
        info = api.ClusterInfo(name=cluster.cluster_name, raft_group=self.group_name, system_account=True,
                               traffic_account="$SYS")
        if leader is not None:
            info.leader = leader
            if self.is_leader and self.leader_since_ns:
                info.leader_since = api.rfc3339(self.leader_since_ns)
        progress = g.progress() if g is not None and g.is_leader else {}
        replicas = []
        for peer in self.sa.peers:
            rid = m.raft_id(peer)
            if peer == leader or rid == cluster.my_id and self.is_leader:
                continue
            p = progress.get(rid)
            if p is not None:
                pi = api.PeerInfo(name=peer, current=p.current, active=int((p.last_heard_s or 0) * 1e9),
                                  peer=m.peer_hash(peer))
                if p.offline:
                    pi.offline = True
                if p.lag:
                    pi.lag = p.lag
            else:
                up = peer == cluster.me or peer in cluster.online
                pi = api.PeerInfo(name=peer, current=up, active=0, peer=m.peer_hash(peer))
                if not up:
                    pi.offline = True
            replicas.append(pi)
        if replicas:
            info.replicas = replicas
        return info


def _state_of(c) -> dict:
    """A consumer's state as replicated: its persisted state plus the pull requests waiting on
    it (reply subject, expiry), which a new leader answers with `409 Leadership Change`."""
    st = c.state_dict()
    if c.waiting:
        st["waiting"] = [(r.reply, r.expires) for r in c.waiting]
    return st


def _as_js_error(error: BaseException) -> errors.JSError:
    if isinstance(error, errors.JSError):
        return error
    if isinstance(error, (NotLeader, ProposalRejected)):
        return errors.JSError(503, 10008, "JetStream system temporarily unavailable")
    return errors.JSError(500, 10010, f"outcome unknown: {error}")


def _call(on_done, result, error) -> None:
    if on_done is None:
        return
    try:
        on_done(result, error)
    except Exception:
        log.exception("JetStream replicated stream: a completion callback raised")
