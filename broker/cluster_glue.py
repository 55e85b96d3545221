"""Adapter between the broker's Server and the cluster package.

The Server already provides everything `cluster.manager.ClusterHost` asks for
(add_route_sub, remove_route_sub, remove_peer_subs, deliver_routed, local_interest,
set_cluster_urls, client_url), so it is passed to the manager as its host. This file
only turns Options into a ClusterConfig and shapes /routez and the /varz cluster block
the way nats-server does.
"""

from __future__ import annotations

import secrets
import time

import trio

from broker.config import VERSION
from broker.monitor import _dur, rfc3339
from cluster.manager import ClusterConfig, ClusterManager, parse_route_url
from cluster.route import RouteLimits

# Routes are pinged more often than clients so that a dead or cut peer is noticed in
# seconds (nats-server uses ping_interval for both; a cut route there takes minutes).
ROUTE_PING_INTERVAL_MAX_S = 2.0
ROUTE_PING_MAX = 3


def _go_duration(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{int(seconds * 1e9)}ns"
    if seconds < 1e-3:
        return f"{int(seconds * 1e6)}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.6g}ms"
    return f"{seconds:.6g}s"


class ClusterGlue:
    def __init__(self, server) -> None:
        o = server.opts
        self.server = server
        name = o.cluster_name or secrets.token_hex(11).upper()
        port = 0 if o.cluster_port in (0, -1) else o.cluster_port
        limits = RouteLimits(
            ping_interval_s=min(o.ping_interval_s, ROUTE_PING_INTERVAL_MAX_S),
            ping_max=ROUTE_PING_MAX,
            pending_bytes_max=o.max_pending,
            write_timeout_s=o.write_deadline_s,
            payload_max_bytes=max(o.max_payload, 1048576) + 65536,
        )
        self.cfg = ClusterConfig(
            server_id=server.server_id,
            server_name=server.server_name,
            name=name,
            dynamic_name=not o.cluster_name,
            host=o.cluster_host or "0.0.0.0",
            port=port,
            routes=list(o.routes),
            advertise=o.cluster_advertise,
            no_advertise=o.no_advertise,
            username=getattr(o, "cluster_username", ""),
            password=getattr(o, "cluster_password", ""),
            version=VERSION,
            max_payload=o.max_payload,
            limits=limits,
            jetstream=o.jetstream,
        )
        self.manager = ClusterManager(self.cfg, server)

    @property
    def routes(self) -> dict:
        return self.manager.routes

    @property
    def name(self) -> str:
        return self.cfg.name

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.manager.run(task_status=task_status)

    def local_interest_changed(self, subject: str, queue: str | None, count: int) -> None:
        self.manager.local_interest_changed(subject, queue, count)

    def lame_duck(self) -> None:
        self.manager.lame_duck()

    # ------------------------------------------------------------ monitoring

    def varz(self) -> dict:
        block: dict = {
            "name": self.cfg.name,
            "addr": self.cfg.host,
            "cluster_port": self.manager.port,
            "auth_timeout": 2,
        }
        urls = [parse_route_url(u) for u in self.cfg.routes]
        if urls:
            block["urls"] = urls
        block["tls_timeout"] = 2
        block["pool_size"] = 1
        return block

    def routez(self, q: dict) -> dict:
        now = time.time()
        subs_arg = str(q.get("subs", "")).lower()
        subs = subs_arg in ("1", "true", "detail")
        detail = subs_arg == "detail"
        routes = []
        for r in self.manager.route_list():
            d = {
                "rid": r.rid,
                "remote_id": r.remote_id,
                "remote_name": r.name,
                "did_solicit": r.did_solicit,
                "is_configured": r.is_configured,
                "ip": r.ip,
                "port": r.port,
                "start": rfc3339(r.start),
                "last_activity": rfc3339(r.last_activity),
                "rtt": _go_duration(r.rtt_s),
                "uptime": _dur(now - r.start),
                "idle": _dur(now - r.last_activity),
                "pending_size": r.pending_size,
                "in_msgs": r.in_msgs,
                "out_msgs": r.out_msgs,
                "in_bytes": r.in_bytes,
                "out_bytes": r.out_bytes,
                "subscriptions": len(r.subs),
            }
            if detail:
                d["subscriptions_list_detail"] = [
                    {"account": "$G", "subject": s, "sid": s if qn is None else f"{s} {qn}", "msgs": 0, "max": 0,
                     "cid": r.rid, **({"qgroup": qn} if qn else {})}
                    for s, qn in sorted(r.subs, key=lambda k: (k[0], k[1] or ""))
                ]
            elif subs:
                d["subscriptions_list"] = sorted(s for s, _ in r.subs)
            d["compression"] = "off"
            routes.append(d)
        return {
            "server_id": self.server.server_id,
            "server_name": self.server.server_name,
            "now": rfc3339(now),
            "num_routes": len(routes),
            "routes": routes,
        }
