"""Cluster manager (trio): listener, solicited routes, handshake, gossip, interest sync.

How this works. Every node listens on its cluster port and dials its configured
routes (forever, with backoff). A route becomes usable after a handshake: the
accepting side sends INFO first; the soliciting side answers CONNECT + INFO. The
cluster name must match, a route to ourselves is dropped (and its URL never dialed
again), and when two routes reach the same peer the rule of
`membership.keep_new_route` picks the same survivor on both ends.

On registration a node sends the peer its whole local interest (RS+ lines, then a
PING), forwards the new peer's INFO to every other peer, and sends the new peer the
INFO of every other peer (gossip). A node that hears of a member it has no route to
dials it (the lower server_id at once, the other after `gossip_dial_delay_s`), so a
node that knew one seed ends up in a full mesh. When a route drops, the peer's
interest is removed, its client URLs leave the INFO sent to clients, and both ends
redial the member until it returns or is forgotten (`forget_after_s`).

Everything the broker must provide is the `ClusterHost` protocol below; this package
never imports the broker.
"""

from __future__ import annotations

import collections
import logging
import secrets
import urllib.parse
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import msgspec
import trio

from cluster import protocol as proto
from cluster.membership import Membership, dials_first, keep_new_route
from cluster.route import Route, RouteClosed, RouteLimits

log = logging.getLogger("cluster")

_UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::", "[::]")


class ClusterHost(Protocol):
    def add_route_sub(self, peer, subject: str, queue: str | None, weight: int) -> None: ...
    def remove_route_sub(self, peer, subject: str, queue: str | None) -> None: ...
    def remove_peer_subs(self, peer) -> None: ...
    def deliver_routed(self, subject: str, reply: str, hdr: bytes | None, payload: bytes,
                       queues: list[str] | None) -> None: ...
    # optional: n routed messages at once (see RouteParser.on_run); without it, one call each
    def deliver_routed_run(self, subject: str, reply: str, bodies: list, n: int, size: int) -> None: ...
    # optional: routed messages on one subject, each with its own reply (RouteParser.on_replies)
    def deliver_routed_replies(self, subject: str, replies: list[bytes], payloads: list[bytes]) -> None: ...
    # optional, together: output batches. batched(fn, *args) runs fn with every connection's
    # output held and calls flush_now() on each connection written to when fn returns;
    # `batch` is the open batch (a dict the route adds itself to) or None
    def batched(self, fn, *args) -> None: ...
    batch: dict | None
    def local_interest(self) -> list[tuple[str, str | None, int]]: ...
    def set_cluster_urls(self, urls: list[str]) -> None: ...
    def client_url(self) -> str: ...
    def peer_up(self, server_name: str, jetstream: bool) -> None: ...  # a route to that server registered
    def peer_down(self, server_name: str) -> None: ...  # ...and closed


@dataclass
class ClusterConfig:
    server_id: str
    server_name: str
    name: str
    dynamic_name: bool = False  # no name was configured: adopt a configured peer's name
    host: str = "0.0.0.0"
    port: int = 6222  # 0 = any free port (the bound port is reported by run())
    routes: list[str] = field(default_factory=list)
    advertise: str = ""  # "host:port" announced to peers instead of the listen address
    no_advertise: bool = False  # do not offer our client URL to other nodes' clients
    username: str = ""  # when set, peers must present these in CONNECT (and we send them)
    password: str = ""
    version: str = "2.15.1"
    max_payload: int = 1048576
    forget_after_s: float = 30.0
    handshake_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0
    gossip_dial_delay_s: float = 1.0
    housekeeping_interval_s: float = 1.0
    limits: RouteLimits = field(default_factory=RouteLimits)
    jetstream: bool = False  # announced in INFO: clustered JetStream forms its groups from such peers


def route_url_credentials(url: str) -> tuple[str, str] | None:
    """User and password embedded in a route URL, if any."""
    parts = urllib.parse.urlsplit(url.strip() if "://" in url else "nats://" + url.strip())
    if parts.username is None:
        return None
    return urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or "")


def parse_route_url(url: str) -> str:
    """'nats://h:p', 'nats-route://user:pw@h:p/' or 'h:p' -> 'h:p'."""
    rest = url.strip()
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    rest = rest.rstrip("/")
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    if ":" not in rest.rsplit("]", 1)[-1]:
        rest += ":6222"
    return rest


