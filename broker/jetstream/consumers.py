"""The trio runtime around consumer.py: API handlers, delivery, timers, persistence.

Events are handled synchronously where they arrive (a stored message, a pull request,
an ack): the consumer's state machine runs and its output is published at once, so
a pull consumer keeps up with a publisher without a task switch per message. One
background task handles time (ack-wait redelivery, request expiry, heartbeats,
inactivity), push consumers waiting for interest or with a long backlog, and the
grouped persistence of durable consumer state (written atomically, at most once per
`FLUSH_INTERVAL_S`, and on shutdown). Each consumer carries the time it next needs
that task (`_Entry.due`), so idle consumers cost nothing but a comparison.

Deliveries show the stored message's subject while going to subscribers of the
deliver subject / request inbox (as nats-server's internal clients do); across a
route nats-server encodes that as `RMSG <acct> <deliver> <reply>@<subject>`, which
our route layer does not do yet, so remote deliveries show the deliver subject.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

import msgspec
import trio

from broker import headers as hdrs
from broker.jetstream import consumer_api as capi
from broker.jetstream.consumer import Consumer, Out, Run
from broker.jetstream.consumerconfig import ConsumerConfig, parse_duration_ns
from broker.jetstream.errors import JSError

log = logging.getLogger("broker.jetstream.consumers")

FLUSH_INTERVAL_S = 0.5
PUSH_BATCH = 1000  # messages a push consumer sends per turn of the timer task
IDLE_POLL_S = 0.1  # how often push consumers without interest and inactivity are re-checked
BIND_POLL_NS = 5_000_000  # a push consumer that just lost or never had interest is re-checked this often...
BIND_FAST_NS = 2_000_000_000  # ...for this long (clients subscribe to the deliver subject after creating it)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_enc = msgspec.json.Encoder()
_rng = random.SystemRandom()  # os.urandom: `secrets` would load OpenSSL's libcrypto (3.6 MiB) for this


class _Entry:
    """Runtime wrapper of one consumer: where it lives and its push/idle bookkeeping."""
    __slots__ = ("c", "stream", "durable", "hb_next", "inactive_since", "deleted", "due", "replica")

    def __init__(self, c: Consumer, stream, durable: bool, now_ns: int) -> None:
        self.c = c
        self.replica = None  # cluster/replica.py StreamReplica: a replicated consumer's state goes there
        self.stream = stream
        self.durable = durable
        self.hb_next = now_ns + c.cfg.idle_heartbeat if c.cfg.idle_heartbeat else 0
        self.inactive_since = now_ns
        self.deleted = False
        self.due = 1  # when the timer task must next look at it (0 = only on events)


class ConsumerManager:
    def __init__(self, js) -> None:
        self.js = js
        self.server = js.server
        self.by_stream: dict[str, dict[str, _Entry]] = {}
        self.busy: set[_Entry] = set()  # push consumers with more to send
        self._wake = trio.Event()
        self._sleep_until = 0  # the timer task sleeps until then unless woken
        self._poke_all = False
        self._task_started = False
        self._subs: list = []
        self._at_batch_end = getattr(self.server, "at_batch_end", None)
        self._to_serve: dict[_Entry, None] = {}  # acked during the current read: served at its end
        self._acks: list[tuple[_Entry, int, int]] = []  # plain acks of the current read, in order
        self._pulls_to_serve: dict[_Entry, None] = {}  # got pull requests: served in api_batch_end
        self._ack_replies: list[tuple[_Entry, str]] = []  # confirmed acks answered once their state is durable
        self._gates: dict[int, tuple] = {}  # id(consumer) -> (replica, entry): outputs wait for a commit

    # ---- plumbing --------------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task_started:
            return
        self._task_started = True
        self._subs.append(self.server.subscribe("$JS.ACK.>", self._on_ack))
        self._subs.append(self.server.subscribe("$JS.FC.>", self._on_fc))
        self.server.nursery.start_soon(self._run)

    def _kick(self) -> None:
        """Make the timer task look at every consumer now (pause, reset: rare)."""
        self._poke_all = True
        self._wake.set()

    def _schedule(self, e: "_Entry", t: int) -> None:
        """Make sure the timer task looks at `e` no later than `t` (absolute ns)."""
        if t and (not e.due or t < e.due):
            e.due = t
            if t < self._sleep_until:
                self._wake.set()

    def emit(self, c: Consumer) -> None:
        """Publish everything the state machine produced (a replicated consumer's, once the
        state that produced it has committed: cluster/replica.py)."""
        if not c.out:
            return
        out, c.out = c.out, []
        if self._gates:
            gate = self._gates.get(id(c))
            if gate is not None:
                gate[0].hold(gate[1], out)
                return
        self.publish_outs(out)

    def publish_outs(self, out: list) -> None:
        srv = self.server
        i, n = 0, len(out)
        while i < n:
            o = out[i]
            if type(o) is Run:
                if not srv.deliver_ack_run(o.to, o.msgs, o.prefix.encode(), o.dseq, o.pending):
                    srv.deliver_as_many(o.to, o.outs())
                i += 1
                continue
            to, subject, reply, hdr, payload = o
            if subject == to:  # status, heartbeat, flow control
                srv.publish(to, reply, hdr, payload)
                i += 1
                continue
            j = i + 1  # consecutive deliveries to one subject: one Server call
            while j < n and type(out[j]) is not Run and out[j][0] == to and out[j][1] != to:
                j += 1
            if j == i + 1:
                srv.deliver_as(to, subject, reply, hdr, payload)
            else:
                srv.deliver_as_many(to, out[i:j] if i or j < n else out)
            i = j

    def reply(self, reply: str, obj: dict) -> None:
        if reply:
            self.server.publish(reply, "", None, _enc.encode(obj))

    # ---- interface for the stream side -------------------------------------------------
    def consumer_count(self, stream_name: str) -> int:
        return len(self.by_stream.get(stream_name, ()))

    def on_stored(self, stream, seq: int, subject: str) -> None:
        entries = self.by_stream.get(stream.name)
        if not entries:
            return
        now = time.time_ns()
        for e in list(entries.values()):
            c = e.c
            if c.on_stored(seq, subject):
                self._serve(e, now)

    def _serve(self, e: _Entry, now: int) -> None:
        c = e.c
        if c.push:
            if self.server.has_interest(c.cfg.deliver_subject):
                w = c.deliver_push(now, True, PUSH_BATCH)
                if w == 1:
                    self.busy.add(e)
                    self._wake.set()
                else:
                    self._schedule(e, w)
                if c.out:
                    e.hb_next = now + c.cfg.idle_heartbeat if c.cfg.idle_heartbeat else 0
        elif c.waiting:
            self._schedule(e, c.serve_pull(now, self.server.has_interest))
        self.emit(c)
        self._schedule(e, c.next_wake())

    def stream_purged(self, stream) -> None:
        for e in self.by_stream.get(stream.name, {}).values():
            e.c.purged()

    def stream_deleted(self, stream) -> None:
        entries = self.by_stream.pop(stream.name, {})
        for e in entries.values():
            e.deleted = True
            e.c.stop("Consumer Deleted")
            self.emit(e.c)
            self.busy.discard(e)

    def leader_lost(self, stream) -> None:
        """This node no longer leads a replicated stream: its consumers move to the new leader
        (replicated ones from the log; ephemerals are gone). Waiting pull requests get
        `409 Leadership Change`, as from nats-server."""
        entries = self.by_stream.pop(stream.name, {})
        for e in entries.values():
            e.deleted = True
            self.busy.discard(e)
            self._gates.pop(id(e.c), None)
            e.c.stop("Leadership Change")
            self.publish_outs(e.c.out)
            e.c.out = []

    def leader_gained(self, stream, replica, states: dict) -> None:
        """This node now leads a replicated stream: its replicated consumers start here from the
        state the log recorded (pending messages are redelivered after their ack wait)."""
        from broker.jetstream.consumerconfig import ConsumerConfig

        now = time.time_ns()
        have = self.by_stream.get(stream.name, {})
        for name, (created, cfg_json, state) in sorted(states.items()):
            if name in have:
                continue
            try:
                st = msgspec.msgpack.decode(state) if state else None
                c = _revive(stream, name, msgspec.json.decode(cfg_json, type=ConsumerConfig), created, st, now)
            except (ValueError, KeyError, TypeError, msgspec.DecodeError, msgspec.ValidationError) as ex:
                log.error("cannot start replicated consumer %s > %s: %s", stream.name, name, ex)
                continue
            for reply, expires in (st or {}).get("waiting", ()):  # waiting on the old leader
                if not expires or expires > now:
                    self.server.publish(reply, "", hdrs.build(status="409", description="Leadership Change"), b"")
            self._serve(self._add(stream, c, now, replica), now)

    def needs_msg(self, stream, seq: int, subject: str) -> bool:
        for e in self.by_stream.get(stream.name, {}).values():
            c = e.c
            if c.matches(subject) and (seq >= c.sseq or seq in c.pending or seq in c.lps):
                return True
        return False

    def server_shutdown(self) -> None:
        """Server.shutdown, before client connections close: every waiting pull request gets
        `409 Server Shutdown` (queued on the requesters' connections, which flush it before
        closing)."""
        for entries in self.by_stream.values():
            for e in entries.values():
                if not e.deleted and e.c.waiting:
                    e.c.server_shutdown()
                    self.emit(e.c)

    def close(self) -> None:
        for entries in self.by_stream.values():
            for e in entries.values():
                if e.durable and e.c.dirty:
                    self._write_state(e)

    async def restore(self, stream) -> None:
        d = self._obs_dir(stream.name)
        if not os.path.isdir(d):
            return
        now = time.time_ns()
        for name in sorted(os.listdir(d)):
            try:
                with open(os.path.join(d, name, "meta.json"), "rb") as f:
                    meta = msgspec.json.decode(f.read())
                st_path = os.path.join(d, name, "state.json")
                st = None
                if os.path.exists(st_path):
                    with open(st_path, "rb") as f:
                        st = msgspec.json.decode(f.read())
                c = _revive(stream, name, msgspec.convert(meta["config"], ConsumerConfig), meta["created"], st, now)
            except (OSError, ValueError, KeyError, msgspec.DecodeError, msgspec.ValidationError) as ex:
                log.error("cannot restore consumer %s > %s: %s", stream.name, name, ex)
                continue
            self._add(stream, c, now)

    # ---- persistence ------------------------------------------------------------------
    def _obs_dir(self, stream_name: str) -> str:
        return os.path.join(self.js.store_dir, "jetstream", "$G", "streams", stream_name, "obs")

    def _persisted(self, e: _Entry) -> bool:
        return e.durable and e.stream.config.storage == "file" and not e.c.cfg.mem_storage and e.replica is None

    def _write_meta(self, e: _Entry) -> None:
        if e.replica is not None:  # a replicated consumer lives in its stream's Raft log
            e.replica.consumer_upsert(e)
            return
        if not self._persisted(e):
            return
        meta = {"config": e.c.cfg, "created": e.c.created_ns}
        _atomic_write(os.path.join(self._obs_dir(e.stream.name), e.c.name, "meta.json"), _enc.encode(meta))

    def _write_state(self, e: _Entry) -> None:
        e.c.dirty = False
        if e.replica is not None and not e.deleted:
            e.replica.consumer_changed(e)
            return
        if not self._persisted(e) or e.deleted:
            return
        _atomic_write(os.path.join(self._obs_dir(e.stream.name), e.c.name, "state.json"),
                      _enc.encode(e.c.state_dict()))

    def _remove_files(self, e: _Entry) -> None:
        if e.replica is not None:
            e.replica.consumer_delete(e)
            return
        d = os.path.join(self._obs_dir(e.stream.name), e.c.name)
        for fn in ("meta.json", "state.json"):
            try:
                os.unlink(os.path.join(d, fn))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(d)
        except OSError:
            pass

    async def _flush(self) -> None:
        replies, self._ack_replies = self._ack_replies, []
        work = [e for es in self.by_stream.values() for e in es.values() if e.durable and e.c.dirty]
        if not work:
            self._answer_acks(replies)
            return
        snaps = []
        for e in work:
            e.c.dirty = False
            if e.replica is not None:
                e.replica.consumer_changed(e)
            elif self._persisted(e):
                snaps.append((os.path.join(self._obs_dir(e.stream.name), e.c.name, "state.json"),
                              _enc.encode(e.c.state_dict())))
        if snaps:
            try:
                await trio.to_thread.run_sync(lambda: [_atomic_write(p, b) for p, b in snaps])
            except OSError as ex:  # disk trouble: keep serving; state is rewritten on the next change
                log.error("cannot persist consumer state: %s", ex)
                for e in work:
                    e.c.dirty = True
                return  # confirmed acks stay unanswered: the client's retry acks again
        self._answer_acks(replies)

    def _answer_acks(self, replies: list[tuple["_Entry", str]]) -> None:
        for e, reply in replies:
            if not e.deleted:
                self.server.publish(reply, "", None, b"")

    # ---- the background task ---------------------------------------------------------
    async def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            now = time.time_ns()
            wake = now + int(FLUSH_INTERVAL_S * 1e9)
            poke_all, self._poke_all = self._poke_all, False
            for entries in list(self.by_stream.values()):
                for e in list(entries.values()):
                    if poke_all or e in self.busy or (e.due and e.due <= now):
                        try:
                            e.due = self._tick_entry(e, now)
                        except Exception:  # our bug: log it loudly, keep the other consumers running
                            log.exception("consumer %s > %s failed in its timer", e.stream.name, e.c.name)
                            self.busy.discard(e)
                            e.due = now + int(IDLE_POLL_S * 1e9)
                            continue
                    if e.due:
                        wake = min(wake, e.due)
            if self.busy:
                wake = now
            if self._ack_replies or time.monotonic() - last_flush >= FLUSH_INTERVAL_S:
                last_flush = time.monotonic()
                await self._flush()
            delay = max(0.0, (wake - time.time_ns()) / 1e9)
            self._wake = trio.Event()
            self._sleep_until = wake
            if delay > 0 and not self.busy:
                with trio.move_on_after(min(delay, FLUSH_INTERVAL_S)):
                    await self._wake.wait()
            else:
                await trio.sleep(0)

    def _tick_entry(self, e: _Entry, now: int) -> int:
        c = e.c
        if e.deleted:
            return 0
        c.tick(now)
        wake = 0
        if c.push:
            wake = self._tick_push(e, now)
        elif c.waiting:
            wake = c.serve_pull(now, self.server.has_interest)
        self.emit(c)
        if self._inactive(e, now):
            self._delete(e)
            return 0
        w = c.next_wake()
        if w and (not wake or w < wake):
            wake = w
        if e.hb_next and (not wake or e.hb_next < wake):
            wake = e.hb_next
        limit = c.cfg.inactive_threshold
        if limit and not c.push and not c.waiting:
            w = max(e.inactive_since, c.last_active) + limit
            if not wake or w < wake:
                wake = w
        return wake

    def _tick_push(self, e: _Entry, now: int) -> int:
        c = e.c
        interest = self.server.has_interest(c.cfg.deliver_subject)
        if not interest:  # no hook tells us when a subscriber appears: look again soon
            self.busy.discard(e)
            return now + (BIND_POLL_NS if now - e.inactive_since < BIND_FAST_NS else int(IDLE_POLL_S * 1e9))
        e.inactive_since = now
        more = c.deliver_push(now, True, PUSH_BATCH)
        if more == 1:
            self.busy.add(e)
        else:
            self.busy.discard(e)
        if c.out:
            e.hb_next = now + c.cfg.idle_heartbeat if c.cfg.idle_heartbeat else 0
        elif e.hb_next and now >= e.hb_next:
            c.heartbeat(c.cfg.deliver_subject)
            e.hb_next = now + c.cfg.idle_heartbeat
        wake = more if more > 1 else 0
        if c.cfg.inactive_threshold:  # notice when the subscriber goes away
            poll = now + int(IDLE_POLL_S * 1e9)
            wake = min(wake, poll) if wake else poll
        return wake

    def _inactive(self, e: _Entry, now: int) -> bool:
        c = e.c
        limit = c.cfg.inactive_threshold
        if not limit:
            return False
        if c.push:
            if self.server.has_interest(c.cfg.deliver_subject):
                e.inactive_since = now
                return False
            return now - e.inactive_since >= limit
        if c.waiting:
            e.inactive_since = now
            return False
        last = max(e.inactive_since, c.last_active)
        return now - last >= limit

    # ---- registry ----------------------------------------------------------------------
    def _add(self, stream, c: Consumer, now: int, replica=None) -> _Entry:
        """Register a consumer; a durable one of a replicated stream (`replica`, else the
        stream's as attached) records its state in the stream's log."""
        self._ensure_task()
        e = _Entry(c, stream, bool(c.cfg.durable_name), now)
        if e.durable:
            e.replica = replica or self.js.replica(stream.name)
            if e.replica is not None and c.cfg.ack_policy != "none":
                self._gates[id(c)] = (e.replica, e)
        self.by_stream.setdefault(stream.name, {})[c.name] = e
        self._wake.set()  # e.due = 1: looked at right away
        return e

    def _delete(self, e: _Entry) -> None:
        entries = self.by_stream.get(e.stream.name, {})
        if entries.get(e.c.name) is e:
            del entries[e.c.name]
        self._gates.pop(id(e.c), None)
        e.deleted = True
        self.busy.discard(e)
        e.c.stop("Consumer Deleted")
        self.emit(e.c)
        if e.durable:
            self._remove_files(e)
        if e.stream.config.retention == "interest":
            self._release_interest(e)

    def _release_interest(self, e: _Entry) -> None:
        """Interest retention: messages only the deleted consumer still needed go away."""
        st = e.stream.store.state()
        for seq in range(max(e.c.asflr + 1, st.first_seq), st.last_seq + 1):
            self.js.stream_acked(e.stream.name, seq)

    def lookup(self, stream_name: str, name: str) -> _Entry | None:
        return self.by_stream.get(stream_name, {}).get(name)

    def new_name(self, stream_name: str) -> str:
        while True:
            n = "".join(_rng.choice(_ALNUM) for _ in range(8))
            if n not in self.by_stream.get(stream_name, {}):
                return n

    # ---- acks and flow control ---------------------------------------------------------
    def _on_ack(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        t = subject.split(".")
        if len(t) < 9:
            return
        if len(t) >= 11:  # v2 layout: $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<5 numbers>
            t = t[:2] + t[4:]
        e = self.lookup(t[2], t[3])
        if e is None:  # nats-server has no subscriber for a gone consumer's acks: no responders
            if reply and self._answers_for(t[2], reply):
                self.server.publish(reply, "", hdrs.build([("Nats-Subject", subject)], status="503"), b"")
            return
        if e.c.ack_none:  # nats-server does not listen for acks of an ack-none consumer
            if reply:
                self.server.publish(reply, "", hdrs.build([("Nats-Subject", subject)], status="503"), b"")
            return
        try:
            sseq, dseq = int(t[5]), int(t[6])
        except ValueError:
            return
        if (not reply and (not payload or payload == b"+ACK") and self._at_batch_end is not None
                and self._at_batch_end(self)):
            self._acks.append((e, sseq, dseq))  # applied together when the read ends
            return
        if self._acks:
            self._flush_acks()  # earlier plain acks of this read go first: same order as sent
        self._apply_ack(e, sseq, dseq, reply, payload)

    def _flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        now = time.time_ns()
        to_serve = self._to_serve
        stream_acked = self.js.stream_acked
        for e, sseq, dseq in acks:
            if e.deleted:
                continue
            acked = e.c.ack(sseq, now, dseq)
            if acked and e.stream.config.retention != "limits":
                for s in acked:
                    stream_acked(e.stream.name, s)
            to_serve[e] = None

    def _apply_ack(self, e: _Entry, sseq: int, dseq: int, reply: str, payload: bytes) -> None:
        c = e.c
        now = time.time_ns()
        kind, _, rest = payload.partition(b" ")
        acked: list[int] = []
        if reply and kind in (b"", b"+ACK", b"+OK", b"+TERM") and not c.delivered(sseq):
            reply = ""  # an ack of nothing delivered is not confirmed (as nats-server): see Consumer.delivered
        if kind in (b"", b"+ACK", b"+OK"):
            acked = c.ack(sseq, now, dseq)
        elif kind == b"-NAK":
            c.nak(sseq, _nak_delay(rest), now)
        elif kind == b"+WPI":
            c.progress(sseq, now)
        elif kind == b"+TERM":
            acked = c.term(sseq, now, dseq)
        elif kind == b"+NXT":
            acked = c.ack(sseq, now, dseq)
            if reply:  # nats-server runs the same checks (and status replies) as for MSG.NEXT
                try:
                    req = capi.next_request(rest, reply, c.cfg, now)
                except capi.PullRejected as ex:
                    c.out.append(Out(reply, reply, "", hdrs.build(status=ex.code, description=ex.text), b""))
                else:
                    c.add_request(req, now)
                reply = ""
        else:
            return
        if reply:
            if e.replica is not None:  # confirmed once the state with this ack has committed
                e.replica.hold(e, [Out(reply, reply, "", None, b"")])
            elif self._persisted(e):
                # a confirmed ack is durable: the answer waits for the state's fsync (the
                # timer task writes every consumer acked this way meanwhile, in one go)
                self._ack_replies.append((e, reply))
                self._wake.set()
            else:
                self.server.publish(reply, "", None, b"")
        if acked and e.stream.config.retention != "limits":
            for s in acked:
                self.js.stream_acked(e.stream.name, s)
        if self._at_batch_end is not None and self._at_batch_end(self):
            self._to_serve[e] = None  # a read full of acks serves the consumer once, at its end
        else:
            self._serve(e, now)

    def batch_end(self) -> None:
        """Server.at_batch_end hook: apply the read's plain acks, then serve the consumers
        acked during it, once each."""
        if self._acks:
            self._flush_acks()
        todo, self._to_serve = self._to_serve, {}
        self._serve_each(todo)

    def api_batch_end(self) -> None:
        """The API loop handled the requests it took together: serve the consumers that got
        pull requests among them (see _next)."""
        todo, self._pulls_to_serve = self._pulls_to_serve, {}
        self._serve_each(todo)
        for e in todo:
            if e.replica is not None:
                e.replica.consumer_changed(e)  # a request that is only waiting is replicated too

    def _serve_each(self, entries) -> None:
        now = time.time_ns()
        for e in entries:
            if not e.deleted:
                self._serve(e, now)

    def _answers_for(self, stream_name: str, reply: str) -> bool:
        """In a cluster every node hears every ack: only the node holding the stream answers
        for its gone consumers, or, for a stream no node holds, the requester's own node."""
        cluster = self.js.cluster
        if cluster is None:
            return True
        replica = self.js.replica(stream_name)
        if replica is not None:
            return replica.is_leader
        host = cluster.meta.host_of(stream_name)
        return host == cluster.me if host is not None else cluster._requester_here(reply)

    def _on_fc(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        t = subject.split(".")
        if len(t) < 5:
            return
        e = self.lookup(t[2], t[3])
        if e is not None and e.c.flow_control_reply(subject):
            self._serve(e, time.time_ns())

    # ---- API ---------------------------------------------------------------------------
    def handle(self, op: str, tokens: list[str], reply: str, hdr: bytes | None, payload: bytes) -> None:
        if op == "MSG.NEXT":
            self._next(tokens, reply, payload)
            return
        fn = capi.HANDLERS.get(op)
        if fn is None or (op in capi.NEEDS_CONSUMER and len(tokens) < 2):
            return  # nats-server does not answer unknown API subjects
        if op == "RESET" and self.lookup(tokens[0], tokens[1]) is None:
            return  # each consumer answers its own RESET subject: nobody answers for a missing one
        try:
            obj = fn(self, tokens, payload)
        except JSError as ex:
            self.js.count_api(True)
            self.reply(reply, capi.error_body(op, ex))
            return
        self.js.count_api(False)
        if op in ("CREATE", "DURABLE.CREATE") and self.js.cluster is not None:
            self.js.cluster.consumer_created(obj, reply)  # answered once its assignment applied
            return
        e = self.lookup(tokens[0], tokens[1]) if op == "RESET" and reply else None
        if e is not None and e.replica is not None:  # answered once the reset state has committed
            e.replica.hold(e, [Out(reply, reply, "", None, _enc.encode(obj))])
            return
        self.reply(reply, obj)

    def _next(self, tokens: list[str], reply: str, payload: bytes) -> None:
        if len(tokens) < 2 or not reply:
            return
        e = self.lookup(tokens[0], tokens[1])
        if e is None:  # nats-server has no subscriber for it: the client sees no responders
            self.server.publish(reply, "", hdrs.build([("Nats-Subject",
                                f"$JS.API.CONSUMER.MSG.NEXT.{tokens[0]}.{tokens[1]}")], status="503"), b"")
            return
        c = e.c
        now = time.time_ns()
        try:
            req = capi.next_request(payload, reply, c.cfg, now)
        except capi.PullRejected as ex:
            c.out.append(Out(reply, reply, "", hdrs.build(status=ex.code, description=ex.text), b""))
            self.emit(c)
            return
        # nats-server queues a pull request and signals its delivery loop, so the requests that
        # arrive together are all waiting before any is served: they take turns, one message
        # each (with priority groups the best priority goes first), instead of the first to
        # arrive taking all. Served in api_batch_end, once the API loop has handled the
        # requests it took together.
        c.add_request(req, now, self.server.has_interest, serve=False)
        if e.replica is not None:  # a new leader answers it with 409 Leadership Change
            # recorded with the entry that api_batch_end's serving proposes: one entry for
            # the request and what it delivers, not one for each
            e.replica.consumer_changed(e, propose=False)
        self._pulls_to_serve[e] = None
        self.emit(c)
        self._schedule(e, c.next_wake())


def _revive(stream, name: str, cfg: ConsumerConfig, created: int, state: dict | None, now: int) -> Consumer:
    """A consumer brought back from its stored config and state (files, or a replicated
    stream's log); with no state it starts as a new one would."""
    c = Consumer(stream.name, name, cfg, stream.store, created)
    if state is not None:
        c.load_state(state, now)
    else:
        c.start(now, capi.parse_time(cfg.opt_start_time))
    c.paused_until = capi.parse_time(cfg.pause_until)
    return c


def _nak_delay(rest: bytes) -> int:
    rest = rest.strip()
    if not rest:
        return 0
    if rest.startswith(b"{"):
        try:
            d = msgspec.json.decode(rest)
        except msgspec.DecodeError:
            return 0
        v = d.get("delay", 0) if isinstance(d, dict) else 0
        return v if isinstance(v, int) else 0
    try:
        return parse_duration_ns(rest.decode())
    except ValueError:
        return 0


def _atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.{threading.get_ident()}.tmp"  # the flush thread and shutdown may overlap
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)  # the rename itself survives a power loss only once its directory is synced
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
