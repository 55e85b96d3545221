"""The pull side of a JetStream consumer: `PullRequest` and the mixin `PullServe` that
consumer.Consumer inherits (as it inherits push flow control from pushflow.PushFlow).

It holds what happens to pull requests: queueing one (`add_request`, with the push /
MaxWaiting / no_wait answers), serving waiting requests from the stream (`serve_pull`,
with its fast path of read-ahead runs and whole rounds as one `Run`), the priority group
policies of ADR-42 (`use_priority_policy` makes `_serve_priority` shadow serve_pull for
`prioritized` and `overflow` consumers), the status answers (404 / 408 / 409 with the
pending counts), expiry and heartbeats of waiting requests (`_expire_requests`, called
from Consumer.tick), and ending them all (`server_shutdown`, `stop`).

The state lives in Consumer (consumer.py), which this mixin reads and moves:
`waiting` (the deque of PullRequests), `cfg`, `store`, `out`, `push`, `ack_none`,
`ack_prefix`, `filters`, `sseq`, `dseq`, `dsseq`, `npending`, `known_last`, `lps`,
`pending`, `low`, `redeliver`, `redeliver_at`, `adflr`, `asflr`, `paused_until`,
`last_active`, `last_delivery_ns` and `dirty`; and it calls Consumer's delivery helpers
shared with push delivery (`matches`, `_take`, `_predict`, `_render`, `_account`,
`_unread`, `_deliver_run`, `_arm`, `_ack_wait`) and PushFlow's `heartbeat`.
"""

from __future__ import annotations

from collections import deque

from broker import headers as hdrs
from broker.jetstream.consumerout import Out, _new_out

READ_AHEAD_MAX = 1024  # messages a pull consumer reads from the store in one call (a full default batch)

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


class PullServe:
    """Pull requests of consumer.Consumer: queueing, serving, priority groups, expiry and
    status answers (the state lives there; see the module docstring)."""

    # ---- pull requests ----------------------------------------------------------------
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
                wake = PullServe.serve_pull(self, now_ns, has_interest)
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


def _priority_of(r: PullRequest) -> int:
    return r.priority
