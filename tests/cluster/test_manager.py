"""ClusterManager in-process: several managers on loopback with fake broker hosts.

These exercise the trio side (handshake, gossip, interest sync, duplicate routes,
dead-node detection and rejoin, bad input) without the broker. Waiting uses polling
with generous bounds; nothing asserts a duration.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import trio

from cluster import protocol as proto
from cluster.manager import ClusterConfig, ClusterManager, parse_route_url
from cluster.route import RouteLimits

WAIT_S = 15.0


class FakeHost:
    """Records what the cluster asks of the broker (route interest kept per peer object,
    as the real router does)."""

    def __init__(self, client_url: str) -> None:
        self.url = client_url
        self.interest: dict[tuple[str, str | None], int] = {}
        self.by_peer: dict[object, dict[tuple[str, str | None], int]] = {}
        self.delivered: list[tuple] = []
        self.urls: list[str] = []
        self.peers: dict[str, object] = {}
        self.peer_events: list[tuple[str, str]] = []  # ("up" | "down", server name)

    @property
    def remote(self) -> dict[tuple[str, str, str | None], int]:
        return {(peer.name, s, q): w for peer, subs in self.by_peer.items() for (s, q), w in subs.items()}

    def add_route_sub(self, peer, subject, queue, weight):
        self.peers[peer.remote_id] = peer
        self.by_peer.setdefault(peer, {})[(subject, queue)] = weight

    def remove_route_sub(self, peer, subject, queue):
        self.by_peer.get(peer, {}).pop((subject, queue), None)

    def remove_peer_subs(self, peer):
        self.by_peer.pop(peer, None)

    def deliver_routed(self, subject, reply, hdr, payload, queues):
        self.delivered.append((subject, reply, hdr, payload, queues))

    def local_interest(self):
        return [(s, q, n) for (s, q), n in self.interest.items()]

    def set_cluster_urls(self, urls):
        self.urls = list(urls)

    def client_url(self):
        return self.url

    def peer_up(self, server_name, jetstream):
        assert jetstream is False  # these nodes announce no JetStream
        self.peer_events.append(("up", server_name))

    def peer_down(self, server_name):
        self.peer_events.append(("down", server_name))


class Node:
    def __init__(self, name: str, routes: list[str], forget_after_s: float = 30.0, cluster: str = "test",
                 username: str = "", password: str = "", dynamic: bool = False, generation: str = ""):
        self.name = name
        self.host = FakeHost(f"127.0.0.1:4{name[-1]}00")
        cfg = ClusterConfig(server_id="N" + name.upper() * 3 + generation, server_name=name, name=cluster,
                            host="127.0.0.1", port=0, routes=routes, forget_after_s=forget_after_s,
                            backoff_max_s=0.5, gossip_dial_delay_s=0.3, housekeeping_interval_s=0.1,
                            limits=RouteLimits(ping_interval_s=0.5, ping_max=3),
                            username=username, password=password, dynamic_name=dynamic)
        self.mgr = ClusterManager(cfg, self.host)
        self.scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"nats-route://127.0.0.1:{self.mgr.port}"

    async def start(self, nursery: trio.Nursery) -> None:
        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            with trio.CancelScope() as scope:
                self.scope = scope
                await self.mgr.run(task_status=task_status)
        await nursery.start(runner)

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()

    def set_interest(self, subject: str, queue: str | None, count: int) -> None:
        if count:
            self.host.interest[(subject, queue)] = count
        else:
            self.host.interest.pop((subject, queue), None)
        self.mgr.local_interest_changed(subject, queue, count)

    def peer_names(self) -> set[str]:
        return {r.name for r in self.mgr.routes.values()}


async def wait_until(cond, what: str) -> None:
    with trio.move_on_after(WAIT_S):
        while not cond():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def test_single_seed_forms_full_mesh_and_sets_client_urls():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        await a.start(nursery)
        b = Node("b", [a.url])
        c = Node("c", [a.url])
        d = Node("d", [a.url])
        for n in (b, c, d):
            await n.start(nursery)
        nodes = [a, b, c, d]
        await wait_until(lambda: all(len(n.mgr.routes) == 3 for n in nodes), "full mesh of 4")
        assert c.peer_names() == {"a", "b", "d"}
        await wait_until(lambda: sorted(b.host.urls) == ["127.0.0.1:4a00", "127.0.0.1:4c00", "127.0.0.1:4d00"],
                         "client urls of the other members")
        # Exactly one connection per pair: both ends agree on which.
        for x in nodes:
            for y in nodes:
                if x is not y:
                    rx = x.mgr.routes[y.mgr.cfg.server_id]
                    ry = y.mgr.routes[x.mgr.cfg.server_id]
                    assert rx.did_solicit != ry.did_solicit
        nursery.cancel_scope.cancel()


async def test_chain_of_seeds_converges_to_full_mesh():
    """Each node only knows the previous one; gossip must still connect every pair."""
    async with trio.open_nursery() as nursery:
        nodes = [Node("a", [])]
        await nodes[0].start(nursery)
        for name in "bcde":
            n = Node(name, [nodes[-1].url])
            await n.start(nursery)
            nodes.append(n)
        await wait_until(lambda: all(len(n.mgr.routes) == 4 for n in nodes), "full mesh of 5")
        await trio.sleep(1.0)  # duplicates from simultaneous dials have been settled
        assert all(len(n.mgr.routes) == 4 for n in nodes)
        for x in nodes:
            assert x.peer_names() == {n.name for n in nodes} - {x.name}
        nursery.cancel_scope.cancel()


async def test_interest_sync_on_connect_and_incremental_and_forwarding():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        await a.start(nursery)
        a.set_interest("early.>", None, 1)
        a.set_interest("work", "q", 2)
        b = Node("b", [a.url])
        await b.start(nursery)
        await wait_until(lambda: ("a", "early.>", None) in b.host.remote, "whole interest sent on connect")
        assert b.host.remote[("a", "work", "q")] == 2
        a.set_interest("late", None, 1)
        a.set_interest("late", None, 2)  # a second local sub changes nothing on the wire
        a.set_interest("work", "q", 5)
        await wait_until(lambda: b.host.remote.get(("a", "work", "q")) == 5, "queue weight update")
        assert ("a", "late", None) in b.host.remote
        a.set_interest("late", None, 0)
        a.set_interest("work", "q", 0)
        await wait_until(lambda: ("a", "late", None) not in b.host.remote
                         and ("a", "work", "q") not in b.host.remote, "RS- applied")
        # b forwards to a through the peer object the router was given.
        peer = b.host.peers[a.mgr.cfg.server_id]
        peer.forward("early.x", "_INBOX.1", None, b"one", None)
        peer.forward("work", "", b"NATS/1.0\r\nK: v\r\n\r\n", b"two", ["q"])
        await wait_until(lambda: len(a.host.delivered) == 2, "routed messages delivered")
        assert a.host.delivered[0] == ("early.x", "_INBOX.1", None, b"one", None)
        assert a.host.delivered[1] == ("work", "", b"NATS/1.0\r\nK: v\r\n\r\n", b"two", ["q"])
        nursery.cancel_scope.cancel()


async def test_mutually_configured_routes_resolve_to_one():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        b = Node("b", [])
        await a.start(nursery)
        await b.start(nursery)
        # Configure each to dial the other at the same moment.
        a.mgr.configured_urls.append(parse_route_url(b.url))
        b.mgr.configured_urls.append(parse_route_url(a.url))
        a.mgr._start_dial(parse_route_url(b.url), configured=True, expect_id="")
        b.mgr._start_dial(parse_route_url(a.url), configured=True, expect_id="")
        await wait_until(lambda: len(a.mgr.routes) == 1 and len(b.mgr.routes) == 1, "one route each")
        await trio.sleep(1.0)  # let any losing connection finish closing
        ra = a.mgr.routes[b.mgr.cfg.server_id]
        rb = b.mgr.routes[a.mgr.cfg.server_id]
        assert ra.did_solicit != rb.did_solicit
        assert (ra.ip, ra.port) != ("", 0)
        # The survivor is the one solicited by the lower server_id ("NAAA" < "NBBB").
        assert ra.did_solicit is True
        nursery.cancel_scope.cancel()


async def test_route_to_self_is_ignored():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        await a.start(nursery)
        own = parse_route_url(a.url)
        a.mgr.configured_urls.append(own)
        a.mgr._start_dial(own, configured=True, expect_id="")
        await wait_until(lambda: own in a.mgr._self_urls, "self route detected")
        assert a.mgr.routes == {}
        await wait_until(lambda: own not in a.mgr._dialing, "stops dialing itself")
        nursery.cancel_scope.cancel()


async def test_dead_node_is_dropped_forgotten_and_rejoins():
    async with trio.open_nursery() as nursery:
        a = Node("a", [], forget_after_s=1.0)
        await a.start(nursery)
        b = Node("b", [a.url], forget_after_s=1.0)
        c = Node("c", [a.url], forget_after_s=1.0)
        await b.start(nursery)
        await c.start(nursery)
        await wait_until(lambda: all(len(n.mgr.routes) == 2 for n in (a, b, c)), "mesh of 3")
        c.set_interest("c.sub", None, 1)
        await wait_until(lambda: ("c", "c.sub", None) in a.host.remote, "c's interest at a")
        c_id = c.mgr.cfg.server_id
        c_port = c.mgr.port
        c.stop()
        await wait_until(lambda: len(a.mgr.routes) == 1 and len(b.mgr.routes) == 1, "c dropped")
        # the broker heard of c's route coming and going, by server name (Raft's evidence)
        assert a.host.peer_events.count(("up", "c")) == 1 and a.host.peer_events[-1] == ("down", "c")
        assert ("down", "c") in b.host.peer_events
        assert ("c", "c.sub", None) not in a.host.remote
        assert a.host.urls == ["127.0.0.1:4b00"]
        await wait_until(lambda: c_id not in a.mgr.membership.members
                         and c_id not in b.mgr.membership.members, "c forgotten")
        # c returns on the same port (same config) and joins cleanly.
        c2 = Node("c", [a.url], forget_after_s=1.0)
        c2.mgr.cfg.port = c_port
        c2.host.interest[("c.sub", None)] = 1
        await c2.start(nursery)
        await wait_until(lambda: all(len(n.mgr.routes) == 2 for n in (a, b, c2)), "mesh again")
        await wait_until(lambda: ("c", "c.sub", None) in b.host.remote, "c's interest re-synced")
        nursery.cancel_scope.cancel()


async def test_route_authorization():
    async with trio.open_nursery() as nursery:
        a = Node("a", [], username="ru", password="rp")
        await a.start(nursery)
        host_port = parse_route_url(a.url)
        b = Node("b", [f"nats-route://ru:rp@{host_port}"])  # credentials in the route URL
        c = Node("c", [a.url], username="ru", password="rp")  # the cluster's own credentials
        await b.start(nursery)
        await c.start(nursery)
        await wait_until(lambda: len(a.mgr.routes) == 2, "authorized routes")
        bad = proto.encode_connect(proto.RouteConnect(name="NZZZ", cluster="test", user="ru", password="no"))
        out = await _raw_exchange(a.mgr.port, bad)
        assert b'"auth_required":true' in out and out.endswith(b"-ERR 'Authorization Violation'\r\n")
        nursery.cancel_scope.cancel()


async def test_dynamic_cluster_name_adopts_the_configured_one():
    async with trio.open_nursery() as nursery:
        a = Node("a", [], cluster="fixed")
        await a.start(nursery)
        b = Node("b", [a.url], cluster="zzdynamic", dynamic=True)
        await b.start(nursery)
        await wait_until(lambda: len(b.mgr.routes) == 1, "route despite b's generated name")
        assert b.mgr.cfg.name == "fixed" and not b.mgr.cfg.dynamic_name
        nursery.cancel_scope.cancel()


async def _raw_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    with trio.move_on_after(WAIT_S):
        await stream.send_all(data)
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            out += chunk
    await stream.aclose()
    return out


async def test_bad_input_gets_error_and_close_node_keeps_serving():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        await a.start(nursery)
        b = Node("b", [a.url])
        await b.start(nursery)
        await wait_until(lambda: len(a.mgr.routes) == 1, "a-b route")
        port = a.mgr.port
        out = await _raw_exchange(port, b"garbage here\r\n")
        assert out.startswith(b"INFO {") and out.endswith(b"-ERR 'Authorization Violation'\r\n")
        client = b'CONNECT {"verbose":false,"pedantic":false,"lang":"python3","version":"2.16.0","protocol":1}\r\nPING\r\n'
        out = await _raw_exchange(port, client)
        assert out.endswith(b"-ERR 'attempted to connect to route port'\r\n")
        other = proto.encode_connect(proto.RouteConnect(name="NZZZ", cluster="other"))
        out = await _raw_exchange(port, other)
        assert out.endswith(b"""-ERR 'Rejecting connection, cluster name "other" does not match "test"'\r\n""")
        good = proto.encode_connect(proto.RouteConnect(name="NZZZ", cluster="test"))
        good += proto.encode_info(proto.RouteInfo(server_id="NZZZ", server_name="z", cluster="test",
                                                  host="127.0.0.1", port=1))
        out = await _raw_exchange(port, good + b"RMSG $G foo 3\r\nabcdef\r\n")
        assert out.endswith(b"-ERR 'Unknown Protocol Operation'\r\n")
        # The node still serves its real peer.
        assert set(a.mgr.routes) == {b.mgr.cfg.server_id}
        a.set_interest("still", None, 1)
        await wait_until(lambda: ("a", "still", None) in b.host.remote, "interest still flows")
        nursery.cancel_scope.cancel()


async def test_stale_route_is_cut_when_peer_stops_answering():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        await a.start(nursery)
        # A fake peer that completes the handshake and then never answers PINGs.
        stream = await trio.open_tcp_stream("127.0.0.1", a.mgr.port)
        hello = proto.encode_connect(proto.RouteConnect(name="NQQQ", cluster="test"))
        hello += proto.encode_info(proto.RouteInfo(server_id="NQQQ", server_name="q", cluster="test",
                                                   host="127.0.0.1", port=1))
        await stream.send_all(hello)
        await wait_until(lambda: "NQQQ" in a.mgr.routes, "fake peer registered")
        received = b""
        with trio.move_on_after(WAIT_S):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
        assert b"-ERR 'Stale Connection'" in received
        await wait_until(lambda: "NQQQ" not in a.mgr.routes, "stale route dropped")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_kills_restarts_and_interest_changes_converge(seed):
    """Seeded fault schedule: kill and restart nodes (restarts get a new server id, as a
    real process does) while interest changes; afterwards every pair is connected once
    and every node holds exactly the current interest of every other node."""
    rng = random.Random(seed)
    names = ["a", "b", "c", "d"]
    async with trio.open_nursery() as nursery:
        first = Node("a", [])
        await first.start(nursery)
        seed_url = first.url
        alive: dict[str, Node] = {"a": first}
        ports: dict[str, int] = {"a": first.mgr.port}
        for name in names[1:]:
            alive[name] = Node(name, [seed_url])
            await alive[name].start(nursery)
            ports[name] = alive[name].mgr.port
        interest: dict[str, dict[tuple[str, str | None], int]] = {n: {} for n in names}
        for step in range(10):
            action = rng.choice(["kill", "restart", "interest", "interest"])
            if action == "kill" and len(alive) > 2:
                victim = rng.choice(sorted(alive))
                alive.pop(victim).stop()
            elif action == "restart" and len(alive) < len(names):
                name = rng.choice(sorted(set(names) - set(alive)))
                alive[name] = await _restart(nursery, name, seed_url, ports[name], interest[name], step)
            else:
                name = rng.choice(sorted(alive))
                key = (rng.choice(["s.1", "s.2", "s.>"]), rng.choice([None, "q"]))
                count = rng.randint(0, 3)
                interest[name][key] = count
                alive[name].set_interest(key[0], key[1], count)
                if not count:
                    del interest[name][key]
            await trio.sleep(rng.uniform(0, 0.4))
        for name in sorted(set(names) - set(alive)):
            alive[name] = await _restart(nursery, name, seed_url, ports[name], interest[name], 99)
        nodes = list(alive.values())
        await wait_until(lambda: all(len(n.mgr.routes) == 3 for n in nodes), f"full mesh (seed {seed})")

        def expected(me: str) -> dict:
            return {(o, s, q): (w if q else 1) for o in names if o != me for (s, q), w in interest[o].items()}

        await wait_until(lambda: all(n.host.remote == expected(n.name) for n in nodes),
                         f"interest converged (seed {seed})")
        nursery.cancel_scope.cancel()


async def _restart(nursery, name: str, seed_url: str, port: int, interest: dict, gen: int) -> Node:
    node = Node(name, [seed_url], generation=str(gen))
    node.mgr.cfg.port = port
    node.host.interest.update(interest)
    with trio.move_on_after(WAIT_S):
        while True:  # the old listener's port may take a moment to be free
            try:
                await node.start(nursery)
                return node
            except OSError:
                await trio.sleep(0.1)
    raise AssertionError(f"could not restart {name} on port {port}")


async def test_route_that_stops_reading_is_cut_as_slow_consumer():
    async with trio.open_nursery() as nursery:
        a = Node("a", [])
        a.mgr.cfg.limits = RouteLimits(ping_interval_s=30, pending_bytes_max=256 * 1024, write_timeout_s=30)
        await a.start(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", a.mgr.port)  # never reads after this
        hello = proto.encode_connect(proto.RouteConnect(name="NSSS", cluster="test"))
        hello += proto.encode_info(proto.RouteInfo(server_id="NSSS", server_name="s", cluster="test",
                                                   host="127.0.0.1", port=1))
        await stream.send_all(hello + b"RS+ $G big\r\n")
        await wait_until(lambda: ("s", "big", None) in a.host.remote, "fake peer's interest")
        peer = a.host.peers["NSSS"]
        payload = b"x" * 4096
        with trio.move_on_after(WAIT_S):
            while "NSSS" in a.mgr.routes:
                for _ in range(64):
                    peer.forward("big", "", None, payload, None)  # never blocks, even now
                await trio.sleep(0)
        assert "NSSS" not in a.mgr.routes
        assert ("s", "big", None) not in a.host.remote
        await stream.aclose()
        nursery.cancel_scope.cancel()


def test_pure_modules_do_not_import_trio():
    code = "import sys, cluster.protocol, cluster.membership; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
