"""Who answers each `$JS.API` request in a cluster, and the requests the meta leader answers.

How this works. Every node subscribes `$JS.API.>` cluster-wide, so each request reaches every
node; `on_api` decides on each node, at delivery, whether it answers:
- create, update, delete, names, list, account info and META.LEADER.STEPDOWN: the meta leader.
  It checks the request against the assignments, picks the peers and proposes; the stream's
  node answers a create, update or delete once the entry applied there (it has the state to
  answer with); nobody answers a delete while that node is down, as with nats-server.
- everything naming a stream (info, messages, purge, consumers): the node holding the stream,
  through the single-node handlers; a stream no node holds is the meta leader's to refuse.
- while there is no meta leader, a request that needs one waits up to NO_LEADER_WAIT_S for an
  election; then the node the requester is connected to (the one holding its reply
  subscription) answers 503 "JetStream system temporarily unavailable".
  META.LEADER.STEPDOWN never waits: only a leader ready when it arrives decides it.
Names and account info come from the assignments; LIST and account usage gather each node's
view of its own streams over `$JSC.SI.<node>` requests.

`MetaApi` is a part of `JetStreamCluster` (runtime.py), split out by concern.
"""

from __future__ import annotations

import logging
import time

import msgspec
import trio

from broker.jetstream import api, errors
from broker.jetstream import streamapi
from broker.jetstream import streamconfig as sc
from broker.jetstream.cluster import meta as m
from raft.core import ProposalRejected

log = logging.getLogger("broker.jetstream.cluster")

NO_LEADER_WAIT_S = 1.0
GATHER_TIMEOUT_S = 1.5
META_OPS = {"STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE", "STREAM.NAMES", "STREAM.LIST", "INFO",
            "META.LEADER.STEPDOWN", "STREAM.PEER.REMOVE"}


class _Placement(msgspec.Struct):
    preferred: str = ""


class PeerRemoveRequest(msgspec.Struct):
    peer: str = ""


class StepdownRequest(msgspec.Struct):
    placement: _Placement | None = None


class NodeReport(msgspec.Struct):
    """One node's answer to a `$JSC.SI` gather: its streams and what they use."""
    streams: list[api.StreamListItem]
    consumers: int
    memory: int
    storage: int
    reserved_memory: int
    reserved_storage: int


_report_decoder = msgspec.json.Decoder(NodeReport)


def unavailable() -> errors.JSError:
    return errors.JSError(503, 10008, "JetStream system temporarily unavailable")


def no_placement() -> errors.JSError:
    return errors.JSError(400, 10005, "no suitable peers for placement")


def classify(subject: str) -> tuple[str, str]:
    """(operation, stream name or "") of a `$JS.API.` subject: operation is e.g. 'STREAM.INFO'
    or 'CONSUMER.MSG.NEXT'; the stream is the one a request is about, if any."""
    t = subject.split(".")
    if len(t) < 3:
        return "", ""
    if len(t) == 3:
        return t[2], ""
    if t[2] == "STREAM":
        if len(t) >= 5 and t[3] in ("MSG", "LEADER", "PEER"):
            return f"STREAM.{t[3]}.{t[4]}", (t[5] if len(t) > 5 else "")
        return f"STREAM.{t[3]}", (t[4] if len(t) > 4 else "")
    if t[2] == "CONSUMER":
        if len(t) >= 5 and t[3] in ("DURABLE", "MSG", "LEADER"):
            return f"CONSUMER.{t[3]}.{t[4]}", (t[5] if len(t) > 5 else "")
        return f"CONSUMER.{t[3]}", (t[4] if len(t) > 4 else "")
    if t[2] == "META" and len(t) >= 5:
        return f"META.{t[3]}.{t[4]}", ""
    return ".".join(t[2:4]), ""



