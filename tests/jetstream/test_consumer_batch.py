"""Pull batches delivered in bulk: exact ack subjects, order and counters over long drains,
interior deletes, filters and mixed inbox interest (plain, auto-unsubscribing and queue
subscribers). Runs against our broker and the real nats-server."""

from __future__ import annotations

import asyncio
import json

from tests.jetstream.consumer_fixtures import (WAIT_S, Inbox, ack_meta, add_consumer, add_stream, api,
                                               data_msgs, publish, run, server_fixture, status)

server = server_fixture()


async def next_req(nc, stream: str, body: dict, reply: str, consumer: str = "c") -> None:
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", json.dumps(body).encode(), reply=reply)


async def fill(nc, subject_of, n: int) -> None:
    js = nc.jetstream()
    for i in range(n):
        await js.publish(subject_of(i), b"m%d" % i)


def test_long_drain_two_requests_exact_replies(server):
    """Two outstanding requests, then a third, drain a 2,500-message backlog; every reply
    names the right sequences and pending count, and the counters end exact."""
    async def main(nc):
        await add_stream(nc, "BA", ["ba.>"])
        await fill(nc, lambda i: f"ba.{i % 3}", 2500)
        for pol in ("none", "explicit"):
            name = "c" + pol
            cfg = {"durable_name": name, "ack_policy": pol, "deliver_policy": "all", "max_ack_pending": 10_000}
            r = await add_consumer(nc, "BA", cfg, name)
            assert "error" not in r, r
            a = await Inbox(nc, f"in.ba.{pol}.a").start()
            b = await Inbox(nc, f"in.ba.{pol}.b").start()
            await next_req(nc, "BA", {"batch": 1000, "expires": 5_000_000_000}, a.subject, name)
            await next_req(nc, "BA", {"batch": 1000, "expires": 5_000_000_000}, b.subject, name)
            await a.wait_count(1000)
            await b.wait_count(1000)
            await next_req(nc, "BA", {"batch": 1000, "expires": 5_000_000_000}, a.subject, name)
            await a.wait_for(lambda m: len(data_msgs(a.msgs)) >= 1500)
            got = data_msgs(a.msgs)[:1500] + data_msgs(b.msgs)[:1000]
            metas = [(ack_meta(m.reply), m.subject, m.data) for m in got]
            by_dseq = sorted(metas, key=lambda x: x[0]["dseq"])
            assert [x[0]["dseq"] for x in by_dseq] == list(range(1, 2501))
            assert [x[0]["sseq"] for x in by_dseq] == list(range(1, 2501))
            assert [x[0]["pending"] for x in by_dseq] == list(range(2499, -1, -1))
            assert all(x[0]["delivered"] == 1 and x[0]["consumer"] == name for x in by_dseq)
            assert [(x[1], x[2]) for x in by_dseq] == [(f"ba.{i % 3}", b"m%d" % i) for i in range(2500)]
            for inbox in (a, b):  # each request sees its messages in consumer-sequence order
                mine = [ack_meta(m.reply)["dseq"] for m in data_msgs(inbox.msgs)]
                assert mine == sorted(mine)
            info = await api(nc, f"CONSUMER.INFO.BA.{name}")
            assert info["num_pending"] == 0
            pair = lambda d: (d["consumer_seq"], d["stream_seq"])
            assert pair(info["delivered"]) == (2500, 2500)
            if pol == "none":
                assert pair(info["ack_floor"]) == (2500, 2500)
                assert info["num_ack_pending"] == 0
            else:
                assert pair(info["ack_floor"]) == (0, 0)
                assert info["num_ack_pending"] == 2500
    run(main, server.url)


