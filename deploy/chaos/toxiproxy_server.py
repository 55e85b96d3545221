"""A Toxiproxy-API-compatible TCP fault proxy, for the chaos tests.

No toxiproxy server is packaged for this machine's registries, so this script speaks
the subset of Toxiproxy 2.x's HTTP API that toxiproxy-python (and curl users) drive:

  GET  /version                      GET  /proxies            POST /proxies
  GET|POST|DELETE /proxies/{name}    POST /reset
  GET|POST /proxies/{name}/toxics    GET|POST|DELETE /proxies/{name}/toxics/{toxic}

Toxics: latency (latency, jitter ms), bandwidth (rate KB/s), timeout (timeout ms: drop
data while the toxic is present, close the connection after the timeout unless 0), reset_peer (timeout ms, then RST),
limit_data (bytes, then close). `toxicity` (0..1) is the chance a new connection gets
the toxic. Disabling a proxy closes its listener and every live connection, which is how
tests cut a route; enabling it listens again on the same address.

Run: python deploy/chaos/toxiproxy_server.py [--host 127.0.0.1] [--port 8474]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct

import trio

VERSION = "2.12.0-pybroker"
CHUNK_BYTES = 32768


class Toxic:
    def __init__(self, spec: dict):
        self.name = spec.get("name") or f"{spec['type']}_{spec.get('stream', 'downstream')}"
        self.type = spec["type"]
        self.stream = spec.get("stream", "downstream")
        self.toxicity = float(spec.get("toxicity", 1.0))
        self.attributes = dict(spec.get("attributes") or {})
        if self.type not in ("latency", "bandwidth", "timeout", "reset_peer", "limit_data", "slow_close"):
            raise ValueError(f"invalid toxic type: {self.type}")
        if self.stream not in ("upstream", "downstream"):
            raise ValueError(f"invalid stream: {self.stream}")

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "stream": self.stream, "toxicity": self.toxicity,
                "attributes": self.attributes}


class Link:
    """One client connection through a proxy: two pumps, each applying its direction's toxics."""

    def __init__(self, proxy: "Proxy", client: trio.SocketStream):
        self.proxy = proxy
        self.client = client
        self.cancel = trio.CancelScope()
        self.upstream: trio.SocketStream | None = None

    async def run(self) -> None:
        with self.cancel:
            try:
                host, port = self.proxy.upstream.rsplit(":", 1)
                self.upstream = await trio.open_tcp_stream(host, int(port))
            except OSError:
                await self.client.aclose()
                return
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self.pump, self.client, self.upstream, "upstream")
                    n.start_soon(self.pump, self.upstream, self.client, "downstream")
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await self.close()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for s in (self.client, self.upstream):
                if s is not None:
                    try:
                        await s.aclose()
                    except (trio.BrokenResourceError, OSError):
                        pass

    def toxics(self, direction: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values()
                if t.stream == direction and (t.toxicity >= 1.0 or random.random() < t.toxicity)]

    async def pump(self, src, dst, direction: str) -> None:
        sent = 0
        while True:
            data = await src.receive_some(CHUNK_BYTES)
            if not data:
                try:
                    await dst.send_eof()
                except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                return
            for t in self.toxics(direction):
                a = t.attributes
                if t.type == "latency":
                    jitter = float(a.get("jitter", 0))
                    await trio.sleep(max(0.0, float(a.get("latency", 0)) + random.uniform(-jitter, jitter)) / 1000)
                elif t.type == "bandwidth":
                    rate = float(a.get("rate", 0))
                    if rate > 0:
                        await trio.sleep(len(data) / (rate * 1000))
                elif t.type == "timeout":
                    # As Toxiproxy: data is dropped while the toxic is present; with a
                    # timeout > 0 the connection is closed that long after data first met it.
                    ms = float(a.get("timeout", 0))
                    if ms > 0:
                        self.cancel.deadline = min(self.cancel.deadline, trio.current_time() + ms / 1000)
                    data = b""
                    break
                elif t.type == "reset_peer":
                    await trio.sleep(float(a.get("timeout", 0)) / 1000)
                    self.reset()
                    self.cancel.cancel()
                    await trio.sleep_forever()
                elif t.type == "limit_data":
                    limit = int(a.get("bytes", 0))
                    if sent + len(data) >= limit:
                        data = data[: max(0, limit - sent)]
                        if data:
                            await dst.send_all(data)
                        self.cancel.cancel()
                        await trio.sleep_forever()
            if data:
                sent += len(data)
                await dst.send_all(data)

    def reset(self) -> None:
        for s in (self.client, self.upstream):
            if s is not None:
                try:
                    s.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, enabled: bool = True):
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.links: set[Link] = set()
        self._scope: trio.CancelScope | None = None
        self._want_enabled = enabled

    def to_json(self) -> dict:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream, "enabled": self.enabled,
                "toxics": [t.to_json() for t in self.toxics.values()]}

    async def enable(self, nursery: trio.Nursery) -> None:
        if self.enabled:
            return
        host, port = self.listen.rsplit(":", 1)
        listeners = await trio.open_tcp_listeners(int(port), host=host or "127.0.0.1")
        self.listen = f"{host or '127.0.0.1'}:{listeners[0].socket.getsockname()[1]}"
        self.enabled = True
        scope = trio.CancelScope()
        self._scope = scope

        async def accept_loop():
            with scope:
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)
        nursery.start_soon(accept_loop)

    async def _handle(self, stream) -> None:
        link = Link(self, stream)
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)

    def disable(self) -> None:
        self.enabled = False
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        for link in list(self.links):
            link.cancel.cancel()


