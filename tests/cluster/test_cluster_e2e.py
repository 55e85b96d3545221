"""Three real server processes on loopback, driven by nats-py.

Each node is started as `python -m broker -p P -m M --cluster nats://127.0.0.1:CP
--routes nats://127.0.0.1:CP1 --cluster_name test -n nodeX`: every node only knows
node 1 as its seed. nats-py is asyncio, so tests are sync functions that call
asyncio.run (pytest-trio owns async tests here).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import urllib.request
from collections import Counter

import nats
import pytest
from nats.errors import NoRespondersError

from tests.cluster.tcpproxy import TcpProxy
from tests.conftest import ServerProc, free_port, our_server, reference

WAIT_S = 20.0


def start_cluster(tmp_path, n: int = 3) -> list[ServerProc]:
    cports = [free_port() for _ in range(n)]
    seed = f"nats://127.0.0.1:{cports[0]}"
    procs = []
    for i in range(n):
        p = our_server(tmp_path, "--cluster", f"nats://127.0.0.1:{cports[i]}", "--routes", seed,
                       "--cluster_name", "test", "-n", f"node{i + 1}", jetstream=False, name=f"node{i + 1}")
        p.cluster_port = cports[i]
        procs.append(p.start())
    return procs


def http_json(proc: ServerProc, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(cond, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError as exc:  # a node still starting
            last_exc = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} ({last_exc})")


def meshed(procs: list[ServerProc]) -> bool:
    return all(http_json(p, "/routez")["num_routes"] == len(procs) - 1 for p in procs)


def remote_interest(proc: ServerProc, entry: str) -> int:
    """How many of proc's routes carry `entry` ("subject" or "subject queue")."""
    subject, _, queue = entry.partition(" ")
    rz = http_json(proc, "/routez?subs=detail")
    return sum(1 for r in rz["routes"] for d in r.get("subscriptions_list_detail", [])
               if d["subject"] == subject and d.get("qgroup", "") == queue)


@pytest.fixture
def cluster(tmp_path):
    procs = start_cluster(tmp_path)
    try:
        wait_for(lambda: meshed(procs), "full mesh")
        yield procs
    finally:
        for p in procs:
            p.stop()


def test_single_seed_full_mesh_routez_and_varz(cluster):
    names = {f"node{i}" for i in (1, 2, 3)}
    for p in cluster:
        rz = http_json(p, "/routez")
        me = rz["server_name"]
        assert {r["remote_name"] for r in rz["routes"]} == names - {me}
        for r in rz["routes"]:
            for key in ("rid", "remote_id", "did_solicit", "is_configured", "ip", "port", "start", "rtt",
                        "uptime", "idle", "pending_size", "in_msgs", "out_msgs", "subscriptions"):
                assert key in r
        listed = http_json(p, "/routez?subs=1")["routes"][0]
        assert "subscriptions_list" in listed and "subscriptions_list_detail" not in listed
        v = http_json(p, "/varz")
        assert v["cluster"]["name"] == "test"
        assert v["cluster"]["cluster_port"] == p.cluster_port
        assert v["cluster"]["urls"] == [f"127.0.0.1:{cluster[0].cluster_port}"]
        assert v["routes"] == 2
        others = {f"127.0.0.1:{q.port}" for q in cluster if q is not p}
        assert others <= set(v["connect_urls"])


