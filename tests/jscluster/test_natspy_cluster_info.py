"""nats-py's replica and cluster-info checks, at R3 on a three-node cluster of each server kind.

nats.py's own test suite (nats/tests/test_js.py) runs JetStream against one server only. What
it checks about replicas and cluster info is:
  - a consumer created with `ConsumerConfig(num_replicas=...)` reports that num_replicas back
    (JSMTest / ConsumerReplicasTest.test_number_of_consumer_replicas, with R1);
  - `ClusterInfo.from_response` parses name, leader, replicas (as PeerInfo), raft_group,
    leader_since (a UTC datetime) and traffic_acc (ClusterInfoTest);
  - stream create's answer equals STREAM.INFO's once `cluster` and `did_create` are set aside
    (JSMTest.test_stream_management);
  - KV and object store buckets report `num_replicas` in their stream config
    (KVTest.test_kv_basic, ObjectStoreTest.test_object_basics).
Those pass against a single node of either server. Here the same nats-py calls run against
three nodes with num_replicas 3, and what nats-py parses out of the answers is asserted:
typed ClusterInfo / PeerInfo, every follower listed and current, the same leader whichever
node is asked, R1 assets with a leader and no replicas (nats-server's R1 block has no
raft_group and no leader_since either).

Where the servers differ on purpose (see test_consumers_r3.py): ours keeps a replicated
stream's consumers on its leader and records durable consumers in the stream's Raft log, so
its consumer `cluster.raft_group` is the stream's; nats-py does not look at that name.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Awaitable, Callable, Iterator

import nats.js.api as jsapi
import pytest

from tests.jscluster.harness import CLUSTER_NAME, JSCluster, kind_params, publish, shared_cluster, until_routed

WAIT = 30.0


@pytest.fixture(scope="module", params=kind_params())
def nc3(request, tmp_path_factory) -> Iterator[JSCluster]:
    """One shared three-node cluster per server kind for this module (nothing is killed)."""
    yield from shared_cluster(request, tmp_path_factory, "npci")


async def with_clients(cl: JSCluster, body: Callable[[dict], Awaitable[None]]) -> None:
    """Run `body(js by node name)` with a nats-py connection to each node."""
    ncs = await cl.connect_all()
    try:
        await body({n: nc.jetstream() for n, nc in ncs.items()})
    finally:
        for nc in ncs.values():
            await nc.close()


def assert_replicated(ci, cl: JSCluster, what: str) -> None:
    """An R3 asset's cluster block as nats-py parses it."""
    assert isinstance(ci, jsapi.ClusterInfo), (what, ci)
    assert ci.name == CLUSTER_NAME and ci.leader in cl.names(), (what, ci)
    assert isinstance(ci.raft_group, str) and ci.raft_group, (what, ci)
    assert isinstance(ci.leader_since, datetime.datetime), (what, ci)
    assert ci.leader_since.tzinfo is not None, (what, ci)
    assert ci.leader_since <= datetime.datetime.now(datetime.timezone.utc), (what, ci)
    reps = ci.replicas or []
    assert all(isinstance(p, jsapi.PeerInfo) for p in reps), (what, ci)
    assert sorted(p.name for p in reps) == sorted(set(cl.names()) - {ci.leader}), (what, ci)
    for p in reps:
        assert isinstance(p.current, bool) and isinstance(p.active, int), (what, p)
        assert p.lag is None or isinstance(p.lag, int), (what, p)


def assert_single(ci, cl: JSCluster, what: str) -> None:
    """An R1 asset's cluster block: nats-server 2.15 gives name and leader only."""
    assert isinstance(ci, jsapi.ClusterInfo), (what, ci)
    assert ci.name == CLUSTER_NAME and ci.leader in cl.names(), (what, ci)
    assert not ci.replicas, (what, ci)
    assert ci.raft_group is None and ci.leader_since is None, (what, ci)


async def until_current(get: Callable[[], Awaitable], what: str):
    """Ask for an info until every follower in its cluster block is current."""
    deadline = time.monotonic() + WAIT
    while True:
        info = await until_routed(get)
        reps = (info.cluster.replicas if info.cluster else None) or []
        if len(reps) == 2 and all(p.current for p in reps):
            return info
        assert time.monotonic() < deadline, f"{what}: followers not current: {info.cluster}"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
