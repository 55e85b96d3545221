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
for the stretch instead (`expand()` turns it back into Outs).
`next_wake(now_ns)` says when timers (ack wait, expires, heartbeats) next need a
`tick`. The same calls in the same order give the same state on every replica.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import NamedTuple

from broker import headers as hdrs
from broker import subjects as subj
from broker.jetstream.consumerconfig import ConsumerConfig, filters_of

FC_MAX_PENDING_BYTES = 2 * 1024 * 1024  # flow-control window; a request goes out at half of it
DEADLINES_SLACK = 1024  # stale ack-wait heap entries tolerated before the heap is rebuilt
LOW_SCAN_MAX = 64  # sequences scanned for the next pending one before falling back to min()
MATCH_CACHE_MAX = 4096  # subjects remembered per consumer as matching its filters or not
READ_AHEAD_MAX = 1024  # messages a pull consumer reads from the store in one call (a full default batch)


class Out(NamedTuple):
    to: str  # the subject whose subscribers get it (deliver subject / request inbox)
    subject: str  # subject shown to the client (the stored message's subject, or `to` for status)
    reply: str
    hdr: bytes | None
    payload: bytes


_new_out = tuple.__new__  # Out without the namedtuple constructor's Python-level call


class Run(NamedTuple):
    """First deliveries of consecutive stream messages to one pull request, in one entry:
    msgs[i] goes to `to` with reply `{prefix}{seq}.{dseq + i}.{ts}.{pending - i}` (the
    ack subject of a first delivery; prefix ends with the deliver count `1.`). The runtime
    renders the frames straight from it, with no per-message Out or reply string."""
    to: str
    msgs: list
    prefix: str
    dseq: int
    pending: int

    def outs(self) -> list[Out]:
        p = self.prefix
        return [Out(self.to, m.subject, f"{p}{m.seq}.{self.dseq + i}.{m.ts}.{self.pending - i}", m.hdr, m.data)
                for i, m in enumerate(self.msgs)]


def expand(out: list) -> list[Out]:
    """`out` with every Run replaced by the Outs it stands for."""
    if not any(type(o) is Run for o in out):
        return out
    res: list[Out] = []
    for o in out:
        if type(o) is Run:
            res.extend(o.outs())
        else:
            res.append(o)
    return res


NO_PRIORITY = 2**31 - 1  # a pull request without a JSON body is served after every prioritized one


class PullRequest:
    __slots__ = ("reply", "batch", "max_bytes", "expires", "no_wait", "hb", "next_hb", "sent",
                 "priority", "min_pending", "min_ack_pending")

    def __init__(self, reply: str, batch: int, max_bytes: int, expires: int, no_wait: bool, hb: int,
                 now_ns: int) -> None:
        self.reply = reply
        self.batch = batch  # messages still wanted
        self.max_bytes = max_bytes  # bytes still allowed (0 = unlimited)
        self.expires = expires  # absolute ns, 0 = never
        self.no_wait = no_wait
        self.hb = hb
        self.next_hb = now_ns + hb if hb else 0
        self.sent = 0
        self.priority = 0  # priority groups (ADR-42): 0..9, lower first (prioritized policy)
        self.min_pending = self.min_ack_pending = 0  # overflow policy thresholds