def test_pub_on_node1_reaches_subs_and_wildcards_on_nodes_2_and_3(cluster):
    n1, n2, n3 = cluster

    async def main():
        c1, c2, c3 = [await nats.connect(p.url) for p in cluster]
        got: dict[str, list] = {"n2": [], "n3": [], "n3w": []}
        await c2.subscribe("orders.*", cb=collect(got["n2"]))
        await c3.subscribe("orders.>", cb=collect(got["n3w"]))
        await c3.subscribe("orders.new", cb=collect(got["n3"]))
        await c2.flush()
        await c3.flush()
        await _until(lambda: remote_interest(n1, "orders.*") == 1 and remote_interest(n1, "orders.>") == 1
                 and remote_interest(n1, "orders.new") == 1, "interest at node1")
        for i in range(50):
            await c1.publish("orders.new", b"%d" % i, headers={"K": str(i)} if i % 2 else None)
        await c1.publish("orders.eu.old", b"deep")
        await c1.flush()
        await _until(lambda: len(got["n2"]) == 50 and len(got["n3"]) == 50 and len(got["n3w"]) == 51)
        assert [m.data for m in got["n2"]] == [b"%d" % i for i in range(50)]
        assert got["n2"][1].headers == {"K": "1"}
        assert got["n3w"][-1].subject == "orders.eu.old"
        await asyncio.sleep(0.3)
        assert len(got["n2"]) == 50 and len(got["n3"]) == 50 and len(got["n3w"]) == 51  # no duplicates
        for c in (c1, c2, c3):
            await c.close()

    asyncio.run(main())


def test_queue_group_across_nodes_delivers_each_message_once(cluster):
    async def main():
        conns = [await nats.connect(p.url) for p in cluster]
        seen: list[tuple[int, bytes]] = []
        for i, c in enumerate(conns):
            await c.subscribe("jobs", queue="workers", cb=collect(seen, tag=i))
            await c.flush()
        for p in cluster:
            await _until(lambda p=p: remote_interest(p, "jobs workers") == 2, "queue interest everywhere")
        total = 0
        for src in (0, 1):
            for k in range(150):
                await conns[src].publish("jobs", b"%d-%d" % (src, k))
                total += 1
            await conns[src].flush()
        await _until(lambda: len(seen) >= total)
        await asyncio.sleep(0.3)
        payloads = Counter(m.data for _, m in seen)
        assert len(seen) == total and all(v == 1 for v in payloads.values())
        per_node = Counter(i for i, _ in seen)
        assert set(per_node) == {0, 1, 2}  # spread cluster-wide, never duplicated
        for c in conns:
            await c.close()

    asyncio.run(main())


def test_request_reply_and_no_responders_across_nodes(cluster):
    n1, n2, n3 = cluster

    async def main():
        c1, c3 = await nats.connect(n1.url), await nats.connect(n3.url)

        async def svc(m):
            await m.respond(b"echo:" + m.data)

        await c3.subscribe("svc.echo", cb=svc)
        await c3.flush()
        await _until(lambda: remote_interest(n1, "svc.echo") == 1, "service interest at node1")
        for i in range(20):
            r = await c1.request("svc.echo", b"%d" % i, timeout=5)
            assert r.data == b"echo:%d" % i
        with pytest.raises(NoRespondersError):
            await c1.request("svc.nobody", b"x", timeout=5)
        await c1.close()
        await c3.close()

    asyncio.run(main())


def test_killed_node_others_keep_serving_and_client_fails_over(cluster):
    n1, n2, n3 = cluster

    async def main():
        reconnected = asyncio.Event()

        async def on_reconnect():
            reconnected.set()

        # The client only knows node 3; it learns the others from INFO connect_urls.
        c3 = await nats.connect(n3.url, reconnected_cb=on_reconnect, reconnect_time_wait=0.2,
                                max_reconnect_attempts=-1)
        assert {u.netloc for u in c3.discovered_servers} >= {f"127.0.0.1:{n1.port}", f"127.0.0.1:{n2.port}"}
        got: list = []
        await c3.subscribe("after.kill", cb=collect(got))
        await c3.flush()
        n3.kill()
        await asyncio.wait_for(reconnected.wait(), WAIT_S)
        assert c3.connected_url.port in (n1.port, n2.port)
        await c3.flush()
        await _until(lambda: http_json(n1, "/routez")["num_routes"] == 1
                 and http_json(n2, "/routez")["num_routes"] == 1, "survivors keep their route")
        await _until(lambda: remote_interest(n1, "after.kill") + remote_interest(n2, "after.kill") == 1,
                     "the failed-over subscription's interest reached the other survivor")
        c1, c2 = await nats.connect(n1.url), await nats.connect(n2.url)
        await c1.publish("after.kill", b"one")
        await c2.publish("after.kill", b"two")
        await c1.flush()
        await c2.flush()
        await _until(lambda: len(got) == 2)
        assert sorted(m.data for m in got) == [b"one", b"two"]
        for c in (c1, c2, c3):
            await c.close()

    asyncio.run(main())


