"""Consumers and their stream: workqueue/interest retention, purge, stream delete, pause.

Runs against our broker and the real nats-server."""

from __future__ import annotations

import asyncio
import json

from tests.jetstream.consumer_fixtures import (Inbox, add_consumer, add_stream, api, publish, run, server_fixture,
                                               status)

server = server_fixture()
MS = 1_000_000


async def wait_messages(nc, stream: str, want: int) -> int:
    n = -1
    for _ in range(100):
        n = (await api(nc, f"STREAM.INFO.{stream}"))["state"]["messages"]
        if n == want:
            return n
        await asyncio.sleep(0.05)
    return n


def test_workqueue_ack_removes_and_consumer_rules(server):
    async def main(nc):
        await add_stream(nc, "WQ", ["wq.>"], retention="workqueue")
        await publish(nc, "wq.a", b"x", 4)
        r = await add_consumer(nc, "WQ", {"durable_name": "w", "name": "w", "ack_policy": "explicit"}, "w")
        assert "error" not in r
        r = await add_consumer(nc, "WQ", {"durable_name": "w2", "name": "w2", "ack_policy": "explicit"}, "w2")
        assert r["error"]["code"] == 400 and r["error"]["err_code"] == 10099
        psub = await nc.jetstream().pull_subscribe_bind("w", stream="WQ")
        msgs = await psub.fetch(3, timeout=5)
        for m in msgs[:2]:
            await m.ack_sync()
        assert await wait_messages(nc, "WQ", 2) == 2
        await msgs[2].term()
        assert await wait_messages(nc, "WQ", 1) == 1
    run(main, server.url)


def test_interest_retention_waits_for_every_consumer(server):
    async def main(nc):
        await add_stream(nc, "IR", ["ir.>"], retention="interest")
        for n in ("a", "b"):
            await add_consumer(nc, "IR", {"durable_name": n, "name": n, "ack_policy": "explicit"}, n)
        await publish(nc, "ir.x", b"x", 2)
        js = nc.jetstream()
        sa = await js.pull_subscribe_bind("a", stream="IR")
        sb = await js.pull_subscribe_bind("b", stream="IR")
        for m in await sa.fetch(2, timeout=5):
            await m.ack_sync()
        assert await wait_messages(nc, "IR", 2) == 2
        mb = await sb.fetch(2, timeout=5)
        await mb[0].ack_sync()
        assert await wait_messages(nc, "IR", 1) == 1
    run(main, server.url)


def test_purge_resets_pending_counts(server):
    async def main(nc):
        await add_stream(nc, "PU", ["pu.>"])
        await publish(nc, "pu.x", b"x", 5)
        await add_consumer(nc, "PU", {"durable_name": "c", "name": "c", "ack_policy": "explicit"}, "c")
        psub = await nc.jetstream().pull_subscribe_bind("c", stream="PU")
        await psub.fetch(2, timeout=5)
        r = await api(nc, "STREAM.PURGE.PU")
        assert r["success"]
        info = await api(nc, "CONSUMER.INFO.PU.c")
        for _ in range(50):
            if info["num_pending"] == 0 and info["num_ack_pending"] == 0:
                break
            await asyncio.sleep(0.05)
            info = await api(nc, "CONSUMER.INFO.PU.c")
        assert info["num_pending"] == 0 and info["num_ack_pending"] == 0
        await publish(nc, "pu.x", b"after")
        m = (await psub.fetch(1, timeout=5))[0]
        assert m.data == b"after" and m.metadata.sequence.stream == 6
    run(main, server.url)


def test_stream_delete_tells_waiting_pulls(server):
    async def main(nc):
        await add_stream(nc, "SD", ["sd.>"])
        await add_consumer(nc, "SD", {"durable_name": "c", "name": "c", "ack_policy": "explicit"}, "c")
        inbox = await Inbox(nc, "in.sd").start()
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.SD.c", json.dumps({"batch": 1, "expires": 10_000 * MS}).encode(),
                         reply="in.sd")
        await asyncio.sleep(0.2)
        assert (await api(nc, "STREAM.DELETE.SD"))["success"]
        m = await inbox.wait_for(lambda m: status(m) is not None)
        assert status(m)[0] == "409"
        r = await api(nc, "CONSUMER.INFO.SD.c")
        assert r["error"]["err_code"] == 10059
    run(main, server.url)


def test_pause_and_resume(server):
    async def main(nc):
        js = nc.jetstream()
        await add_stream(nc, "PZ", ["pz.>"])
        await add_consumer(nc, "PZ", {"durable_name": "c", "name": "c", "ack_policy": "explicit"}, "c")
        r = await api(nc, "CONSUMER.PAUSE.PZ.c", {"pause_until": "2099-01-01T00:00:00Z"})
        assert r["paused"] is True and r["pause_until"] == "2099-01-01T00:00:00Z" and r["pause_remaining"] > 0
        info = await api(nc, "CONSUMER.INFO.PZ.c")
        assert info["paused"] is True and info["config"]["pause_until"] == "2099-01-01T00:00:00Z"
        await publish(nc, "pz.x", b"held")
        psub = await js.pull_subscribe_bind("c", stream="PZ")
        from nats.errors import TimeoutError as NatsTimeout
        try:
            got = await psub.fetch(1, timeout=0.5)
        except NatsTimeout:
            got = []
        assert got == []
        r = await api(nc, "CONSUMER.PAUSE.PZ.c", {})
        assert r["paused"] is False
        assert (await psub.fetch(1, timeout=5))[0].data == b"held"
    run(main, server.url)


