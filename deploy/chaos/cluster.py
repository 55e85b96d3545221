"""The clusters nats-chaos can test, behind one interface the nemesis drives.

LocalCluster   three nodes it starts itself from a server command (nats-server, or
               `python3 -m broker`). Every route between two nodes crosses a proxy of the
               toxiproxy-API server (one proxy per ordered pair, driven by toxiproxy-python);
               each node advertises an unreachable cluster address so route gossip cannot
               bypass the proxies. Optionally every store directory sits on lazyfs (power loss).
ComposeCluster the compose.yaml cluster, faulted with docker kill/start/pause/unpause/restart.
UrlCluster     any servers by URL: proxies sit between the test's clients and each server,
               so only network faults apply (the clients' view of the cluster).

Every method that changes the cluster is async (blocking calls run in a thread); close()
is synchronous and safe to call more than once, so it runs on any exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from toxiproxy import Toxiproxy

from .ports import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PORT_WAIT_S = 30.0
TOXICS = {
    "latency": {"type": "latency", "attributes": {"latency": 100, "jitter": 50}},
    "bandwidth": {"type": "bandwidth", "attributes": {"rate": 8}},
    "reset-peer": {"type": "reset_peer", "attributes": {"timeout": 100}},
    "timeout": {"type": "timeout", "attributes": {"timeout": 0}},
}


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def wait_port(port: int, timeout: float = PORT_WAIT_S, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if await asyncio.to_thread(port_open, port):
            return True
        await asyncio.sleep(0.1)
    return False


class ToxiproxyServer:
    """deploy/chaos/toxiproxy_server.py as a subprocess, plus a toxiproxy-python client."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.api: Toxiproxy | None = None

    async def start(self) -> Toxiproxy:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(HERE / "toxiproxy_server.py"), "--port", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not await wait_port(self.port, 20, self.proc):
            raise RuntimeError(f"toxiproxy server did not start (log: {self.log_path})")
        self.api = Toxiproxy()
        self.api.update_api_consumer("127.0.0.1", self.port)
        return self.api

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class ProxyNet:
    """Named proxies, each an edge between two node names (a route, or client -> node)."""

    def __init__(self, toxi: ToxiproxyServer):
        self.toxi = toxi
        self.edges: dict[str, tuple[str, str]] = {}
        self.proxies: dict = {}

    async def add(self, name: str, edge: tuple[str, str], upstream_port: int) -> int:
        listen_port = free_port()
        proxy = await asyncio.to_thread(self.toxi.api.create, upstream=f"127.0.0.1:{upstream_port}", name=name,
                                        listen=f"127.0.0.1:{listen_port}")
        self.proxies[name] = proxy
        self.edges[name] = edge
        return listen_port

    def touching(self, names: list[str]) -> list[str]:
        return [p for p, (a, b) in self.edges.items() if a in names or b in names]

    async def isolate(self, names: list[str]) -> None:
        """Disable every proxy between `names` and the other nodes."""
        cut = [p for p, (a, b) in self.edges.items() if (a in names) != (b in names)]
        for p in cut:
            await asyncio.to_thread(self.proxies[p].disable)

    async def toxic(self, kind: str, names: list[str]) -> None:
        spec = TOXICS[kind]
        for p in self.touching(names):
            for stream in ("upstream", "downstream"):
                await asyncio.to_thread(self.proxies[p].add_toxic, type=spec["type"], stream=stream,
                                        name=f"{kind}_{stream}", attributes=dict(spec["attributes"]))

    async def heal(self) -> None:
        if self.toxi.api is not None and self.proxies:
            await asyncio.to_thread(self.toxi.api.reset)  # every proxy enabled, every toxic removed


class LocalNode:
    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.client_port = free_port()
        self.http_port = free_port()
        self.cluster_port = free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = self.dir / "store"
        self.backing = self.dir / "backing"
        self.log = self.dir / "server.log"
        self.argv: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.fuse: subprocess.Popen | None = None
        self.fuse_status = self.dir / "lazyfs.json"
        self.paused = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fuse_state(self) -> dict:
        try:
            return json.loads(self.fuse_status.read_text())
        except (OSError, ValueError):
            return {}


