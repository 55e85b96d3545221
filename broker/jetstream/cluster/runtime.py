"""Clustered JetStream on one node: the meta group, its transport, membership, and carrying
out what the meta log assigns to this node.

How this works. Every JetStream node runs the `_meta_` Raft group (raft.RaftHost) whose log
holds the stream and consumer assignments (meta.py). Raft messages ride internal subjects over
the routes: a message for node D of group G is published on `$NRG.<G>.<D>`, which only node D
subscribes (cluster-wide), so ordinary route interest carries it there and nowhere else. Apply
never awaits: what an entry asks of this node (make, update or remove a stream, answer a
client) is queued and carried out in log order by one task. Who answers which API request is
metaapi.py.

A closed route is evidence that the peer died: it is reported to Raft (`peer_down`), so a
follower of a dead leader campaigns at once instead of waiting an election timeout.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import time

import msgspec
import trio

from broker.jetstream import api, streamapi
from broker.jetstream import errors
from broker.jetstream.cluster import meta as m
from broker.jetstream.cluster.metaapi import MetaApi, _log_failure, error_response
from broker.jetstream.cluster.replica import (CATCHUP_REPLY, CATCHUP_SUBJECT, REMOVE_SUBJECT,
                                              StreamReplica)
from broker.jetstream.cluster import streamsm as ssm
from broker.jetstream.cluster import transitions
from raft import ConfState, OsDisk, RaftConfig, Storage, StorageCorruption
from raft.messages import ConfChange

log = logging.getLogger("broker.jetstream.cluster")

TICK_S = 0.1  # one Raft tick; elections time out after 10-20 ticks, heartbeats every tick
ELECTION_TICKS = 10
BOOTSTRAP_SETTLE_S = 1.0  # a fresh node waits until the set of peers it sees is stable this long
BOOTSTRAP_ALONE_S = 5.0  # routes up but no JetStream peer this long: the group is this node alone
BOOTSTRAP_FILE = "bootstrap.json"
CONSUMER_REPLY_WAIT_S = 2.0  # a consumer create is answered once its assignment applied, or after this
CONSUMER_SYNC_S = 1.0  # how often a host compares its consumers with their assignments
META_PROPOSE = "$JSC.MP"  # consumer assignments a host asks the meta leader to propose
HOUSEKEEPING_S = 0.25


class JetStreamCluster(MetaApi):
    def __init__(self, js) -> None:
        from raft.host import RaftHost  # raft/ imports trio; keep it out of single-node startup

        self.js = js
        self.server = js.server
        self.me = self.server.server_name
        self.my_id = m.raft_id(self.me)
        self.cluster_name = self.server.opts.cluster_name
        self.meta = m.MetaState(self.me)
        self._held: dict | None = None  # the output batch the Raft loop holds (hold/flush)
        self.host = RaftHost(self._send, tick_interval_s=TICK_S, inline_small_saves=True, outbox=self)
        self.group = None
        self.online: dict[str, float] = {}  # route-connected JetStream servers -> since (monotonic)
        self.routed: set[str] = set()  # every route-connected server
        self.names: dict[int, str] = {self.my_id: self.me}
        self.quarantined = False
        self.caught_up = False
        self.leader_since_ns = 0
        self.snapshot_ns = 0  # when the meta state was last snapshotted (0: never, this run)
        self._actions: collections.deque = collections.deque()
        self._actions_wake = trio.Event()
        self._waiting: list[tuple[float, str, str, bytes | None, bytes]] = []  # meta requests, no leader
        self._gathers: dict[str, dict] = {}
        self._gather_seq = 0
        self._nursery: trio.Nursery | None = None
        self._subs: list = []
        self._rng = random.Random()
        # consumer creates waiting for their assignment: (stream, name, created) -> (reply, body, deadline)
        self._consumer_replies: dict[tuple[str, str, int], tuple[str, bytes, float]] = {}
        self._consumer_sent: dict[tuple, float] = {}  # what was last asked of the leader, when
        self._consumer_sync_at = 0.0
        self._first_campaign = False
        self.replicas: dict[str, "StreamReplica"] = {}  # replicated streams held here, by Raft group
        self._interest: dict[tuple[str, str, int], list[str]] = {}  # consumer -> its filter subjects

    # ---- lifecycle ----
    @property
    def meta_dir(self) -> str:
        return os.path.join(self.js.jetstream_dir, "$SYS", "_js_", m.META_GROUP)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            sub = self.server.subscribe
            self._subs.append(sub(f"$NRG.*.{self.my_id}", self._on_nrg, cluster_wide=True))
            self._subs.append(sub(f"$JSC.SI.{self.my_id}", self._on_gather_request, cluster_wide=True))
            self._subs.append(sub(f"$JSC.R.{self.my_id}.*", self._on_gather_reply, cluster_wide=True))
            self._subs.append(sub(META_PROPOSE, self._on_forwarded_proposal, cluster_wide=True))
            self._subs.append(sub(f"{CATCHUP_SUBJECT}.{self.my_id}.*", self._on_catchup_request, cluster_wide=True))
            self._subs.append(sub(f"{CATCHUP_REPLY}.{self.my_id}.*", self._on_catchup_chunk, cluster_wide=True))
            self._subs.append(sub(f"{REMOVE_SUBJECT}.{self.my_id}.*", self._on_remove_request, cluster_wide=True))
            await nursery.start(self.host.run)
            task_status.started()
            nursery.start_soon(self._actions_loop)
            nursery.start_soon(self._housekeeping)  # answers 503 while the group is being formed
            self._open_group(await self._initial_voters())

    async def _initial_voters(self) -> tuple[int, ...]:
        """The voters the group was formed with: chosen once, kept beside the log (Raft's
        storage needs the same initial configuration at every open)."""
        disk = OsDisk(self.meta_dir)
        raw = disk.read(BOOTSTRAP_FILE)
        if raw is not None:
            try:
                return tuple(msgspec.json.decode(raw, type=list[int]))
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                log.error("JetStream meta bootstrap file is damaged (%s): forming the group again", e)
        voters = await self._bootstrap_voters()
        disk.replace(BOOTSTRAP_FILE, msgspec.json.encode(list(voters)))
        self._first_campaign = min(voters) == self.my_id  # the lowest id of a new group asks at once
        return voters

    def _open_group(self, voters: tuple[int, ...]) -> None:
        disk = OsDisk(self.meta_dir)
        conf = ConfState(tuple(sorted(voters)))
        try:
            storage = Storage.open(disk, conf)
        except StorageCorruption as e:
            # Reported and quarantined: the node neither votes nor leads until a leader has
            # brought its log back up to date; its peers are never at risk.
            log.error("JetStream meta log is damaged, rejoining as a quarantined follower: %s", e)
            self.js.load_errors.append(f"JetStream meta log damaged: {e}")
            self.quarantined = True
            storage = Storage.open(disk, conf, repair=True)
        cfg = RaftConfig(node_id=self.my_id, election_ticks=ELECTION_TICKS)
        self.group = self.host.add_group(m.META_GROUP, cfg, storage, self, seed=self.my_id ^ time.time_ns())
        self.group.on_leader_change = self._leader_changed
        if self._first_campaign:
            self.group.campaign()
        log.info("JetStream cluster meta group %s started (peer %s, %d voters)", m.META_GROUP,
                 m.peer_hash(self.me), len(self.group.voters))

    async def _bootstrap_voters(self) -> tuple[int, ...]:
        """A fresh node forms the group with every JetStream server it sees once that set
        stops changing (at once when every configured route answered). A node that comes
        later sees the group's members too; the leader then adds it (its own list cannot
        elect it: the members' logs are ahead of its empty one). A node forms a group alone
        only when routes are up and none of its peers runs JetStream: alone while nobody is
        reachable it could form a second majority beside the one its peers form."""
        start = trio.current_time()
        seen: set[str] = set()
        stable_since = start
        expected = len(set(self.server.opts.routes))  # the list may name this server too
        while True:
            now = trio.current_time()
            current = set(self.online)
            if current != seen:
                seen, stable_since = current, now
            if seen and (now - stable_since >= BOOTSTRAP_SETTLE_S or len(seen) + 1 >= expected > 1):
                break
            if not seen and self.routed and now - start >= BOOTSTRAP_ALONE_S:
                break
            await trio.sleep(0.05)
        names = sorted(seen | {self.me})
        for n in names:
            self.names[m.raft_id(n)] = n
        log.info("JetStream cluster bootstrapping the meta group with %s", ", ".join(names))
        return tuple(m.raft_id(n) for n in names)

    def lame_duck(self) -> None:
        """Entering lame duck mode: hand the meta leadership to a peer before leaving."""
        if self.is_leader:
            log.info("JetStream cluster: lame duck, handing the meta leadership over")
            self.group.step_down(None, _log_failure)

    def close(self) -> None:
        for s in self._subs:
            self.server.unsubscribe(s)
        self._subs.clear()

    # ---- replicated streams ----
    def start_soon(self, fn, *args) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    def _replica_for(self, subject: str) -> StreamReplica | None:
        return self.replicas.get(subject.rsplit(".", 1)[-1])

    def _on_catchup_request(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        r = self._replica_for(subject)
        if r is not None:
            r.on_catchup_request(reply, payload)

    def _on_catchup_chunk(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        r = self._replica_for(subject)
        if r is not None:
            r.on_catchup_chunk(payload)

    def _on_remove_request(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        r = self._replica_for(subject)
        if r is not None:
            r.on_remove_request(payload)

    def remote_interest(self, stream: str, subject: str) -> bool:
        """Does a consumer of the stream hosted on another server want messages on `subject`?
        (Interest retention: a message stays while one does.)"""
        from broker import subjects as subj

        for ca in self.meta.consumers.get(stream, {}).values():
            if ca.host == self.me:
                continue
            key = (stream, ca.name, ca.created)
            filters = self._interest.get(key)
            if filters is None:
                try:
                    cfg = msgspec.json.decode(ca.config)
                except msgspec.DecodeError:
                    cfg = {}
                filters = [f for f in (cfg.get("filter_subjects") or [cfg.get("filter_subject") or ""]) if f]
                if len(self._interest) > 10_000:
                    self._interest.clear()
                self._interest[key] = filters
            if not filters or any(subj.match(f, subject) for f in filters):
                return True
        return False

    def answer_created(self, replica: StreamReplica, reply: str) -> None:
        js = self.js
        js.count_api(False)
        js.reply_json(reply, streamapi._info_like(js, replica.stream, api.StreamCreateResponse, did_create=True))

    async def _open_replica(self, sa: m.StreamAssignment, reply: str, adopt: bool = False):
        js = self.js
        path = os.path.join(js.stream_dir(sa.name), "meta.json")
        try:
            with open(path, "rb") as f:
                old_created = msgspec.json.decode(f.read()).get("created")
        except (OSError, msgspec.DecodeError, AttributeError):
            old_created = None
        if old_created is not None and old_created != sa.created:
            js.remove_files(sa.name)  # an older stream of the same name
        r = StreamReplica(self, sa)
        stream = r.open(reply, adopt)
        self.replicas[r.group_name] = r
        js.attach(stream, r)
        await js.consumers.restore(stream)
        log.info("JetStream cluster opened replica of stream '$G > %s' (group %s, peers %s)",
                 sa.name, r.group_name, ", ".join(sa.peers))
        return stream

    def close_replica(self, r: StreamReplica, snapshot: bool = False) -> None:
        r.close(snapshot=snapshot)
        self.replicas.pop(r.group_name, None)
        if r.sa.config.storage == "memory":
            import shutil

            shutil.rmtree(os.path.join(self.js.jetstream_dir, "$SYS", "_js_", r.group_name), ignore_errors=True)

    # ---- transport ----
    def hold(self) -> None:
        """The Raft loop runs synchronously from now: what it and the state machines write to
        connections (route frames of $NRG messages, PubAcks, consumer deliveries) joins one
        output batch, written out directly at flush() (raft.host.Outbox)."""
        server = self.server
        if server.batch is None:
            server.batch = self._held = {}

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and self.server.batch is held:
            self.server.end_batch(held)

    def _send(self, group: str, message) -> None:
        from raft.messages import encode

        self.server.publish(f"$NRG.{group}.{message.dst}", "", None, encode(message))

    def _on_nrg(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        group = subject.split(".")[1]
        self.host.deliver_bytes(group, payload)

    # ---- membership ----
    def peer_up(self, name: str, jetstream: bool = True) -> None:
        if not name or name == self.me:
            return
        self.routed.add(name)
        if not jetstream:
            return
        self.online.setdefault(name, time.monotonic())
        rid = m.raft_id(name)
        self.names[rid] = name
        self.host.peer_up(rid)

    def peer_down(self, name: str) -> None:
        self.routed.discard(name)
        if self.online.pop(name, None) is not None:
            self.host.peer_down(m.raft_id(name))

    def name_of(self, rid: int) -> str:
        return self.names.get(rid) or self.meta.peer_names.get(rid) or str(rid)

    @property
    def leader_name(self) -> str | None:
        g = self.group
        if g is None or g.leader_id is None:
            return None
        return self.name_of(g.leader_id)

    @property
    def is_leader(self) -> bool:
        return self.group is not None and self.group.is_leader

    @property
    def leader_ready(self) -> bool:
        """Leader, with everything committed applied and an entry of its own term committed:
        its assignments are current (a new leader learns the last commit only then)."""
        g = self.group
        return (g is not None and g.is_leader and g.applied_index >= g.commit_index
                and g.core.log.term(g.commit_index) == g.term)

    def _leader_changed(self, is_leader: bool, leader_id: int | None) -> None:
        if is_leader:
            self.leader_since_ns = time.time_ns()
            log.info("JetStream cluster: this server is the new meta leader")
        elif leader_id is not None:
            log.info("JetStream cluster new metadata leader: %s", self.name_of(leader_id))
        self._actions_wake.set()

    async def _housekeeping(self) -> None:
        """The leader adds servers it sees that are not members, and records their names;
        requests that waited for a leader are served or refused."""
        while True:
            # a new leader holding requests serves them as soon as its own first entry applied
            await trio.sleep(0.01 if self._waiting and self.is_leader else HOUSEKEEPING_S)
            g = self.group
            if g is None:
                self._serve_waiting()
                continue
            if g.is_leader and not self._conf_pending:
                members = set(g.voters) | set(g.learners)
                for name in sorted(self.online):
                    rid = m.raft_id(name)
                    if rid not in members:
                        self._conf_pending = True
                        log.info("JetStream cluster adding %s to the meta group", name)
                        g.propose_conf_change_nowait(ConfChange(ConfChange.ADD, rid), self._conf_done)
                        break
                unnamed = [self.names[v] for v in g.voters if v in self.names and v not in self.meta.peer_names]
                if unnamed and not self._conf_pending:
                    g.propose_nowait(m.encode_op(m.PeerNames(sorted(unnamed))), _log_failure)
            self._serve_waiting()
            self._sync_consumers()
            if not self.caught_up and g.leader_id is not None and g.commit_index > 0 \
                    and g.applied_index >= g.commit_index:
                self.caught_up = True
                self._actions.append(("reconcile", None))
                self._actions_wake.set()

    _conf_pending = False

    def _conf_done(self, index, result, error) -> None:
        self._conf_pending = False
        if error is not None:
            log.info("JetStream cluster: meta membership change failed: %s", error)

    # ---- consumer assignments ----
    def consumer_created(self, info: dict, reply: str) -> None:
        """A consumer create succeeded on this node (its stream's): the answer goes out once
        the consumer's assignment applied here (or after CONSUMER_REPLY_WAIT_S regardless)."""
        from broker.jetstream.consumers import _enc

        e = self.js.consumers.lookup(info["stream_name"], info["name"])
        body = _enc.encode(info)
        if e is None:  # gone already (an ephemeral with nothing to keep it): answer as made
            self.server.publish(reply, "", None, body)
            return
        ca = self._consumer_assignment(e)
        if reply:
            self._consumer_replies[(ca.stream, ca.name, ca.created)] = (
                reply, body, time.monotonic() + CONSUMER_REPLY_WAIT_S)
        self._ask_leader(m.AssignConsumer(ca, reply))

    def _consumer_assignment(self, e) -> m.ConsumerAssignment:
        from broker.jetstream import consumer_api

        cfg = msgspec.json.encode(consumer_api.config_json(e.c.cfg, False))
        return m.ConsumerAssignment(e.c.stream_name, e.c.name, cfg, e.c.created_ns, self.me)

    def _ask_leader(self, op) -> None:
        if self.is_leader:
            self._propose_forwarded(op)
        else:
            self.server.publish(META_PROPOSE, "", None, m.encode_op(op))

    def _on_forwarded_proposal(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        if not self.is_leader:
            return
        try:
            op = m._op_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("JetStream cluster: dropped a malformed forwarded proposal: %s", e)
            return
        if not isinstance(op, (m.AssignConsumer, m.RemoveConsumer)):
            log.warning("JetStream cluster: dropped a forwarded %s (only consumer assignments are)",
                        type(op).__name__)
            return
        self._propose_forwarded(op)

    def _propose_forwarded(self, op) -> None:
        self.group.propose_nowait(m.encode_op(op), _log_failure)

    def _sync_consumers(self) -> None:
        """Anti-entropy: every consumer of the streams held here has its assignment, and
        assignments of consumers that are gone (deleted, expired) are removed."""
        now = time.monotonic()
        for key, (reply, body, deadline) in list(self._consumer_replies.items()):
            if now >= deadline:  # no leader to record it: answer anyway, the sync records it later
                del self._consumer_replies[key]
                self.server.publish(reply, "", None, body)
        if now < self._consumer_sync_at or not self.caught_up or self.leader_name is None:
            return
        self._consumer_sync_at = now + CONSUMER_SYNC_S
        for name in list(self.js.streams):
            if not self.meta.hosted_here(name):
                continue
            replica = self.js.replica(name)
            if replica is not None and not replica.ready:
                continue  # a replicated stream's consumers live on its leader
            local = self.js.consumers.by_stream.get(name, {})
            recorded = self.meta.consumers.get(name, {})
            for cname, e in list(local.items()):
                ca = recorded.get(cname)
                if ca is None or ca.created != e.c.created_ns or ca.host != self.me:
                    self._ask_once(("assign", name, cname, e.c.created_ns), m.AssignConsumer(
                        self._consumer_assignment(e)), now)
            for cname, ca in list(recorded.items()):
                if ca.host != self.me:
                    continue  # a replicated stream's consumer made on another of its peers
                e = local.get(cname)
                if e is None or e.c.created_ns != ca.created:
                    self._ask_once(("remove", name, cname, ca.created), m.RemoveConsumer(name, cname, ca.created), now)

    def _ask_once(self, key: tuple, op, now: float) -> None:
        if self._consumer_sent.get(key, 0) > now:
            return
        if len(self._consumer_sent) > 10_000:
            self._consumer_sent.clear()
        self._consumer_sent[key] = now + 2 * CONSUMER_SYNC_S
        self._ask_leader(op)

    # ---- the state machine (called from the Raft loop: never awaits) ----
    def apply(self, entry) -> object:
        actions = self.meta.apply(entry.data)
        for a in actions:
            self._actions.append(("act", a))
        if actions or self._waiting:  # requests held for a new leader may be served now
            self._actions_wake.set()
        return None

    def snapshot(self) -> bytes:
        self.snapshot_ns = time.time_ns()
        return self.meta.snapshot()

    def restore(self, data: bytes) -> None:
        for a in self.meta.restore(data):
            self._actions.append(("act", a))
        self._actions.append(("reconcile", None))
        self._actions_wake.set()

    # ---- carrying out assignments, in log order ----
    async def _actions_loop(self) -> None:
        while True:
            await self._actions_wake.wait()
            self._actions_wake = trio.Event()
            self._serve_waiting()
            while self._actions:
                kind, a = self._actions.popleft()
                try:
                    if kind == "reconcile":
                        await self._reconcile()
                    else:
                        await self._carry_out(a)
                except Exception:  # our bug: log it, keep the node serving
                    log.exception("JetStream cluster: carrying out %s failed", a)

    async def _carry_out(self, a: m.Action) -> None:
        js = self.js
        sa = a.stream
        stream = js.streams.get(sa.name)
        if a.kind == "create":
            if len(sa.peers) > 1:
                replica = js.replica(sa.name)
                fresh = stream is None or replica is None or stream.created_ns != sa.created
                stream = await self._make_current(sa, a.reply)
                replica = js.replica(sa.name)
                if not fresh and a.reply and replica is not None and replica.ready:
                    self.answer_created(replica, a.reply)  # the same create again: its leader answers
                return
            stream = await self._make_current(sa)
            resp = streamapi._info_like(js, stream, api.StreamCreateResponse, did_create=True)
            if a.reply:
                js.count_api(False)
                js.reply_json(a.reply, resp)
        elif a.kind == "update":
            if stream is None:
                return
            replica = js.replica(sa.name)
            if replica is not None and len(sa.peers) == 1:
                await transitions.demote(self, replica, sa, a.reply)
                return
            if replica is None and len(sa.peers) > 1:
                await transitions.promote(self, stream, sa, a.reply)
                return
            if replica is not None and replica.sa.epoch != sa.epoch:
                return  # another change of replicas (not made here)
            if replica is not None and replica.sa.peers != sa.peers:
                replica.reassign(sa)  # a peer replaced: its leader changes the group's members
                return
            if replica is not None:
                if not replica.ready:
                    return  # the stream's leader proposes it and answers
                try:
                    await replica.propose_wait(ssm.UpdateConfig(sa.config, time.time_ns()))
                    resp = streamapi._info_like(js, stream, api.StreamUpdateResponse)
                except errors.JSError as e:
                    resp = api.StreamUpdateResponse(error=api.ApiError(e.code, e.err_code, e.description))
                if a.reply:
                    js.count_api(False)
                    js.reply_json(a.reply, resp)
                return
            try:
                resp = await streamapi.update_local(js, stream, sa.config)
            except errors.JSError as e:
                resp = api.StreamUpdateResponse(error=api.ApiError(e.code, e.err_code, e.description))
            if a.reply:
                js.count_api(False)
                js.reply_json(a.reply, resp)
        elif a.kind == "consumer":
            ca = a.consumer
            waiting = self._consumer_replies.pop((ca.stream, ca.name, ca.created), None)
            if waiting is not None:
                self.server.publish(waiting[0], "", None, waiting[1])
        elif a.kind == "conflict":
            if a.reply:
                js.count_api(True)
                js.reply_json(a.reply, error_response("STREAM.CREATE", errors.stream_name_exists()))
        elif a.kind == "remove":
            answer = True
            replica = js.replica(sa.name)
            if replica is not None and sa.name in self.meta.streams and self.me not in sa.peers:
                await transitions.hand_over(self, replica, sa)  # it lives on with fewer replicas
                answer = False
            if replica is not None:  # one replica answers: its leader, or with none the first peer
                answer = replica.is_leader or (replica.leader_name is None and sa.peers[0] == self.me)
            elif len(sa.peers) > 1:
                answer = sa.peers[0] == self.me
            if stream is not None:
                await streamapi.delete_local(js, stream)
                log.info("JetStream cluster removed stream '$G > %s'", sa.name)
            if a.reply and answer:
                js.count_api(False)
                js.reply_json(a.reply, api.StreamDeleteResponse(success=True))

    async def _make_current(self, sa: m.StreamAssignment, reply: str = ""):
        """This node's copy of an assigned stream, as assigned: made if missing, made anew if
        the local one is an older stream of the same name, its config brought up to date."""
        js = self.js
        stream = js.streams.get(sa.name)
        if stream is not None and stream.created_ns != sa.created:
            log.info("JetStream cluster replacing stream '$G > %s': it was deleted and made anew", sa.name)
            await streamapi.delete_local(js, stream)
            stream = None
        replica = js.replica(sa.name)
        if len(sa.peers) > 1 and stream is not None and (replica is None or replica.sa.epoch != sa.epoch):
            if replica is None and sa.voters == [self.me]:  # grew from this copy while it was away
                await transitions.promote(self, stream, sa, "")
                return js.streams[sa.name]
            await streamapi.delete_local(js, stream)  # an old copy: filled again from the others
            stream = None
        if len(sa.peers) == 1 and replica is not None:  # shrank to this copy while away
            await transitions.demote(self, replica, sa, "")
            return js.streams[sa.name]
        if len(sa.peers) > 1:
            if stream is None:
                return await self._open_replica(sa, reply)
            replica = js.replica(sa.name)
            if replica is not None and replica.ready and not streamapi._same_config(stream.config, sa.config):
                try:
                    await replica.propose_wait(ssm.UpdateConfig(sa.config, time.time_ns()))
                except errors.JSError as e:  # lost the leadership meanwhile: the next leader does it
                    log.info("JetStream cluster: updating stream '$G > %s' failed: %s", sa.name, e.description)
            return stream
        if stream is None:
            streamapi.create_local(js, sa.config, sa.created)
            log.info("JetStream cluster created stream '$G > %s'", sa.name)
            return js.streams[sa.name]
        if not streamapi._same_config(stream.config, sa.config):
            await streamapi.update_local(js, stream, sa.config)
        return stream

    async def _reconcile(self) -> None:
        """Make the local streams match the assignments: streams no longer placed here were
        deleted (or moved) while this node was away and are removed; streams placed here are
        made, replaced or updated as assigned."""
        js = self.js
        for name, stream in list(js.streams.items()):
            if not self.meta.hosted_here(name):
                log.info("JetStream cluster removing stream '$G > %s': deleted while this server was away", name)
                await streamapi.delete_local(js, stream)
        for sa in list(self.meta.streams.values()):
            if self.me in sa.peers:
                await self._make_current(sa)

    # ---- what the node shows ----
    def stream_block(self, stream_name: str = "") -> api.ClusterInfo:
        replica = self.js.replica(stream_name) if stream_name else None
        if replica is not None:
            return replica.cluster_info()
        return api.ClusterInfo(name=self.cluster_name, leader=self.me)

    def meta_cluster(self) -> dict:
        g = self.group
        out: dict = {"name": self.cluster_name}
        leader = self.leader_name
        if leader is not None:
            out["leader"] = leader
            out["peer"] = m.peer_hash(leader)
        voters = list(g.voters) if g is not None else []
        progress = g.progress() if g is not None and g.is_leader else {}
        replicas = []
        for rid in voters:  # every other member, the leader included, as nats-server lists them
            if rid == self.my_id:
                continue
            name = self.name_of(rid)
            p = progress.get(rid)
            if p is not None:
                heard = p.last_heard_s
                replicas.append({"name": name, "current": p.current, "offline": p.offline or None,
                                 "active": int((heard or 0) * 1e9), "lag": p.lag or None, "peer": m.peer_hash(name)})
            else:
                up = name in self.online
                current = up and (name == leader or self.caught_up)
                replicas.append({"name": name, "current": current, "offline": (not up) or None,
                                 "active": 0, "peer": m.peer_hash(name)})
        if replicas:
            out["replicas"] = [{k: v for k, v in r.items() if v is not None} for r in replicas]
        out["cluster_size"] = len(voters)
        out["quorum_needed"] = len(voters) // 2 + 1
        out["pending"] = 0
        out["pending_requests"] = len(self._waiting)
        out["pending_infos"] = len({id(e) for e in self._gathers.values()})
        snap_index = g.core.log.snapshot.index if g is not None else 0
        out["snapshot"] = {"pending_entries": (g.applied_index - snap_index) if g is not None else 0,
                           "pending_size": g.applied_bytes if g is not None else 0,
                           "last_time": api.rfc3339(self.snapshot_ns)}
        return out