class MetaApi:
    # ---- who answers ----
    def on_api(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> bool:
        """Decide about one API request; True when this node handles it with the single-node
        handlers (the stream lives here), False when it is dealt with here or elsewhere."""
        op, stream = classify(subject)
        if op in META_OPS:
            if self.leader_ready:
                self._nursery.start_soon(self._meta_request, op, subject, reply, hdr, payload)
            elif op == "META.LEADER.STEPDOWN":
                pass  # meant for the leader of the moment, which may have stepped down for it
                # already: deciding it again after the election would step a second leader down
                # (and answer twice); nats-server's non-leaders drop it too
            elif self.is_leader or self.leader_name is None:
                self._waiting.append((time.monotonic() + NO_LEADER_WAIT_S, subject, reply, hdr, payload))
            return False
        host = self.meta.host_of(stream) if stream else None
        if host is not None:
            sa = self.meta.streams[stream]
            if len(sa.peers) > 1:
                return self._replicated_answers(op, subject, sa, reply, payload)
            return host == self.me
        if self.leader_ready:
            return True  # nothing hosts it: the single-node handlers answer "not found"
        if self.is_leader:  # a new leader answers once the assignments it leads are applied
            self._waiting.append((time.monotonic() + NO_LEADER_WAIT_S, subject, reply, hdr, payload))
            return False
        if self.leader_name is None and self._requester_here(reply):
            self._nursery.start_soon(self._answer_unavailable, op, reply)
        return False

    def _replicated_answers(self, op: str, subject: str, sa: m.StreamAssignment, reply: str,
                            payload: bytes) -> bool:
        """A replicated stream: its leader answers, for the stream and for its consumers (they
        live on the stream's leader; replicated ones move with it)."""
        replica = self.js.replica(sa.name)
        if replica is None or not replica.ready:
            return False
        if op == "STREAM.LEADER.STEPDOWN":
            self._stream_stepdown(replica, reply, payload)
            return False
        if op == "CONSUMER.LEADER.STEPDOWN":  # its consumers live on the stream's leader: that moves
            t = subject.split(".")
            name = t[6] if len(t) > 6 else ""
            if self.js.consumers.lookup(sa.name, name) is None:
                self.js.count_api(True)
                self.js.reply_json(reply, error_response(op, errors.JSError(404, 10014, "consumer not found")))
            else:
                self._stream_stepdown(replica, reply, payload, op)
            return False
        return True

    def _stream_stepdown(self, replica, reply: str, payload: bytes, op: str = "STREAM.LEADER.STEPDOWN") -> None:
        kind = "stream" if op.startswith("STREAM.") else "consumer"
        preferred = None
        try:
            want = _preferred(payload)
            if want:
                if want not in replica.sa.peers:
                    raise errors.JSError(400, 10005, f'preferred server "{want}" not known')
                if want == self.me:
                    raise errors.JSError(400, 10005, f'preferred server "{want}" is already leader')
                preferred = m.raft_id(want)
        except errors.JSError as e:
            self.js.count_api(True)
            self.js.reply_json(reply, error_response(op, e))
            return

        def done(index, result, error) -> None:
            if error is None:
                self.js.count_api(False)
                self.js.reply_json(reply, {"type": api.PREFIX + f"{kind}_leader_stepdown_response", "success": True})
            else:
                self.js.count_api(True)
                self.js.reply_json(reply, error_response(op, errors.JSError(
                    400, 10005, "no suitable peers for placement") if isinstance(error, ProposalRejected)
                    else unavailable()))

        replica.step_down(preferred, done)

    def _requester_here(self, reply: str) -> bool:
        """The requester is a client of this node: its reply subscription is here."""
        if not reply:
            return False
        found = self.server.sublist.match(reply.encode())
        return any(not s.conn.is_route for s in found.plain) or any(
            not s.conn.is_route for g in found.queues for s in g.members)

    def _serve_waiting(self) -> None:
        if not self._waiting:
            return
        now = time.monotonic()
        keep = []
        for item in self._waiting:
            deadline, subject, reply, hdr, payload = item
            if self.leader_ready:
                self.js._on_api(subject, reply, hdr, payload)  # decided again, now with current state
            elif self.is_leader and now < deadline:
                keep.append(item)
            elif self.leader_name is not None and not self.is_leader:
                continue  # another node leads: it had the request too
            elif now >= deadline:
                if self._requester_here(reply):
                    self._nursery.start_soon(self._answer_unavailable, classify(subject)[0], reply)
            else:
                keep.append(item)
        self._waiting = keep

    async def _answer_unavailable(self, op: str, reply: str) -> None:
        await self._answer_error(op, reply, unavailable())

    async def _answer_error(self, op: str, reply: str, e: errors.JSError) -> None:
        self.js.count_api(True)
        self.js.reply_json(reply, error_response(op, e))

    # ---- requests the meta leader answers ----
    async def _meta_request(self, op: str, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        js = self.js
        name = subject.split(".")[-1] if op in ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE",
                                                "STREAM.PEER.REMOVE") else ""
        try:
            if op == "STREAM.CREATE":
                self._create(name, reply, payload)
            elif op == "STREAM.UPDATE":
                self._update(name, reply, payload)
            elif op == "STREAM.DELETE":
                self._delete(name, reply)
            elif op == "STREAM.NAMES":
                js.count_api(False)
                js.reply_json(reply, self._names(payload))
            elif op == "STREAM.LIST":
                resp = await self._list(payload)
                js.count_api(False)
                js.reply_json(reply, resp)
            elif op == "INFO":
                resp = await self._account_info()
                js.count_api(False)
                js.reply_json(reply, resp)
            elif op == "META.LEADER.STEPDOWN":
                self._stepdown(reply, payload)
            elif op == "STREAM.PEER.REMOVE":
                self._peer_remove(name, reply, payload)
        except errors.JSError as e:
            js.count_api(e.counts_as_error)
            js.reply_json(reply, error_response(op, e))

    def _lookup(self, name: str):
        sa = self.meta.streams.get(name)
        return sa.config if sa is not None else None

    def _members_online(self) -> list[str]:
        g = self.group
        members = set(g.voters) | set(g.learners)
        return sorted({self.me} | {n for n in self.online if m.raft_id(n) in members})

    def _create(self, name: str, reply: str, payload: bytes) -> None:
        cfg = streamapi.prepare_create(self.js, name, payload, self._lookup, clustered=True)
        existing = self.meta.streams.get(name)
        if existing is not None:
            if not streamapi._same_config(existing.config, cfg):
                raise errors.stream_name_exists()
            # the same config again: the host answers with the stream as it is
            self._propose(m.AssignStream(existing, reply, self.me), "STREAM.CREATE", reply)
            return
        sc.check_overlap(cfg, [sa.config for sa in self.meta.streams.values()])
        members = len(set(self.group.voters) | set(self.group.learners))
        if cfg.num_replicas > members:
            raise no_placement()
        self.js.check_reservation(cfg)
        peers = m.place(cfg.num_replicas, self._members_online(), self.meta.stream_counts(),
                        self._rng.randrange(1 << 30))
        if peers is None:
            raise no_placement()
        sa = m.StreamAssignment(name, cfg, peers, time.time_ns())
        self._propose(m.AssignStream(sa, reply, self.me), "STREAM.CREATE", reply)

    def _update(self, name: str, reply: str, payload: bytes) -> None:
        existing = self.meta.streams.get(name)
        old = existing.config if existing is not None else None
        others = [sa.config for sa in self.meta.streams.values()]
        cfg = streamapi.prepare_update(self.js, name, payload, old, self._lookup, others, clustered=True)
        placed = None
        if cfg.num_replicas != old.num_replicas:
            placed = self._replace(existing, cfg)
        self._propose(m.UpdateStream(name, cfg, reply, placed), "STREAM.UPDATE", reply)

    def _peer_remove(self, name: str, reply: str, payload: bytes) -> None:
        """STREAM.PEER.REMOVE: the peer is replaced by a server that holds no copy; the group
        changes its members (replica.py), the new peer restores a snapshot and catches up."""
        sa = self.meta.streams.get(name)
        if sa is None:
            raise errors.stream_not_found()
        try:
            req = msgspec.json.decode(payload or b"{}", type=PeerRemoveRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise errors.invalid_json(str(e)) from None
        if not req.peer:
            raise errors.bad_request()
        if req.peer not in sa.peers:
            raise errors.JSError(400, 10040, "peer not a member")
        free = [n for n in self._members_online() if n not in sa.peers]
        if len(sa.peers) == 1 or not free:  # (moving a single copy is not built: its data would not follow)
            raise errors.JSError(503, 10075, "peer remap failed")
        new = m.place(1, free, self.meta.stream_counts(), self._rng.randrange(1 << 30))
        rest = [p for p in sa.peers if p != req.peer]
        placed = msgspec.structs.replace(sa, peers=rest + new, voters=rest)

        def done(index, result, error) -> None:
            self.js.count_api(error is not None)
            self.js.reply_json(reply, {"type": api.PREFIX + "stream_remove_peer_response", "success": True}
                               if error is None else error_response("STREAM.PEER.REMOVE", unavailable()))

        self.group.propose_nowait(m.encode_op(m.UpdateStream(name, sa.config, "", placed)), done)

    def _replace(self, sa: m.StreamAssignment, cfg) -> m.StreamAssignment:
        """The placement of a stream whose replica count changes (transitions.py)."""
        members = len(set(self.group.voters) | set(self.group.learners))
        if cfg.num_replicas > members:
            raise no_placement()
        if len(sa.peers) == 1 and cfg.num_replicas > 1:
            host = sa.peers[0]
            others = m.place(cfg.num_replicas - 1, [n for n in self._members_online() if n != host],
                             self.meta.stream_counts(), self._rng.randrange(1 << 30))
            if others is None:
                raise no_placement()
            return msgspec.structs.replace(sa, config=cfg, peers=[host] + others, voters=[host], epoch=sa.epoch + 1)
        if len(sa.peers) > 1 and cfg.num_replicas == 1:
            replica = self.js.replica(sa.name)
            leader = replica.leader_name if replica is not None else None
            keep = leader if leader in sa.peers else sa.peers[0]
            return msgspec.structs.replace(sa, config=cfg, peers=[keep], voters=[], epoch=sa.epoch + 1)
        # between two counts above one (peers added to or removed from a running group): not yet
        raise errors.JSError(400, 10061, "Replicas configuration can not be updated")

    def _delete(self, name: str, reply: str) -> None:
        if name not in self.meta.streams:
            raise errors.stream_not_found()
        # the stream's node answers once it removed its copy; while that node is down the
        # removal still commits but nobody answers, as with nats-server
        self._propose(m.RemoveStream(name, reply), "STREAM.DELETE", reply)

    def _propose(self, op: m.MetaOp, api_op: str, reply: str) -> None:
        """Propose; the stream's node answers when it applies. A proposal that fails (this node
        lost the leadership meanwhile) is answered here."""
        def done(index, result, error) -> None:
            if error is not None:
                self.js.count_api(True)
                self.js.reply_json(reply, error_response(api_op, unavailable()))

        self.group.propose_nowait(m.encode_op(op), done)

    def _stepdown(self, reply: str, payload: bytes) -> None:
        preferred = None
        want = _preferred(payload)
        if want:
            rid = m.raft_id(want)
            if rid not in self.group.voters:
                raise errors.JSError(400, 10005, f'preferred server "{want}" not known')
            preferred = rid

        def done(index, result, error) -> None:
            if error is None:
                self.js.count_api(False)
                self.js.reply_json(reply, {"type": api.PREFIX + "meta_leader_stepdown_response", "success": True})
            else:
                self.js.count_api(True)
                self.js.reply_json(reply, error_response(
                    "META.LEADER.STEPDOWN", errors.JSError(400, 10040, "peer not a member")
                    if isinstance(error, ProposalRejected) else unavailable()))

        self.group.step_down(preferred, done)

    def _matching(self, subject_filter: str) -> list[m.StreamAssignment]:
        from broker import subjects as subj

        out = []
        for name in sorted(self.meta.streams):
            sa = self.meta.streams[name]
            if subject_filter and subject_filter != ">":
                if not any(subj.overlaps(x, subject_filter) for x in sa.config.subject_list()):
                    continue
            out.append(sa)
        return out

    def _names(self, payload: bytes):
        req = streamapi._decode(api.StreamNamesRequest, payload, api.StreamNamesRequest(), "JSApiStreamNamesRequest")
        found = self._matching(req.subject)
        offset = min(max(0, req.offset), len(found))
        page = found[offset:offset + streamapi.NAMES_LIMIT]
        return api.StreamNamesResponse(total=len(found), offset=offset, streams=[sa.name for sa in page] or None)

    async def _list(self, payload: bytes):
        req = streamapi._decode(api.StreamNamesRequest, payload, api.StreamNamesRequest(), "JSApiStreamListRequest")
        found = self._matching(req.subject)
        offset = min(max(0, req.offset), len(found))
        page = found[offset:offset + streamapi.LIST_LIMIT]
        reports = await self._gather({sa.peers[0] for sa in page})
        by_name = {item.config.name: item for rep in reports.values() for item in rep.streams}
        items, missing = [], []
        for sa in page:
            item = by_name.get(sa.name)
            if item is None:
                missing.append(sa.name)
            else:
                items.append(item)
        resp = api.StreamListResponse(total=len(found), offset=offset, streams=items)
        if missing:
            resp.missing = missing
        return resp

    async def _account_info(self):
        reports = await self._gather(set(self._members_online()))
        info = api.AccountInfoResponse(streams=len(self.meta.streams),
                                       api=api.ApiStats(total=self.js.api_total, errors=self.js.api_errors))
        for rep in reports.values():
            info.memory += rep.memory
            info.storage += rep.storage
            info.reserved_memory += rep.reserved_memory
            info.reserved_storage += rep.reserved_storage
        info.consumers = sum(len(named) for named in self.meta.consumers.values())
        return info

    # ---- gathering from the hosts ----
    def local_report(self) -> NodeReport:
        js = self.js
        mem, disk, _, cons, _ = js.usage()
        rmem, rdisk = js.reserved()
        items = [streamapi.list_item(js, s) for _, s in sorted(js.streams.items())]
        return NodeReport(items, cons, mem, disk, rmem, rdisk)

    def _on_gather_request(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        if reply:
            self.server.publish(reply, "", None, msgspec.json.encode(self.local_report()))

    def _on_gather_reply(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        token = subject.rsplit(".", 1)[-1]
        g = self._gathers.get(token)
        if g is None:
            return
        try:
            g["reports"][g["who"].get(token, "")] = _report_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.warning("JetStream cluster: bad stream report: %s", e)
        if len(g["reports"]) >= g["want"]:
            g["done"].set()

    async def _gather(self, servers: set[str]) -> dict[str, NodeReport]:
        """Each server's report; a server that does not answer in time is left out."""
        reports: dict[str, NodeReport] = {}
        if self.me in servers:
            reports[self.me] = self.local_report()
        remote = sorted(s for s in servers if s != self.me and s in self.online)
        if remote:
            done = trio.Event()
            who = {}
            entry = {"reports": reports, "want": len(remote) + len(reports), "done": done, "who": who}
            for name in remote:
                self._gather_seq += 1
                token = str(self._gather_seq)
                who[token] = name
                self._gathers[token] = entry
                self.server.publish(f"$JSC.SI.{m.raft_id(name)}", f"$JSC.R.{self.my_id}.{token}", None, b"")
            with trio.move_on_after(GATHER_TIMEOUT_S):
                await done.wait()
            for token in who:
                self._gathers.pop(token, None)
        return reports


def _preferred(payload: bytes) -> str:
    """The `placement.preferred` server of a stepdown request ("" when none)."""
    if not payload.strip():
        return ""
    try:
        req = msgspec.json.decode(payload, type=StepdownRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise errors.invalid_json(str(e)) from None
    return req.placement.preferred if req.placement is not None else ""


def _log_failure(index, result, error) -> None:
    if error is not None:
        log.debug("JetStream cluster: meta proposal failed: %s", error)


def _api_error(e: errors.JSError) -> api.ApiError:
    return api.ApiError(e.code, e.err_code, e.description)


def error_response(op: str, e: errors.JSError):
    """An error in the response shape of the request's operation, as nats-server answers."""
    from broker.jetstream import consumer_api

    if op.startswith("STREAM."):
        entry = streamapi._HANDLERS.get(op[len("STREAM."):])
        if entry is not None:
            paged = {"limit": 0} if op in ("STREAM.NAMES", "STREAM.LIST") else {}  # zero paging, as sent
            return entry[1](error=_api_error(e), **entry[3], **paged)
    if op.startswith("CONSUMER."):
        sub = op[len("CONSUMER."):]
        if sub in consumer_api.KINDS:
            return consumer_api.error_body(sub, e)
    if op == "STREAM.LEADER.STEPDOWN":
        return {"type": api.PREFIX + "stream_leader_stepdown_response", "error": e.as_dict()}
    if op == "STREAM.PEER.REMOVE":
        return {"type": api.PREFIX + "stream_remove_peer_response", "error": e.as_dict()}
    if op == "META.LEADER.STEPDOWN":
        return {"type": api.PREFIX + "meta_leader_stepdown_response", "error": e.as_dict()}
    if op == "INFO":
        return {"type": api.PREFIX + "account_info_response", "error": e.as_dict()}
    return {"error": e.as_dict()}
