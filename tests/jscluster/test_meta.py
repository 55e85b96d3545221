"""Clustered JetStream through any node: the meta group (project issue 9, "How it is shown").

Every test runs against a three-node cluster of nats-server and of ours (`ours` is skipped
until harness.OURS_READY is flipped). Streams get names unique to their test, so tests share
one cluster per kind; tests that kill or stop nodes call `restore()` afterwards.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.js.errors import ServiceUnavailableError
from tests.jetstream.consumer_fixtures import kv_nonempty

from tests.jscluster.harness import (CLUSTER_NAME, JSCluster, api, api_all, api_retry, key_paths, kind_params,
                                     normalize, peer_id, publish, run, stream_config, until_routed, wait_for)

NO_META_LEADER = {"code": 503, "err_code": 10008, "description": "JetStream system temporarily unavailable"}
NO_PLACEMENT = {"code": 400, "err_code": 10005, "description": "no suitable peers for placement"}


async def close_all(conns) -> None:
    for c in (conns.values() if isinstance(conns, dict) else conns):
        await c.close()


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def durable(name: str, **kw) -> dict:
    cfg = {"durable_name": name, "ack_policy": "explicit"}
    cfg.update(kw)
    return cfg


# -- any node answers, with the same view -------------------------------------------------------

def test_stream_created_through_n2_has_same_info_through_every_node(jsc: JSCluster):
    async def main():
        c = await jsc.connect_all()
        try:
            created = await api(c["n2"], "$JS.API.STREAM.CREATE.SAME", stream_config("SAME"))
            assert created.get("did_create") is True, created
            js1 = c["n1"].jetstream()
            for i in range(7):
                ack = await publish(js1, f"SAME.k{i % 3}", b"v%d" % i)
                assert (ack.stream, ack.seq) == ("SAME", i + 1)
            answers = await asyncio.gather(*(api_all(nc, "$JS.API.STREAM.INFO.SAME") for nc in c.values()))
            infos = {}
            for n, resps in zip(c, answers):
                assert len(resps) == 1, (n, resps)
                infos[n] = resps[0].json
            return created, infos
        finally:
            await close_all(c)

    created, infos = run(main())
    views = {n: without(i, "ts") for n, i in infos.items()}
    assert views["n1"] == views["n2"] == views["n3"]
    info = infos["n1"]
    assert info["type"] == "io.nats.jetstream.api.v1.stream_info_response"
    assert info["config"] == created["config"] and info["created"] == created["created"]
    assert info["state"]["messages"] == 7 and info["state"]["last_seq"] == 7 and info["state"]["first_seq"] == 1
    # R1: the cluster block is exactly {name, leader}: no raft_group, no replicas.
    assert set(info["cluster"]) == {"name", "leader"}
    assert info["cluster"]["name"] == CLUSTER_NAME and info["cluster"]["leader"] in jsc.names()
    assert created["cluster"] == info["cluster"]
    # the named leader is the node that holds the stream (its own /jsz), and no other does
    holders = [n for n in jsc.names() if "SAME" in jsc.jsz_streams(n)]
    assert holders == [info["cluster"]["leader"]]


def test_100_messages_published_through_n1_fetched_by_pull_consumer_through_n3(jsc: JSCluster):
    async def main():
        c = await jsc.connect_all()
        try:
            await api(c["n1"], "$JS.API.STREAM.CREATE.PULL", stream_config("PULL"))
            js1, js3 = c["n1"].jetstream(), c["n3"].jetstream()
            subjects = [f"PULL.a.{i % 4}" if i % 2 else f"PULL.b.{i % 5}.x" for i in range(100)]
            for i, subj in enumerate(subjects):
                ack = await publish(js1, subj, b"m%03d" % i, headers={"N": str(i)} if i % 10 == 0 else None)
                assert ack.seq == i + 1
            psub = await js3.pull_subscribe("PULL.>", durable="puller", stream="PULL")
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 100 and time.monotonic() < deadline:
                try:
                    batch = await psub.fetch(min(30, 100 - len(got)), timeout=3)
                except asyncio.TimeoutError:  # nats-py's fetch timeout is a subclass
                    continue
                except ServiceUnavailableError:
                    # nats-server: a 503 no-responders until the new consumer's MSG.NEXT
                    # interest has crossed the routes to n3
                    await asyncio.sleep(0.1)
                    continue
                for m in batch:
                    await m.ack_sync()
                got.extend(batch)
            info = await api(c["n1"], "$JS.API.CONSUMER.INFO.PULL.puller")
            return subjects, got, info
        finally:
            await close_all(c)

    subjects, got, info = run(main())
    assert [m.subject for m in got] == subjects
    assert [m.data for m in got] == [b"m%03d" % i for i in range(100)]
    assert [m.metadata.sequence.stream for m in got] == list(range(1, 101))
    assert got[10].headers == {"N": "10"} and got[11].headers is None
    assert info["name"] == "puller" and info["num_pending"] == 0 and info["num_ack_pending"] == 0
    assert info["delivered"]["stream_seq"] == 100 and info["ack_floor"]["stream_seq"] == 100
    assert info["cluster"]["name"] == CLUSTER_NAME and info["cluster"]["leader"] in jsc.names()


def test_stream_names_and_account_info_are_cluster_wide_from_every_node(jsc: JSCluster):
    async def main():
        c = await jsc.connect_all()
        try:
            mine = {"NAMES_A": "n1", "NAMES_B": "n2", "NAMES_C": "n3"}
            for name, via in mine.items():
                r = await api(c[via], f"$JS.API.STREAM.CREATE.{name}", stream_config(name))
                assert r.get("did_create") is True, r
            await api(c["n2"], "$JS.API.CONSUMER.CREATE.NAMES_A.ca", {"stream_name": "NAMES_A", "config": durable("ca")})
            await api(c["n3"], "$JS.API.CONSUMER.CREATE.NAMES_C.cc", {"stream_name": "NAMES_C", "config": durable("cc")})
            names, infos, lists = {}, {}, {}
            asks = [(n, out, subj) for n in c for out, subj in ((names, "$JS.API.STREAM.NAMES"),
                                                              (infos, "$JS.API.INFO"),
                                                              (lists, "$JS.API.STREAM.LIST"))]
            answers = await asyncio.gather(*(api_all(c[n], subj) for n, _, subj in asks))
            for (n, out, subj), r in zip(asks, answers):
                assert len(r) == 1, (n, subj, r)
                out[n] = r[0].json
            return mine, names, infos, lists
        finally:
            await close_all(c)

    mine, names, infos, lists = run(main())
    for n in jsc.names():
        listed = names[n]["streams"]
        assert len(listed) == len(set(listed)), f"a stream listed twice through {n}: {listed}"
        assert set(mine) <= set(listed)
        assert names[n]["total"] == len(listed)
        assert sorted(listed) == sorted(names["n1"]["streams"])
        assert sorted(s["config"]["name"] for s in lists[n]["streams"]) == sorted(listed)
        assert lists[n].get("missing") in (None, [])
        total_consumers = sum(s["state"]["consumer_count"] for s in lists[n]["streams"])
        assert infos[n]["type"] == "io.nats.jetstream.api.v1.account_info_response"
        assert infos[n]["streams"] == len(listed), (n, infos[n])
        assert infos[n]["consumers"] == total_consumers >= 2, (n, infos[n])
    assert infos["n1"]["streams"] == infos["n2"]["streams"] == infos["n3"]["streams"]


def test_kv_and_object_store_across_nodes(jsc: JSCluster):
    blob = bytes(range(256)) * 1200  # 300 KiB: several chunks

    async def main():
        c = await jsc.connect_all()
        try:
            js1, js2, js3 = (c[n].jetstream() for n in ("n1", "n2", "n3"))
            kv1 = await js1.create_key_value(bucket="CFG", history=3)
            await until_routed(lambda: kv1.put("alpha", b"1"))
            await kv1.put("beta.x", b"2")
            await kv1.put("alpha", b"3")
            kv2, kv3 = await js2.key_value("CFG"), await js3.key_value("CFG")
            seen = {}
            for n, kv in (("n2", kv2), ("n3", kv3)):
                e = await kv.get("alpha")
                seen[n] = (e.value, e.revision, sorted(await kv_nonempty(kv.keys)), (await kv.get("beta.x")).value)
            watchers = {"n2": await kv2.watchall(include_history=False),
                        "n3": await kv3.watchall(include_history=False)}
            initial = {}
            for n, w in watchers.items():
                got = []
                while len(got) < 2:
                    e = await w.updates(timeout=10)
                    if e is not None:
                        got.append((e.key, e.value))
                initial[n] = sorted(got)
            await kv1.put("gamma", b"new")
            await kv1.delete("beta.x")
            live = {}
            for n, w in watchers.items():
                got = []
                while len(got) < 2:
                    e = await w.updates(timeout=10)
                    if e is not None:
                        got.append((e.key, e.value, e.operation))
                live[n] = got
                await w.stop()
            obs1 = await js1.create_object_store("BLOBS")
            await until_routed(lambda: obs1.put("big.bin", blob))
            objs = {}
            for n, js in (("n2", js2), ("n3", js3)):
                res = await (await js.object_store("BLOBS")).get("big.bin")
                objs[n] = (res.info.name, res.info.size, res.data)
            return seen, initial, live, objs
        finally:
            await close_all(c)

    seen, initial, live, objs = run(main())
    for n in ("n2", "n3"):
        assert seen[n] == (b"3", 3, ["alpha", "beta.x"], b"2")
        assert initial[n] == [("alpha", b"3"), ("beta.x", b"2")]
        assert live[n][0] == ("gamma", b"new", None)
        assert live[n][1][:2] == ("beta.x", b"") and live[n][1][2] == "DEL"
        assert objs[n] == ("big.bin", len(blob), blob)


# -- exactly one response per request -----------------------------------------------------------

def test_each_request_gets_exactly_one_response_through_every_node(jsc: JSCluster):
    async def main():
        c = await jsc.connect_all()
        try:
            await api(c["n1"], "$JS.API.STREAM.CREATE.ONE", stream_config("ONE", allow_direct=True))
            await api(c["n1"], "$JS.API.CONSUMER.CREATE.ONE.d", {"stream_name": "ONE", "config": durable("d")})
            await publish(c["n1"].jetstream(), "ONE.x", b"hello")
            for n in jsc.names():
                await api(c["n1"], f"$JS.API.STREAM.CREATE.PURGE_{n}", stream_config(f"PURGE_{n}"))
                for i in range(2):
                    await publish(c["n1"].jetstream(), f"PURGE_{n}.{i}", b"p")
            cases = []
            for n in jsc.names():
                cases += [
                    (n, "info", "$JS.API.STREAM.INFO.ONE", b""),
                    (n, "names", "$JS.API.STREAM.NAMES", b""),
                    (n, "cinfo", "$JS.API.CONSUMER.INFO.ONE.d", b""),
                    (n, "dup", "$JS.API.STREAM.CREATE.ONE", stream_config("ONE", subjects=["other.one"])),
                    (n, "same", "$JS.API.STREAM.CREATE.ONE", stream_config("ONE", allow_direct=True)),
                    (n, "create", f"$JS.API.STREAM.CREATE.ONE_{n}", stream_config(f"ONE_{n}")),
                    (n, "ccreate", f"$JS.API.CONSUMER.CREATE.ONE.c{n}", {"stream_name": "ONE", "config": durable(f"c{n}")}),
                    (n, "msgget", "$JS.API.STREAM.MSG.GET.ONE", {"seq": 1}),
                    (n, "missing", "$JS.API.STREAM.INFO.NOPE", b""),
                    (n, "cmissing", "$JS.API.CONSUMER.INFO.ONE.nope", b""),
                    (n, "unknown", "$JS.API.NO.SUCH.THING", b""),
                    (n, "direct", "$JS.API.DIRECT.GET.ONE", {"seq": 1}),
                    (n, "purge", f"$JS.API.STREAM.PURGE.PURGE_{n}", b""),
                ]
            results = await asyncio.gather(*(api_all(c[n], subj, body, first_timeout=3) for n, _, subj, body in cases))
            out = [(n, what, r) for (n, what, _, _), r in zip(cases, results)]
            # then through each node: update what it created, delete its consumer, delete its stream
            for phase in ("update", "cdelete", "delete"):
                cases = [(n, phase) + {
                    "update": (f"$JS.API.STREAM.UPDATE.ONE_{n}", stream_config(f"ONE_{n}", max_msgs=10)),
                    "cdelete": (f"$JS.API.CONSUMER.DELETE.ONE.c{n}", b""),
                    "delete": (f"$JS.API.STREAM.DELETE.ONE_{n}", b""),
                }[phase] for n in jsc.names()]
                results = await asyncio.gather(*(api_all(c[n], subj, body, first_timeout=3)
                                                 for n, _, subj, body in cases))
                out += [(n, what, r) for (n, what, _, _), r in zip(cases, results)]
            return out
        finally:
            await close_all(c)

    for n, what, resps in run(main()):
        if what == "unknown":
            # nats-server does not answer an unknown $JS.API subject in a cluster
            assert resps == [], (n, resps)
            continue
        assert len(resps) == 1, (n, what, resps)
        r = resps[0]
        if what == "direct":  # the stored message itself, described by headers
            assert r.data == b"hello", (n, r)
            assert {k: r.headers.get(k) for k in ("Nats-Stream", "Nats-Subject", "Nats-Sequence")} == {
                "Nats-Stream": "ONE", "Nats-Subject": "ONE.x", "Nats-Sequence": "1"}, (n, r)
            continue
        assert r.headers is None, (n, what, r)
        body = r.json
        if what == "info":
            assert body["config"]["name"] == "ONE" and body["state"]["messages"] == 1
        elif what == "names":
            assert body["streams"].count("ONE") == 1
        elif what == "cinfo":
            assert body["name"] == "d" and body["stream_name"] == "ONE"
        elif what == "dup":
            assert body["error"] == {"code": 400, "err_code": 10058,
                                     "description": "stream name already in use with a different configuration"}
        elif what == "same":
            assert "error" not in body and body["config"]["name"] == "ONE"
        elif what == "create":
            assert body.get("did_create") is True and body["config"]["name"] == f"ONE_{n}"
        elif what == "ccreate":
            assert body["type"] == "io.nats.jetstream.api.v1.consumer_create_response" and body["name"] == f"c{n}"
        elif what == "msgget":
            assert body["message"]["subject"] == "ONE.x" and body["message"]["seq"] == 1
        elif what == "missing":
            assert body["error"] == {"code": 404, "err_code": 10059, "description": "stream not found"}
        elif what == "cmissing":
            assert body["error"] == {"code": 404, "err_code": 10014, "description": "consumer not found"}
        elif what == "purge":
            assert body == {"type": "io.nats.jetstream.api.v1.stream_purge_response", "success": True, "purged": 2}
        elif what == "update":
            assert body["type"] == "io.nats.jetstream.api.v1.stream_update_response"
            assert body["config"]["max_msgs"] == 10 and body["config"]["name"] == f"ONE_{n}"
        elif what == "cdelete":
            assert body == {"type": "io.nats.jetstream.api.v1.consumer_delete_response", "success": True}
        elif what == "delete":
            assert body == {"type": "io.nats.jetstream.api.v1.stream_delete_response", "success": True}
        else:
            raise AssertionError(f"unchecked case {what}")


# -- /jsz meta_cluster ------------------------------------------------------------------------------

# nats-server 2.15.1's /jsz meta_cluster key paths (lag/offline are omitted when zero/false)
META_CLUSTER_KEYS = {"name", "leader", "peer", "replicas", "replicas[].name", "replicas[].current",
                     "replicas[].active", "replicas[].peer", "cluster_size", "quorum_needed", "pending",
                     "pending_requests", "pending_infos", "snapshot", "snapshot.pending_entries",
                     "snapshot.pending_size", "snapshot.last_time"}


def test_jsz_meta_cluster_on_every_node(jsc: JSCluster):
    leader = jsc.wait_ready()
    views = {n: jsc.meta_view(n) for n in jsc.names()}
    for n, mc in views.items():
        assert mc["name"] == CLUSTER_NAME and mc["leader"] == leader
        assert mc["cluster_size"] == 3 and mc["quorum_needed"] == 2 and mc["pending"] == 0
        # the peer shown is the leader's Raft peer id (nats-server: a hash of the server name)
        assert mc["peer"] == peer_id(leader), (n, mc)
        assert sorted(r["name"] for r in mc["replicas"]) == sorted(set(jsc.names()) - {n}), (n, mc)
        for r in mc["replicas"]:
            assert r["peer"] == peer_id(r["name"]) and isinstance(r["active"], int) and r["active"] >= 0
            assert isinstance(r.get("lag", 0), int) and r.get("offline", False) is False
        assert key_paths(mc) - {"replicas[].lag", "replicas[].offline"} == META_CLUSTER_KEYS, (n, mc)
    # the leader sees every follower current; a follower sees the leader current
    assert all(r["current"] for r in views[leader]["replicas"])
    for n in jsc.names():
        if n != leader:
            assert next(r for r in views[n]["replicas"] if r["name"] == leader)["current"] is True


# -- placement ----------------------------------------------------------------------------------

def test_impossible_placement_is_refused_with_10005(jsc: JSCluster):
    async def main():
        c = await jsc.connect_all()
        try:
            out = {}
            for n, nc in c.items():
                out[n] = await api_all(nc, "$JS.API.STREAM.CREATE.TOO_MANY", stream_config("TOO_MANY", num_replicas=5))
            names = await api(c["n1"], "$JS.API.STREAM.NAMES")
            return out, names
        finally:
            await close_all(c)

    out, names = run(main())
    for n, resps in out.items():
        assert len(resps) == 1, (n, resps)
        assert resps[0].json == {"type": "io.nats.jetstream.api.v1.stream_create_response", "error": NO_PLACEMENT}
    assert "TOO_MANY" not in (names["streams"] or [])


@pytest.mark.parametrize("jsc", kind_params("nats-server"), indirect=True)
def test_r3_stream_cluster_block_and_same_state_everywhere(jsc: JSCluster):
    """num_replicas=3 (nats-server only until our replication lands; ours refuses R>1 for now)."""
    async def main():
        c = await jsc.connect_all()
        try:
            created = await api(c["n3"], "$JS.API.STREAM.CREATE.REP3", stream_config("REP3", num_replicas=3))
            assert created.get("did_create") is True, created
            js = c["n2"].jetstream()
            for i in range(20):
                await publish(js, f"REP3.{i}", b"x" * i)

            async def all_current():
                info = await api(c["n1"], "$JS.API.STREAM.INFO.REP3")
                reps = info["cluster"].get("replicas") or []
                return info if len(reps) == 2 and all(r["current"] for r in reps) else None

            deadline = time.monotonic() + 30
            while not (info := await all_current()):
                assert time.monotonic() < deadline, "replicas never current"
                await asyncio.sleep(0.2)
            views = {}
            for n, nc in c.items():
                r = await api_all(nc, "$JS.API.STREAM.INFO.REP3")
                assert len(r) == 1
                views[n] = r[0].json
            await api(c["n1"], "$JS.API.STREAM.DELETE.REP3")
            return created, info, views
        finally:
            await close_all(c)

    created, info, views = run(main())
    assert created["config"]["num_replicas"] == 3
    cl = info["cluster"]
    assert set(cl) == {"name", "raft_group", "leader", "leader_since", "system_account", "traffic_account",
                       "replicas"}
    # the group's Raft traffic runs in the system account
    assert cl["system_account"] is True and cl["traffic_account"] == "$SYS"
    assert cl["name"] == CLUSTER_NAME
    assert cl["raft_group"].startswith("S-R3F-")
    assert cl["leader"] in jsc.names()
    assert isinstance(cl["leader_since"], str) and cl["leader_since"].endswith("Z")
    assert sorted(r["name"] for r in cl["replicas"]) == sorted(set(jsc.names()) - {cl["leader"]})
    for r in cl["replicas"]:
        # lag and offline are omitted when zero/false
        assert {"name", "current", "active", "peer"} <= set(r) <= {"name", "current", "active", "lag", "peer", "offline"}
        assert r["current"] is True and isinstance(r["active"], int) and r["active"] >= 0
        assert r["peer"] == peer_id(r["name"])
        assert isinstance(r.get("lag", 0), int)
    for v in views.values():
        assert v["state"] == info["state"] and v["state"]["messages"] == 20
        assert v["cluster"]["leader"] == cl["leader"]


# -- meta leader: stepdown, failover, catch-up, no leader -----------------------------------------

STEPDOWN_OK = b'{"type":"io.nats.jetstream.api.v1.meta_leader_stepdown_response","success":true}'


async def stepdown_to(cl: JSCluster, target: str, timeout: float = 30.0) -> None:
    """Ask (as the system account) the meta leader to hand over to `target` until it has."""
    deadline = time.monotonic() + timeout
    while cl.meta_leader() != target:
        assert time.monotonic() < deadline, f"{target} never became meta leader"
        sc = await cl.connect([n for n in cl.live() if n != target][0], system=True)
        try:
            await api_all(sc, "$JS.API.META.LEADER.STEPDOWN", {"placement": {"preferred": target}},
                          first_timeout=2, linger=0)
        finally:
            await sc.close()
        try:
            await asyncio.to_thread(cl.wait_meta_leader, None, None, 5)
        except AssertionError:
            pass


def test_meta_leader_stepdown(jsc_sys: JSCluster):
    cl = jsc_sys
    before = cl.wait_ready()

    async def main():
        anon = await cl.connect(before)
        sysc = await cl.connect([n for n in cl.names() if n != before][0], system=True)
        try:
            # from the global account: dropped, no response, leader unchanged (nats-server; our
            # server has no accounts, so it has no such request to drop)
            dropped, still = [], before
            if cl.kind == "nats-server":
                dropped = await api_all(anon, "$JS.API.META.LEADER.STEPDOWN", b"", first_timeout=1.5)
                still = cl.meta_leader()
            ok = await api_all(sysc, "$JS.API.META.LEADER.STEPDOWN")
            after = await asyncio.to_thread(cl.wait_meta_leader, None, before)
            unknown = await api_all(sysc, "$JS.API.META.LEADER.STEPDOWN", {"placement": {"preferred": "nope"}})
            target = [n for n in cl.names() if n not in (after,)][0]
            await stepdown_to(cl, target)
            return dropped, still, ok, after, unknown, target
        finally:
            await anon.close()
            await sysc.close()

    dropped, still, ok, after, unknown, target = run(main())
    assert dropped == [] and still == before
    assert len(ok) == 1 and ok[0].headers is None and ok[0].data == STEPDOWN_OK
    assert after != before and after in cl.names()
    assert len(unknown) == 1 and unknown[0].json == {
        "type": "io.nats.jetstream.api.v1.meta_leader_stepdown_response",
        "error": {"code": 400, "err_code": 10005, "description": 'preferred server "nope" not known'}}
    assert cl.wait_meta_leader() == target
    for n in cl.names():
        view = cl.meta_view(n)
        assert view["leader"] == target and view["name"] == CLUSTER_NAME and view["cluster_size"] == 3


DELETED = {"type": "io.nats.jetstream.api.v1.stream_delete_response", "success": True}


async def delete_with_node_maybe_down(nc, stream: str, host_down: bool) -> None:
    """Delete `stream` once the API answers again. nats-server applies the delete of an R1
    stream whose node is down but sends no response (the stream's node answers a delete);
    with its node up the answer is one success."""
    resps = await api_all(nc, f"$JS.API.STREAM.DELETE.{stream}", first_timeout=3)
    if host_down:
        assert resps == [], resps
    else:
        assert len(resps) == 1 and resps[0].json == DELETED, resps


@pytest.mark.timeout(180)
def test_sigkill_meta_leader_api_recovers_and_restarted_node_rejoins(jsc: JSCluster):
    cl = jsc
    cl.wait_ready()

    async def main():
        c0 = await cl.connect("n1")
        await api(c0, "$JS.API.STREAM.CREATE.FO_OLD", stream_config("FO_OLD"))
        await c0.close()
        old_host = await asyncio.to_thread(cl.stream_leader, "FO_OLD")
        victim = cl.meta_leader()
        survivor = [n for n in cl.names() if n != victim][0]
        nc = await cl.connect(survivor)
        try:
            cl.kill(victim)
            t0 = time.monotonic()
            created = await api_retry(nc, "$JS.API.STREAM.CREATE.FO_NEW", stream_config("FO_NEW"),
                                      until=30, per_request=1.0)
            took = time.monotonic() - t0
            await delete_with_node_maybe_down(nc, "FO_OLD", host_down=old_host == victim)
            names_down = await api(nc, "$JS.API.STREAM.NAMES")
            new_leader = cl.meta_leader()
            cl.restart(victim)
            await asyncio.to_thread(cl.wait_ready)
            vc = await cl.connect(victim)
            names = await api_all(vc, "$JS.API.STREAM.NAMES")
            info_new = await api_all(vc, "$JS.API.STREAM.INFO.FO_NEW")
            await vc.close()
            return victim, created, took, names_down, new_leader, names, info_new
        finally:
            await nc.close()
            cl.restore()

    victim, created, took, names_down, new_leader, names, info_new = run(main())
    assert created.get("did_create") is True, created
    assert took < 30
    assert "FO_NEW" in names_down["streams"] and "FO_OLD" not in names_down["streams"]
    assert new_leader in set(cl.names()) - {victim}
    # the restarted node follows the new leader, which sees it current (wait_ready), and answers
    assert cl.meta_view(victim)["leader"] == cl.meta_leader() == new_leader
    assert len(names) == 1 and "FO_NEW" in names[0].json["streams"] and "FO_OLD" not in names[0].json["streams"]
    assert len(info_new) == 1 and info_new[0].json["config"]["name"] == "FO_NEW"


@pytest.mark.timeout(180)
def test_sigstopped_meta_leader_is_replaced_and_rejoins_as_follower(jsc: JSCluster):
    """SIGSTOP keeps the leader's sockets open: the others must notice by silence. After
    SIGCONT the old leader follows, knows what changed, and requests through it get exactly
    one answer."""
    cl = jsc
    paused = cl.wait_ready()
    survivor = [n for n in cl.names() if n != paused][0]

    async def main():
        nc = await cl.connect(survivor)
        try:
            cl.sigstop(paused)
            # each try a new name: nats-server may place a stream on the paused node, which
            # then never answers its create (it does not know the node is stopped)
            created, tries = {}, 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not created.get("did_create"):
                tries += 1
                name = f"PAUSED{tries}"
                try:
                    created = await api_retry(nc, f"$JS.API.STREAM.CREATE.{name}", stream_config(name),
                                              until=5, per_request=1.0)
                except AssertionError:  # no answer in time: placed on the paused node
                    created = {}
            during = await asyncio.to_thread(cl.wait_meta_leader, [n for n in cl.names() if n != paused])
            cl.cont(paused)
            after = await asyncio.to_thread(cl.wait_ready)
            pc = await cl.connect(paused)
            names, create2 = await asyncio.gather(
                api_all(pc, "$JS.API.STREAM.NAMES"),
                api_all(pc, "$JS.API.STREAM.CREATE.RESUMED", stream_config("RESUMED")))
            await pc.close()
            return created, during, after, names, create2, name
        finally:
            await nc.close()
            cl.restore()

    created, during, after, names, create2, name = run(main())
    assert created.get("did_create") is True, created
    assert during != paused
    assert all(cl.meta_view(n)["leader"] == after for n in cl.names())
    assert len(names) == 1 and name in names[0].json["streams"]
    assert len(create2) == 1 and create2[0].json.get("did_create") is True, create2


@pytest.mark.timeout(180)
def test_restarted_meta_leader_catches_up_and_leads_with_the_new_state(jsc_sys: JSCluster):
    """Kill the meta leader, change the assignments without it, restart it and hand it the
    meta leadership back (stepdown with a preferred server, system account): it answers
    STREAM.NAMES / STREAM.INFO with what happened while it was down."""
    cl = jsc_sys
    cl.wait_ready()

    async def main():
        c0 = await cl.connect("n1")
        await api(c0, "$JS.API.STREAM.CREATE.CU_OLD", stream_config("CU_OLD"))
        await c0.close()
        old = "CU_OLD"
        old_host = await asyncio.to_thread(cl.stream_leader, old)
        victim = cl.meta_leader()
        survivor = [n for n in cl.names() if n != victim][0]
        nc = await cl.connect(survivor)
        try:
            cl.kill(victim)
            created = await api_retry(nc, "$JS.API.STREAM.CREATE.CU_NEW", stream_config("CU_NEW"), until=30)
            await delete_with_node_maybe_down(nc, old, host_down=old_host == victim)
            deleted = old not in (await api(nc, "$JS.API.STREAM.NAMES"))["streams"]
            cl.restart(victim)
            await asyncio.to_thread(cl.wait_ready)
            await stepdown_to(cl, victim)
            vc = await cl.connect(victim)
            names = await api_all(vc, "$JS.API.STREAM.NAMES")
            info_new = await api_all(vc, "$JS.API.STREAM.INFO.CU_NEW")
            info_old = await api_all(vc, f"$JS.API.STREAM.INFO.{old}")
            await vc.close()
            return victim, old, created, deleted, names, info_new, info_old
        finally:
            await nc.close()
            cl.restore()

    victim, old, created, deleted, names, info_new, info_old = run(main())
    assert created.get("did_create") is True and deleted
    assert cl.meta_leader() == victim
    assert len(names) == 1 and "CU_NEW" in names[0].json["streams"] and old not in names[0].json["streams"]
    assert len(info_new) == 1 and info_new[0].json["config"]["name"] == "CU_NEW"
    assert len(info_old) == 1 and info_old[0].json["error"] == {"code": 404, "err_code": 10059,
                                                                "description": "stream not found"}


@pytest.mark.timeout(180)
def test_stream_deleted_while_its_node_was_down_is_gone_after_restart(jsc: JSCluster):
    """nats-server applies the delete of an R1 stream whose only node is down but sends no
    response (the stream's node answers a delete, and it is down); the restarted node removes
    the stream from its store."""
    cl = jsc
    cl.wait_ready()

    async def main():
        c = await cl.connect_all()
        try:
            gone = "GONE"
            await api(c["n1"], "$JS.API.STREAM.CREATE.GONE", stream_config("GONE"))
            host = await asyncio.to_thread(cl.stream_leader, gone)
            await publish(c["n1"].jetstream(), f"{gone}.a", b"payload")
            assert gone in cl.jsz_streams(host)
            store = Path(cl.node(host).proc.store_dir)
            assert any(p.is_dir() for p in store.rglob(gone))
            other = [n for n in cl.names() if n != host][0]
            cl.kill(host)
            # if the host was the meta leader too: wait until the survivors answer again
            await api_retry(c[other], "$JS.API.STREAM.NAMES", until=30)
            deleted = await api_all(c[other], f"$JS.API.STREAM.DELETE.{gone}", first_timeout=3)
            names_down = await api(c[other], "$JS.API.STREAM.NAMES")
            cl.restart(host)
            await asyncio.to_thread(cl.wait_ready)
            await asyncio.to_thread(wait_for, lambda: gone not in cl.jsz_streams(host),
                                    f"{gone} removed from {host}'s own /jsz")
            hc = await cl.connect(host)
            info = await api_all(hc, f"$JS.API.STREAM.INFO.{gone}")
            names = await api(hc, "$JS.API.STREAM.NAMES")
            await hc.close()
            return gone, host, store, deleted, names_down, info, names
        finally:
            await close_all(c)
            cl.restore()

    gone, host, store, deleted, names_down, info, names = run(main())
    assert deleted == []
    assert gone not in (names_down["streams"] or [])
    assert len(info) == 1 and info[0].json["error"] == {"code": 404, "err_code": 10059, "description": "stream not found"}
    assert gone not in (names["streams"] or [])
    assert not any(p.is_dir() for p in store.rglob(gone)), f"{gone}'s files still in {host}'s store"


@pytest.mark.timeout(180)
def test_no_meta_leader_answers_503_10008_once_and_stream_leader_still_answers(jsc: JSCluster):
    cl = jsc
    cl.wait_ready()

    async def main():
        nc0 = await cl.connect("n1")
        await api(nc0, "$JS.API.STREAM.CREATE.LONELY", stream_config("LONELY"))
        await nc0.close()
        survivor = await asyncio.to_thread(cl.stream_leader, "LONELY")
        nc = await cl.connect(survivor)
        try:
            for n in cl.names():
                if n != survivor:
                    cl.kill(n)
            deadline = time.monotonic() + 40
            create = []
            while not create:  # nats-server stays silent until the survivor gives up on the leader
                assert time.monotonic() < deadline, "no answer to STREAM.CREATE without a meta leader"
                create = await api_all(nc, "$JS.API.STREAM.CREATE.NEVER", stream_config("NEVER"),
                                       first_timeout=3.0, linger=1.0)
            names = await api_all(nc, "$JS.API.STREAM.NAMES")
            accinfo = await api_all(nc, "$JS.API.INFO")
            info = await api_all(nc, "$JS.API.STREAM.INFO.LONELY")
            return survivor, create, names, accinfo, info
        finally:
            await nc.close()
            cl.restore()

    survivor, create, names, accinfo, info = run(main())
    assert len(create) == 1 and create[0].headers is None
    assert create[0].data == (b'{"type":"io.nats.jetstream.api.v1.stream_create_response","error":{"code":503,'
                              b'"err_code":10008,"description":"JetStream system temporarily unavailable"}}')
    assert len(names) == 1 and names[0].data == (
        b'{"type":"io.nats.jetstream.api.v1.stream_names_response","error":{"code":503,"err_code":10008,'
        b'"description":"JetStream system temporarily unavailable"},"total":0,"offset":0,"limit":0,"streams":null}')
    assert len(accinfo) == 1 and accinfo[0].json == {"type": "io.nats.jetstream.api.v1.account_info_response",
                                                     "error": NO_META_LEADER}
    # the stream's own leader is alive: STREAM.INFO still answers, once
    assert len(info) == 1 and info[0].json["config"]["name"] == "LONELY"
    assert info[0].json["cluster"] == {"name": CLUSTER_NAME, "leader": survivor}

    async def after():
        nc = await cl.connect(survivor)
        try:
            return await api_retry(nc, "$JS.API.STREAM.CREATE.BACK", stream_config("BACK"))
        finally:
            await nc.close()

    assert run(after()).get("did_create") is True


# -- response shape parity ------------------------------------------------------------------------

async def shape_scenario(cl: JSCluster) -> dict[str, dict]:
    """The same API conversation on a fresh cluster, each step through a different node; the
    responses normalized (ids, timestamps, leader names, durations replaced)."""
    c = await cl.connect_all()
    try:
        out = {}
        out["stream_create"] = await api(c["n2"], "$JS.API.STREAM.CREATE.SHAPE", stream_config("SHAPE"))
        js = c["n1"].jetstream()
        for i in range(3):
            await publish(js, f"SHAPE.{i}", b"x" * (i + 1), headers={"H": "v"} if i == 1 else None)
        out["stream_info"] = await api(c["n3"], "$JS.API.STREAM.INFO.SHAPE")
        out["stream_names"] = await api(c["n1"], "$JS.API.STREAM.NAMES")
        out["stream_list"] = await api(c["n2"], "$JS.API.STREAM.LIST")
        out["consumer_create"] = await api(c["n3"], "$JS.API.CONSUMER.CREATE.SHAPE.dur",
                                           {"stream_name": "SHAPE", "config": durable("dur", filter_subject="SHAPE.1")})
        out["consumer_info"] = await api(c["n1"], "$JS.API.CONSUMER.INFO.SHAPE.dur")
        # nats-server's account usage reaches the answering node by periodic updates: wait for
        # the stored bytes to show; the api counters are per server (which node answers what)
        deadline = time.monotonic() + 15
        while True:
            acc = await api(c["n2"], "$JS.API.INFO")
            if acc.get("storage") == out["stream_info"]["state"]["bytes"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        acc["api"]["total"] = acc["api"]["errors"] = "<count>"
        out["account_info"] = acc
        out["stream_info_missing"] = await api(c["n2"], "$JS.API.STREAM.INFO.NOPE")
        out["stream_create_dup"] = await api(c["n3"], "$JS.API.STREAM.CREATE.SHAPE",
                                             stream_config("SHAPE", subjects=["elsewhere"]))
        out["stream_create_r5"] = await api(c["n1"], "$JS.API.STREAM.CREATE.R5", stream_config("R5", num_replicas=5))
        return {k: normalize(v) for k, v in out.items()}
    finally:
        await close_all(c)


_reference_shapes: list[dict] = []


def reference_shapes(tmp_path: Path) -> dict[str, dict]:
    """nats-server's shapes from its own fresh cluster (once per session)."""
    if not _reference_shapes:
        with JSCluster("nats-server", tmp_path / "shape-ref") as ref:
            _reference_shapes.append(run(shape_scenario(ref)))
    return _reference_shapes[0]


@pytest.mark.parametrize("kind", kind_params())
def test_response_shapes_match_nats_server(kind: str, tmp_path: Path):
    """STREAM.CREATE/INFO/NAMES/LIST, CONSUMER.CREATE/INFO, INFO and error answers: the same
    key paths and the same values apart from ids, timestamps, leader names. For nats-server
    itself this compares two independent clusters (so the normalization is complete)."""
    expected = reference_shapes(tmp_path)
    with JSCluster(kind, tmp_path / f"shape-{kind}") as cl:
        got = run(shape_scenario(cl))
    assert set(got) == set(expected)
    for step in expected:
        assert sorted(key_paths(got[step])) == sorted(key_paths(expected[step])), step
        assert got[step] == expected[step], step
    # what nats-server says, spelled out
    si = expected["stream_info"]
    assert si["cluster"] == {"name": CLUSTER_NAME, "leader": "<leader>"}
    assert si["state"]["messages"] == 3 and si["state"]["last_seq"] == 3
    assert expected["stream_names"] == {"type": "io.nats.jetstream.api.v1.stream_names_response", "total": 1,
                                        "offset": 0, "limit": 1024, "streams": ["SHAPE"]}
    assert expected["stream_list"]["streams"][0]["cluster"] == {"name": CLUSTER_NAME, "leader": "<leader>"}
    ci = expected["consumer_info"]
    assert ci["cluster"] == {"name": CLUSTER_NAME, "leader": "<leader>"} and ci["num_pending"] == 1
    acc = expected["account_info"]
    assert acc["streams"] == 1 and acc["consumers"] == 1 and acc["storage"] == si["state"]["bytes"] > 0
    assert expected["stream_create_r5"]["error"] == NO_PLACEMENT