def test_consumer_num_replicas_and_cluster_block(nc3: JSCluster):
    """test_number_of_consumer_replicas at R3: num_replicas comes back as asked; the cluster
    block is parsed and agrees through every node; a durable without num_replicas inherits
    the stream's three replicas (config says 0, as nats-server's does); an ephemeral on a
    limits stream is R1."""
    cl = nc3

    async def body(js: dict) -> None:
        await js["n1"].add_stream(name="NPCI1", subjects=["npci1"], num_replicas=3)
        for i in range(10):
            await publish(js["n1"], "npci1", f"{i}".encode())
        cons = await js["n2"].add_consumer("NPCI1", jsapi.ConsumerConfig(num_replicas=3, durable_name="mycons"))
        assert isinstance(cons, jsapi.ConsumerInfo) and cons.config.num_replicas == 3, cons
        assert_replicated(cons.cluster, cl, "CONSUMER.CREATE answer")
        leaders = set()
        for via in cl.names():
            ci = await until_current(lambda: js[via].consumer_info("NPCI1", "mycons"), f"consumer info via {via}")
            assert ci.config.num_replicas == 3 and ci.num_pending == 10, ci
            assert_replicated(ci.cluster, cl, f"consumer info via {via}")
            leaders.add(ci.cluster.leader)
        assert len(leaders) == 1, leaders

        inherit = await js["n3"].add_consumer("NPCI1", jsapi.ConsumerConfig(durable_name="inherits"))
        assert inherit.config.num_replicas == 0, inherit.config
        inherit = await until_current(lambda: js["n3"].consumer_info("NPCI1", "inherits"), "inheriting durable")
        assert_replicated(inherit.cluster, cl, "durable without num_replicas")

        eph = await js["n1"].add_consumer("NPCI1", jsapi.ConsumerConfig(inactive_threshold=30.0))
        assert not eph.config.durable_name and eph.config.num_replicas == 0, eph.config
        assert_single(eph.cluster, cl, "ephemeral on an R3 limits stream")

        sub = await js["n3"].pull_subscribe("npci1", "mycons", stream="NPCI1")
        msgs = await sub.fetch(10, timeout=10)
        assert [m.data for m in msgs] == [f"{i}".encode() for i in range(10)]
        for m in msgs:
            await m.ack_sync()
        ci = await sub.consumer_info()
        assert ci.ack_floor.stream_seq == 10 and ci.num_pending == 0 and ci.config.num_replicas == 3, ci
        assert_replicated(ci.cluster, cl, "consumer info after acks")

    asyncio.run(with_clients(cl, body))


@pytest.mark.timeout(180)
def test_r1_consumer_on_r3_stream_reports_an_r1_block(nc3: JSCluster):
    """A durable asked for num_replicas=1 on an R3 limits stream (nats-server allows it) reports
    num_replicas 1 and, as nats-server does, a cluster block with a leader and no replicas;
    scaled to 3 it gets the R3 block, scaled back to 1 the R1 block again (once the update
    has settled)."""
    cl = nc3

    async def body(js: dict) -> None:
        await js["n1"].add_stream(name="NPCI2", subjects=["npci2"], num_replicas=3)
        await publish(js["n1"], "npci2", b"x")
        one = await js["n2"].add_consumer("NPCI2", jsapi.ConsumerConfig(num_replicas=1, durable_name="one"))
        assert one.config.num_replicas == 1 and one.num_pending == 1, one
        assert_single(one.cluster, cl, "R1 durable on an R3 stream (create)")
        info = await js["n3"].consumer_info("NPCI2", "one")
        assert info.config.num_replicas == 1, info.config
        assert_single(info.cluster, cl, "R1 durable on an R3 stream (info)")

        up = await js["n1"].add_consumer("NPCI2", jsapi.ConsumerConfig(num_replicas=3, durable_name="one"))
        assert up.config.num_replicas == 3, up.config
        up = await until_current(lambda: js["n2"].consumer_info("NPCI2", "one"), "consumer scaled to R3")
        assert_replicated(up.cluster, cl, "consumer scaled to R3")

        down = await js["n1"].add_consumer("NPCI2", jsapi.ConsumerConfig(num_replicas=1, durable_name="one"))
        assert down.config.num_replicas == 1, down.config
        # nats-server's update answer still shows the R3 group (it shrinks afterwards); the
        # next infos show the R1 block
        deadline = time.monotonic() + WAIT
        while True:
            down = await js["n3"].consumer_info("NPCI2", "one")
            if not (down.cluster and down.cluster.replicas) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert down.config.num_replicas == 1, down.config
        assert_single(down.cluster, cl, "consumer scaled back to R1")

    asyncio.run(with_clients(cl, body))


