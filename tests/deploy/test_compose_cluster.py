"""The three-node compose cluster (compose.yaml), driven from the host with nats-py.

Opt-in: needs Docker Engine + compose and builds/starts containers, so it runs only with
RUN_DOCKER=1 (e.g. `RUN_DOCKER=1 pytest -m docker tests/deploy`). The cluster is brought up
by deploy/cluster-up.sh under its own compose project (pybroker-test, so a cluster started
with a plain `docker compose up` is never touched) and removed, volumes included, by
deploy/cluster-down.sh --volumes. Every connection targets the host's loopback ports that
compose publishes: clients 4222/4223/4224 and monitoring 8222/8223/8224 for n1/n2/n3.

nats-py is asyncio, so the tests are sync functions that call asyncio.run (pytest-trio
owns async tests in this repository). The failover test kills n2 and must run after the
others; it restarts n2 at the end and checks that it rejoins.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

nats = pytest.importorskip("nats")
from nats.errors import NoRespondersError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROJECT = "pybroker-test"
NODES = {"n1": (4222, 8222), "n2": (4223, 8223), "n3": (4224, 8224)}
WAIT_S = 60.0

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.environ.get("RUN_DOCKER") != "1", reason="needs Docker: set RUN_DOCKER=1"),
    pytest.mark.timeout(1200),  # the first test also builds the image and starts the cluster
]


def url(node: str) -> str:
    return f"nats://127.0.0.1:{NODES[node][0]}"


def compose_env() -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=compose_env(), cwd=ROOT, check=check, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=1100)


def compose(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(str(DEPLOY / "compose.sh"), *args, check=check)


def http(node: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{NODES[node][1]}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def routez(node: str) -> dict:
    return http(node, "/routez?subs=detail")[1]


def remote_interest(node: str, subject: str, queue: str | None = None) -> int:
    """How many of node's routes carry interest in `subject` (in queue group `queue`)."""
    return sum(1 for r in routez(node)["routes"]
               if any(d["subject"] == subject and d.get("qgroup") == queue
                      for d in r.get("subscriptions_list_detail", [])))


def route_names(node: str) -> set[str]:
    return {r["remote_name"] for r in routez(node)["routes"]}


def client_info(node: str) -> dict:
    """The INFO line a client receives on connecting to node's published client port."""
    with socket.create_connection(("127.0.0.1", NODES[node][0]), timeout=5) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    op, _, body = data.decode().partition(" ")
    assert op == "INFO", data
    return json.loads(body)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def until(cond, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError) as exc:  # a node restarting / not listening yet
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(0.1)


def collect(lst: list, tag=None):
    async def cb(msg):
        lst.append(msg if tag is None else (tag, msg))
    return cb


@pytest.fixture(scope="module")
def cluster():
    busy = [p for ports in NODES.values() for p in ports if port_in_use(p)]
    if busy:
        pytest.fail(f"127.0.0.1 ports {busy} are already in use (a cluster already running? "
                    f"stop it with deploy/cluster-down.sh)")
    up = run(str(DEPLOY / "cluster-up.sh"), check=False)
    try:
        assert up.returncode == 0, f"deploy/cluster-up.sh failed ({up.returncode}):\n{up.stdout[-6000:]}"
        yield
    finally:
        if up.returncode != 0 or os.environ.get("DOCKER_TEST_LOGS") == "1":
            print(compose("logs", "--no-color", "--tail=200", check=False).stdout)
        down = run(str(DEPLOY / "cluster-down.sh"), "--volumes", check=False)
        assert down.returncode == 0, down.stdout


def test_cluster_is_meshed_healthy_and_advertises_host_ports(cluster):
    for node in NODES:
        status, body = http(node, "/healthz")
        assert (status, body) == (200, {"status": "ok"})
        assert route_names(node) == set(NODES) - {node}
        varz = http(node, "/varz")[1]
        assert varz["server_name"] == node
        assert varz["cluster"]["name"] == "pycluster"
        assert varz["cluster"]["urls"] == ["n1:6222"]
        assert varz["jetstream"]["config"]["store_dir"].startswith("/data")
        # the INFO a client gets lists every node's host-published client port
        info = client_info(node)
        assert info["server_name"] == node and info["cluster"] == "pycluster"
        assert set(info["connect_urls"]) == {f"127.0.0.1:{c}" for c, _ in NODES.values()}
    assert http("n1", "/jsz")[0] == 200


