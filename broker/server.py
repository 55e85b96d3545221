"""The composition root: listeners, the router, and the services wired around it.

Routing: `route_msg` is the hot path. It looks the raw subject up in the sublist's
match cache, appends one frame per local subscriber (each connection's outbound
buffer, or an internal callback), picks one member per queue group (weighted, remote
members included) and hands the message once to each interested route peer. Nothing
here awaits, so a publisher's batch is routed atomically and never stalls on a reader.

Other parts of the broker (JetStream, the cluster glue, the monitor) use the
in-process API: publish / subscribe / unsubscribe / has_interest, plus the route
hooks add_route_sub / remove_route_sub / remove_peer_subs / deliver_routed.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import signal
import ssl
import sys
import tempfile
import time

import trio

from broker import headers as hdrs
from broker import routed
from broker.config import VERSION, Options
from broker.connection import ClientConn
from broker.netaddrs import local_ips, open_listeners
from broker.protocol import err_frame
from broker.sublist import Match, Sublist, Subscription

log = logging.getLogger("broker")

GIT_COMMIT = "pybroker"
# INFO "go": platform.python_version() is this token of sys.version (platform would compile its
# version regex on the first connection)
_GO = "python" + sys.version.split()[0]
JS_API_LEVEL = 5  # nats-server 2.15's JetStream API level (broker/jetstream/api.py API_LEVEL)
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def new_server_id() -> str:
    rnd = random.SystemRandom()  # os.urandom, as the secrets module (not imported: it loads OpenSSL)
    return "N" + "".join(rnd.choice(_B32) for _ in range(55))


def _limitless_clients(subs) -> bool:
    """Every subscription is a client's without a message limit (no internal subscriber):
    a batch of deliveries can go straight to their buffers."""
    return all(not sub.max_msgs and isinstance(sub.conn, ClientConn) for sub in subs)


def _only_plain_clients(m: Match) -> bool:
    """_limitless_clients, and no queue group or route peer either."""
    return not (m.queues or m.peers) and _limitless_clients(m.plain)


class InternalConn:
    """The owner of in-process subscriptions: deliveries become callback calls."""
    is_route = False
    kind = "Internal"
    cid = 0
    echo = True
    local_only = False

    def deliver(self, sub: Subscription, subject: bytes, reply: bytes, hdr, payload: bytes) -> None:
        try:
            sub.callback(subject.decode("utf-8", "surrogateescape"), reply.decode("utf-8", "surrogateescape"),
                         hdr, payload)
        except Exception:  # our own bug: log it loudly, never let it break the publisher
            log.exception("internal subscriber for %r failed", sub.subject)


class Server:
    def __init__(self, opts: Options | None = None):
        self.opts = opts or Options()
        self.server_id = new_server_id()
        self.server_name = self.opts.server_name or self.server_id
        self.sublist = Sublist()
        self._match_cache = self.sublist.cache  # the hot path reads the match cache directly
        self.batch: dict | None = None  # connections written to during the current reader batch
        self.batch_hooks: dict = {}  # objects whose batch_end() runs when the current batch ends
        self.clients: dict[int, ClientConn] = {}
        self.internal = InternalConn()
        self.internal_local = InternalConn()
        self.internal_local.local_only = True
        self.nursery: trio.Nursery | None = None
        self.jetstream = None
        self.cluster = None
        self.js_cluster_wide = False  # clustered JetStream: its internal subscriptions span the cluster
        self.port = self.opts.port
        self.http_port = self.opts.http_port
        self.start_time = time.time()
        self._next_cid = 0
        self._interest: dict[tuple[str, str | None], int] = {}
        self._cluster_urls: list[str] = []
        self._route_subs: dict = {}
        self.stopped = trio.Event()
        self.lame_duck = False
        self.shutting_down = False
        # counters (/varz)
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_msgs = 0
        self.out_bytes = 0
        self.total_connections = 0
        self.route_cache_misses = 0
        self.routed_in_msgs = 0  # of in_msgs, those that arrived over routes
        self.routed_in_bytes = 0
        self.slow_consumers = 0
        self.stale_connections = 0
        self.auth_required = bool(self.opts.username or self.opts.token)
        self.ssl_context = self._make_ssl_context() if self.opts.tls else None
        self._listeners: list = []
        self._listen_scope: trio.CancelScope | None = None

    # ---- startup / shutdown ----------------------------------------------------------
    def _make_ssl_context(self) -> ssl.SSLContext:
        o = self.opts
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(o.tls_cert, o.tls_key)
        if o.tls_ca:
            ctx.load_verify_locations(o.tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if o.tls_verify else ssl.CERT_NONE
        return ctx

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.opts.host or "0.0.0.0", self.opts.port
        listeners = await open_listeners(port, host, lambda go: f'Error listening on port: {host}:{port}, "{go}"')
        self._listeners = listeners
        self.port = listeners[0].socket.getsockname()[1]
        started = False
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self._start_services(nursery)
                task_status.started(self.port)
                started = True
        finally:
            self.stopped.set()
        if not started:  # SIGTERM while still starting: a clean stop, as nats-server's
            task_status.started(self.port)

    async def _start_services(self, nursery) -> None:
        if self.opts.jetstream:
            from broker.jetstream.manager import JetStream
            self.jetstream = JetStream(self)
            await nursery.start(self.jetstream.run)
        if self.opts.cluster_port or self.opts.cluster_host or self.opts.routes:
            from broker.cluster_glue import ClusterGlue
            self.cluster = ClusterGlue(self)
            await nursery.start(self.cluster.run)
        if self.opts.http_port:
            from broker.monitor import serve_http
            self.http_port = await nursery.start(serve_http, self)
            log.info("Starting http monitor on %s:%d", _log_host(self.opts.http_host), self.http_port)
        await nursery.start(self._accept, self._listeners)
        # nats-server's order: the client listener line, then "Server is ready" (harnesses such as
        # nats.py's nats.server read the port from the first and stop reading at the second)
        log.info("Listening for client connections on %s:%d", _log_host(self.opts.host), self.port)
        log.info("Server is ready")

    async def _accept(self, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._listen_scope = scope
            await trio.serve_listeners(self._handle, listeners, handler_nursery=self.nursery,
                                       task_status=task_status)

    async def _handle(self, stream) -> None:
        try:
            ip, port = stream.socket.getpeername()[:2]
        except OSError:
            return
        self._next_cid += 1
        cid = self._next_cid
        info = self.client_info(cid, ip)
        line = b"INFO " + json.dumps(info, separators=(",", ":")).encode() + b" \r\n"
        if len(self.clients) >= self.opts.max_connections or self.lame_duck:
            try:
                await stream.send_all(line + err_frame("maximum connections exceeded"))
            except (trio.BrokenResourceError, OSError):
                pass
            await stream.aclose()
            return
        conn = ClientConn(self, stream, cid, ip, port)
        self.clients[cid] = conn
        self.total_connections += 1
        try:
            await conn.run(line)
        except* Exception:  # our bug: log it, drop this connection, keep serving everyone else
            log.exception("cid:%d - connection task failed", cid)

    def client_info(self, cid: int, ip: str) -> dict:
        o = self.opts
        info = {
            "server_id": self.server_id,
            "server_name": self.server_name,
            "version": VERSION,
            "proto": 1,
            "git_commit": GIT_COMMIT,
            "go": _GO,
            "host": o.host or "0.0.0.0",
            "port": self.port,
            "headers": True,
            "max_payload": o.max_payload,
        }
        if o.jetstream:
            info["jetstream"] = True
        info["client_id"] = cid
        info["client_ip"] = ip
        if self.auth_required:
            info["auth_required"] = True
        if o.tls:
            info["tls_required"] = True
            info["tls_verify"] = bool(o.tls_verify)
        if self.cluster is not None:
            info["cluster"] = o.cluster_name
            if self._cluster_urls and not o.no_advertise:
                info["connect_urls"] = self.client_urls() + self._cluster_urls
        if self.lame_duck:
            info["ldm"] = True
        info["api_lvl"] = JS_API_LEVEL  # nats-server sends it with or without JetStream
        return info

    def client_url(self) -> str:
        return self.client_urls()[0]

    def client_urls(self) -> list[str]:
        """host:port URLs clients can reach this node on. Listening on every interface, that
        is each non-loopback address of this host (as nats-server advertises), so nodes in
        containers that all listen on :4222 still advertise distinct URLs."""
        if self.opts.client_advertise:
            return [self.opts.client_advertise]
        host = self.opts.host
        if host not in ("", "0.0.0.0", "::"):
            return [f"{host}:{self.port}"]
        ips = local_ips()
        return [f"{ip}:{self.port}" for ip in ips] or [f"127.0.0.1:{self.port}"]

    def check_auth(self, c: dict) -> bool:
        from secrets import compare_digest
        o = self.opts
        if o.token:
            return compare_digest(str(c.get("auth_token", "")), o.token)
        return (compare_digest(str(c.get("user", "")), o.username)
                and compare_digest(str(c.get("pass", "")), o.password))

    def client_closed(self, conn: ClientConn) -> None:
        self.clients.pop(conn.cid, None)
        for sub in list(conn.subs.values()):
            conn.gone_msgs += sub.delivered
            self.remove_sub(sub)
        conn.subs.clear()
        log.debug("%s:%d - cid:%d - Client connection closed: %s", conn.ip, conn.port, conn.cid,
                  conn.close_reason)

    def slow_consumer(self, conn: ClientConn, why: str) -> None:
        self.slow_consumers += 1
        log.warning("%s:%d - cid:%d - Slow Consumer Detected: %s", conn.ip, conn.port, conn.cid, why)

    def send_async_info(self) -> None:
        for c in list(self.clients.values()):
            if c.protocol >= 1 and c.connected:
                c.send_info(self.client_info(c.cid, c.ip))

    async def enter_lame_duck(self) -> None:
        """SIGUSR2: stop accepting, tell clients (INFO ldm), then close them over the duration."""
        if self.lame_duck:
            return
        self.lame_duck = True
        log.info("Entering lame duck mode, stop accepting new clients")
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        if self.cluster is not None:
            self.cluster.lame_duck()
        if self.jetstream is not None and self.jetstream.cluster is not None:
            self.jetstream.cluster.lame_duck()
        self.send_async_info()
        await trio.sleep(self.opts.lame_duck_grace_period_s)
        clients = list(self.clients.values())
        if clients:
            step = max(0.0, (self.opts.lame_duck_duration_s - self.opts.lame_duck_grace_period_s)) / len(clients)
            for c in clients:
                c.close_reason = "Server Shutdown"
                c.close()
                if step:
                    await trio.sleep(min(step, 1.0))
        await self.shutdown()

    async def shutdown(self) -> None:
        """Graceful stop: close clients after flushing what is queued, stop services."""
        if self.shutting_down:
            return
        self.shutting_down = True
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        if self.jetstream is not None:  # as nats-server: waiting pull requests hear 409 Server Shutdown
            try:
                self.jetstream.consumers.server_shutdown()
            except Exception:  # our bug: never let it stop the shutdown
                log.exception("signalling pull consumers failed")
        for c in list(self.clients.values()):
            c.close_reason = c.close_reason or "Server Shutdown"
            c.close()
        with trio.move_on_after(2):
            while self.clients:
                await trio.sleep(0.01)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def handle_signals(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR2) as sigs:
            task_status.started()
            async for sig in sigs:
                if sig == signal.SIGUSR2:
                    self.nursery.start_soon(self.enter_lame_duck)
                else:
                    # Go's signal names, quoted as nats-server prints them
                    log.info('Trapped "%s" signal', "terminated" if sig == signal.SIGTERM else "interrupt")
                    log.info("Initiating Shutdown...")
                    await self.shutdown()
                    return

    # ---- subscriptions ---------------------------------------------------------------
    def add_sub(self, sub: Subscription) -> None:
        self.sublist.insert(sub)
        if sub.conn.local_only:
            return
        key = (sub.subject, sub.queue)
        n = self._interest.get(key, 0) + 1
        self._interest[key] = n
        if self.cluster is not None:
            self.cluster.local_interest_changed(sub.subject, sub.queue, n)

    def remove_sub(self, sub: Subscription) -> None:
        if not self.sublist.remove(sub):
            return
        if sub.conn.local_only:
            return
        key = (sub.subject, sub.queue)
        n = self._interest.get(key, 0) - 1
        if n <= 0:
            self._interest.pop(key, None)
            n = 0
        else:
            self._interest[key] = n
        if self.cluster is not None:
            self.cluster.local_interest_changed(sub.subject, sub.queue, n)

    def local_interest(self) -> list[tuple[str, str | None, int]]:
        return [(s, q, n) for (s, q), n in self._interest.items()]

    def subscribe(self, subject: str, callback, queue: str | None = None, *,
                  cluster_wide: bool = False) -> Subscription:
        """Internal subscription. By default its interest stays on this node (a single-node
        JetStream answers only its own clients); cluster_wide=True propagates it, and so does
        clustered JetStream for all of its subscriptions (js_cluster_wide)."""
        owner = self.internal if (cluster_wide or self.js_cluster_wide) else self.internal_local
        sub = Subscription(owner, subject, queue, b"", callback=callback)
        self.add_sub(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.remove_sub(sub)

    def has_interest(self, subject: str) -> bool:
        return not self.sublist.match(subject.encode()).empty

    # ---- routing -----------------------------------------------------------------------
    def publish(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        size = len(payload) + (len(hdr) if hdr else 0)
        self.route_msg(None, subject.encode(), reply.encode() if reply else b"", hdr, payload, size)

    def publish_many(self, msgs: list[tuple[str, bytes]]) -> None:
        """publish(subject, "", None, payload) for many pairs (JetStream acks). A subject
        whose interest is only plain subscriptions is delivered here, counted once."""
        cache = self._match_cache
        route = self.route_msg
        n_in = n_out = b_in = b_out = 0
        for subject, payload in msgs:
            subj = subject.encode()
            m = cache.get(subj)
            if m is None or m.empty or m.queues or m.peers:
                route(None, subj, b"", None, payload, len(payload))
                continue
            size = len(payload)
            n_in += 1
            b_in += size
            for sub in m.plain:
                sub.conn.deliver(sub, subj, b"", None, payload)
                n_out += 1
                b_out += size
                if sub.max_msgs:
                    self._count_max(sub)
        self.in_msgs += n_in
        self.in_bytes += b_in
        self.out_msgs += n_out
        self.out_bytes += b_out

    def deliver_as(self, to: str, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> int:
        """Deliver to the subscribers of `to` while showing them `subject` (JetStream push
        deliveries show the stored message's subject on the consumer's deliver subject).
        Route peers get it on `to`. Returns how many local subscribers received it."""
        m = self.sublist.match(to.encode())
        if m.empty:
            return 0
        s = subject.encode()
        r = reply.encode() if reply else b""
        n = 0
        for sub in m.plain:
            self._deliver_local(sub, s, r, hdr, payload)
            n += 1
        routed = _routed_reply(to, subject, reply)
        for group in m.queues:
            sub = group.pick()
            if sub.conn.is_route:
                sub.conn.forward(to, routed, hdr, payload, [group.name])
            else:
                self._deliver_local(sub, s, r, hdr, payload)
                n += 1
        for peer in m.peers:
            peer.forward(to, routed, hdr, payload, None)
        self.out_msgs += n
        self.out_bytes += n * (len(payload) + (len(hdr) if hdr else 0))
        return n

    def deliver_as_many(self, to: str, msgs: list) -> None:
        """deliver_as(to, subject, reply, hdr, payload) for each (to, subject, reply, hdr,
        payload) in msgs, all for `to` (a JetStream pull batch or push turn): `to` is matched
        once when its interest is only client subscriptions without a message limit;
        otherwise one call each."""
        m = self.sublist.match(to.encode())
        if m.empty:
            return
        if not _only_plain_clients(m):
            for _, subject, reply, hdr, payload in msgs:
                self.deliver_as(to, subject, reply, hdr, payload)
            return
        size = 0
        for sub in m.plain:
            deliver = sub.conn.deliver
            for _, subject, reply, hdr, payload in msgs:
                deliver(sub, subject.encode(), reply.encode(), hdr, payload)
                size += len(payload) + (len(hdr) if hdr else 0)
        self.out_msgs += len(m.plain) * len(msgs)
        self.out_bytes += size

    def batched(self, fn, *args) -> None:
        """fn(*args) with connection output batched as in a client read: every connection
        written to meanwhile gets one direct non-blocking write at the end instead of a
        writer-task wakeup (JetStream acks after an fsync, consumer deliveries)."""
        if self.batch is not None:
            fn(*args)
            return
        self.batch = batch = {}
        try:
            fn(*args)
        finally:
            self.end_batch(batch)

    def at_batch_end(self, obj) -> bool:
        """Ask for obj.batch_end() when the current batch (a client read, or `batched`) ends,
        before its output is flushed: work that a burst of messages triggers (JetStream
        appends, consumer deliveries after acks) then runs once per burst. Returns False
        outside a batch: the caller does the work its usual way."""
        if self.batch is None:
            return False
        self.batch_hooks[obj] = None
        return True

    def end_batch(self, batch: dict) -> None:
        """End of a batch: run the batch_end hooks (their output joins the batch), then one
        direct non-blocking write per connection written to."""
        hooks = self.batch_hooks
        while hooks:
            obj = next(iter(hooks))
            del hooks[obj]
            try:
                obj.batch_end()
            except Exception:
                log.exception("batch end hook %r failed", obj)
        self.batch = None
        for c in batch:
            c.flush_now()

    def deliver_ack_run(self, to: str, msgs: list, prefix: bytes, dseq: int, pending: int) -> bool:
        """A JetStream pull batch rendered in one pass: stored message msgs[i] (seq,
        subject, hdr, data, ts) goes to the subscribers of `to` showing its own subject,
        with reply `<prefix><seq>.<dseq + i>.<ts>.<pending - i>`. Only for interest that
        is plain client subscriptions without a message limit; returns False (nothing
        sent) otherwise, and the caller delivers the messages one by one. A route peer
        with interest gets the batch's frames rendered in one pass (broker/routed.py)."""
        to_b = to.encode()
        m = self.sublist.match(to_b)
        if m.empty:
            return True
        if m.queues or not _limitless_clients(m.plain):
            return False
        size = 0
        for sub in m.plain:
            size += sub.conn.deliver_ack_run(sub, msgs, prefix, dseq, pending)
        if m.peers:
            frames, nbytes = routed.render_ack_run(to_b, msgs, prefix, dseq, pending)
            for peer in m.peers:
                peer.forward_frames(frames, len(msgs), nbytes)
        self.out_msgs += len(m.plain) * len(msgs)
        self.out_bytes += size
        return True

    def route_msg(self, client, subject: bytes, reply: bytes, hdr, payload: bytes, size: int) -> None:
        """Deliver a published message to every local match and each interested route once."""
        self.in_msgs += 1
        self.in_bytes += size
        m = self._match_cache.get(subject)
        if m is None:
            self.route_cache_misses += 1
            m = self.sublist.match(subject)
        if m.empty:
            if reply and client is not None and client.no_responders:
                self._no_responders(client, subject, reply)
            return
        n = 0
        for sub in m.plain:
            conn = sub.conn
            if conn is client and not client.echo:
                continue
            conn.deliver(sub, subject, reply, hdr, payload)
            n += 1
            if sub.max_msgs:
                self._count_max(sub)
        if m.queues or m.peers:
            n += self._route_queues_and_peers(client, m, subject, reply, hdr, payload)
        self.out_msgs += n
        self.out_bytes += n * size

    def _route_queues_and_peers(self, client, m, subject, reply, hdr, payload) -> int:
        peer_queues: dict = {p: None for p in m.peers}
        n = 0
        for group in m.queues:
            sub = group.pick()
            if sub.conn is client and not client.echo:
                sub = next((s for s in group.members if s.conn is not client), None)
                if sub is None:
                    continue
            if sub.conn.is_route:
                qs = peer_queues.get(sub.conn)
                if qs is None:
                    peer_queues[sub.conn] = [group.name]
                else:
                    qs.append(group.name)
                continue
            sub.conn.deliver(sub, subject, reply, hdr, payload)
            n += 1
            if sub.max_msgs:
                self._count_max(sub)
        if peer_queues:
            s = subject.decode("utf-8", "surrogateescape")
            r = reply.decode("utf-8", "surrogateescape")
            for peer, qs in peer_queues.items():
                peer.forward(s, r, hdr, payload, qs)
        return n

    def _deliver_local(self, sub: Subscription, subject: bytes, reply: bytes, hdr, payload: bytes) -> None:
        """One delivery to a local (client or internal) subscriber, honouring UNSUB max."""
        sub.conn.deliver(sub, subject, reply, hdr, payload)
        if sub.max_msgs:
            self._count_max(sub)

    def _count_max(self, sub: Subscription) -> None:
        """After a delivery to a subscription with an UNSUB max (ClientConn.deliver counted
        it in sub.delivered, with those received before the UNSUB, as nats-server does)."""
        if sub.delivered >= sub.max_msgs:
            conn = sub.conn
            if isinstance(conn, ClientConn):
                conn.remove_sub(sub)
            else:
                self.remove_sub(sub)

    def _no_responders(self, client: ClientConn, subject: bytes, reply: bytes) -> None:
        hdr = hdrs.build([("Nats-Subject", subject.decode("utf-8", "replace"))], status="503")
        m = self.sublist.match(reply)
        for sub in m.plain:
            if sub.conn is client:
                self._status_to(client, sub, reply, hdr)
                return
        for group in m.queues:
            for sub in group.members:
                if sub.conn is client:
                    self._status_to(client, sub, reply, hdr)
                    return

    @staticmethod
    def _status_to(client: ClientConn, sub: Subscription, reply: bytes, hdr: bytes) -> None:
        """A no-responders status: nats-server counts it neither toward the subscription's
        messages (its UNSUB max, /connz msgs) nor in the connection's out_msgs/out_bytes."""
        n, b = sub.delivered, client.out_bytes
        client.deliver(sub, reply, b"", hdr, b"")
        sub.delivered, client.out_bytes = n, b

    # ---- cluster hooks -------------------------------------------------------------------
    def add_route_sub(self, peer, subject: str, queue: str | None, weight: int) -> None:
        subs = self._route_subs.setdefault(peer, {})
        key = (subject, queue)
        old = subs.get(key)
        if old is not None:
            if old.weight == weight:
                return
            self.sublist.remove(old)
        sub = Subscription(peer, subject, queue, b"", weight=max(1, weight))
        subs[key] = sub
        self.sublist.insert(sub)

    def remove_route_sub(self, peer, subject: str, queue: str | None) -> None:
        sub = self._route_subs.get(peer, {}).pop((subject, queue), None)
        if sub is not None:
            self.sublist.remove(sub)

    def remove_peer_subs(self, peer) -> None:
        for sub in self._route_subs.pop(peer, {}).values():
            self.sublist.remove(sub)

    def deliver_routed_run(self, subject: str, reply: str, bodies: list, n: int, size: int) -> None:
        """n routed messages on one subject (cluster hook): bodies is [b"", payload CRLF,
        ...] with n payloads of `size` bytes. When the interest is only client
        subscriptions without a message limit, each subscriber gets `MSG subj sid [reply]
        size`.join(bodies), one C-level join; otherwise (internal subscribers, limits, a
        JetStream `reply@subject`) it is deliver_routed message by message."""
        m = self.sublist.match(subject.encode())
        plain = m.plain
        if ("@" in reply and reply.startswith(JS_ACK_PREFIX)) or \
                not _limitless_clients(plain):
            deliver = self.deliver_routed
            for i in range(1, n + 1):
                deliver(subject, reply, None, bodies[i][:-2], None)
            return
        total = n * size
        self._routed_in(n, total)
        if not plain:
            return
        tail = b"%b %d\r\n" % (reply.encode(), size) if reply else b"%d\r\n" % size
        subject_b = subject.encode()
        lines: dict = {}  # a connection's subscriptions get each message in turn
        for sub in plain:
            subs, ls = lines.setdefault(sub.conn, ([], []))
            subs.append(sub)
            ls.append(b"MSG %b %b " % (subject_b, sub.sid) + tail)
        for conn, (subs, ls) in lines.items():
            conn.deliver_bodies(subs, ls, bodies, n, total)
        self.out_msgs += n * len(plain)
        self.out_bytes += total * len(plain)

    def _routed_in(self, n: int, nbytes: int) -> None:
        self.in_msgs += n
        self.in_bytes += nbytes
        self.routed_in_msgs += n
        self.routed_in_bytes += nbytes

    def deliver_routed_replies(self, subject: str, replies: list[bytes], payloads: list[bytes]) -> None:
        """Routed messages on one subject, each with its own reply (cluster hook: a JetStream
        batch from another node). Client subscriptions without a message limit get their
        frames rendered in one pass; anything else goes through deliver_routed."""
        m = self.sublist.match(subject.encode())
        plain = m.plain
        if not _limitless_clients(plain):
            for reply, payload in zip(replies, payloads):
                self.deliver_routed(subject, reply.decode("utf-8", "surrogateescape"), None, payload, None)
            return
        n = len(payloads)
        total = sum(map(len, payloads))
        self._routed_in(n, total)
        if not plain:
            return
        pairs = routed.shown(subject.encode(), replies)
        by_conn: dict = {}  # a connection's subscriptions get each message in turn
        for sub in plain:
            by_conn.setdefault(sub.conn, []).append(sub)
        for conn, subs in by_conn.items():
            conn.deliver_rendered(subs, routed.render_replies([s.sid for s in subs], pairs, payloads), n, total)
        self.out_msgs += n * len(plain)
        self.out_bytes += total * len(plain)

    def deliver_routed(self, subject: str, reply: str, hdr: bytes | None, payload: bytes,
                       queues: list[str] | None) -> None:
        m = self.sublist.match(subject.encode())
        if reply.startswith(JS_ACK_PREFIX):
            at = reply.rfind("@")
            if 0 < at < len(reply) - 1:  # a JetStream delivery: show the stored subject
                subject, reply = reply[at + 1:], reply[:at]
        subject_b = subject.encode()
        reply_b = reply.encode() if reply else b""
        size = len(payload) + (len(hdr) if hdr else 0)
        self.in_msgs += 1
        self.in_bytes += size
        self.routed_in_msgs += 1
        self.routed_in_bytes += size
        n = 0
        for sub in m.plain:
            self._deliver_local(sub, subject_b, reply_b, hdr, payload)
            n += 1
        if queues:
            wanted = set(queues)
            for group in m.queues:
                if group.name in wanted:
                    sub = group.pick(exclude_routes=True)
                    if sub is not None:
                        self._deliver_local(sub, subject_b, reply_b, hdr, payload)
                        n += 1
        self.out_msgs += n
        self.out_bytes += n * size

    def peer_up(self, server_name: str, jetstream: bool) -> None:
        """A route to `server_name` is up (cluster hook): clustered JetStream counts it online
        when it runs JetStream too."""
        if self.jetstream is not None and self.jetstream.cluster is not None:
            self.jetstream.cluster.peer_up(server_name, jetstream)

    def peer_down(self, server_name: str) -> None:
        """The route to `server_name` closed: evidence for Raft that the peer is gone."""
        if self.jetstream is not None and self.jetstream.cluster is not None:
            self.jetstream.cluster.peer_down(server_name)

    def set_cluster_urls(self, urls: list[str]) -> None:
        urls = sorted(set(urls) - set(self.client_urls()))
        if urls != self._cluster_urls:
            self._cluster_urls = urls
            self.send_async_info()