def test_batches_across_deletes_and_filters(server):
    async def main(nc):
        await add_stream(nc, "BB", ["bb.>"])
        await fill(nc, lambda i: "bb.even" if i % 2 == 0 else "bb.odd", 600)
        for seq in (5, 6, 7, 300, 598):
            r = await api(nc, "STREAM.MSG.DELETE.BB", {"seq": seq})
            assert r.get("success"), r
        for name, extra in (("all", {}), ("even", {"filter_subject": "bb.even"})):
            r = await add_consumer(nc, "BB", {"durable_name": name, "ack_policy": "none", "deliver_policy": "all",
                                              **extra}, name)
            assert "error" not in r, r
            inbox = await Inbox(nc, f"in.bb.{name}").start()
            await next_req(nc, "BB", {"batch": 1000, "no_wait": True}, inbox.subject, name)
            want = [s for s in range(1, 601) if s not in (5, 6, 7, 300, 598)
                    and (name == "all" or s % 2 == 1)]
            msgs = await inbox.wait_count(len(want) + 1)
            metas = [ack_meta(m.reply) for m in msgs[:-1]]
            assert [x["sseq"] for x in metas] == want
            assert [x["dseq"] for x in metas] == list(range(1, len(want) + 1))
            assert [x["pending"] for x in metas] == list(range(len(want) - 1, -1, -1))
            assert status(msgs[-1]) == ("404", "No Messages")
    run(main, server.url)


def test_max_bytes_cuts_a_batch(server):
    async def main(nc):
        await add_stream(nc, "BC", ["bc.>"])
        await publish(nc, "bc.x", b"y" * 100, 50)
        r = await add_consumer(nc, "BC", {"durable_name": "c", "ack_policy": "none", "deliver_policy": "all"}, "c")
        assert "error" not in r, r
        inbox = await Inbox(nc, "in.bc").start()
        await next_req(nc, "BC", {"batch": 50, "max_bytes": 1000}, inbox.subject)
        msgs = await inbox.wait_for(lambda m: status(m) is not None) and inbox.msgs
        got = data_msgs(msgs)
        assert 0 < len(got) < 10
        assert [ack_meta(m.reply)["sseq"] for m in got] == list(range(1, len(got) + 1))
        assert status(msgs[len(got)])[0] == "409"
        await next_req(nc, "BC", {"batch": 5, "no_wait": True}, inbox.subject)
        more = await inbox.wait_count(len(got) + 1 + 5)
        assert [ack_meta(m.reply)["sseq"] for m in more[len(got) + 1:]] == \
            list(range(len(got) + 1, len(got) + 6))
    run(main, server.url)


def test_batch_to_inbox_with_mixed_subscribers(server):
    """A batch to an inbox that a plain subscriber, an auto-unsubscribing subscriber and a
    queue group all listen on: each gets what single deliveries would give it."""
    async def main(nc):
        await add_stream(nc, "BD", ["bd.>"])
        await publish(nc, "bd.x", b"z", 20)
        r = await add_consumer(nc, "BD", {"durable_name": "c", "ack_policy": "none", "deliver_policy": "all"}, "c")
        assert "error" not in r, r
        plain: list = []
        limited: list = []
        q1: list = []
        q2: list = []
        done = asyncio.Event()

        async def on_plain(m):
            plain.append(m)
            if len(plain) == 20:
                done.set()

        async def collect(into):
            async def cb(m):
                into.append(m)
            return cb

        await nc.subscribe("in.bd", cb=on_plain)
        s = await nc.subscribe("in.bd", cb=await collect(limited))
        await s.unsubscribe(limit=3)
        await nc.subscribe("in.bd", queue="g", cb=await collect(q1))
        await nc.subscribe("in.bd", queue="g", cb=await collect(q2))
        await nc.flush()
        await next_req(nc, "BD", {"batch": 20}, "in.bd")
        await asyncio.wait_for(done.wait(), WAIT_S)
        await nc.flush()
        seqs = lambda ms: [ack_meta(m.reply)["sseq"] for m in ms]
        assert seqs(plain) == list(range(1, 21))
        assert seqs(limited) == [1, 2, 3]
        assert sorted(seqs(q1) + seqs(q2)) == list(range(1, 21))
        assert seqs(q1) == sorted(seqs(q1)) and seqs(q2) == sorted(seqs(q2))
    run(main, server.url)