@pytest.mark.timeout(180)
def test_stream_cluster_block_and_create_answer(nc3: JSCluster):
    """STREAM.INFO through every node parses to the same leader with both followers; the
    create answer equals STREAM.INFO once cluster and did_create are set aside
    (test_stream_management at R3); an R1 stream has a leader and no replicas, and scaled to
    R3 through update_stream gets the full block."""
    cl = nc3

    async def body(js: dict) -> None:
        created = await js["n2"].add_stream(name="NPCI3", subjects=["npci3", "npci3.>"], num_replicas=3)
        assert isinstance(created, jsapi.StreamInfo) and created.config.num_replicas == 3, created
        assert_replicated(created.cluster, cl, "STREAM.CREATE answer")
        current = await until_routed(lambda: js["n2"].stream_info("NPCI3"))
        created.did_create = None
        created.cluster = current.cluster = None
        assert created == current, (created, current)

        leaders = set()
        for via in cl.names():
            si = await until_current(lambda: js[via].stream_info("NPCI3"), f"stream info via {via}")
            assert si.config.num_replicas == 3, si.config
            assert_replicated(si.cluster, cl, f"stream info via {via}")
            leaders.add(si.cluster.leader)
        assert len(leaders) == 1, leaders

        await js["n1"].add_stream(name="NPCI3R1", subjects=["npci3r1"], num_replicas=1)
        r1 = await until_routed(lambda: js["n3"].stream_info("NPCI3R1"))
        assert r1.config.num_replicas == 1
        assert_single(r1.cluster, cl, "R1 stream")
        scaled = await js["n3"].update_stream(name="NPCI3R1", subjects=["npci3r1"], num_replicas=3)
        assert scaled.config.num_replicas == 3, scaled.config
        scaled = await until_current(lambda: js["n1"].stream_info("NPCI3R1"), "stream scaled to R3")
        assert_replicated(scaled.cluster, cl, "stream scaled to R3")

    asyncio.run(with_clients(cl, body))


@pytest.mark.timeout(180)
def test_kv_and_object_store_with_three_replicas(nc3: JSCluster):
    """test_kv_basic / test_object_basics with replicas=3: the bucket's stream config says 3,
    its cluster block lists both followers, and another node reads what one node wrote."""
    cl = nc3

    async def body(js: dict) -> None:
        kv = await js["n1"].create_key_value(bucket="NPCI", history=5, ttl=3600, replicas=3, direct=False)
        await until_routed(lambda: kv.put("a", b"1"))
        status = await kv.status()
        assert status.bucket == "NPCI" and status.values == 1, status
        si = await until_current(lambda: js["n2"].stream_info("KV_NPCI"), "KV stream")
        assert si.config.num_replicas == 3 and si.config.max_msgs_per_subject == 5, si.config
        assert_replicated(si.cluster, cl, "KV stream")
        other = await js["n3"].key_value("NPCI")
        assert (await other.get("a")).value == b"1"

        obs = await js["n1"].create_object_store(bucket="NPCIO", replicas=3)
        await until_routed(lambda: obs.put("x", b"hello" * 1000))
        ost = await obs.status()
        assert ost.stream_info.config.num_replicas == 3, ost.stream_info.config
        assert ost.stream_info.config.name == "OBJ_NPCIO"
        si = await until_current(lambda: js["n3"].stream_info("OBJ_NPCIO"), "object store stream")
        assert_replicated(si.cluster, cl, "object store stream")
        got = await (await js["n2"].object_store("NPCIO")).get("x")
        assert got.data == b"hello" * 1000

    asyncio.run(with_clients(cl, body))