class Api:
    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.proxies: dict[str, Proxy] = {}

    async def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        parts = [p for p in path.split("?")[0].split("/") if p]
        data = json.loads(body) if body.strip() else {}
        if parts == ["version"]:
            return 200, VERSION
        if parts == ["reset"] and method == "POST":
            for p in self.proxies.values():
                p.toxics.clear()
                await p.enable(self.nursery)
            return 204, None
        if parts == ["proxies"]:
            if method == "GET":
                return 200, {n: p.to_json() for n, p in self.proxies.items()}
            if method == "POST":
                return await self.create(data)
        if len(parts) >= 2 and parts[0] == "proxies":
            p = self.proxies.get(parts[1])
            if p is None:
                return 404, {"error": "proxy not found", "status": 404}
            if len(parts) == 2:
                return await self.proxy_op(p, method, data)
            if parts[2] == "toxics":
                return self.toxic_op(p, method, parts[3] if len(parts) > 3 else None, data)
        return 404, {"error": "not found", "status": 404}

    async def create(self, data: dict) -> tuple[int, object]:
        name = data.get("name")
        if not name or not data.get("upstream"):
            return 400, {"error": "missing required field", "status": 400}
        if name in self.proxies:
            return 409, {"error": "proxy already exists", "status": 409}
        p = Proxy(name, data.get("listen") or "127.0.0.1:0", data["upstream"])
        self.proxies[name] = p
        if data.get("enabled", True):
            try:
                await p.enable(self.nursery)
            except OSError as e:
                del self.proxies[name]
                return 500, {"error": str(e), "status": 500}
        return 201, p.to_json()

    async def proxy_op(self, p: Proxy, method: str, data: dict) -> tuple[int, object]:
        if method == "GET":
            return 200, p.to_json()
        if method == "DELETE":
            p.disable()
            del self.proxies[p.name]
            return 204, None
        if method in ("POST", "PATCH"):
            if "upstream" in data:
                p.upstream = data["upstream"]
            if "enabled" in data:
                if data["enabled"]:
                    await p.enable(self.nursery)
                else:
                    p.disable()
            return 200, p.to_json()
        return 405, {"error": "method not allowed", "status": 405}

    def toxic_op(self, p: Proxy, method: str, name: str | None, data: dict) -> tuple[int, object]:
        if name is None:
            if method == "GET":
                return 200, [t.to_json() for t in p.toxics.values()]
            try:
                t = Toxic(data)
            except (KeyError, ValueError) as e:
                return 400, {"error": str(e), "status": 400}
            if t.name in p.toxics:
                return 409, {"error": "toxic already exists", "status": 409}
            p.toxics[t.name] = t
            return 200, t.to_json()
        t = p.toxics.get(name)
        if t is None:
            return 404, {"error": "toxic not found", "status": 404}
        if method == "DELETE":
            del p.toxics[name]
            return 204, None
        if method in ("POST", "PATCH"):
            t.attributes.update(data.get("attributes") or {})
            if "toxicity" in data:
                t.toxicity = float(data["toxicity"])
        return 200, t.to_json()


async def handle_http(api: Api, stream) -> None:
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split()[:2]
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            body += chunk
        try:
            status, obj = await api.dispatch(method, path, body)
        except (ValueError, KeyError) as e:
            status, obj = 400, {"error": str(e), "status": 400}
        payload = b"" if obj is None else (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode())
        reason = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
                  409: "Conflict"}.get(status, "Error")
        ctype = "text/plain" if isinstance(obj, str) else "application/json"
        await stream.send_all(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: "
                              f"{len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve(host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with trio.open_nursery() as nursery:
        api = Api(nursery)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, lambda s: handle_http(api, s), listeners)
        task_status.started(bound)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8474)
    args = ap.parse_args()
    print(f"toxiproxy-compatible API on {args.host}:{args.port}", flush=True)
    try:
        trio.run(serve, args.host, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