class LocalCluster:
    """Three (or n) local server processes with proxied routes; see the module docstring."""

    def __init__(self, server: str, workdir: Path, n: int = 3, power_loss: bool = False,
                 style: str = "auto", sync_always: bool = False, out=sys.stderr):
        self.server = shlex.split(server)
        if not self.server:
            raise ValueError("empty --server command")
        if style == "auto":
            style = "conf" if "nats-server" in os.path.basename(self.server[0]) else "flags"
        self.style = style
        self.workdir = workdir
        self.nodes = {f"n{i}": LocalNode(f"n{i}", workdir) for i in range(1, n + 1)}
        self.power_loss_enabled = power_loss
        self.sync_always = sync_always
        self.toxi = ToxiproxyServer(workdir / "toxiproxy.log")
        self.net = ProxyNet(self.toxi)
        self.out = out
        self._dead = socket.socket()  # bound, never listening: the address every node advertises
        self._dead.bind(("127.0.0.1", 0))
        self.capabilities = {"process", "network"} | ({"fuse"} if power_loss else set())

    def node_names(self) -> list[str]:
        return list(self.nodes)

    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.client_port}" for n in self.nodes.values()]

    def describe(self) -> str:
        return (f"local {len(self.nodes)}-node cluster of `{shlex.join(self.server)}` ({self.style} config), routes "
                f"through toxiproxy-API proxies{', stores on lazyfs' if self.power_loss_enabled else ''}; "
                f"workdir {self.workdir}")

    # ---- setup -----------------------------------------------------------------------
    async def setup(self) -> None:
        await self.toxi.start()
        route_urls: dict[str, list[str]] = {n: [] for n in self.nodes}
        for a in self.nodes:
            for b, nb in self.nodes.items():
                if a != b:
                    port = await self.net.add(f"{a}_to_{b}", (a, b), nb.cluster_port)
                    route_urls[a].append(f"nats://127.0.0.1:{port}")
        for node in self.nodes.values():
            if self.power_loss_enabled:
                await self.mount(node)
            else:
                node.store.mkdir(exist_ok=True)
            node.argv = self.argv(node, route_urls[node.name])
        for node in self.nodes.values():
            self.spawn(node)
        for node in self.nodes.values():
            if not await wait_port(node.client_port, PORT_WAIT_S, node.proc):
                raise RuntimeError(f"{node.name} did not start: see {node.log}\n{tail(node.log)}")

    def argv(self, node: LocalNode, routes: list[str]) -> list[str]:
        dead = f"127.0.0.1:{self._dead.getsockname()[1]}"
        if self.style == "flags":
            return self.server + ["-a", "127.0.0.1", "-p", str(node.client_port), "-m", str(node.http_port),
                                  "-n", node.name, "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
                                  "--cluster_advertise", dead, "--routes", ",".join(routes),
                                  "--cluster_name", "chaos", "-js", "-sd", str(node.store)]
        conf = node.dir / "node.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        conf.write_text(
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.http_port}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(node.store))}{sync}\n}}\n"
            f"cluster {{\n  name: chaos\n  listen: 127.0.0.1:{node.cluster_port}\n"
            f"  advertise: {json.dumps(dead)}\n"
            f"  routes: [\n" + "".join(f"    {json.dumps(r)}\n" for r in routes) + "  ]\n}\n")
        return self.server + ["-c", str(conf)]

    async def mount(self, node: LocalNode) -> None:
        node.backing.mkdir(exist_ok=True)
        node.store.mkdir(exist_ok=True)
        with open(node.dir / "lazyfs.log", "ab") as log:
            node.fuse = subprocess.Popen([sys.executable, "-m", "deploy.chaos.lazyfs", str(node.backing),
                                          str(node.store), "--status", str(node.fuse_status)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + 20
        while not node.fuse_state().get("mounted"):
            if node.fuse.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs for {node.name} did not mount:\n{tail(node.dir / 'lazyfs.log')}")
            await asyncio.sleep(0.1)

    def spawn(self, node: LocalNode) -> None:
        with open(node.log, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {shlex.join(node.argv)}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(node.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        node.paused = False

    # ---- faults --------------------------------------------------------------------------
    async def kill(self, names: list[str]) -> None:
        for name in names:
            node = self.nodes[name]
            if node.alive():
                node.proc.send_signal(signal.SIGKILL)
        for name in names:
            node = self.nodes[name]
            if node.proc is not None:
                await asyncio.to_thread(node.proc.wait, 10)
            node.paused = False

    async def start(self, names: list[str]) -> None:
        for name in names:
            node = self.nodes[name]
            if not node.alive():
                self.spawn(node)
        for name in names:
            node = self.nodes[name]
            if not await wait_port(node.client_port, PORT_WAIT_S, node.proc):
                print(f"nats-chaos: {name} did not open its client port after a restart (see {node.log})",
                      file=self.out)

    async def pause(self, names: list[str]) -> None:
        for name in names:
            node = self.nodes[name]
            if node.alive():
                node.proc.send_signal(signal.SIGSTOP)
                node.paused = True

    async def resume(self, names: list[str]) -> None:
        for name in names:
            node = self.nodes[name]
            if node.alive():
                node.proc.send_signal(signal.SIGCONT)
            node.paused = False

    async def restart(self, names: list[str]) -> None:
        await self.kill(names)
        await self.start(names)

    async def isolate(self, names: list[str]) -> None:
        await self.net.isolate(names)

    async def toxic(self, kind: str, names: list[str]) -> None:
        await self.net.toxic(kind, names)

    async def heal_network(self) -> None:
        await self.net.heal()

    async def power_loss(self, names: list[str]) -> str:
        """SIGKILL the nodes, then have lazyfs drop every write they had not fsynced."""
        await self.kill(names)
        parts = []
        for name in names:
            node = self.nodes[name]
            before = node.fuse_state()
            node.fuse.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            state = before
            while state.get("drops", 0) <= before.get("drops", 0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                state = node.fuse_state()
            lost = state.get("dropped_bytes", 0) - before.get("dropped_bytes", 0)
            files = state.get("dropped_files", 0) - before.get("dropped_files", 0)
            parts.append(f"{name}: dropped {lost // 1024} KiB unsynced in {files} files")
        return "; ".join(parts)

    async def heal_all(self) -> None:
        await self.heal_network()
        await self.resume([n for n, node in self.nodes.items() if node.paused])
        await self.start(self.node_names())

    # ---- teardown ----------------------------------------------------------------------------
    def close(self) -> None:
        for node in self.nodes.values():
            if node.alive():
                if node.paused:
                    node.proc.send_signal(signal.SIGCONT)
                node.proc.kill()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for node in self.nodes.values():
            if node.fuse is not None:
                if node.fuse.poll() is None:
                    node.fuse.terminate()
                    try:
                        node.fuse.wait(10)
                    except subprocess.TimeoutExpired:
                        node.fuse.kill()
                        node.fuse.wait(5)
                if os.path.ismount(node.store):
                    subprocess.run(["fusermount3", "-u", "-z", str(node.store)], check=False,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                node.fuse = None
        self.toxi.close()
        self._dead.close()


class ComposeCluster:
    """The compose.yaml cluster (started beforehand, e.g. with deploy/cluster-up.sh)."""

    capabilities = {"process", "container"}
    PORTS = {"n1": 4222, "n2": 4223, "n3": 4224}

    def __init__(self, project: str | None, out=sys.stderr):
        self.project = project
        self.out = out
        self.ids: dict[str, str] = {}
        self.paused: set[str] = set()

    def node_names(self) -> list[str]:
        return list(self.PORTS)

    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.PORTS.values()]

    def describe(self) -> str:
        return f"compose cluster (project {self.project or 'default'}), faults through docker"

    def env(self) -> dict:
        env = dict(os.environ)
        if self.project:
            env["COMPOSE_PROJECT_NAME"] = self.project
        return env

    async def setup(self) -> None:
        for name in self.PORTS:
            r = await asyncio.to_thread(subprocess.run, [str(REPO / "deploy" / "compose.sh"), "ps", "-q", name],
                                        env=self.env(), capture_output=True, text=True, timeout=60)
            cid = r.stdout.strip()
            if r.returncode or not cid:
                raise RuntimeError(f"no container for service {name} (is the compose cluster up? "
                                   f"deploy/cluster-up.sh): {r.stderr.strip()}")
            self.ids[name] = cid

    async def docker(self, *args: str) -> None:
        r = await asyncio.to_thread(subprocess.run, ["docker", *args], capture_output=True, text=True, timeout=120)
        if r.returncode:
            print(f"nats-chaos: docker {' '.join(args)}: {r.stderr.strip()}", file=self.out)

    async def kill(self, names):
        for n in names:
            await self.docker("kill", self.ids[n])
            self.paused.discard(n)

    async def start(self, names):
        for n in names:
            await self.docker("start", self.ids[n])
        for n in names:
            await wait_port(self.PORTS[n], 60)

    async def pause(self, names):
        for n in names:
            await self.docker("pause", self.ids[n])
            self.paused.add(n)

    async def resume(self, names):
        for n in names:
            if n in self.paused:
                await self.docker("unpause", self.ids[n])
                self.paused.discard(n)

    async def restart(self, names):
        for n in names:
            await self.docker("restart", self.ids[n])
        for n in names:
            await wait_port(self.PORTS[n], 60)

    async def heal_network(self):
        return None

    async def heal_all(self):
        await self.resume(list(self.paused))
        await self.start(self.node_names())

    def close(self) -> None:
        for n in list(self.paused):
            subprocess.run(["docker", "unpause", self.ids[n]], check=False, capture_output=True)


class UrlCluster:
    """Servers given by URL; proxies between this test's clients and each server."""

    capabilities = {"network"}

    def __init__(self, urls: list[str], workdir: Path, out=sys.stderr):
        self.targets = urls
        self.toxi = ToxiproxyServer(workdir / "toxiproxy.log")
        self.net = ProxyNet(self.toxi)
        self.proxy_urls: dict[str, str] = {}
        self.out = out

    def node_names(self) -> list[str]:
        return list(self.proxy_urls)

    def urls(self) -> list[str]:
        return list(self.proxy_urls.values())

    def describe(self) -> str:
        return f"servers {', '.join(self.targets)} behind client-side proxies (network faults only)"

    async def setup(self) -> None:
        from urllib.parse import urlparse

        await self.toxi.start()
        for i, url in enumerate(self.targets):
            u = urlparse(url if "://" in url else f"nats://{url}")
            name = await asyncio.to_thread(server_name, u.hostname, u.port or 4222) or f"s{i + 1}"
            # The proxy's upstream is this server's real address, not loopback.
            listen = free_port()
            proxy = await asyncio.to_thread(self.toxi.api.create, upstream=f"{u.hostname}:{u.port or 4222}",
                                            name=f"client_to_{name}", listen=f"127.0.0.1:{listen}")
            self.net.proxies[f"client_to_{name}"] = proxy
            self.net.edges[f"client_to_{name}"] = ("client", name)
            self.proxy_urls[name] = f"nats://127.0.0.1:{listen}"

    async def isolate(self, names):
        await self.net.isolate(names)

    async def toxic(self, kind, names):
        await self.net.toxic(kind, names)

    async def heal_network(self):
        await self.net.heal()

    async def heal_all(self):
        await self.heal_network()

    def close(self) -> None:
        self.toxi.close()


def server_name(host: str, port: int) -> str | None:
    """The server_name in the INFO line a server sends first."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            data = b""
            while not data.endswith(b"\r\n") and len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        op, _, body = data.decode(errors="replace").partition(" ")
        return json.loads(body).get("server_name") if op == "INFO" else None
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