def test_restarted_node_rejoins_and_interest_is_resynchronised(cluster):
    n1, n2, n3 = cluster

    async def main():
        c2 = await nats.connect(n2.url)
        got: list = []
        await c2.subscribe("resync.>", cb=collect(got))
        await c2.subscribe("resync.q", queue="g", cb=collect(got))
        await c2.flush()
        # Cut every route of node 1 by restarting it (same ports, new server id).
        n1.kill()
        await _until(lambda: http_json(n2, "/routez")["num_routes"] == 1, "node2 notices node1 is gone")
        n1.start()
        await _until(lambda: meshed(cluster), "full mesh again")
        await _until(lambda: remote_interest(n1, "resync.>") == 1 and remote_interest(n1, "resync.q g") == 1,
                 "node2's interest re-sent to the restarted node1")
        c1 = await nats.connect(n1.url)
        await c1.publish("resync.a", b"a")
        await c1.publish("resync.q", b"q")
        await c1.flush()
        await _until(lambda: len(got) == 3)  # resync.a once; resync.q to the plain and the queue sub
        assert Counter(m.data for m in got) == {b"a": 1, b"q": 2}
        await c1.close()
        await c2.close()

    asyncio.run(main())


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_route_cut_and_restored_resynchronises_interest(tmp_path, fault):
    """Two live nodes whose every route passes through a proxy (each advertises its
    proxy with --cluster_advertise). The proxies cut the routes (reset, or a black hole
    noticed by route PINGs); interest changes while partitioned; after healing, the
    routes come back and each side holds exactly the other's current interest."""
    cports = [free_port() for _ in range(2)]
    proxies = [TcpProxy(cp) for cp in cports]
    procs: list[ServerProc] = []
    for i in range(2):
        procs.append(our_server(
            tmp_path, "--cluster", f"nats://127.0.0.1:{cports[i]}", "--cluster_advertise",
            f"127.0.0.1:{proxies[i].port}", "--routes", f"nats://127.0.0.1:{proxies[0].port}",
            "--cluster_name", "test", "-n", f"px{i + 1}", jetstream=False, name=f"px{i + 1}").start())
    n1, n2 = procs

    async def main():
        await _until(lambda: meshed(procs), "route through the proxies")
        c1, c2 = await nats.connect(n1.url), await nats.connect(n2.url)
        got: list = []
        await c2.subscribe("before.cut", cb=collect(got))
        gone = await c2.subscribe("gone.sub", cb=collect(got))
        await c2.flush()
        await _until(lambda: remote_interest(n1, "before.cut") == 1 and remote_interest(n1, "gone.sub") == 1,
                     "interest before the cut")
        for px in proxies:
            getattr(px, fault)()
        await _until(lambda: http_json(n1, "/routez")["num_routes"] == 0
                     and http_json(n2, "/routez")["num_routes"] == 0, "both sides notice the cut")
        await c2.subscribe("during.cut", cb=collect(got))
        await c2.subscribe("during.q", queue="g", cb=collect(got))
        await gone.unsubscribe()
        await c2.flush()
        for px in proxies:
            px.heal()
        await _until(lambda: meshed(procs), "routes restored")
        await _until(lambda: remote_interest(n1, "before.cut") == 1 and remote_interest(n1, "during.cut") == 1
                     and remote_interest(n1, "during.q g") == 1, "interest re-synchronised")
        assert remote_interest(n1, "gone.sub") == 0
        for subj in ("before.cut", "during.cut", "during.q", "gone.sub"):
            await c1.publish(subj, subj.encode())
        await c1.flush()
        await _until(lambda: len(got) == 3, "deliveries after healing")
        await asyncio.sleep(0.3)
        assert sorted(m.data for m in got) == [b"before.cut", b"during.cut", b"during.q"]
        await c1.close()
        await c2.close()

    try:
        asyncio.run(main())
    finally:
        for p in procs:
            p.stop()
        for px in proxies:
            px.close()