JS_ACK_PREFIX = "$JS.ACK."


def _routed_reply(to: str, subject: str, reply: str) -> str:
    """The reply a delivery to `to` that shows `subject` carries over a route: a JetStream
    delivery (ack reply) shown under its stored subject travels as `<reply>@<subject>`, as
    nats-server sends it, so the receiving node shows its clients the stored subject."""
    if subject != to and reply.startswith(JS_ACK_PREFIX):
        return f"{reply}@{subject}"
    return reply


def _log_host(host: str) -> str:
    """A listen address as nats-server logs it: 0.0.0.0 when unset, IPv6 in brackets."""
    host = host or "0.0.0.0"
    return f"[{host}]" if ":" in host else host


def _prepare_store_dir(opts: Options) -> None:
    """nats-server creates <store_dir>/jetstream at startup and refuses to start (FTL, exit 1)
    when the storage directory is unusable, before any client can connect; clustered
    JetStream also needs configured routes (the meta group is formed from them)."""
    base = opts.store_dir or os.path.join(tempfile.gettempdir(), "nats")
    why = ""
    if os.path.exists(base) and not os.path.isdir(base):
        why = "storage directory is not a directory"
    else:
        try:
            os.makedirs(os.path.join(base, "jetstream"), exist_ok=True)
        except OSError as e:
            why = f"could not create storage directory - {e}"
    if not why and opts.cluster_port and not opts.routes:
        why = "JetStream cluster requires configured routes or solicited leafnode for the system account"
    if why:
        log.critical("Can't start JetStream: %s", why)
        raise SystemExit(1)


def _trim_heap() -> None:
    """Started: hand the heap pages that startup (imports, parsing) freed back to the
    system (glibc's malloc_trim), so a fresh server's resident memory is what it uses."""
    import gc
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


async def run_server(opts: Options) -> None:
    server = Server(opts)
    log.info("Starting nats-server")  # the banner nats-server prints before it listens
    log.info("  Version:  %s", VERSION)
    log.info("  Git:      [%s]", GIT_COMMIT)
    if opts.cluster_name:
        log.info("  Cluster:  %s", opts.cluster_name)
    log.info("  Name:     %s", server.server_name)
    log.info("  ID:       %s", server.server_id)
    if opts.jetstream:
        _prepare_store_dir(opts)
    async with trio.open_nursery() as n:
        await n.start(server.handle_signals)
        await n.start(server.serve)
        _trim_heap()
        await server.stopped.wait()
        n.cancel_scope.cancel()
    log.info("Server Exiting..")
