"""HTTP monitoring (-m): /varz /connz /subsz /routez /jsz /healthz with nats-server's field names.

A deliberately small HTTP/1.1 server on trio: one request per connection, GET only,
JSON bodies. Numbers come straight from the server's counters, so they match what
clients observe.
"""

from __future__ import annotations

import json
import os
import resource
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import trio

from broker.config import VERSION
from broker.netaddrs import open_listeners

REQUEST_MAX_BYTES = 8192


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dur(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    out = ""
    if d:
        out += f"{d}d"
    if h or d:
        out += f"{h}h"
    if m or h or d:
        out += f"{m}m"
    return out + f"{s}s"


async def serve_http(server, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    o = server.opts
    host = o.http_host if o.http_host not in ("",) else "0.0.0.0"
    listeners = await open_listeners(max(0, o.http_port), host,  # -1: random port
                                     lambda go: f"Can't start monitoring: can't listen to the monitor port: {go}")
    port = listeners[0].socket.getsockname()[1]
    stats: dict[str, int] = {}

    async def handle(stream):
        try:
            data = b""
            with trio.move_on_after(5):
                while b"\r\n\r\n" not in data and len(data) < REQUEST_MAX_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
            line = data.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split()
            if len(parts) < 2:
                return
            url = urlsplit(parts[1])
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            path = url.path.rstrip("/") or "/"
            stats[path] = stats.get(path, 0) + 1
            status, body = route(server, path, query, stats)
            payload = json.dumps(body, indent=2).encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "OK")
            head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
            await stream.send_all(head + payload)
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    task_status.started(port)
    await trio.serve_listeners(handle, listeners)


def route(server, path: str, q: dict, stats: dict) -> tuple[int, dict]:
    if path == "/varz":
        return 200, varz(server, stats)
    if path == "/connz":
        return 200, connz(server, q)
    if path == "/subsz" or path == "/subscriptionsz":
        return 200, subsz(server, q)
    if path == "/routez":
        return 200, routez(server, q)
    if path == "/jsz":
        js = server.jetstream
        if js is None:
            return 200, {"server_id": server.server_id, "now": rfc3339(time.time()), "disabled": True}
        return 200, js.jsz(q)
    if path == "/healthz":
        return healthz(server, q)
    if path == "/":
        return 200, {"endpoints": ["/varz", "/connz", "/subsz", "/routez", "/jsz", "/healthz"]}
    return 404, {"error": "not found"}


def varz(server, stats: dict) -> dict:
    o = server.opts
    now = time.time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    v = {
        "server_id": server.server_id,
        "server_name": server.server_name,
        "version": VERSION,
        "proto": 1,
        "go": "python",
        "host": o.host or "0.0.0.0",
        "port": server.port,
        "git_commit": "",
        "max_connections": o.max_connections,
        "ping_interval": int(o.ping_interval_s * 1e9),
        "ping_max": o.ping_max,
        "http_host": o.http_host or "0.0.0.0",
        "http_port": server.http_port,
        "auth_timeout": o.auth_timeout_s,
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "write_deadline": int(o.write_deadline_s * 1e9),
        "start": rfc3339(server.start_time),
        "now": rfc3339(now),
        "uptime": _dur(now - server.start_time),
        "mem": ru.ru_maxrss * 1024,
        "cores": os.cpu_count(),
        "cpu": 0,
        "connections": len(server.clients),
        "total_connections": server.total_connections,
        "routes": len(server.cluster.routes) if server.cluster is not None and hasattr(server.cluster, "routes") else 0,
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": server.in_msgs,
        "out_msgs": server.out_msgs,
        "in_bytes": server.in_bytes,
        "out_bytes": server.out_bytes,
        "slow_consumers": server.slow_consumers,
        "stale_connections": server.stale_connections,
        "subscriptions": server.sublist.count,
        "http_req_stats": stats,
        "in_client_msgs": server.in_msgs - server.routed_in_msgs,
        "in_client_bytes": server.in_bytes - server.routed_in_bytes,
        "out_client_msgs": server.out_msgs,
        "out_client_bytes": server.out_bytes,
        "stalled_clients": 0,
        "disk_io_wait_stats": {"waiters": 0, "waits": 0, "wait_time": 0, "max_wait_time": 0},
        # what this server does: v1 ack subjects and API replies, no raft delete ranges
        "feature_flags": {"js_ack_fc_v2": False, "js_api_reply_v2": False, "js_raft_delete_range": False,
                          "js_snapshot_sources": False},
        "stale_connection_stats": {"clients": server.stale_connections, "routes": 0, "gateways": 0, "leafs": 0},
        "system_account": "$SYS",
        "tls_timeout": o.tls_timeout_s,
        "gomaxprocs": os.cpu_count(),
        "http_base_path": "",
        "https_port": 0,
        "config_digest": getattr(o, "config_digest", ""),
        "cluster": {},
        "gateway": {},
        "leaf": {},
        "mqtt": {},
        "websocket": {},
        "jetstream": {},
        "config_load_time": rfc3339(server.start_time),
        "slow_consumer_stats": {"clients": server.slow_consumers, "routes": 0, "gateways": 0, "leafs": 0},
    }
    if server.auth_required:
        v["auth_required"] = True  # nats-server omits these when false
    if o.tls:
        v["tls_required"] = True
    if server.cluster is not None:
        v["cluster"] = server.cluster.varz()
        v["connect_urls"] = server._cluster_urls
    if server.jetstream is not None:
        v["jetstream"] = server.jetstream.varz()
    return v


def _sub_detail(s, account: bool) -> dict:
    """One subscription as nats-server's SubDetail: msgs counts all it received, max (an
    UNSUB limit) only when set."""
    d = {"account": "$G", "account_tag": "$G"} if account else {}
    d["subject"] = s.subject
    if s.queue:
        d["qgroup"] = s.queue
    d["sid"] = s.sid.decode()
    d["msgs"] = s.delivered
    if s.max_msgs:
        d["max"] = s.max_msgs
    d["cid"] = getattr(s.conn, "cid", 0)
    return d


def _conn_info(c, now: float, subs: bool | str) -> dict:
    d = {
        "cid": c.cid,
        "kind": "Client",
        "type": "nats",
        "ip": c.ip,
        "port": c.port,
        "start": rfc3339(c.start),
        "last_activity": rfc3339(c.last_activity),
        "rtt": f"{c.rtt_s * 1000:.3f}ms",
        "uptime": _dur(now - c.start),
        "idle": _dur(now - c.last_activity),
        "pending_bytes": len(c.out),
        "in_msgs": c.in_msgs,
        "out_msgs": c.out_msgs,
        "in_bytes": c.in_bytes,
        "out_bytes": c.out_bytes,
        "subscriptions": len(c.subs),
    }
    if c.name:
        d["name"] = c.name
    if c.lang:
        d["lang"] = c.lang
    if c.version:
        d["version"] = c.version
    if subs == "detail":
        if c.subs:
            d["subscriptions_list_detail"] = [_sub_detail(s, False) for s in c.subs.values()]
    elif subs:
        d["subscriptions_list"] = [s.subject for s in c.subs.values()]
    return d


def connz(server, q: dict) -> dict:
    now = time.time()
    conns = sorted(server.clients.values(), key=lambda c: c.cid)
    if "cid" in q:
        conns = [c for c in conns if str(c.cid) == q["cid"]]
    offset = int(q.get("offset", 0) or 0)
    limit = int(q.get("limit", 1024) or 1024)
    subs = q.get("subs", "")
    subs = "detail" if subs == "detail" else subs in ("1", "true")
    page = conns[offset:offset + limit]
    return {
        "server_id": server.server_id,
        "now": rfc3339(now),
        "num_connections": len(page),
        "total": len(conns),
        "offset": offset,
        "limit": limit,
        "connections": [_conn_info(c, now, subs) for c in page],
    }


def subsz(server, q: dict) -> dict:
    sl = server.sublist
    # the router reads the match cache directly and counts only its misses (which then
    # go through sl.match); every other lookup goes through sl.match
    routed = server.in_msgs
    matches = routed + sl.matches - server.route_cache_misses
    hits = routed - server.route_cache_misses + sl.cache_hits
    out = {
        "server_id": server.server_id,
        "now": rfc3339(time.time()),
        "num_subscriptions": sl.count,
        "num_cache": sl.cache_size,
        "num_inserts": sl.inserts,
        "num_removes": sl.removes,
        "num_matches": matches,
        "cache_hit_rate": (hits / matches) if matches else 0,
        "max_fanout": 0,
        "avg_fanout": 0,
        "total": 0,
        "offset": 0,
        "limit": 1024,
    }
    if q.get("subs", "") in ("1", "true", "detail"):
        subs = [s for s in sl.all_subs() if not s.conn.is_route]
        test = q.get("test")
        if test:
            from broker.subjects import match
            subs = [s for s in subs if match(s.subject, test)]
        offset = int(q.get("offset", 0) or 0)
        limit = int(q.get("limit", 1024) or 1024)
        out.update({"total": len(subs), "offset": offset, "limit": limit,
                    "subscriptions_list": [_sub_detail(s, True) for s in subs[offset:offset + limit]]})
    return out


def routez(server, q: dict) -> dict:
    if server.cluster is not None:
        return server.cluster.routez(q)
    return {"server_id": server.server_id, "server_name": server.server_name, "now": rfc3339(time.time()),
            "num_routes": 0, "routes": []}


def healthz(server, q: dict) -> tuple[int, dict]:
    if server.jetstream is not None:
        err = server.jetstream.healthz()
        if err:
            return 503, {"status": "unavailable", "error": err}
    elif q.get("js-enabled-only") in ("true", "1"):
        return 503, {"status": "unavailable", "error": "JetStream not enabled"}
    return 200, {"status": "ok"}