def test_route_interop_with_a_real_nats_server_node(tmp_path):
    """Bonus: one nats-server node and one of ours form a cluster (our side dials)."""
    cports = [free_port() for _ in range(2)]
    go = reference(tmp_path, "--cluster", f"nats://127.0.0.1:{cports[0]}", "--cluster_name", "mix",
                   "-n", "go1", jetstream=False, name="go1").start()
    py = our_server(tmp_path, "--cluster", f"nats://127.0.0.1:{cports[1]}", "--routes",
                    f"nats://127.0.0.1:{cports[0]}", "--cluster_name", "mix", "-n", "py2",
                    jetstream=False, name="py2").start()

    async def one_way(src: ServerProc, dst: ServerProc) -> None:
        ca, cb = await nats.connect(src.url), await nats.connect(dst.url)
        got: list = []
        await cb.subscribe("mix.>", cb=collect(got))
        await cb.subscribe("mixq", queue="g", cb=collect(got))

        async def svc(m):
            await m.respond(b"r:" + m.data)

        await cb.subscribe("mix.svc", cb=svc)
        await cb.flush()
        reply = None
        for _ in range(100):  # until the interest has crossed the route
            try:
                reply = await ca.request("mix.svc", b"hi", timeout=1)
                break
            except (NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)
        assert reply is not None and reply.data == b"r:hi"
        got.clear()
        await ca.publish("mix.a", b"plain")
        await ca.publish("mix.b", b"hdr", headers={"A": "b"})
        await ca.publish("mixq", b"queue")
        await ca.flush()
        await _until(lambda: len(got) == 3, "deliveries across the mixed route")
        assert sorted(m.data for m in got) == [b"hdr", b"plain", b"queue"]
        assert next(m for m in got if m.data == b"hdr").headers == {"A": "b"}
        await ca.close()
        await cb.close()

    async def main():
        await _until(lambda: http_json(py, "/routez")["num_routes"] == 1, "route to nats-server")
        await one_way(go, py)
        await one_way(py, go)

    try:
        asyncio.run(main())
    finally:
        py.stop()
        go.stop()


def test_lame_duck_node_is_no_longer_offered_to_clients(cluster):
    n1, n2, n3 = cluster
    url3 = f"127.0.0.1:{n3.port}"
    assert url3 in http_json(n1, "/varz")["connect_urls"]

    async def main():
        infos: list = []
        c1 = await nats.connect(n1.url)
        orig = c1._process_info

        def spy(info, initial_connection=False):
            infos.append(info)
            return orig(info, initial_connection)

        c1._process_info = spy
        n3.signal(signal.SIGUSR2)
        await _until(lambda: url3 not in http_json(n1, "/varz")["connect_urls"]
                     and url3 not in http_json(n2, "/varz")["connect_urls"], "node3's URL withdrawn")
        await _until(lambda: any(url3 not in i.get("connect_urls", [url3]) for i in infos),
                     "async INFO without node3 sent to clients of node1")
        assert http_json(n1, "/routez")["num_routes"] == 2  # still routed while draining
        await c1.close()

    asyncio.run(main())