def test_workqueue_consumer_rules_and_max_consumers(server):
    async def main(nc):
        await add_stream(nc, "WR", ["wr.>"], retention="workqueue")

        async def err(name, **cfg):
            r = await add_consumer(nc, "WR", dict(name=name, **cfg), name)
            return (r["error"]["err_code"], r["error"]["description"]) if "error" in r else None
        assert await err("a", ack_policy="none") == (
            10084, "consumer in pull mode requires explicit ack policy on workqueue stream")
        assert await err("a", ack_policy="all") == (10098, "workqueue stream requires explicit ack")
        assert await err("a", ack_policy="explicit", filter_subject="wr.a") is None
        assert await err("b", ack_policy="explicit", filter_subject="wr.*") == (
            10100, "filtered consumer not unique on workqueue stream")
        assert await err("b", ack_policy="explicit") == (
            10099, "multiple non-filtered consumers not allowed on workqueue stream")
        assert await err("c", ack_policy="explicit", filter_subject="wr.c", deliver_policy="new") == (
            10101, "consumer must be deliver all on workqueue stream")
        await add_stream(nc, "MC", ["mc.>"], max_consumers=1)
        assert "error" not in await add_consumer(nc, "MC", {"name": "a"}, "a")
        r = await add_consumer(nc, "MC", {"name": "b"}, "b")
        assert r["error"] == {"code": 400, "err_code": 10026, "description": "maximum consumers limit reached"}
    run(main, server.url)


def test_interest_stream_releases_messages_when_consumer_deleted(server):
    async def main(nc):
        await add_stream(nc, "IX", ["ix.>"], retention="interest")
        for n in ("a", "b"):
            await add_consumer(nc, "IX", {"durable_name": n, "name": n, "ack_policy": "explicit"}, n)
        await publish(nc, "ix.x", b"x", 3)
        sa = await nc.jetstream().pull_subscribe_bind("a", stream="IX")
        for m in await sa.fetch(3, timeout=5):
            await m.ack_sync()
        assert await wait_messages(nc, "IX", 3) == 3  # b still needs them
        assert (await api(nc, "CONSUMER.DELETE.IX.b"))["success"]
        assert await wait_messages(nc, "IX", 0) == 0
    run(main, server.url)


def test_num_pending_follows_limit_evictions(server):
    async def main(nc):
        await add_stream(nc, "LE", ["le.>"], max_msgs=5)
        await publish(nc, "le.x", b"x", 5)
        await add_consumer(nc, "LE", {"durable_name": "c", "name": "c", "ack_policy": "explicit"}, "c")
        await publish(nc, "le.x", b"y", 8)
        info = await api(nc, "CONSUMER.INFO.LE.c")
        for _ in range(50):
            if info["num_pending"] == 5:
                break
            await asyncio.sleep(0.05)
            info = await api(nc, "CONSUMER.INFO.LE.c")
        assert info["num_pending"] == 5
        inbox = await Inbox(nc, "in.le").start()
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.LE.c", json.dumps({"batch": 10, "no_wait": True}).encode(),
                         reply="in.le")
        msgs = await inbox.wait_for(lambda m: status(m) is not None)
        got = [m.reply.split(".") for m in inbox.msgs if m.reply]
        assert [(int(t[5]), int(t[8])) for t in got] == [(9, 4), (10, 3), (11, 2), (12, 1), (13, 0)]
        assert status(msgs) == ("404", "No Messages")
    run(main, server.url)


def test_purges_move_floors_like_nats_server(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="PF2", subjects=["pf2.>"])
        for i in range(6):
            await js.publish("pf2.a" if i % 2 else "pf2.b", b"x")
        psub = await js.pull_subscribe("pf2.>", "c")
        msgs = await psub.fetch(3, timeout=5)
        await msgs[0].ack_sync()

        async def state():
            i = await api(nc, "CONSUMER.INFO.PF2.c")
            return (i["delivered"]["consumer_seq"], i["delivered"]["stream_seq"], i["ack_floor"]["consumer_seq"],
                    i["ack_floor"]["stream_seq"], i["num_ack_pending"], i["num_pending"])
        assert await state() == (3, 3, 1, 1, 2, 3)
        await api(nc, "STREAM.PURGE.PF2", {"filter": "pf2.b"})
        assert await state() == (3, 3, 3, 1, 1, 2)
        await api(nc, "STREAM.PURGE.PF2", {"seq": 5})
        assert await state() == (3, 5, 3, 5, 0, 1)
        await api(nc, "STREAM.PURGE.PF2")
        assert await state() == (3, 6, 3, 6, 0, 0)
        await js.publish("pf2.a", b"n")
        m = (await psub.fetch(1, timeout=5))[0]
        assert (m.metadata.sequence.stream, m.metadata.sequence.consumer) == (7, 4)
    run(main, server.url)