def split_host_port(hp: str) -> tuple[str, int]:
    host, _, port = hp.rpartition(":")
    return host.strip("[]"), int(port)


class ClusterManager:
    def __init__(self, cfg: ClusterConfig, host: ClusterHost) -> None:
        self.cfg = cfg
        self.host = host
        self.membership = Membership(cfg.server_id, cfg.forget_after_s)
        self.routes: dict[str, Route] = {}  # remote server_id -> registered route
        self.port = cfg.port
        self.configured_urls = [parse_route_url(u) for u in cfg.routes]
        self._credentials = {parse_route_url(u): c for u in cfg.routes if (c := route_url_credentials(u))}
        self._rid = 0
        self._self_urls: set[str] = set()
        self._dialing: set[str] = set()
        self._announced: set[str] = set()
        self._client_urls: list[str] | None = None
        self._nursery: trio.Nursery | None = None
        self._lame_duck = False

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            host = None if self.cfg.host in _UNSPECIFIED_HOSTS else self.cfg.host
            try:
                listeners = await trio.open_tcp_listeners(self.cfg.port, host=host)
            except OSError as e:
                # nats-server's FTL text for a route port it cannot bind
                raise OSError(e.errno, f"Error listening on router port: {self.cfg.port} - listen tcp "
                                       f"{host or '0.0.0.0'}:{self.cfg.port}: bind: "
                                       f"{(e.strerror or str(e)).lower()}") from e
            await nursery.start(trio.serve_listeners, self._accepted, listeners)
            self.port = listeners[0].socket.getsockname()[1]
            log.info("Cluster %r listening for route connections on port %d", self.cfg.name, self.port)
            for url in self.configured_urls:
                self._start_dial(url, configured=True, expect_id="")
            nursery.start_soon(self._housekeeping)
            task_status.started(self.port)

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(self.cfg.housekeeping_interval_s)
            for m in self.membership.expire(trio.current_time()):
                log.info("Forgetting cluster member %s (%s) after %.0fs down", m.name, m.server_id,
                         self.cfg.forget_after_s)

    def my_info(self) -> proto.RouteInfo:
        if self.cfg.advertise:
            h, p = split_host_port(parse_route_url(self.cfg.advertise))
        else:
            h, p = self.cfg.host, self.port
        urls = [] if self.cfg.no_advertise or self._lame_duck else [self.host.client_url()]
        return proto.RouteInfo(
            server_id=self.cfg.server_id, server_name=self.cfg.server_name, version=self.cfg.version,
            proto=3, headers=True, host=h, port=p, max_payload=self.cfg.max_payload, cluster=self.cfg.name,
            connect_urls=urls, cluster_dynamic=self.cfg.dynamic_name,
            auth_required=bool(self.cfg.username), ldm=self._lame_duck, jetstream=self.cfg.jetstream,
        )

    def _name_ok(self, theirs: str, their_dynamic: bool) -> bool:
        """Cluster name check. A node without a configured name adopts a configured peer's
        name (or, when both are dynamic, the smaller one), as nats-server does."""
        if theirs == self.cfg.name:
            return True
        if self.cfg.dynamic_name and theirs and (not their_dynamic or theirs < self.cfg.name):
            log.info("Cluster name changed from %r to %r", self.cfg.name, theirs)
            self.cfg.name = theirs
            self.cfg.dynamic_name = their_dynamic
            return True
        return their_dynamic and (not self.cfg.dynamic_name or self.cfg.name < theirs)

    # ------------------------------------------------------------ dialing

    def _start_dial(self, url: str, configured: bool, expect_id: str, delay: float = 0.0) -> None:
        if url in self._dialing or url in self._self_urls or self._nursery is None:
            return
        self._dialing.add(url)
        self._nursery.start_soon(self._dial_loop, url, configured, expect_id, delay)

    def _should_dial(self, url: str, configured: bool, expect_id: str) -> bool:
        if url in self._self_urls:
            return False
        if configured:
            return True
        return self.membership.wants_dial(expect_id)

    async def _dial_loop(self, url: str, configured: bool, expect_id: str, delay: float) -> None:
        backoff = self.cfg.backoff_min_s
        try:
            await trio.sleep(delay)
            while self._should_dial(url, configured, expect_id):
                if expect_id and expect_id in self.routes:
                    if not configured:
                        return
                    await trio.sleep(self.cfg.backoff_max_s)  # connected by the peer's dial
                    continue
                stream = None
                try:
                    h, p = split_host_port(url)
                    with trio.move_on_after(self.cfg.connect_timeout_s):
                        stream = await trio.open_tcp_stream(h, p)
                    if stream is None:
                        raise OSError(f"connect timed out after {self.cfg.connect_timeout_s}s")
                except (OSError, ValueError) as exc:
                    log.debug("Error trying to connect to route %s: %s", url, exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.cfg.backoff_max_s)
                    continue
                route = await self._serve_route(stream, solicited=True, configured=configured)
                if route.is_self:
                    # remember the URL as dialled (e.g. a name like n1:6222 that resolved to
                    # our own address), or a seed node would redial itself forever
                    self._self_urls.add(url)
                    return
                if route.remote_id:
                    expect_id = route.remote_id
                    backoff = self.cfg.backoff_min_s
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.cfg.backoff_max_s)
        finally:
            self._dialing.discard(url)

    def _maybe_dial_member(self, server_id: str, url: str) -> None:
        if url in self.configured_urls:
            return  # its configured loop redials it
        delay = 0.0 if dials_first(self.cfg.server_id, server_id) else self.cfg.gossip_dial_delay_s
        self._start_dial(url, configured=False, expect_id=server_id, delay=delay)

    # ------------------------------------------------------------ one connection

    async def _accepted(self, stream: trio.SocketStream) -> None:
        await self._serve_route(stream, solicited=False, configured=False)

    async def _serve_route(self, stream: trio.SocketStream, solicited: bool, configured: bool) -> Route:
        self._rid += 1
        route = Route(stream, self._rid, solicited, configured, self.cfg.limits)
        backlog: collections.deque = collections.deque()

        async def body() -> None:
            try:
                info = await self._handshake(route, backlog)
                if info is None:
                    return
                if not self._register(route, info):
                    route.close()
                    return
                route.start_pinger()
                await self._read_loop(route, backlog)
            except RouteClosed:
                return
            except proto.RouteProtocolError as exc:
                log.error("%r: Router parser ERROR: %s", route, exc)
                route.close(str(exc))
            except Exception:  # our own bug: log it, tear this route down, keep the node
                log.exception("%r: internal error on route, closing it", route)
                route.abort()

        try:
            await route.run(body)
        finally:
            if route.registered:
                self._drop(route)
        return route

    async def _next_op(self, route: Route, backlog: collections.deque):
        while not backlog:
            backlog.extend(await route.read_ops())
        return backlog.popleft()

    async def _handshake(self, route: Route, backlog: collections.deque) -> proto.RouteInfo | None:
        with trio.move_on_after(self.cfg.handshake_timeout_s):
            if route.did_solicit:
                return await self._handshake_solicited(route, backlog)
            return await self._handshake_accepted(route, backlog)
        log.warning("%r: route handshake timed out", route)
        route.close("Authentication Timeout")
        return None

    async def _handshake_solicited(self, route: Route, backlog) -> proto.RouteInfo | None:
        op = await self._next_op(route, backlog)
        if isinstance(op, proto.Err):
            log.error("%r: route rejected by peer: %s", route, op.text)
            route.close()
            return None
        if not isinstance(op, proto.Info):
            route.close(proto.ERR_UNKNOWN_OP)
            return None
        info = op.info
        if info.server_id == self.cfg.server_id:
            log.debug("Detected route to self, ignoring %s:%d", route.ip, route.port)
            self._self_urls.add(f"{route.ip}:{route.port}")
            route.is_self = True
            route.close()
            return None
        if not self._name_ok(info.cluster, info.cluster_dynamic):
            text = f'Rejecting connection, cluster name "{info.cluster}" does not match "{self.cfg.name}"'
            log.error("%r: %s", route, text)
            route.close(text)
            return None
        connect = proto.RouteConnect(name=self.cfg.server_id, cluster=self.cfg.name,
                                     dynamic=self.cfg.dynamic_name)
        creds = self._credentials.get(f"{route.ip}:{route.port}")
        if creds is None and self.cfg.username:
            creds = (self.cfg.username, self.cfg.password)
        if creds is not None:
            connect.user, connect.password = creds
        route.send(proto.encode_connect(connect) + proto.encode_info(self.my_info()))
        return info

    async def _handshake_accepted(self, route: Route, backlog) -> proto.RouteInfo | None:
        route.send(proto.encode_info(self.my_info()))
        try:
            op = await self._next_op(route, backlog)
        except proto.RouteProtocolError:
            op = None
        if not isinstance(op, proto.Connect):
            route.close("Authorization Violation")
            return None
        if "cluster" not in op.raw or "lang" in op.raw:
            route.close("attempted to connect to route port")
            return None
        if self.cfg.username and not (
            secrets.compare_digest(str(op.raw.get("user", "")), self.cfg.username)
            and secrets.compare_digest(str(op.raw.get("pass", "")), self.cfg.password)
        ):
            route.close("Authorization Violation")
            return None
        if not self._name_ok(op.connect.cluster, op.connect.dynamic):
            route.close(f'Rejecting connection, cluster name "{op.connect.cluster}" does not match "{self.cfg.name}"')
            return None
        if op.connect.name == self.cfg.server_id:
            route.close()
            return None
        while True:
            op = await self._next_op(route, backlog)
            if op is proto.PING:
                route.send(proto.PONG_FRAME)
            elif isinstance(op, proto.Info):
                return op.info
            else:
                route.close(proto.ERR_UNKNOWN_OP)
                return None

    # ------------------------------------------------------------ registration

    def _route_url_of(self, route: Route, info: proto.RouteInfo) -> str:
        h = info.host
        if h in _UNSPECIFIED_HOSTS:
            h = route.ip
        if ":" in h:
            h = f"[{h}]"
        return f"{h}:{info.port}"

    def _register(self, route: Route, info: proto.RouteInfo) -> bool:
        rid = info.server_id
        route.remote_id = rid  # lets a configured dial loop see who answered, even if dropped below
        if info.server_name and info.server_name == self.cfg.server_name and rid != self.cfg.server_id:
            # server names must be unique in a cluster (JetStream placement relies on them)
            log.error("%r: Remote server has a duplicate name: %r", route, info.server_name)
            return False
        existing = self.routes.get(rid)
        if existing is not None:
            if not keep_new_route(self.cfg.server_id, rid, existing.did_solicit, route.did_solicit):
                log.debug("Duplicate route to %s, keeping the established one", rid)
                return False
            log.debug("Duplicate route to %s, replacing the established one", rid)
            self._drop(existing, redial=False, replaced=True)
            existing.close()
        route.remote, route.remote_id, route.name = info, rid, info.server_name or rid
        route.route_url = self._route_url_of(route, info)
        route.registered = True
        route.parser.on_msg = self.host.deliver_routed
        route.parser.on_op = partial(self._route_op, route)
        route.parser.on_run = getattr(self.host, "deliver_routed_run", None)
        route.parser.on_replies = getattr(self.host, "deliver_routed_replies", None)
        if hasattr(self.host, "batched"):
            route.batches = self.host  # its `batch`: the output batch open now, if any
        self.routes[rid] = route
        now = trio.current_time()
        for old in self.membership.down_at_url(route.route_url):
            self.membership.forget(old)  # the server restarted with a new id
        self.membership.route_up(rid, info.server_name, route.route_url, info.connect_urls, now)
        out = bytearray()
        for subject, queue, count in self.host.local_interest():
            if count > 0:
                out += proto.encode_rsub(subject, queue, count)
        out += proto.PING_FRAME
        route.send(bytes(out))
        self._gossip_new(route)
        self._urls_changed()
        self.host.peer_up(info.server_name or rid, info.jetstream)
        log.info("%r: Route connection created (%s, solicited=%s)", route, rid, route.did_solicit)
        return True

    def _gossip_info(self, route: Route) -> bytes:
        assert route.remote is not None
        return proto.encode_info(
            msgspec.structs.replace(route.remote, ip=f"nats-route://{route.route_url}/", gossip_mode=1))

    def _gossip_new(self, route: Route) -> None:
        news = self._gossip_info(route)
        for other in self.routes.values():
            if other is not route:
                other.send(news)
                route.send(self._gossip_info(other))

    def _drop(self, route: Route, redial: bool = True, replaced: bool = False) -> None:
        route.registered = False
        if self.routes.get(route.remote_id) is not route:
            return
        del self.routes[route.remote_id]
        self.host.remove_peer_subs(route)
        route.subs.clear()
        self.membership.route_down(route.remote_id, trio.current_time())
        self._urls_changed()
        if not replaced:  # a duplicate route giving way to its twin is no sign of a dead peer
            self.host.peer_down(route.name)
        log.info("%r: Route connection closed", route)
        if redial:
            self._maybe_dial_member(route.remote_id, route.route_url)

    def _urls_changed(self) -> None:
        urls = self.membership.connect_urls()
        if urls != self._client_urls:
            self._client_urls = urls
            self.host.set_cluster_urls(list(urls))

    # ------------------------------------------------------------ established route

    async def _read_loop(self, route: Route, backlog: collections.deque) -> None:
        """Each read is parsed and handled inside one host output batch when the host has
        them (`batched`): what it delivers to clients and forwards on routes is written
        once per connection when the read is done, not by a writer task per connection."""
        batched = getattr(self.host, "batched", None)
        if backlog:  # read with the handshake, before registration
            ops = list(backlog)
            backlog.clear()
            if route.registered:
                self._handle_ops(route, ops)
        parser = route.parser
        while route.registered:
            if parser.failed:
                parser.feed(b"")  # raises the error held back after the last good ops
            data = await route.read_some()
            if not route.registered:
                return  # replaced by a duplicate: its interest must not come back
            if batched is not None:
                batched(self._handle_data, route, data)
            else:
                self._handle_data(route, data)

    def _handle_data(self, route: Route, data: bytes) -> None:
        ops = route.parser.feed(data)  # runs of RMSGs go to the host's on_run from here
        if ops:
            self._handle_ops(route, ops)

    def _handle_ops(self, route: Route, ops: list) -> None:
        host = self.host
        for op in ops:
            if op.__class__ is proto.Msg:
                if op.account == proto.ACCOUNT:
                    host.deliver_routed(op.subject, op.reply, op.hdr, op.payload, op.queues)
            else:
                self._route_op(route, op)
            if not route.registered:
                return

    def _route_op(self, route: Route, op) -> None:
        """One non-message operation of a registered route, in its place among the messages."""
        cls = op.__class__
        if cls is proto.RSub:
            if op.account == proto.ACCOUNT and route.registered:
                route.subs[(op.subject, op.queue)] = op.weight
                self.host.add_route_sub(route, op.subject, op.queue, op.weight)
        elif cls is proto.RUnsub:
            if op.account == proto.ACCOUNT and route.subs.pop((op.subject, op.queue), None) is not None:
                self.host.remove_route_sub(route, op.subject, op.queue)
        else:
            self._control_op(route, op)

    def _control_op(self, route: Route, op) -> None:
        if op is proto.PING:
            route.send(proto.PONG_FRAME)
        elif op is proto.PONG:
            route.got_pong()
        elif isinstance(op, proto.Info):
            self._on_info(route, op.info)
        elif isinstance(op, proto.Err):
            log.error("%r: peer reported error: %s", route, op.text)
        elif isinstance(op, proto.Connect):
            raise proto.RouteProtocolError(proto.ERR_UNKNOWN_OP)

    def _on_info(self, route: Route, info: proto.RouteInfo) -> None:
        now = trio.current_time()
        if info.server_id == route.remote_id:
            route.remote = info
            urls = [] if info.ldm else info.connect_urls
            if self.membership.update_client_urls(info.server_id, urls, now):
                self._urls_changed()
            return
        if info.server_id == self.cfg.server_id or (info.cluster and info.cluster != self.cfg.name):
            return
        url = parse_route_url(info.ip) if info.ip else f"{info.host}:{info.port}"
        if self.membership.gossip(info.server_id, info.server_name, url, info.connect_urls,
                                  via=route.remote_id, now=now):
            self._maybe_dial_member(info.server_id, url)

    # ------------------------------------------------------------ broker-facing

    def local_interest_changed(self, subject: str, queue: str | None, count: int) -> None:
        if queue is None:
            if count > 0:
                if subject in self._announced:
                    return
                self._announced.add(subject)
                frame = proto.encode_rsub(subject, None, 1)
            else:
                self._announced.discard(subject)
                frame = proto.encode_runsub(subject, None)
        elif count > 0:
            frame = proto.encode_rsub(subject, queue, count)
        else:
            frame = proto.encode_runsub(subject, queue)
        for r in self.routes.values():
            r.send(frame)

    def lame_duck(self) -> None:
        """This node entered lame duck mode: tell peers to stop offering our client URL."""
        if self._lame_duck:
            return
        self._lame_duck = True
        frame = proto.encode_info(self.my_info())
        for r in self.routes.values():
            r.send(frame)

    def route_list(self) -> list[Route]:
        return sorted(self.routes.values(), key=lambda r: r.rid)