def test_clients_learn_new_members_by_async_info(tmp_path):
    cports = [free_port() for _ in range(3)]
    seed = f"nats://127.0.0.1:{cports[0]}"
    procs: list[ServerProc] = []

    def add(i: int) -> ServerProc:
        p = our_server(tmp_path, "--cluster", f"nats://127.0.0.1:{cports[i]}", "--routes", seed,
                       "--cluster_name", "test", "-n", f"node{i + 1}", jetstream=False, name=f"node{i + 1}")
        procs.append(p.start())
        return p

    async def main():
        discovered = []

        async def on_discovered():
            discovered.append(1)

        n1 = add(0)
        c = await nats.connect(n1.url, discovered_server_cb=on_discovered)
        assert c.discovered_servers == []
        add(1)
        await _until(lambda: len(c.discovered_servers) == 1)
        add(2)
        await _until(lambda: len(c.discovered_servers) == 2)
        assert {u.port for u in c.discovered_servers} == {procs[1].port, procs[2].port}
        assert len(discovered) >= 2
        await c.close()

    try:
        asyncio.run(main())
    finally:
        for p in procs:
            p.stop()


def test_config_file_cluster_block_and_cluster_listen_flag(tmp_path):
    """Two nodes from config files that list each other (a duplicate pair resolved to
    one route), a third joining with --cluster_listen and one seed."""
    cports = [free_port() for _ in range(3)]
    procs: list[ServerProc] = []
    for i in range(2):
        conf = tmp_path / f"c{i}.conf"
        conf.write_text(
            f"server_name: conf{i + 1}\n"
            "cluster {\n  name: cfgtest\n"
            f"  listen: 127.0.0.1:{cports[i]}\n"
            f"  routes: [ nats-route://127.0.0.1:{cports[0]}, nats-route://127.0.0.1:{cports[1]} ]\n}}\n")
        procs.append(our_server(tmp_path, "-c", str(conf), jetstream=False, name=f"conf{i + 1}").start())
    procs.append(our_server(tmp_path, "--cluster_listen", f"nats://127.0.0.1:{cports[2]}", "--routes",
                            f"nats://127.0.0.1:{cports[1]}", "--cluster_name", "cfgtest", "-n", "conf3",
                            jetstream=False, name="conf3").start())
    try:
        wait_for(lambda: meshed(procs), "mesh of config-file nodes")
        time.sleep(1.0)  # any losing duplicate has been closed by now
        assert meshed(procs)
        for p in procs:
            assert http_json(p, "/varz")["cluster"]["name"] == "cfgtest"
        rz = http_json(procs[0], "/routez")
        assert sorted(r["remote_name"] for r in rz["routes"]) == ["conf2", "conf3"]
    finally:
        for p in procs:
            p.stop()


def test_bad_input_on_cluster_port_closes_with_error_node_keeps_serving(cluster):
    n1 = cluster[0]
    cases = [
        (b"garbage here\r\n", b"-ERR 'Authorization Violation'\r\n"),
        (b'CONNECT {"verbose":false,"pedantic":false,"lang":"python3","version":"2.16.0","protocol":1,'
         b'"headers":true,"no_responders":true}\r\nPING\r\n', b"-ERR 'attempted to connect to route port'\r\n"),
        (b'CONNECT {"echo":true,"verbose":false,"pedantic":false,"headers":true,"name":"NX","cluster":"other"}\r\n',
         b"""-ERR 'Rejecting connection, cluster name "other" does not match "test"'\r\n"""),
    ]
    for data, expected in cases:
        with socket.create_connection(("127.0.0.1", n1.cluster_port), timeout=WAIT_S) as s:
            s.sendall(data)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        assert out.startswith(b"INFO {") and out.endswith(expected)
    assert meshed(cluster)

    async def main():
        c1, c2 = await nats.connect(n1.url), await nats.connect(cluster[1].url)
        sub = await c2.subscribe("still.ok")
        await c2.flush()
        await _until(lambda: remote_interest(n1, "still.ok") == 1, "interest")
        await c1.publish("still.ok", b"yes")
        msg = await sub.next_msg(timeout=WAIT_S)
        assert msg.data == b"yes"
        await c1.close()
        await c2.close()

    asyncio.run(main())


def collect(lst: list, tag=None):
    async def cb(msg):
        lst.append(msg if tag is None else (tag, msg))
    return cb


async def _until(cond, what: str = "condition", timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:  # a node still starting
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
