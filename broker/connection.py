"""One client connection: a trio nursery with a reader, a writer and a pinger.

The reader feeds socket bytes to the sans-IO Parser and applies the operations in
plain (non-async) code, so each batch is atomic with respect to other tasks. Every
byte bound for this client (MSG frames from any publisher, PONG, -ERR) is appended to
one outbound bytearray; the writer task sends whatever accumulated in one send_all.
A publisher therefore never waits on this client: if the buffer passes max_pending,
or one write takes longer than write_deadline, the client is a slow consumer and is
closed, exactly as nats-server does.
"""

from __future__ import annotations

import json
import logging
import os
import time

import trio

from broker.optrace import trace_ops
from cluster.outbuf import write_some
from broker.protocol import (OP_CONNECT, OP_INFO, OP_PING, OP_PONG, OP_PUB, OP_RUN, OP_SUB, OP_UNSUB,
                             Parser, err_frame, expand_run, run_bodies)
from broker.subjects import valid_literal, valid_subject
from broker.sublist import Subscription

log = logging.getLogger("broker")

READ_CHUNK_BYTES = 65536
READ_CHUNK_MAX = 262144  # reads that fill the buffer double it up to this: a long read is a
#                          long run, so bulk traffic costs fewer wakeups and writes per message
FIRST_PING_S = 2.0

_PONG = b"PONG\r\n"
_PING = b"PING\r\n"
_OK = b"+OK\r\n"


def render_bodies(lines: list, bodies: list) -> bytes:
    """n messages for one connection: bodies is [b"", payload_1 CRLF, ...], lines the
    MSG lines of the connection's matching subscriptions in delivery order. One line is
    one C-level join; several repeat each message under every line in turn, as delivering
    message by message would."""
    if len(lines) == 1:
        return lines[0].join(bodies)
    return b"".join([x for b in bodies[1:] for line in lines for x in (line, b)])


def _make_plan(m, subject: bytes) -> tuple:
    """(subject, [(client subscription, its connection, `MSG subj sid ` prefix)], route
    peers, internal subscriptions) for ClientConn._plain_targets; the list is None when a
    local subscriber is neither a client nor internal (route_msg decides then)."""
    subs: list | None = []
    callbacks: list | tuple = []
    for sub in m.plain:
        kind = sub.conn.kind
        if kind == "Client":
            subs.append((sub, sub.conn, b"MSG %b %b " % (subject, sub.sid)))
        elif kind == "Internal":
            callbacks.append(sub)
        else:
            subs = None
            break
    return subject, subs, m.peers, callbacks or ()  # (a Match's lists never change)