def test_pub_on_node1_reaches_subscriber_on_node3(cluster):
    async def main():
        c1, c3 = await nats.connect(url("n1")), await nats.connect(url("n3"))
        assert c1._server_info["server_name"] == "n1" and c3._server_info["server_name"] == "n3"
        sub = await c3.subscribe("deploy.orders.*")
        await c3.flush()
        await until(lambda: remote_interest("n1", "deploy.orders.*") == 1, "n3's interest at n1")
        for i in range(100):
            await c1.publish(f"deploy.orders.{i % 3}", b"%d" % i, headers={"Seq": str(i)} if i % 2 else None)
        await c1.flush()
        got = [await sub.next_msg(timeout=10) for _ in range(100)]
        assert [m.data for m in got] == [b"%d" % i for i in range(100)]
        assert [m.subject for m in got[:3]] == ["deploy.orders.0", "deploy.orders.1", "deploy.orders.2"]
        assert got[1].headers == {"Seq": "1"} and got[2].headers is None
        await c1.close()
        await c3.close()

    asyncio.run(main())


def test_queue_group_across_nodes_delivers_each_message_once(cluster):
    async def main():
        workers = {node: await nats.connect(url(node)) for node in ("n2", "n3")}
        seen: list[tuple[str, object]] = []
        done: dict[str, list] = {node: [] for node in workers}
        for node, c in workers.items():
            await c.subscribe("deploy.jobs", queue="workers", cb=collect(seen, tag=node))
            # plain (non-queue) subject: every worker sees each publisher's end marker
            await c.subscribe("deploy.jobs.done", cb=collect(done[node]))
            await c.flush()
        await until(lambda: remote_interest("n1", "deploy.jobs", "workers") == 2
                    and remote_interest("n1", "deploy.jobs.done") == 2, "queue interest at n1")
        pub = await nats.connect(url("n1"))
        total = 300
        for k in range(total):
            await pub.publish("deploy.jobs", b"%d" % k)
        await pub.publish("deploy.jobs.done", b"end")
        await pub.flush()
        # Messages from one publisher travel n1 -> route -> worker in order, so once every
        # worker has the end marker, every job routed to it has been delivered.
        await until(lambda: all(len(d) == 1 for d in done.values()), "end marker at every worker")
        payloads = Counter(m.data for _, m in seen)
        assert len(seen) == total
        assert set(payloads) == {b"%d" % k for k in range(total)}
        assert set(payloads.values()) == {1}  # never duplicated
        per_node = Counter(node for node, _ in seen)
        assert set(per_node) == {"n2", "n3"}  # spread over both nodes
        for c in (pub, *workers.values()):
            await c.close()

    asyncio.run(main())


def test_request_reply_across_nodes(cluster):
    async def main():
        svc_conn, client = await nats.connect(url("n3")), await nats.connect(url("n1"))

        async def echo(m):
            await m.respond(b"n3:" + m.data)

        await svc_conn.subscribe("deploy.svc.echo", queue="svc", cb=echo)
        await svc_conn.flush()
        await until(lambda: remote_interest("n1", "deploy.svc.echo", "svc") == 1, "service interest at n1")
        for i in range(25):
            reply = await client.request("deploy.svc.echo", b"%d" % i, timeout=10)
            assert reply.data == b"n3:%d" % i
        with pytest.raises(NoRespondersError):
            await client.request("deploy.svc.nobody", b"x", timeout=10)
        await svc_conn.close()
        await client.close()

    asyncio.run(main())


def stream_state(node: str, name: str) -> dict | None:
    """State of stream `name` as node's own /jsz reports it (None: node has no such stream)."""
    jsz = http(node, "/jsz?streams=1")[1]
    for acct in jsz.get("account_details", []):
        for st in acct.get("stream_detail", []):
            if st["name"] == name:
                return st["state"]
    return None


def test_jetstream_file_stream_on_volume_survives_container_restart(cluster):
    """-js -sd /data on the named volume, written by the image's non-root user. The stream is
    R1: the meta group places it on one node (not necessarily n2, the node the client uses),
    and that node's container is restarted."""
    async def main():
        c = await nats.connect(url("n2"))
        js = c.jetstream()
        await js.add_stream(name="DEPLOYVOL", subjects=["deploy.vol.>"], storage="file")
        for i in range(20):
            await js.publish(f"deploy.vol.{i % 4}", b"v%d" % i)
        owner = (await js.stream_info("DEPLOYVOL")).cluster.leader
        await c.close()
        return owner

    owner = asyncio.run(main())
    assert owner in NODES, owner

    async def stored():
        await until(lambda: (stream_state(owner, "DEPLOYVOL") or {}).get("messages") == 20, f"20 messages on {owner}")

    asyncio.run(stored())
    before = stream_state(owner, "DEPLOYVOL")
    assert before["last_seq"] == 20 and before["bytes"] > 0
    assert [n for n in NODES if stream_state(n, "DEPLOYVOL") is not None] == [owner]

    compose("restart", owner)

    async def after():
        await until(lambda: http(owner, "/healthz") == (200, {"status": "ok"}), f"{owner} healthy after restart")
        await until(lambda: all(route_names(n) == set(NODES) - {n} for n in NODES), "full mesh after restart")
        await until(lambda: stream_state(owner, "DEPLOYVOL") is not None, f"DEPLOYVOL back on {owner}")

    asyncio.run(after())
    state = stream_state(owner, "DEPLOYVOL")
    assert state is not None, "stream lost on restart: /data is not on the volume"
    assert (state["messages"], state["first_seq"], state["last_seq"], state["bytes"]) == \
        (20, 1, 20, before["bytes"])
    assert http(owner, "/varz")[1]["jetstream"]["config"]["store_dir"].startswith("/data/")


