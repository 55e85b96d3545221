"""Faults inside our meta group that a nats-server cluster has no equivalent of on the wire:
Raft traffic nobody asked for, a damaged meta WAL on one node, a node that joins later.
Our server only (the internals differ); each test runs its own three-node cluster."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from broker.jetstream.cluster.meta import raft_id
from raft.storage import wal_segments
from raft import OsDisk
from tests.conftest import ServerProc, free_port
from tests.jscluster.harness import (CLUSTER_NAME, JSCluster, api, api_all, api_retry, publish, run, stream_config,
                                     wait_for)


def test_raft_traffic_for_unknown_groups_or_garbage_is_dropped_and_logged(tmp_path):
    with JSCluster("ours", tmp_path) as jsc:
        async def main():
            nc = await jsc.connect("n1")
            try:
                for name in jsc.names():
                    rid = raft_id(name)
                    await nc.publish(f"$NRG.no_such_group.{rid}", b"\x81\xa1t\xa3app")
                    await nc.publish(f"$NRG._meta_.{rid}", b"not msgpack at all")
                    await nc.publish(f"$NRG._meta_.{rid}", b"")
                await nc.flush()
                # a replicated stream is made and removed as usual after the garbage
                r3 = await api_retry(nc, "$JS.API.STREAM.CREATE.R3", stream_config("R3", num_replicas=3))
                assert "error" not in r3, r3
                assert len(r3["cluster"]["replicas"]) == 2, r3
                assert "error" not in await api_retry(nc, "$JS.API.STREAM.CREATE.R1", stream_config("R1"))
                # more replicas than servers: refused, nothing changes
                up = await api(nc, "$JS.API.STREAM.UPDATE.R1", stream_config("R1", num_replicas=5))
                assert up["error"] == {"code": 400, "err_code": 10005,
                                       "description": "no suitable peers for placement"}, up
                await api(nc, "$JS.API.STREAM.DELETE.R1")
                assert (await api_retry(nc, "$JS.API.STREAM.DELETE.R3"))["success"] is True
                # the meta group still works from every node
                for i, name in enumerate(jsc.names()):
                    c = await jsc.connect(name)
                    try:
                        resp = await api_retry(c, f"$JS.API.STREAM.CREATE.U{i}", stream_config(f"U{i}"))
                        assert "error" not in resp, resp
                    finally:
                        await c.close()
            finally:
                await nc.close()

        run(main())
        for name in jsc.names():
            wait_for(lambda: "dropped" in jsc.log(name) or "undecodable" in jsc.log(name), f"{name} logged the drop")
            assert jsc.node(name).alive
        assert set(jsc.jsz_streams(jsc.names()[0])) | set(jsc.jsz_streams(jsc.names()[1])) | \
            set(jsc.jsz_streams(jsc.names()[2])) == {"U0", "U1", "U2"}


def _damage_middle_record(meta_dir: str) -> None:
    """Flip bytes inside an early WAL record so that valid records follow it: corruption, not
    a torn tail."""
    disk = OsDisk(meta_dir)
    seg = wal_segments(disk)[0]
    path = os.path.join(meta_dir, seg)
    data = bytearray(open(path, "rb").read())
    assert len(data) > 200, len(data)
    for i in range(40, 48):
        data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


def test_damaged_meta_wal_is_reported_and_the_node_rejoins_quarantined(tmp_path):
    with JSCluster("ours", tmp_path) as jsc:
        async def setup():
            nc = await jsc.connect("n1")
            try:
                for i in range(5):
                    assert "error" not in await api_retry(nc, f"$JS.API.STREAM.CREATE.D{i}", stream_config(f"D{i}"))
            finally:
                await nc.close()

        run(setup())
        victim = next(n for n in jsc.names() if n != jsc.meta_leader())
        jsc.kill(victim)
        meta_dir = os.path.join(jsc.workdir, f"{victim}-store", "jetstream", "$SYS", "_js_", "_meta_")
        _damage_middle_record(meta_dir)
        jsc.restart(victim)
        wait_for(lambda: "meta log is damaged" in jsc.log(victim), "the damage reported in the log")
        health = wait_for(lambda: not jsc.healthy(victim), "/healthz reporting the damage")
        assert health

        async def after():
            nc = await jsc.connect(victim)
            try:
                # the cluster keeps working, through the damaged node too
                assert "error" not in await api_retry(nc, "$JS.API.STREAM.CREATE.AFTER", stream_config("AFTER"))
                names = await api(nc, "$JS.API.STREAM.NAMES")
                assert sorted(names["streams"]) == ["AFTER", "D0", "D1", "D2", "D3", "D4"]
            finally:
                await nc.close()

        run(after())
        for name in jsc.names():
            assert jsc.node(name).alive
        # the damaged node caught up: its own view of the meta group is current
        wait_for(lambda: jsc.meta_current(victim), f"{victim} current again")


def test_a_node_started_later_becomes_a_member(tmp_path):
    names = ("n1", "n2", "n3")
    cports = {n: free_port() for n in names}
    routes = ",".join(f"nats://127.0.0.1:{cp}" for cp in cports.values())
    procs = {}
    for n in names:
        procs[n] = ServerProc([sys.executable, "-m", "broker"],
                              ["-n", n, "--cluster", f"nats://127.0.0.1:{cports[n]}", "--cluster_name", CLUSTER_NAME,
                               "--routes", routes], str(tmp_path / f"{n}-store"), tmp_path / f"{n}.log")
    try:
        procs["n1"].start()
        procs["n2"].start()

        def jsz(n):
            import urllib.request
            with urllib.request.urlopen(f"http://127.0.0.1:{procs[n].http_port}/jsz", timeout=3) as r:
                return json.loads(r.read())["meta_cluster"]

        leader = wait_for(lambda: jsz("n1").get("leader"), "a leader of the first two")
        assert jsz("n1")["cluster_size"] == 2
        time.sleep(0.5)
        procs["n3"].start()
        wait_for(lambda: jsz("n1")["cluster_size"] == 3 and jsz("n3").get("leader") == leader
                 and jsz("n3")["cluster_size"] == 3, "n3 a member")
        # with n3 a voter, the group survives losing one of the first two
        victim = "n1" if leader != "n1" else "n2"
        procs[victim].kill()
        survivor = next(n for n in names if n not in (victim,))
        wait_for(lambda: jsz(survivor).get("leader") in set(names) - {victim}, "a leader without " + victim)
    finally:
        for p in procs.values():
            p.stop()


def test_lame_duck_meta_leader_hands_leadership_over_before_leaving(tmp_path):
    import signal

    with JSCluster("ours", tmp_path) as jsc:
        leader = jsc.meta_leader()
        jsc.node(leader).proc.signal(signal.SIGUSR2)
        others = [n for n in jsc.names() if n != leader]
        new = wait_for(lambda: (lambda x: x if x in others else None)(jsc.meta_leader(among=others)),
                       "leadership moved off the lame duck")
        assert jsc.node(leader).alive  # still in its grace period: it handed over, it did not die
        assert "lame duck, handing the meta leadership over" in jsc.log(leader)
        assert new in others


def test_consumer_assignments_are_meta_entries_on_every_node(tmp_path):
    """A consumer create is answered once its assignment is in the meta log: account INFO,
    which every node answers from the assignments, counts it at once; a deleted or expired
    consumer leaves the assignments too."""
    with JSCluster("ours", tmp_path) as jsc:
        async def main():
            c = await jsc.connect_all()
            try:
                for i in range(3):
                    assert "error" not in await api_retry(c["n1"], f"$JS.API.STREAM.CREATE.C{i}", stream_config(f"C{i}"))
                for i in range(3):  # durables through a different node each time
                    via = jsc.names()[i]
                    resp = await api(c[via], f"$JS.API.CONSUMER.DURABLE.CREATE.C{i}.d{i}",
                                     {"stream_name": f"C{i}", "config": {"durable_name": f"d{i}", "ack_policy": "explicit"}})
                    assert resp["name"] == f"d{i}", resp
                    for n in jsc.names():
                        info = await api(c[n], "$JS.API.INFO")
                        assert info["consumers"] == i + 1, (n, info)
                # a confirmed ack through any node: one answer, from the consumer's node
                await publish(c["n1"].jetstream(), "C1.x", b"m")
                inbox = c["n3"].new_inbox()
                sub = await c["n3"].subscribe(inbox)
                await c["n3"].publish("$JS.API.CONSUMER.MSG.NEXT.C1.d1", b'{"batch":1}', reply=inbox)
                msg = await sub.next_msg(5)
                acks = await api_all(c["n3"], msg.reply, b"+ACK", first_timeout=5)
                assert [(r.headers, r.data) for r in acks] == [(None, b"")], acks
                # ...and an ack for a consumer that is gone gets one 503 (no responders), not three
                gone = await api_all(c["n3"], "$JS.ACK.C1.nope.1.1.1.0.0", b"+ACK", first_timeout=5)
                assert [r.headers.get("Status") for r in gone] == ["503"], gone
                await api(c["n2"], "$JS.API.CONSUMER.DELETE.C0.d0")
                for n in jsc.names():
                    await asyncio.to_thread(wait_for, lambda: run_info(jsc, n)["consumers"] == 2,
                                            f"the deleted consumer gone from the assignments ({n})")
            finally:
                for nc in c.values():
                    await nc.close()

        run(main())


def run_info(jsc, node: str) -> dict:
    async def ask():
        nc = await jsc.connect(node)
        try:
            return await api(nc, "$JS.API.INFO")
        finally:
            await nc.close()
    return asyncio.run(ask())