class ClientConn:
    is_route = False
    local_only = False
    kind = "Client"

    def __init__(self, server, stream, cid: int, ip: str, port: int):
        self.server = server
        self.stream = stream
        self.cid = cid
        self.ip = ip
        self.port = port
        self.start = time.time()
        self.last_activity = self.start
        opts = server.opts
        self.parser = Parser(opts.max_control_line, opts.max_payload)
        self.max_pending = opts.max_pending
        self.out = bytearray()
        self._wake = trio.Event()
        self._kicked = False
        self._writing = False
        try:  # plain TCP: the reader may write straight to the socket (see flush_now)
            self._fd = stream.socket.fileno() if server.ssl_context is None else -1
        except AttributeError:
            self._fd = -1
        self._closing = False
        self.closed = False
        self.close_reason = ""
        self._cancel: trio.CancelScope | None = None
        # CONNECT state
        self.connected = False
        self._fast_pub = False
        self._connected_evt = trio.Event()
        self.verbose = False
        self.pedantic = False
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.protocol = 0
        self.name = ""
        self.lang = ""
        self.version = ""
        self.user = ""
        self.subs: dict[bytes, Subscription] = {}
        self.pings_out = 0
        self._first_pong_sent = False
        self.rtt_s = 0.0
        self._ping_sent_at = 0.0
        # counters
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_bytes = 0
        self.gone_msgs = 0  # messages out are counted per subscription (sub.delivered): those of subs gone

    @property
    def out_msgs(self) -> int:
        return self.gone_msgs + sum(s.delivered for s in self.subs.values())

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self, info_line: bytes) -> None:
        server = self.server
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                first = server.ssl_context is not None and server.opts.tls_handshake_first
                if not first:
                    await self.stream.send_all(info_line)
                if server.ssl_context is not None:
                    ssl_stream = trio.SSLStream(self.stream, server.ssl_context, server_side=True)
                    with trio.move_on_after(server.opts.tls_timeout_s) as cs:
                        await ssl_stream.do_handshake()
                    if cs.cancelled_caught:
                        raise trio.BrokenResourceError("TLS handshake timeout")
                    self.stream = ssl_stream
                    if first:  # handshake_first: the INFO comes over TLS, after the handshake
                        await self.stream.send_all(info_line)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._pinger)
                if server.auth_required:
                    nursery.start_soon(self._auth_timer)
                await self._reader()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as eg:
            if not self.close_reason:
                self.close_reason = f"Client Closed ({eg.exceptions[0].__class__.__name__})"
        finally:
            self.closed = True
            server.client_closed(self)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await self.stream.aclose()

    async def _reader(self) -> None:
        """Plain TCP reads the socket directly and waits only when nothing is there; a read
        right after a wait is handled at once, without the extra scheduling pass trio's
        SocketStream makes after every read (a request is answered one run-loop pass
        sooner), and a read that did not wait yields first, so a busy connection never
        starves the others. TLS goes through the SSLStream."""
        fd = self._fd
        receive = self.stream.receive_some if fd < 0 else None
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        waited = True
        drained = False
        size = READ_CHUNK_BYTES
        while not self._closing:
            if receive is not None:
                data = await receive(size)
            else:
                if drained:  # the last read was short: wait, not a read that fails with EAGAIN
                    await wait_readable(fd)
                    waited = True
                try:
                    data = os.read(fd, size)
                except BlockingIOError:
                    await wait_readable(fd)
                    waited = True
                    drained = False
                    continue
                except OSError as e:
                    raise trio.BrokenResourceError(f"socket read failed: {e}") from e
                if not waited:
                    await checkpoint()
                waited = False
            if not data:
                self.close_reason = self.close_reason or "Client Closed"
                self._cancel.cancel()
                return
            drained = len(data) < size
            if not drained:
                if size < READ_CHUNK_MAX:
                    size *= 2
            elif size > READ_CHUNK_BYTES and len(data) < size // 4:
                size //= 2
            self.last_activity = time.time()
            ops = self.parser.feed(data)
            if ops:
                server = self.server
                if server.opts.trace:
                    trace_ops(self, ops)
                # server.batched(self.process, ops), inlined: a reader is never inside a batch
                server.batch = batch = {}
                try:
                    self.process(ops)
                finally:
                    server.end_batch(batch)
            err = self.parser.error
            if err is not None:
                self.fail(err.text)
                return

    async def _writer(self) -> None:
        deadline = self.server.opts.write_deadline_s
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._kicked = False
            if self.out:
                data = self.out
                self.out = bytearray()
                self._writing = True
                try:
                    with trio.move_on_after(deadline) as cs:
                        await self.stream.send_all(data)
                finally:
                    self._writing = False
                if cs.cancelled_caught:
                    self.server.slow_consumer(self, f"WriteDeadline of {deadline:g}s exceeded")
                    self.close_reason = "Slow Consumer (Write Deadline)"
                    self._cancel.cancel()
                    return
            if self._closing and not self.out:
                self._cancel.cancel()
                return

    async def _pinger(self) -> None:
        opts = self.server.opts
        await self._connected_evt.wait()
        await trio.sleep(FIRST_PING_S)
        while True:
            if self.pings_out + 1 > opts.ping_max:
                self.server.stale_connections += 1
                self.fail("Stale Connection")
                return
            self.pings_out += 1
            self._ping_sent_at = time.monotonic()
            self.send(_PING)
            await trio.sleep(opts.ping_interval_s)

    async def _auth_timer(self) -> None:
        await trio.sleep(self.server.opts.auth_timeout_s)
        if not self.connected:
            self.fail("Authentication Timeout")

    # ---- output ------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.closed or self._closing:
            return
        self.out += data
        self._wake_writer()

    def _wake_writer(self) -> None:
        """Output is pending: during a reader batch it is flushed when the batch ends,
        otherwise the writer task is woken."""
        batch = self.server.batch
        if batch is not None:
            batch[self] = None
        elif not self._kicked:
            self._kicked = True
            self._wake.set()

    def flush_now(self) -> None:
        """End of a reader batch: try one non-blocking write straight to the socket (as
        nats-server's reader does), unless the writer task is mid-write or TLS is on; what
        does not fit is left to the writer task."""
        out = self.out
        if out and not self._writing and not self._closing and self._fd >= 0 and write_some(self._fd, out):
            return
        if (out or self._closing) and not self._kicked:
            self._kicked = True
            self._wake.set()

    def fail(self, text: str | None) -> None:
        """Send -ERR (when text) and close once it is flushed."""
        if text:
            self.send(err_frame(text))
        self.close_reason = self.close_reason or (text or "Protocol Violation")
        self.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._kicked = True
        self._wake.set()

    def deliver(self, sub: Subscription, subject: bytes, reply: bytes, hdr, payload: bytes) -> None:
        """Append one MSG/HMSG frame for `sub`; never blocks."""
        if self._closing:
            return
        out = self.out
        if hdr is None or not self.headers:
            n = len(payload)
            if reply:
                out += b"MSG %b %b %b %d\r\n%b\r\n" % (subject, sub.sid, reply, n, payload)
            else:
                out += b"MSG %b %b %d\r\n%b\r\n" % (subject, sub.sid, n, payload)
        else:
            hl = len(hdr)
            n = hl + len(payload)
            if reply:
                out += b"HMSG %b %b %b %d %d\r\n%b%b\r\n" % (subject, sub.sid, reply, hl, n, hdr, payload)
            else:
                out += b"HMSG %b %b %d %d\r\n%b%b\r\n" % (subject, sub.sid, hl, n, hdr, payload)
        sub.delivered += 1
        self.out_bytes += n
        if len(out) > self.max_pending:
            self.cut_slow()
            return
        self._wake_writer()

    def deliver_bodies(self, subs: list, lines: list, bodies: list, n: int, nbytes: int) -> None:
        """Append n messages at once for this connection's matching subscriptions `subs`:
        each of `lines` is one subscription's `MSG subj sid [reply] size` CRLF, bodies is
        [b"", payload CRLF, ...] (n payloads of `nbytes` bytes together). Never blocks."""
        self.deliver_rendered(subs, render_bodies(lines, bodies), n, nbytes)

    def deliver_rendered(self, subs: list, frames: bytes, n: int, nbytes: int) -> None:
        """Append the frames of n messages (nbytes of payload) rendered elsewhere for each
        of this connection's subscriptions `subs`. Never blocks."""
        if self._closing:
            return
        out = self.out
        out += frames
        for sub in subs:
            sub.delivered += n
        self.out_bytes += nbytes * len(subs)
        if len(out) > self.max_pending:
            self.cut_slow()
            return
        self._wake_writer()

    def deliver_ack_run(self, sub: Subscription, msgs: list, prefix: bytes, dseq: int, pending: int) -> int:
        """Server.deliver_ack_run for one subscription: a frame per stored message, reply
        `<prefix><seq>.<dseq + i>.<ts>.<pending - i>`; returns the payload bytes counted.
        The `MSG <subject> <sid> <prefix>` head is built once per subject and the timestamp
        once per distinct value (a batch stored together shares it)."""
        if self._closing:
            return 0
        sid = sub.sid
        headers = self.headers
        subject = None
        head = hhead = b""
        ts = None
        tsb = b""
        size = 0
        parts = []
        add = parts.append
        for m in msgs:
            if m.subject is not subject:
                subject = m.subject
                sb = subject.encode()
                head = b"MSG %b %b %b" % (sb, sid, prefix)
                hhead = b"HMSG %b %b %b" % (sb, sid, prefix)
            if m.ts != ts:
                ts = m.ts
                tsb = b"%d" % ts
            data = m.data
            hdr = m.hdr
            if hdr is None or not headers:
                n = len(data)
                add(b"%b%d.%d.%b.%d %d\r\n%b\r\n" % (head, m.seq, dseq, tsb, pending, n, data))
            else:
                hl = len(hdr)
                n = hl + len(data)
                add(b"%b%d.%d.%b.%d %d %d\r\n%b%b\r\n" % (hhead, m.seq, dseq, tsb, pending, hl, n, hdr, data))
            size += n
            dseq += 1
            pending -= 1
        out = self.out
        out += b"".join(parts)
        sub.delivered += len(msgs)
        self.out_bytes += size
        if len(out) > self.max_pending:
            self.cut_slow()
        else:
            self._wake_writer()
        return size

    def cut_slow(self) -> None:
        self.server.slow_consumer(self, f"MaxPending of {self.max_pending} Exceeded")
        self.close_reason = "Slow Consumer (Pending Bytes)"
        self.out = bytearray()
        self._closing = True
        self._cancel.cancel()

    # ---- protocol operations ---------------------------------------------------------
    def process(self, ops: list[tuple]) -> None:
        """Apply a batch of parsed operations.

        Plain PUBs of a connected, non-verbose, non-pedantic client take the short path:
        for messages on one subject whose subscribers are all plain client subscriptions,
        the match and each subscriber's `MSG subj sid ` prefix are worked out once, each
        delivery is two bytearray appends, and counters, slow-consumer checks and writer
        wake-ups happen once per batch. A run of PUBs with one header line (OP_RUN) goes
        further: it is delivered whole, one bytes.replace of the header lines per
        subscriber (MSG) and per route peer (RMSG), with no per-message Python step.
        Everything else (queues, internal subscribers, max_msgs, echo off, no responders,
        headers) goes through Server.route_msg message by message (a run is first
        expanded into its messages), and every other op through _process_op.
        """
        server = self.server
        route = server.route_msg
        cache = server._match_cache
        fast = self._fast_pub
        npub = nbytes = 0
        nshort = bshort = 0  # messages routed here rather than by route_msg
        last = None  # subject whose plan is current
        plan = None
        targets: list = []
        peers: list = []
        callbacks: list = []
        ninternal = 0  # deliveries to internal subscribers on the short path
        subject_s = ""
        touched: dict = {}
        i = 0
        n_ops = len(ops)
        try:
            while i < n_ops:
                op = ops[i]
                i += 1
                code = op[0]
                if fast and code == OP_PUB and op[3] is None:
                    subject = op[1]
                    payload = op[4]
                    size = len(payload)
                    npub += 1
                    nbytes += size
                    if subject != last:
                        last = subject
                        plan = self._plain_targets(cache.get(subject), subject, touched)
                        if plan is not None:
                            targets, peers, callbacks = plan
                            if peers or callbacks:
                                subject_s = subject.decode("utf-8", "surrogateescape")
                    if plan is None or (op[2] and self.no_responders and not (targets or peers or callbacks)):
                        route(self, subject, op[2], None, payload, size)
                        last = None  # routing may have changed subscriptions (max_msgs)
                    else:
                        nshort += 1
                        bshort += size
                        reply = op[2]
                        if peers or callbacks:
                            r = reply.decode("utf-8", "surrogateescape") if reply else ""
                            for peer in peers:
                                peer.forward(subject_s, r, None, payload, None)
                            if callbacks:
                                ninternal += len(callbacks)
                                sl = server.sublist
                                gen = sl.inserts + sl.removes
                                self._call_internal(callbacks, subject_s, r, payload)
                                if sl.inserts + sl.removes != gen:
                                    last = None  # the callback changed subscriptions: re-plan
                                    if self._closing:
                                        return
                        if not targets:
                            continue
                        if reply:
                            tail = b"%b %d\r\n%b\r\n" % (reply, size, payload)
                        else:
                            tail = b"%d\r\n%b\r\n" % (size, payload)
                        for c, pre, t in targets:
                            o = c.out
                            o += pre
                            o += tail
                            t[0] += 1
                            t[1] += size
                elif code == OP_RUN:
                    subject = op[1]
                    reply = op[2]
                    if fast and subject != last:
                        # (no cached match: plan is None and the run is expanded, so its
                        # first message goes through route_msg as it would on its own)
                        last = subject
                        plan = self._plain_targets(cache.get(subject), subject, touched)
                        if plan is not None:
                            targets, peers, callbacks = plan
                            if peers or callbacks:
                                subject_s = subject.decode("utf-8", "surrogateescape")
                    if not fast or plan is None or callbacks or \
                            (reply and self.no_responders and not (targets or peers)):
                        # message by message, exactly as if the run had not been found
                        ops[i:i] = expand_run(op)
                        n_ops = len(ops)
                        last = None
                        continue
                    n = op[5]
                    size = op[7]
                    npub += n
                    nbytes += n * size
                    nshort += n
                    bshort += n * size
                    if targets or peers:
                        self._deliver_run(op, targets, peers, subject_s)
                elif fast and code == OP_PUB:
                    hdr = op[3]
                    payload = op[4]
                    if not self.headers:
                        self.close_reason = "Protocol Violation (headers not supported)"
                        self.close()
                        return
                    size = len(payload) + len(hdr)
                    npub += 1
                    nbytes += size
                    route(self, op[1], op[2], hdr, payload, size)
                    last = None
                else:
                    last = None
                    if touched and code == OP_UNSUB:  # UNSUB <sid> <max> counts what the sub received
                        self._settle(touched)
                        touched = {}
                    if not self._process_op(op):
                        return
                    fast = self._fast_pub
                if self._closing:
                    return
        finally:
            self.in_msgs += npub
            self.in_bytes += nbytes
            server.in_msgs += nshort
            server.in_bytes += bshort
            server.out_msgs += ninternal
            if touched:
                self._settle(touched)

    @staticmethod
    def _deliver_run(op: tuple, targets: list, peers: list, subject_s: str) -> None:
        """An OP_RUN for plain client subscribers (targets, from _plain_targets) and route
        peers: the run is split once at its header line (run_bodies), then each
        subscriber gets `MSG subj sid [reply] n`.join(bodies) and each peer the RMSG
        version, one C-level join each (a connection with several matching
        subscriptions gets their frames message by message, see render_bodies)."""
        _, subject, reply, data, start, n, hlen, size = op
        bodies = run_bodies(op)
        if peers:
            r = reply.decode("utf-8", "surrogateescape") if reply else ""
            for peer in peers:
                peer.forward_bodies(subject_s, r, bodies, n, size)
        if not targets:
            return
        tail = b"%b %d\r\n" % (reply, size) if reply else b"%d\r\n" % size
        total = n * size
        if len(targets) == 1:
            c, pre, t = targets[0]
            o = c.out
            o += (pre + tail).join(bodies)
            t[0] += n
            t[1] += total
            return
        lines: dict = {}
        for c, pre, t in targets:
            lines.setdefault(c, []).append(pre + tail)
            t[0] += n
            t[1] += total
        for c, ls in lines.items():
            o = c.out
            o += render_bodies(ls, bodies)

    def _plain_targets(self, m, subject: bytes, touched: dict) -> tuple | None:
        """How to deliver a run of plain PUBs on one subject without route_msg:
        (client targets [(conn, MSG prefix, counters)], route peers with plain interest,
        internal subscribers' callbacks). None when route_msg must decide (no cached match,
        queue groups, auto-unsubscribe limits, a local subscriber of another kind).
        What depends only on the match and the subject (each subscriber's `MSG subj sid `
        prefix, the peers, the callbacks) is kept on the Match from the second message
        that uses it on; the first only marks it, so the many subjects published to once
        (clients' unique reply inboxes) keep no plan in the match cache."""
        if m is None or m.queues:
            return None
        plan = m.plan
        if plan is None or plan is True or plan[0] != subject:
            if plan is True:
                plan = m.plan = _make_plan(m, subject)
            else:
                m.plan = True
                plan = _make_plan(m, subject)
        _, subs, peers, callbacks = plan
        if subs is None:
            return None
        out = []
        for sub, c, pre in subs:
            if sub.max_msgs:
                return None
            if c is self and not self.echo:
                continue
            t = touched.get(sub)
            if t is None:
                t = touched[sub] = [0, 0]
            out.append((c, pre, t))
        if callbacks:
            for sub in callbacks:
                if sub.max_msgs:
                    return None
            callbacks = list(callbacks)
        return out, peers, callbacks

    @staticmethod
    def _call_internal(subs: list, subject: str, reply: str, payload: bytes) -> None:
        for sub in subs:
            try:
                sub.callback(subject, reply, None, payload)
            except Exception:  # our own bug: log it, never break the publisher
                log.exception("internal subscriber for %r failed", sub.subject)

    def _settle(self, touched: dict) -> None:
        """After a short-path batch (touched: sub -> [msgs, bytes]): counters, slow-consumer checks, flushes."""
        server = self.server
        batch = server.batch
        msgs = nbytes = 0
        conns: dict = {}
        for sub, (k, b) in touched.items():
            if not k:
                continue
            msgs += k
            nbytes += b
            sub.delivered += k
            c = sub.conn
            c.out_bytes += b
            conns[c] = None
        for c in conns:
            if c._closing:
                c.out = bytearray()
                continue
            if len(c.out) > c.max_pending:
                c.cut_slow()
                continue
            if batch is not None:  # c._wake_writer(), inlined
                batch[c] = None
            elif not c._kicked:
                c._kicked = True
                c._wake.set()
        server.out_msgs += msgs
        server.out_bytes += nbytes

    def _process_op(self, op: tuple) -> bool:
        """One operation off the short path; False stops processing the batch."""
        server = self.server
        code = op[0]
        if code == OP_PUB:
            if not self.connected and server.auth_required:
                self.fail("Authorization Violation")
                return False
            subject = op[1]
            payload = op[4]
            hdr = op[3]
            size = len(payload) if hdr is None else len(payload) + len(hdr)
            self.in_msgs += 1
            self.in_bytes += size
            if hdr is not None and not self.headers:
                self.close_reason = "Protocol Violation (headers not supported)"
                self.close()
                return False
            if self.pedantic and not valid_literal(subject.decode("utf-8", "replace")):
                # nats-server reports it and still routes the message
                self.send(err_frame("Invalid Publish Subject"))
            if self.verbose:
                self.send(_OK)
            server.route_msg(self, subject, op[2], hdr, payload, size)
        elif code == OP_PING:
            self.send(_PONG)
            if not self._first_pong_sent:
                self._first_pong_sent = True
                if self.connected and self.protocol >= 1:
                    info = server.client_info(self.cid, self.ip)
                    info["connect_info"] = True
                    info["remote_account"] = "$G"
                    self.send_info(info)
        elif code == OP_PONG:
            self.pings_out = 0
            if self._ping_sent_at:
                self.rtt_s = time.monotonic() - self._ping_sent_at
                self._ping_sent_at = 0.0
        elif code == OP_SUB:
            if not self._pre_connect_ok():
                return False
            self._sub(op[1], op[2], op[3])
        elif code == OP_UNSUB:
            if not self._pre_connect_ok():
                return False
            self._unsub(op[1], op[2])
        elif code == OP_CONNECT:
            if not self._connect(op[1]):
                return False
        elif code == OP_INFO:
            pass  # clients may send INFO; nats-server ignores it from clients
        return not self._closing

    def _pre_connect_ok(self) -> bool:
        if not self.connected and self.server.auth_required:
            self.fail("Authorization Violation")
            return False
        return True

    def _connect(self, raw: bytes) -> bool:
        try:
            opts = json.loads(raw or b"{}")
            if not isinstance(opts, dict):
                raise ValueError("CONNECT must be an object")
        except ValueError:
            self.close_reason = "Protocol Violation (bad CONNECT)"
            self.close()
            return False
        server = self.server
        if server.auth_required and not server.check_auth(opts):
            self.fail("Authorization Violation")
            return False
        # nats-server's defaults for fields a client leaves out are verbose and pedantic on
        self.verbose = bool(opts.get("verbose", True))
        self.pedantic = bool(opts.get("pedantic", True))
        self.echo = bool(opts.get("echo", True))
        self.headers = bool(opts.get("headers", False))
        self.no_responders = bool(opts.get("no_responders", False))
        self.protocol = int(opts.get("protocol", 0) or 0)
        self.name = str(opts.get("name", "") or "")
        self.lang = str(opts.get("lang", "") or "")
        self.version = str(opts.get("version", "") or "")
        self.user = str(opts.get("user", "") or "")
        if self.no_responders and not self.headers:
            self.fail("no responders requires headers support")
            return False
        self.connected = True
        self._fast_pub = not self.verbose and not self.pedantic
        self._connected_evt.set()
        if self.verbose:
            self.send(_OK)
        return True

    def _sub(self, subject_b: bytes, queue_b: bytes | None, sid: bytes) -> None:
        subject = subject_b.decode("utf-8", "replace")
        if not valid_subject(subject):
            self.send(err_frame("Invalid Subject"))
            return
        queue = None
        if queue_b is not None:
            queue = queue_b.decode("utf-8", "replace")
        if sid in self.subs:
            if self.verbose:
                self.send(_OK)
            return
        opts = self.server.opts
        if opts.max_subscriptions and len(self.subs) >= opts.max_subscriptions:
            self.send(err_frame("maximum subscriptions exceeded"))
            return
        sub = Subscription(self, subject, queue, sid)
        self.subs[sid] = sub
        self.server.add_sub(sub)
        if self.verbose:
            self.send(_OK)

    def _unsub(self, sid: bytes, max_msgs: int) -> None:
        sub = self.subs.get(sid)
        if sub is not None:
            if max_msgs and sub.delivered < max_msgs:
                sub.max_msgs = max_msgs
            else:
                self.remove_sub(sub)
        if self.verbose:
            self.send(_OK)

    def remove_sub(self, sub: Subscription) -> None:
        if self.subs.pop(sub.sid, None) is not None:
            self.gone_msgs += sub.delivered
            self.server.remove_sub(sub)

    def send_info(self, info: dict) -> None:
        self.send(b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b" \r\n")

