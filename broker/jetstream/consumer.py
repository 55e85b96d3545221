"""A JetStream consumer as a pure state machine (no trio, no I/O, no clock).

How this works: a consumer walks a stream's store by sequence. `sseq` is the next
stream sequence it has not yet looked at; every message it hands out gets the next
consumer sequence (`dseq`) and, unless the ack policy is `none`, an entry in
`pending` (stream seq -> [consumer seq, delivery ts, deliver count]) with a deadline
kept in a heap. Expired deadlines, NAKs and redeliveries go to `redeliver`, which
is served before new messages. Acks remove pending entries; the ack floor moves the
way nats-server moves it (only when the ack was for the consumer sequence right
above the floor; ack-all by the acked delivery's consumer sequence), because
clients and operators read those numbers from CONSUMER.INFO.

Pull consumers queue `PullRequest`s in `waiting`; push consumers deliver to the
deliver subject while it has interest. Every method that can produce traffic takes
`now_ns` and appends `Out` tuples (target subject, message subject, reply, header
block, payload) to `self.out`; the runtime (consumers.py) drains and publishes them.
A pull request served a stretch of consecutive first deliveries gets one `Run` entry
for the stretch instead (`expand()` turns it back into Outs; the three live in
consumerout.py and are re-exported here).
`next_wake(now_ns)` says when timers (ack wait, expires, heartbeats) next need a
`tick`. The same calls in the same order give the same state on every replica.

This module holds the state and what push and pull delivery share (choosing, accounting
and rendering a delivery, acks, timers, persistence) plus push delivery itself. The pull
side (PullRequest, queueing and serving requests, priority groups, request expiry and
status answers) is the mixin PullServe in pullserve.py; push flow control, heartbeats and
the rate limit are the mixin PushFlow in pushflow.py. Consumer inherits both.
"""

from __future__ import annotations

import heapq
from collections import deque

from broker import headers as hdrs
from broker import subjects as subj
from broker.jetstream.consumerconfig import ConsumerConfig, filters_of
from broker.jetstream.consumerout import Out, Run, _new_out, expand
from broker.jetstream.pullserve import NO_PRIORITY, READ_AHEAD_MAX, PullRequest, PullServe
from broker.jetstream.pushflow import FC_WINDOW_START, PushFlow

__all__ = ["Consumer", "NO_PRIORITY", "Out", "PullRequest", "Run", "expand"]

DEADLINES_SLACK = 1024  # stale ack-wait heap entries tolerated before the heap is rebuilt
LOW_SCAN_MAX = 64  # sequences scanned for the next pending one before falling back to min()
MATCH_CACHE_MAX = 4096  # subjects remembered per consumer as matching its filters or not