# The meta group answers one API request once, whichever node the client is on, and an R1
# stream lives on the one node it was placed on: one PubAck for a publish through n2, and the
# stream stored by that node alone.
def test_jetstream_request_and_publish_get_exactly_one_answer_in_cluster(cluster):
    async def main():
        c = await nats.connect(url("n2"))

        async def answers(subject: str, payload: bytes) -> list[bytes]:
            """Every reply to one request, collected until none arrives for 2s."""
            inbox = c.new_inbox()
            sub = await c.subscribe(inbox)
            await c.publish(subject, payload, reply=inbox)
            await c.flush()
            got = []
            while True:
                try:
                    got.append((await sub.next_msg(timeout=2)).data)
                except nats.errors.TimeoutError:
                    break
            await sub.unsubscribe()
            return got

        created = await answers("$JS.API.STREAM.CREATE.DEPLOYONE", json.dumps(
            {"name": "DEPLOYONE", "subjects": ["deploy.one.>"], "storage": "file"}).encode())
        assert created and all(b"DEPLOYONE" in r for r in created), created
        info = await answers("$JS.API.INFO", b"")
        acks = await answers("deploy.one.x", b"payload")
        leader = (await c.jetstream().stream_info("DEPLOYONE")).cluster.leader
        owners = [n for n in NODES if stream_state(n, "DEPLOYONE") is not None]
        await c.close()
        assert len(info) == 1, f"{len(info)} answers to one $JS.API.INFO request"
        assert len(created) == 1, f"{len(created)} answers to one STREAM.CREATE request"
        assert len(acks) == 1, f"{len(acks)} PubAcks for one publish: {acks}"
        assert leader in NODES and owners == [leader], f"stream DEPLOYONE placed on {leader}, stored on {owners}"

    asyncio.run(main())


def test_killed_node_others_keep_serving_client_fails_over_and_node_rejoins(cluster):
    async def main():
        reconnected = asyncio.Event()

        async def on_reconnect():
            reconnected.set()

        # This client is given only n2; it learns n1 and n3 from INFO connect_urls.
        c = await nats.connect(url("n2"), reconnected_cb=on_reconnect, reconnect_time_wait=0.2,
                               max_reconnect_attempts=-1, connect_timeout=2)
        assert c._server_info["server_name"] == "n2"
        assert {u.netloc for u in c.discovered_servers} == {"127.0.0.1:4222", "127.0.0.1:4224"}
        got: list = []
        await c.subscribe("deploy.after.kill", cb=collect(got))
        await c.flush()

        compose("kill", "n2")
        await asyncio.wait_for(reconnected.wait(), WAIT_S)
        assert c.connected_url.port in (4222, 4224)
        assert c._server_info["server_name"] in ("n1", "n3")
        await c.flush()

        # the survivors drop the dead route, keep theirs, stay healthy
        await until(lambda: route_names("n1") == {"n3"} and route_names("n3") == {"n1"}, "n1 <-> n3 only")
        for node in ("n1", "n3"):
            assert http(node, "/healthz") == (200, {"status": "ok"})
        await until(lambda: remote_interest("n1", "deploy.after.kill") + remote_interest("n3", "deploy.after.kill")
                    == 1, "the failed-over subscription's interest at the other survivor")
        c1, c3 = await nats.connect(url("n1")), await nats.connect(url("n3"))
        await c1.publish("deploy.after.kill", b"from-n1")
        await c3.publish("deploy.after.kill", b"from-n3")
        await c1.flush()
        await c3.flush()
        await until(lambda: len(got) == 2, "both messages at the failed-over subscriber")
        assert sorted(m.data for m in got) == [b"from-n1", b"from-n3"]

        async def pong(m):
            await m.respond(b"pong")

        await c3.subscribe("deploy.ping", cb=pong)
        await c3.flush()
        await until(lambda: remote_interest("n1", "deploy.ping") == 1, "ping interest at n1")
        assert (await c1.request("deploy.ping", b"", timeout=10)).data == b"pong"

        # n2 comes back (same volume) and rejoins the mesh; traffic flows through it again
        compose("start", "n2")
        await until(lambda: all(route_names(n) == set(NODES) - {n} for n in NODES), "full mesh again")
        await until(lambda: http("n2", "/healthz") == (200, {"status": "ok"}), "n2 healthy")
        c2 = await nats.connect(url("n2"))
        await until(lambda: remote_interest("n2", "deploy.ping") == 1, "ping interest at restarted n2")
        assert (await c2.request("deploy.ping", b"", timeout=10)).data == b"pong"
        for conn in (c, c1, c2, c3):
            await conn.close()

    asyncio.run(main())