class Consumer:
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
        self.pbytes = 0  # push flow control: bytes sent since the last answered FC
        self.fc_reply = ""
        self.fc_seq = 0
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
            if self.fc_reply and self.pbytes >= FC_MAX_PENDING_BYTES:
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
                        run = self._fc_cut(run)
                    self._deliver_run(to, run, now_ns)
                    left -= len(run)
                    if cfg.flow_control and not self.fc_reply and self.pbytes > FC_MAX_PENDING_BYTES // 2:
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
                self.pbytes += len(o.subject) + len(o.reply) + len(o.payload) + (len(o.hdr) if o.hdr else 0)
                if not self.fc_reply and self.pbytes > FC_MAX_PENDING_BYTES // 2:
                    self._send_fc(now_ns)
        return 1  # more may be ready: call again

    def _fc_cut(self, run: list) -> list:
        """The part of run that push flow control lets out before its next request: up to
        and including the message that takes pbytes over half the window (counted as the
        per-message path counts it: subject, reply, header and payload bytes)."""
        prefix = len(self.ack_prefix) + 5  # deliver count `1` and four dots of the ack reply
        dseq, pend = self.dseq + 1, self.npending - 1
        threshold = FC_MAX_PENDING_BYTES // 2
        pbytes = self.pbytes
        for i, m in enumerate(run):
            pbytes += (len(m.subject) + prefix + len(str(m.seq)) + len(str(dseq + i)) + len(str(m.ts))
                       + len(str(pend - i)) + len(m.data) + (len(m.hdr) if m.hdr else 0))
            if pbytes >= FC_MAX_PENDING_BYTES if self.fc_reply else pbytes > threshold:
                run = run[:i + 1]  # the per-message path stops (or sends its request) right here
                break
        self.pbytes = pbytes
        return run

    def _rate_wait(self, now_ns: int, size: int) -> int:
        """Token bucket for rate_limit_bps (bits/s): 0 to send `size` bytes now, else when."""
        rate = self.cfg.rate_limit_bps / 8  # bytes per second
        cap = max(rate, size)
        if self.rl_at:
            self.rl_tokens = min(cap, self.rl_tokens + (now_ns - self.rl_at) * rate / 1e9)
        else:
            self.rl_tokens = cap
        self.rl_at = now_ns
        if self.rl_tokens >= size:
            self.rl_tokens -= size
            return 0
        return now_ns + int((size - self.rl_tokens) * 1e9 / rate) + 1

    def _send_fc(self, now_ns: int) -> None:
        self.fc_seq += 1
        self.fc_reply = f"$JS.FC.{self.stream_name}.{self.name}.{self.fc_seq}"
        to = self.cfg.deliver_subject
        self.out.append(Out(to, to, self.fc_reply, hdrs.build(status="100", description="FlowControl Request"),
                            b""))

    def flow_control_reply(self, subject: str) -> bool:
        """The client answered a flow-control request; True if delivery may resume."""
        if subject == self.fc_reply:
            self.fc_reply = ""
            self.pbytes = 0
            return True
        return False

    def heartbeat(self, to: str) -> None:
        items = [("Nats-Last-Consumer", str(self.dseq)), ("Nats-Last-Stream", str(self.dsseq))]
        if self.fc_reply:
            items.append(("Nats-Consumer-Stalled", self.fc_reply))
        self.out.append(Out(to, to, "", hdrs.build(items, status="100", description="Idle Heartbeat"), b""))

    # ---- pull requests ---------------------------------------------------------------
    def add_request(self, req: PullRequest, now_ns: int, has_interest=None, serve: bool = True) -> None:
        """Queue a pull request (already validated) and serve what is available now (unless
        `serve` is False: the caller serves the consumer later, e.g. when the client read ends)."""
        self.last_active = now_ns
        if self.push:
            self._status(req.reply, "409", "Consumer is push based")
            return
        if len(self.waiting) >= self.cfg.max_waiting:
            if not req.hb:
                self._status(req.reply, "409", "Exceeded MaxWaiting")
            return
        if req.no_wait:
            avail = self.npending + len(self.redeliver) + sum(1 for t, _ in self.redeliver_at if t <= now_ns)
            if not avail and not req.expires:
                self._status(req.reply, "404", "No Messages")
                return
            if avail and avail < sum(r.batch for r in self.waiting):
                self._status(req.reply, "408", "Requests Pending")  # older requests will take them all
                return
        self.waiting.append(req)
        if serve:
            self.serve_pull(now_ns, has_interest)

    def _has_available(self, now_ns: int) -> bool:
        """Messages exist for this consumer (even if max_ack_pending holds them back: a no_wait
        request then waits for acks instead of getting 404, as with nats-server)."""
        if self.redeliver or (self.redeliver_at and self.redeliver_at[0][0] <= now_ns):
            return True
        return self.npending > 0

    def _status(self, to: str, code: str, text: str, pending: PullRequest | None = None) -> None:
        items = None
        if pending is not None:
            items = [("Nats-Pending-Messages", str(pending.batch)), ("Nats-Pending-Bytes", str(pending.max_bytes))]
        self.out.append(Out(to, to, "", hdrs.build(items, status=code, description=text), b""))

    def serve_pull(self, now_ns: int, has_interest=None) -> int:
        """Hand available messages to waiting requests; returns a wake time for replay, or 0."""
        wake = 0
        checked: set[int] = set()
        cfg = self.cfg
        # Fast path (same result as _take/_predict/_render/_account for a first delivery of the
        # very next stream sequence): nothing paused, no replay pacing, no header rewriting.
        fast = not cfg.headers_only and cfg.replay_policy != "original" and not (
            self.paused_until and now_ns < self.paused_until)
        get = self.store.get
        ahead: list = []  # unfiltered: the next stored messages, read as one run (get_run)
        ai = 0
        ack_none = self.ack_none
        filters = self.filters
        max_ack = cfg.max_ack_pending
        prefix1 = self.ack_prefix + "1."
        out = self.out
        waiting = self.waiting
        sent = 0
        ts_last = -1  # messages stored in one batch share a timestamp: format it once
        ts_str = ""
        size = 0
        while waiting:
            req = waiting[0]
            if has_interest is not None and id(req) not in checked:
                if not has_interest(req.reply):  # the requester went away: drop it silently
                    waiting.popleft()
                    continue
                checked.add(id(req))
            m = None
            s = self.sseq
            if (fast and s <= self.known_last and not self.lps and not self.redeliver
                    and (not self.redeliver_at or self.redeliver_at[0][0] > now_ns)
                    and (ack_none or not len(self.pending) >= max_ack > 0)):
                if filters:
                    m = get(s)
                    if m is not None and not self.matches(m.subject):
                        m = None
                else:
                    if ai >= len(ahead) or ahead[ai].seq != s:
                        want = min(self.known_last - s + 1, READ_AHEAD_MAX, sum(r.batch for r in waiting))
                        ahead = self.store.get_run(s, want)
                        ai = 0
                    if ai < len(ahead):
                        m = ahead[ai]
                        ai += 1
            if m is not None:
                # Deliver m; while this is the only request waiting, keep handing it the next
                # read-ahead messages (nothing checked at the top of the loop can change meanwhile).
                to = req.reply
                single = len(waiting) == 1
                if ai and ahead[ai - 1] is m and all(r.reply == to and not r.max_bytes for r in waiting):
                    # Waiting requests take turns, one message each (one request: it takes what
                    # it can). Sharing one reply subject (so one interest check) and without
                    # byte limits, whole rounds give the same frames as one Run: `rounds`
                    # messages for each of the len(waiting) requests.
                    avail = min(len(ahead) - ai + 1, self.known_last - s + 1)
                    if not ack_none and max_ack > 0:
                        avail = min(avail, max_ack - len(self.pending))
                    rounds = min(min(r.batch for r in waiting), avail // len(waiting))
                    if rounds >= 1:
                        k = rounds * len(waiting)
                        run = ahead if (ai == 1 and k == len(ahead)) else ahead[ai - 1:ai - 1 + k]
                        self._deliver_run(to, run, now_ns)
                        ai += k - 1
                        sent += k
                        for r in waiting:
                            r.batch -= rounds
                            r.sent += rounds
                            if r.hb:
                                r.next_hb = now_ns + r.hb
                        if any(r.batch <= 0 for r in waiting):
                            keep = [r for r in waiting if r.batch > 0]  # order kept, as turns leave it
                            waiting.clear()
                            waiting.extend(keep)
                        continue
                while True:
                    dseq = self.dseq + 1
                    pend = self.npending - 1
                    hdr = m.hdr
                    if m.ts != ts_last:
                        ts_last = m.ts
                        ts_str = str(ts_last)
                    o = _new_out(Out, (to, m.subject, f"{prefix1}{s}.{dseq}.{ts_str}.{pend}", hdr, m.data))
                    if req.max_bytes:
                        size = len(o.subject) + len(o.reply) + len(o.payload) + (len(hdr) if hdr else 0)
                        if size > req.max_bytes:
                            waiting.popleft()
                            self._status(to, "409", "Message Size Exceeds MaxBytes", req)
                            break
                        req.max_bytes -= size
                    self.dseq = dseq
                    self.sseq = s + 1
                    self.npending = pend
                    if s > self.dsseq:
                        self.dsseq = s
                    if ack_none:
                        self.adflr = dseq
                        self.asflr = self.dsseq
                    else:
                        self.pending[s] = [dseq, m.ts, 1, 0]
                        if not self.low:
                            self.low = s
                        self._arm(s, now_ns + self._ack_wait(1))
                    out.append(o)
                    sent += 1
                    req.batch -= 1
                    req.sent += 1
                    if req.hb:
                        req.next_hb = now_ns + req.hb
                    if req.batch <= 0:
                        waiting.popleft()
                        break
                    if not single:
                        waiting.rotate(-1)
                        break
                    s += 1
                    if s > self.known_last or (not ack_none and len(self.pending) >= max_ack > 0):
                        break
                    if ai < len(ahead) and ahead[ai].seq == s:
                        m = ahead[ai]
                        ai += 1
                    else:
                        break  # the top of the loop reads the next run
                continue
            else:
                m, x = self._take(now_ns)
                if m is None:
                    wake = x
                    break
                dc, dseq, pend = self._predict(m, x)
                o = self._render(req.reply, m, dc, dseq, pend)
                size = len(o.subject) + len(o.reply) + len(o.payload) + (len(o.hdr) if o.hdr else 0)
                if req.max_bytes and size > req.max_bytes:
                    self._unread(m, x)
                    waiting.popleft()
                    self._status(req.reply, "409", "Message Size Exceeds MaxBytes", req)
                    continue
                self._account(m, x, now_ns)
                out.append(o)
            req.batch -= 1
            req.sent += 1
            if req.max_bytes:
                req.max_bytes -= size
            if req.hb:
                req.next_hb = now_ns + req.hb
            if req.batch <= 0:
                waiting.popleft()
            elif len(waiting) > 1:
                waiting.rotate(-1)
        if sent:
            self.dirty = True
            self.last_delivery_ns = now_ns
        self._finish_no_wait(now_ns)
        return wake

    def _unread(self, m, redelivery: bool) -> None:
        if redelivery:
            self.redeliver.appendleft(m.seq)

    def _finish_no_wait(self, now_ns: int) -> None:
        if not self.waiting or self._has_available(now_ns):
            return
        if not self.ack_none and len(self.pending) >= self.cfg.max_ack_pending > 0:
            return  # held back by max_ack_pending: requests wait for acks, no 404 yet
        keep: deque[PullRequest] = deque()
        for r in self.waiting:
            if r.no_wait and (r.sent or not r.expires):
                self._status(r.reply, "404", "No Messages")
            else:
                keep.append(r)
        self.waiting = keep

    # ---- acks ------------------------------------------------------------------------
    def ack(self, sseq: int, now_ns: int, dseq: int = 0) -> list[int]:
        """Process a positive ack of stream seq `sseq` (delivered as consumer seq `dseq`, from the
        ack subject); returns the stream sequences newly acked (for retention)."""
        self.last_active = now_ns
        if self.ack_none:
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

    def _expire_requests(self, now_ns: int) -> None:
        keep: deque[PullRequest] = deque()
        for r in self.waiting:
            if r.expires and r.expires <= now_ns:
                self._status(r.reply, "408", "Request Timeout", r)
                continue
            if r.hb and r.next_hb <= now_ns:
                self.heartbeat(r.reply)
                r.next_hb = now_ns + r.hb
            keep.append(r)
        self.waiting = keep

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

    # ---- priority groups (ADR-42) -----------------------------------------------------
    def use_priority_policy(self) -> None:
        """Pick the pull serving for cfg.priority_policy: `prioritized` and `overflow` consumers
        hand out one message at a time through `_serve_priority` (an instance attribute that
        shadows serve_pull, so other consumers keep the plain method and its fast path)."""
        if self.cfg.priority_policy in ("prioritized", "overflow"):
            self.serve_pull = self._serve_priority
        else:
            self.__dict__.pop("serve_pull", None)

    def _serve_priority(self, now_ns: int, has_interest=None) -> int:
        """serve_pull for priority policies, in nats-server's order. prioritized: requests are
        kept sorted by priority (stable, so FIFO within a level); each message goes to the first
        one, which then moves behind the others of its level. overflow: the first request whose
        min_pending / min_ack_pending threshold is met (or that has none) gets the message; the
        ones skipped move to the back, and so does the served one if it wants more."""
        prioritized = self.cfg.priority_policy == "prioritized"
        full = self.waiting
        if prioritized:
            full = deque(sorted(full, key=_priority_of))
        wake = 0
        try:
            while full:
                i = 0
                if not prioritized:
                    redelivery = bool(self.redeliver) or bool(self.redeliver_at and
                                                              self.redeliver_at[0][0] <= now_ns)
                    npc = self.npending + (1 if redelivery else 0)
                    i = next((k for k, r in enumerate(full) if self._overflow_ok(r, npc)), -1)
                    if i < 0:
                        break
                    full.rotate(-i)  # the skipped ones go to the back, as nats-server cycles them
                req = full.popleft()
                batch, dseq, limited = req.batch, self.dseq, req.max_bytes > 0
                req.batch = 1
                self.waiting = one = deque((req,))
                wake = Consumer.serve_pull(self, now_ns, has_interest)
                self.waiting = full
                served = self.dseq != dseq
                req.batch = batch - 1 if served else batch
                if not served:
                    if one:  # nothing to deliver now: everyone keeps their place
                        full.appendleft(req)
                        full.rotate(i)
                        break
                    continue  # answered (max bytes, no_wait) or its requester is gone
                if req.batch > 0 and not (limited and req.max_bytes <= 0):  # max_bytes used up: done
                    if prioritized:
                        k = next((k for k, r in enumerate(full) if r.priority > req.priority), len(full))
                        full.insert(k, req)
                    else:
                        full.append(req)
        finally:
            self.waiting = full
        self._finish_no_wait(now_ns)
        return wake

    def _overflow_ok(self, r: PullRequest, npc: int) -> bool:
        if not r.min_pending and not r.min_ack_pending:
            return True
        return bool((r.min_pending and r.min_pending <= npc) or
                    (r.min_ack_pending and r.min_ack_pending <= len(self.pending)))

    def server_shutdown(self) -> None:
        """The server is going down: tell every waiting pull request (once per reply subject, as
        nats-server keys them by reply) with `409 Server Shutdown` and what it still wanted, so
        clients retry elsewhere or after the restart instead of waiting for their expiry."""
        seen: set[str] = set()
        for r in self.waiting:
            if r.reply not in seen:
                seen.add(r.reply)
                self._status(r.reply, "409", "Server Shutdown", r)
        self.waiting.clear()

    def stop(self, reason: str = "Consumer Deleted") -> None:
        for r in self.waiting:
            self._status(r.reply, "409", reason)
        self.waiting.clear()

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


def _priority_of(r: PullRequest) -> int:
    return r.priority