class Consumer(PushFlow, PullServe):
    _out = Out  # for PushFlow

    def __init__(self, stream_name: str, name: str, cfg: ConsumerConfig, store, created_ns: int) -> None:
        self.stream_name = stream_name
        self.name = name
        self.cfg = cfg
        self.store = store
        self.created_ns = created_ns
        self.filters = filters_of(cfg)
        self._match_cache: dict[str, bool] = {}
        self.push = bool(cfg.deliver_subject)
        self.ack_none = cfg.ack_policy == "none"
        self.ack_prefix = f"$JS.ACK.{stream_name}.{name}."
        self.sseq = 1
        self.dseq = 0  # last consumer sequence handed out
        self.dsseq = 0  # stream sequence of the newest first delivery
        self.adflr = 0
        self.asflr = 0
        self.pending: dict[int, list[int]] = {}  # sseq -> [dseq, ts, deliver count, ack deadline]
        self.low = 0  # smallest stream seq in pending (0 when empty): moves the ack floor in O(1)
        self.rdc: dict[int, int] = {}  # sseq -> deliver count for messages delivered more than once
        # heap of (deadline, sseq) or (deadline, first, last) for a Run; an entry is stale for
        # a sequence unless its deadline equals that sequence's pending[3]
        self.deadlines: list[tuple] = []
        self.redeliver: deque[int] = deque()
        self.redeliver_at: list[tuple[int, int]] = []  # NAK delays: heap of (ready ns, sseq)
        self.lps: deque[int] = deque()  # last-per-subject start sequences still to deliver
        self.npending = 0  # exact count of matching messages at or after sseq (plus lps queue)
        self.known_last = 0  # newest stream seq announced to us: the store may already hold newer ones
        self._store_n: int | None = None  # store message count at the last announcement (backlog only)
        self.waiting: deque[PullRequest] = deque()
        self.out: list[Out] = []
        self.last_active = 0
        self.last_ack_ns = 0
        self.last_delivery_ns = created_ns
        self.pbytes = 0  # push flow control (pushflow.py): bytes pending, the window, the outstanding request
        self.maxpb, self.fcsz, self.fc_reply, self.fc_seq = FC_WINDOW_START, 0, "", 0
        self.replay_base: tuple[int, int] | None = None  # (now_ns, msg ts) for replay original
        self.paused_until = 0
        self.use_priority_policy()
        self.rl_tokens = 0.0  # rate_limit_bps bucket (bytes) and when it was last filled
        self.rl_at = 0
        self.dirty = False  # state changed since the last persist

    # ---- start position --------------------------------------------------------------
    def start(self, now_ns: int, opt_start_ns: int = 0) -> None:
        """Set the starting position from the deliver policy (called once, at creation)."""
        st = self.store.state()
        p = self.cfg.deliver_policy
        if p == "all":
            self.sseq = st.first_seq or 1
        elif p == "new":
            self.sseq = st.last_seq + 1
        elif p == "last":
            last = max((m.seq for m in (self.store.last_msg(f) for f in (self.filters or [">"])) if m), default=0)
            self.sseq = last if last else st.last_seq + 1
        elif p == "by_start_sequence":
            self.sseq = self.cfg.opt_start_seq
        elif p == "by_start_time":
            self.sseq = self._seq_for_time(opt_start_ns, st)
        else:
            seqs: list[int] = []
            for f in self.filters:
                for s in self.store.subjects(f):
                    m = self.store.last_msg(s)
                    if m:
                        seqs.append(m.seq)
            seqs.sort()
            self.lps = deque(seqs)
            self.sseq = (seqs[-1] + 1) if seqs else st.last_seq + 1
        self.sseq = max(self.sseq, 1)
        self.dsseq = self.sseq - 1 if not self.lps else self.lps[0] - 1
        self.asflr = self.dsseq
        self.recount()

    def seq_for_time(self, t_ns: int) -> int:
        """First stream sequence stored at or after t_ns (last + 1 if none)."""
        return self._seq_for_time(t_ns, self.store.state())

    def _seq_for_time(self, t_ns: int, st) -> int:
        lo, hi = st.first_seq or 1, st.last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            m = self.store.next_msg(mid)
            if m is None or m.seq >= hi:
                hi = mid
            elif m.ts >= t_ns:
                hi = mid
            else:
                lo = m.seq + 1
        return lo

    def recount(self) -> None:
        """Recompute num_pending from the store (after start, purge or restore)."""
        st = self.store.state()
        self.known_last = st.last_seq
        self._store_n = st.messages
        if self.filters:
            n = sum(self.store.num_pending(self.sseq, f) for f in self.filters)
        else:
            n = self.store.num_pending(self.sseq)
        self.npending = n + len(self.lps)

    def matches(self, subject: str) -> bool:
        if not self.filters:
            return True
        hit = self._match_cache.get(subject)
        if hit is None:
            hit = any(f == subject or subj.match(f, subject) for f in self.filters)
            if len(self._match_cache) >= MATCH_CACHE_MAX:
                self._match_cache.clear()
            self._match_cache[subject] = hit
        return hit

    def on_stored(self, seq: int, subject: str) -> bool:
        """A message was appended; True if this consumer may now have something to deliver."""
        if seq <= self.known_last:
            return False
        if self.npending > 0:
            # With a backlog, limits may have removed messages we still counted (discard old,
            # per-subject history): when the store did not grow by exactly one, count again.
            n = self.store.state().messages
            stale = self._store_n is not None and n != self._store_n + 1
            self._store_n = n
            if stale:
                self.recount()
                return self.npending > 0
        else:
            self._store_n = None
        self.known_last = seq
        if seq >= self.sseq and self.matches(subject):
            self.npending += 1
            return True
        return False

    # ---- choosing the next message ----------------------------------------------------
    def _next_new(self):
        m = self._next_stored()
        if m is not None and m.seq > self.known_last:
            return None  # appended but not yet announced by on_stored
        return m

    def _next_stored(self):
        s = self.sseq
        if not self.lps and s <= self.known_last:  # fast path: the very next sequence matches
            m = self.store.get(s)
            if m is not None and (not self.filters or self.matches(m.subject)):
                return m
        while self.lps:
            m = self.store.get(self.lps[0])
            if m is not None:
                return m
            self.lps.popleft()
            self.npending -= 1
        if not self.filters:
            return self.store.next_msg(self.sseq)
        if len(self.filters) == 1:
            return self.store.next_msg(self.sseq, self.filters[0])
        best = None
        for f in self.filters:
            m = self.store.next_msg(self.sseq, f)
            if m is not None and (best is None or m.seq < best.seq):
                best = m
        return best

    def _ready_redelivery(self, now_ns: int):
        while self.redeliver_at and self.redeliver_at[0][0] <= now_ns:
            _, s = heapq.heappop(self.redeliver_at)
            if s in self.pending:
                self.redeliver.append(s)
        while self.redeliver:
            s = self.redeliver[0]
            if s not in self.pending:
                self.redeliver.popleft()
                continue
            m = self.store.get(s)
            if m is None:
                self.redeliver.popleft()
                self._drop_pending(s)
                continue
            return m
        return None

    def _take(self, now_ns: int):
        """The next message to deliver and whether it is a redelivery, or (None, wake_ns)."""
        if self.paused_until and now_ns < self.paused_until:
            return None, self.paused_until
        m = self._ready_redelivery(now_ns)
        if m is not None:
            self.redeliver.popleft()
            return m, True
        if not self.ack_none and len(self.pending) >= self.cfg.max_ack_pending > 0:
            return None, 0
        m = self._next_new()
        if m is None:
            return None, 0
        if self.cfg.replay_policy == "original":
            if self.replay_base is None:
                self.replay_base = (now_ns, m.ts)
            due = self.replay_base[0] + (m.ts - self.replay_base[1])
            if due > now_ns:
                return None, due
        return m, False

    def _account(self, m, redelivery: bool, now_ns: int) -> tuple[int, int, int]:
        """Record one delivery; returns (deliver count, consumer seq, pending after)."""
        self.dseq += 1
        self.dirty = True
        self.last_delivery_ns = now_ns
        if redelivery:
            p = self.pending[m.seq]  # p[0] keeps the first delivery's consumer seq (floors use it)
            p[2] += 1
            dc = p[2]
            self.rdc[m.seq] = dc
        else:
            if self.lps and self.lps[0] == m.seq:
                self.lps.popleft()
            else:
                self.sseq = m.seq + 1
            self.npending -= 1
            self.dsseq = max(self.dsseq, m.seq)
            dc = 1
            if self.ack_none:
                self.adflr = self.dseq
                self.asflr = self.dsseq
            else:
                self.pending[m.seq] = [self.dseq, m.ts, 1, 0]
                if not self.low:
                    self.low = m.seq
        if not self.ack_none:
            self._arm(m.seq, now_ns + self._ack_wait(dc))
        return dc, self.dseq, self.npending

    def _arm(self, sseq: int, deadline: int) -> None:
        self.pending[sseq][3] = deadline
        heapq.heappush(self.deadlines, (deadline, sseq))
        self._trim_deadlines()

    def _trim_deadlines(self) -> None:
        if len(self.deadlines) > 2 * len(self.pending) + DEADLINES_SLACK:
            # acked entries linger until their deadline: rebuild from what is still pending
            self.deadlines = [(p[3], s) for s, p in self.pending.items() if p[3]]
            heapq.heapify(self.deadlines)

    def _ack_wait(self, dc: int) -> int:
        bo = self.cfg.backoff
        if bo:
            return bo[min(dc - 1, len(bo) - 1)]
        return self.cfg.ack_wait

    def _deliver_run(self, to: str, run: list, now_ns: int) -> None:
        """First deliveries of run (consecutive stream sequences starting at self.sseq, all
        matching, none beyond known_last) as one Run; the state moves as k _account calls."""
        k = len(run)
        s = run[0].seq
        dseq = self.dseq + 1
        self.out.append(_new_out(Run, (to, run, self.ack_prefix + "1.", dseq, self.npending - 1)))
        last = s + k - 1
        self.dseq += k
        self.sseq = last + 1
        self.npending -= k
        self.dirty = True
        self.last_delivery_ns = now_ns
        if last > self.dsseq:
            self.dsseq = last
        if self.ack_none:
            self.adflr = self.dseq
            self.asflr = self.dsseq
            return
        deadline = now_ns + self._ack_wait(1)
        pending = self.pending
        deadlines = self.deadlines
        for x in run:
            pending[x.seq] = [dseq, x.ts, 1, deadline]
            dseq += 1
        heapq.heappush(deadlines, (deadline, s, last))  # one entry for the stretch s..last
        if not self.low:
            self.low = s
        self._trim_deadlines()

    def _render(self, to: str, m, dc: int, dseq: int, pend: int) -> Out:
        reply = f"{self.ack_prefix}{dc}.{m.seq}.{dseq}.{m.ts}.{pend}"
        if self.cfg.headers_only:
            size = str(len(m.data))
            if m.hdr:
                hdr = m.hdr[:-2] + b"Nats-Msg-Size: " + size.encode() + b"\r\n\r\n"
            else:
                hdr = hdrs.build([("Nats-Msg-Size", size)])
            return Out(to, m.subject, reply, hdr, b"")
        return Out(to, m.subject, reply, m.hdr, m.data)

    def _predict(self, m, redelivery: bool) -> tuple[int, int, int]:
        """(deliver count, consumer seq, pending after) the next delivery of m would get."""
        if redelivery:
            return self.pending[m.seq][2] + 1, self.dseq + 1, self.npending
        return 1, self.dseq + 1, self.npending - 1

    # ---- push delivery -------------------------------------------------------------
    def deliver_push(self, now_ns: int, has_interest: bool, limit: int = 256) -> int:
        """Deliver up to `limit` messages to the deliver subject; returns a wake time or 0."""
        if not has_interest:
            return 0
        self.last_active = now_ns
        cfg = self.cfg
        to = cfg.deliver_subject
        # Runs of first deliveries (same result as the per-message loop below) when nothing
        # needs a per-message decision: no rate limit, header rewriting, replay pacing,
        # filter, redelivery, last-per-subject queue or pause.
        fast = not (cfg.rate_limit_bps or cfg.headers_only or self.filters or cfg.replay_policy == "original")
        left = limit
        while left > 0:
            if cfg.flow_control and self.pbytes > self.maxpb:
                return 0  # stalled until the client answers flow control
            s = self.sseq
            if (fast and s <= self.known_last and not self.lps and not self.redeliver
                    and (not self.redeliver_at or self.redeliver_at[0][0] > now_ns)
                    and not (self.paused_until and now_ns < self.paused_until)):
                k = min(left, self.known_last - s + 1, READ_AHEAD_MAX)
                if not self.ack_none and cfg.max_ack_pending > 0:
                    k = min(k, cfg.max_ack_pending - len(self.pending))
                run = self.store.get_run(s, k) if k > 0 else None
                if run:
                    if cfg.flow_control:
                        run = self._fc_cut(to, run)
                    self._deliver_run(to, run, now_ns)
                    left -= len(run)
                    if cfg.flow_control and not self.fc_reply and self.pbytes > self.maxpb // 2:
                        self._send_fc(now_ns)
                    continue
            left -= 1
            m, x = self._take(now_ns)
            if m is None:
                return x
            o = self._render(to, m, *self._predict(m, x))
            if self.cfg.rate_limit_bps:
                wait = self._rate_wait(now_ns, len(o.payload) + (len(o.hdr) if o.hdr else 0))
                if wait:
                    self._unread(m, x)
                    return wait
            self._account(m, x, now_ns)
            self.out.append(o)
            if self.cfg.flow_control:
                self._fc_count(len(to) + len(o.reply) + len(o.payload) + (len(o.hdr) if o.hdr else 0), now_ns)
        return 1  # more may be ready: call again

    def _unread(self, m, redelivery: bool) -> None:
        if redelivery:
            self.redeliver.appendleft(m.seq)

    # ---- acks ------------------------------------------------------------------------
    def ack(self, sseq: int, now_ns: int, dseq: int = 0) -> list[int]:
        """Process a positive ack of stream seq `sseq` (delivered as consumer seq `dseq`, from the
        ack subject); returns the stream sequences newly acked (for retention)."""
        self.last_active = now_ns
        if self.ack_none or not self.delivered(sseq):
            return []
        if self.cfg.ack_policy == "all":
            return self._ack_all(sseq, dseq or self._dseq_of(sseq), now_ns)
        p = self.pending.get(sseq)
        if p is None:
            return []
        self._pop_pending(sseq)
        self.rdc.pop(sseq, None)
        self.dirty = True
        self.last_ack_ns = now_ns
        self._move_floor(sseq, p[0])
        return [sseq]

    def delivered(self, sseq: int) -> bool:
        """Whether stream seq `sseq` is below the delivery pointer (handed out or passed over).
        An ack above it names no delivery this state knows of (a stale reply subject, e.g. one
        held across a crash that lost the delivered state, which is written lazily): it changes
        nothing, and the message is still to be delivered. nats-server ignores such an ack
        before touching any state, floors included, and sends no reply to it (processAckMsg
        returns false, processAck skips the reply): a confirmation would promise that the
        message does not come back."""
        return sseq < self.sseq

    def _dseq_of(self, sseq: int) -> int:
        p = self.pending.get(sseq)
        return p[0] if p is not None else 0

    def _ack_all(self, sseq: int, dseq: int, now_ns: int) -> list[int]:
        # Acks at or below the floor (by consumer or stream seq) change nothing, as in nats-server.
        if dseq <= self.adflr or sseq <= self.asflr:
            return []
        done = sorted(s for s in self.pending if s <= sseq)
        for s in done:
            self._pop_pending(s)
            self.rdc.pop(s, None)
        self.adflr, self.asflr = dseq, sseq
        self.dirty = True
        self.last_ack_ns = now_ns
        return done

    def _move_floor(self, sseq: int, dseq: int) -> None:
        """After pending `sseq` (first delivered as `dseq`) left: floors move only when it was
        the next consumer sequence above the floor."""
        if not self.pending:
            self.adflr = self.dseq
            self.asflr = self.dsseq
        elif dseq == self.adflr + 1:
            self.adflr, self.asflr = dseq, sseq
            low = self.low
            if low > sseq:
                self.adflr, self.asflr = self.pending[low][0] - 1, low - 1

    def _pop_pending(self, sseq: int) -> list[int]:
        p = self.pending.pop(sseq)
        if sseq == self.low:
            self.low = 0
            if self.pending:
                s, top = sseq + 1, sseq + LOW_SCAN_MAX
                while s <= top and s not in self.pending:
                    s += 1
                self.low = s if s <= top else min(self.pending)
        return p

    def _reset_low(self) -> None:
        self.low = min(self.pending) if self.pending else 0

    def _drop_pending(self, sseq: int) -> None:
        if sseq in self.pending:
            self._pop_pending(sseq)
            self.dirty = True

    def nak(self, sseq: int, delay_ns: int, now_ns: int) -> None:
        self.last_active = now_ns
        if sseq not in self.pending:
            return
        if delay_ns > 0:
            heapq.heappush(self.redeliver_at, (now_ns + delay_ns, sseq))
        elif sseq not in self.redeliver:
            self.redeliver.append(sseq)
        self.pending[sseq][3] = 0  # no ack-wait redelivery while it waits in the queue

    def progress(self, sseq: int, now_ns: int) -> None:
        self.last_active = now_ns
        p = self.pending.get(sseq)
        if p is not None:
            self._arm(sseq, now_ns + self._ack_wait(p[2]))

    def term(self, sseq: int, now_ns: int, dseq: int = 0) -> list[int]:
        """Stop redelivering: acknowledged as far as floors and retention are concerned."""
        return self.ack(sseq, now_ns, dseq)

    # ---- timers ----------------------------------------------------------------------
    def tick(self, now_ns: int) -> None:
        """Expire ack waits (queue redeliveries), pull requests and send due heartbeats."""
        md = self.cfg.max_deliver
        while self.deadlines and self.deadlines[0][0] <= now_ns:
            entry = heapq.heappop(self.deadlines)
            d = entry[0]
            for s in (entry[1],) if len(entry) == 2 else range(entry[1], entry[2] + 1):
                p = self.pending.get(s)
                if p is None or p[3] != d:
                    continue  # acked, NAKed, redelivered or extended since
                if md > 0 and p[2] >= md:
                    self._pop_pending(s)
                    self.dirty = True
                    continue
                p[3] = 0
                if s not in self.redeliver:
                    self.redeliver.append(s)
        if self.waiting:
            self._expire_requests(now_ns)

    def next_wake(self) -> int:
        """Earliest absolute ns at which `tick` has work (0 = none)."""
        ts = []
        if self.deadlines:
            ts.append(self.deadlines[0][0])
        if self.redeliver_at:
            ts.append(self.redeliver_at[0][0])
        for r in self.waiting:
            if r.expires:
                ts.append(r.expires)
            if r.hb:
                ts.append(r.next_hb)
        return min(ts) if ts else 0

    def reset(self, seq: int) -> range:
        """CONSUMER.RESET (ADR-60): forget every delivery and start again at stream seq `seq`, as
        a fresh consumer whose floors sit just below it (consumer sequences restart at 1).
        Returns the stream sequences at or above the old ack floor now below the new one (for
        interest/workqueue retention); validation is the API's job."""
        st = self.store.state()
        passed = range(max(self.asflr + 1, st.first_seq), min(seq - 1, st.last_seq) + 1)
        self.pending.clear()
        self.low = 0
        self.rdc.clear()
        self.deadlines.clear()
        self.redeliver.clear()
        self.redeliver_at.clear()
        self.lps.clear()
        self.sseq = seq
        self.dseq = self.adflr = 0
        self.dsseq = self.asflr = seq - 1
        self.last_delivery_ns = self.last_ack_ns = 0
        self.replay_base = None
        self.dirty = True
        self.recount()
        return passed

    def purged(self) -> None:
        """Messages were removed from the stream (purge, delete, expiry): move past them the
        way nats-server does, so delivered/ack floors read the same afterwards."""
        first = self.store.state().first_seq
        if first > self.sseq:
            self.sseq = first
            self.dsseq = max(self.dsseq, first - 1)
        if first - 1 > self.asflr:
            self.asflr = first - 1
            self._forget([s for s in self.pending if s <= self.asflr])
        self._forget([s for s in self.pending if self.store.get(s) is None])
        self.lps = deque(s for s in self.lps if self.store.get(s) is not None)
        if not self.pending:
            self.adflr, self.asflr = self.dseq, self.sseq - 1
        self.dirty = True
        self.recount()

    def _forget(self, seqs: list[int]) -> None:
        for s in seqs:
            p = self.pending.pop(s)
            self.rdc.pop(s, None)
            self.adflr = max(self.adflr, p[0])
        self._reset_low()

    # ---- info and persistence ---------------------------------------------------------
    def num_redelivered(self) -> int:
        return len(self.rdc)

    def state_dict(self) -> dict:
        return {"sseq": self.sseq, "dseq": self.dseq, "dsseq": self.dsseq, "adflr": self.adflr,
                "asflr": self.asflr, "pending": [[s, p[0], p[1], p[2]] for s, p in self.pending.items()],
                "rdc": [[s, c] for s, c in self.rdc.items()], "lps": list(self.lps),
                "last_active": self.last_active}

    def load_state(self, st: dict, now_ns: int) -> None:
        """Restore persisted state; every pending message is redelivered after ack_wait."""
        self.sseq, self.dseq, self.dsseq = st["sseq"], st["dseq"], st["dsseq"]
        self.adflr, self.asflr = st["adflr"], st["asflr"]
        self.pending = {s: [d, ts, dc, 0] for s, d, ts, dc in sorted(st["pending"])}
        self._reset_low()
        self.rdc = {s: c for s, c in st["rdc"]}
        self.lps = deque(st.get("lps", []))
        self.last_active = st.get("last_active", 0)
        for s, p in self.pending.items():
            self._arm(s, now_ns + self._ack_wait(p[2]))
        self.recount()
