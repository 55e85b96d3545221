"""Pull consumers: MSG.NEXT semantics, status messages, ack kinds, redelivery, limits.

Runs against our broker and the real nats-server. Timing-dependent features use short
ack waits / expiries and wait generously for the outcome; durations are never asserted."""

from __future__ import annotations

import asyncio
import json

import nats.errors
import pytest

from tests.jetstream.consumer_fixtures import (Inbox, ack_meta, add_consumer, add_stream, api, data_msgs, publish,
                                               run, server_fixture, status)

server = server_fixture()
MS = 1_000_000


async def setup(nc, stream: str, n: int, **ccfg) -> Inbox:
    await add_stream(nc, stream, [stream.lower() + ".>"])
    if n:
        await publish(nc, stream.lower() + ".x", b"hello", n)
    cfg = {"durable_name": "c", "name": "c", "ack_policy": "explicit"}
    cfg.update(ccfg)
    r = await add_consumer(nc, stream, cfg, "c")
    assert "error" not in r, r
    return await Inbox(nc, "in." + stream).start()


async def next_req(nc, stream: str, body, inbox: Inbox, consumer: str = "c") -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", payload, reply=inbox.subject)


def test_batch_delivery_and_exact_ack_subjects(server):
    async def main(nc):
        inbox = await setup(nc, "PA", 5)
        await next_req(nc, "PA", {"batch": 3}, inbox)
        msgs = await inbox.wait_count(3)
        metas = [ack_meta(m.reply) for m in msgs]
        assert [(x["delivered"], x["sseq"], x["dseq"], x["pending"]) for x in metas] == \
            [(1, 1, 1, 4), (1, 2, 2, 3), (1, 3, 3, 2)]
        assert all(m.subject == "pa.x" and m.data == b"hello" for m in msgs)
        info = await api(nc, "CONSUMER.INFO.PA.c")
        assert (info["num_ack_pending"], info["num_pending"], info["delivered"]["consumer_seq"]) == (3, 2, 3)
        await next_req(nc, "PA", b"", inbox)  # empty body = one message
        m = (await inbox.wait_count(4))[3]
        assert ack_meta(m.reply)["sseq"] == 4
    run(main, server.url)


def test_no_wait_and_expires_statuses(server):
    async def main(nc):
        inbox = await setup(nc, "PB", 2)
        await next_req(nc, "PB", {"batch": 10, "no_wait": True}, inbox)
        msgs = await inbox.wait_count(3)
        assert len(data_msgs(msgs[:2])) == 2 and status(msgs[2]) == ("404", "No Messages")
        await next_req(nc, "PB", {"batch": 1, "no_wait": True}, inbox)
        assert status((await inbox.wait_count(4))[3]) == ("404", "No Messages")
        await next_req(nc, "PB", {"batch": 5, "expires": 300 * MS}, inbox)
        m = (await inbox.wait_count(5))[4]
        assert status(m) == ("408", "Request Timeout")
        assert m.headers["Nats-Pending-Messages"] == "5" and m.headers["Nats-Pending-Bytes"] == "0"
    run(main, server.url)


def test_waiting_request_gets_new_message_and_heartbeats(server):
    async def main(nc):
        inbox = await setup(nc, "PC", 0)
        await next_req(nc, "PC", {"batch": 1, "expires": 5000 * MS, "idle_heartbeat": 200 * MS}, inbox)
        hb = await inbox.wait_for(lambda m: status(m) is not None)
        assert status(hb) == ("100", "Idle Heartbeat")
        assert hb.headers["Nats-Last-Consumer"] == "0" and hb.headers["Nats-Last-Stream"] == "0"
        await publish(nc, "pc.y", b"late")
        m = await inbox.wait_for(lambda m: status(m) is None)
        assert m.subject == "pc.y" and ack_meta(m.reply)["pending"] == 0
        await next_req(nc, "PC", {"batch": 1, "expires": 100 * MS, "idle_heartbeat": 1000 * MS}, inbox)
        bad = await inbox.wait_for(lambda m: status(m) is not None and status(m)[0] == "400")
        assert status(bad) == ("400", "Bad Request - heartbeat value too large")
    run(main, server.url)


def test_max_waiting_max_bytes_and_push_based(server):
    async def main(nc):
        inbox = await setup(nc, "PD", 0, max_waiting=1)
        await next_req(nc, "PD", {"batch": 1, "expires": 5000 * MS}, inbox)
        await next_req(nc, "PD", {"batch": 1, "expires": 5000 * MS}, inbox)
        m = await inbox.wait_count(1)
        assert status(m[0]) == ("409", "Exceeded MaxWaiting")
        r = await api(nc, "CONSUMER.INFO.PD.c")
        assert r["num_waiting"] == 1
        await publish(nc, "pd.x", b"0123456789")
        await inbox.wait_count(2)
        await next_req(nc, "PD", {"batch": 2, "max_bytes": 5, "expires": 5000 * MS}, inbox)
        await publish(nc, "pd.x", b"0123456789")
        m = await inbox.wait_for(lambda m: status(m) is not None and status(m)[0] == "409" and m is not inbox.msgs[0])
        assert status(m) == ("409", "Message Size Exceeds MaxBytes")
        assert m.headers["Nats-Pending-Messages"] == "2" and m.headers["Nats-Pending-Bytes"] == "5"
        await add_consumer(nc, "PD", {"name": "p", "deliver_subject": "dl.pd", "ack_policy": "none"}, "p")
        await next_req(nc, "PD", {"batch": 1}, inbox, consumer="p")
        m = await inbox.wait_for(lambda m: status(m) == ("409", "Consumer is push based"))
        assert m.data == b""
    run(main, server.url)


def test_ack_kinds(server):
    async def main(nc):
        inbox = await setup(nc, "PE", 4, ack_wait=30_000 * MS)
        await next_req(nc, "PE", {"batch": 4}, inbox)
        m1, m2, m3, m4 = await inbox.wait_count(4)
        resp = await nc.request(m1.reply, b"+ACK", timeout=5)  # an ack with a reply gets an empty answer
        assert resp.data == b""
        await nc.publish(m2.reply, b"+WPI")
        await nc.publish(m2.reply, b"")
        await nc.publish(m3.reply, b"+TERM")
        await nc.publish(m4.reply, b"-NAK")
        await nc.flush()
        await next_req(nc, "PE", {"batch": 1, "expires": 5000 * MS}, inbox)
        again = (await inbox.wait_count(5))[4]
        meta = ack_meta(again.reply)
        assert (meta["sseq"], meta["delivered"], meta["dseq"]) == (4, 2, 5)
        info = await api(nc, "CONSUMER.INFO.PE.c")
        assert info["num_ack_pending"] == 1 and info["num_redelivered"] == 1
        assert (info["ack_floor"]["consumer_seq"], info["ack_floor"]["stream_seq"]) == (3, 3)
        assert "last_active" in info["ack_floor"]
        resp = await nc.request(again.reply, b"+ACK", timeout=5)
        info = await api(nc, "CONSUMER.INFO.PE.c")
        assert info["num_ack_pending"] == 0 and info["ack_floor"]["stream_seq"] == 4
    run(main, server.url)


def test_nak_delay_and_next(server):
    async def main(nc):
        inbox = await setup(nc, "PF", 3)
        await next_req(nc, "PF", {"batch": 1}, inbox)
        (m1,) = await inbox.wait_count(1)
        await nc.publish(m1.reply, b'-NAK {"delay": 300000000}')
        await next_req(nc, "PF", {"batch": 3, "expires": 5000 * MS}, inbox)
        msgs = await inbox.wait_count(4)
        seqs = [ack_meta(m.reply)["sseq"] for m in msgs[1:]]
        assert seqs == [2, 3, 1]  # the NAKed message comes back only after its delay
        nxt = await Inbox(nc, "nxt.PF").start()
        await nc.publish(msgs[1].reply, b"+NXT", reply=nxt.subject)
        await publish(nc, "pf.x", b"four")
        m = (await nxt.wait_count(1))[0]
        assert ack_meta(m.reply)["sseq"] == 4
        info = await api(nc, "CONSUMER.INFO.PF.c")
        assert info["num_ack_pending"] == 3
    run(main, server.url)


def test_ack_wait_redelivery_and_max_deliver(server):
    async def main(nc):
        inbox = await setup(nc, "PG", 1, ack_wait=300 * MS, max_deliver=2)
        await next_req(nc, "PG", {"batch": 5, "expires": 3000 * MS}, inbox)
        msgs = await inbox.wait_for(lambda m: status(m) is not None)
        got = [ack_meta(m.reply)["delivered"] for m in data_msgs(inbox.msgs)]
        assert got == [1, 2]
        info = await api(nc, "CONSUMER.INFO.PG.c")
        assert info["num_ack_pending"] == 0 and info["num_redelivered"] == 1
        assert info["ack_floor"] == {"consumer_seq": 0, "stream_seq": 0}
        assert status(msgs) == ("408", "Request Timeout")
    run(main, server.url)


def test_backoff_redelivery(server):
    async def main(nc):
        inbox = await setup(nc, "PH", 1, backoff=[200 * MS, 400 * MS], max_deliver=3)
        await next_req(nc, "PH", {"batch": 3, "expires": 6000 * MS}, inbox)
        msgs = await inbox.wait_count(3)
        assert [ack_meta(m.reply)["delivered"] for m in msgs] == [1, 2, 3]
    run(main, server.url)


def test_max_ack_pending_limits_fetch(server):
    async def main(nc):
        js = nc.jetstream()
        await add_stream(nc, "PI", ["pi.>"])
        await publish(nc, "pi.x", b"m", 3)
        psub = await js.pull_subscribe("pi.x", "mp", config=__import__("nats").js.api.ConsumerConfig(
            max_ack_pending=2))
        msgs = await psub.fetch(3, timeout=1)
        assert len(msgs) == 2
        await msgs[0].ack()
        more = await psub.fetch(3, timeout=1)
        assert len(more) == 1 and more[0].metadata.sequence.stream == 3
    run(main, server.url)


def test_consumer_deleted_409_and_unknown_consumer(server):
    async def main(nc):
        inbox = await setup(nc, "PJ", 0)
        await next_req(nc, "PJ", {"batch": 1, "expires": 10_000 * MS}, inbox)
        await asyncio.sleep(0.1)
        r = await api(nc, "CONSUMER.DELETE.PJ.c")
        assert r["success"] is True
        m = await inbox.wait_for(lambda m: status(m) is not None)
        assert status(m) == ("409", "Consumer Deleted")
        await next_req(nc, "PJ", {"batch": 1}, inbox, consumer="nope")
        m = await inbox.wait_for(lambda m: status(m) is not None and status(m)[0] == "503")
        assert m.headers["Nats-Subject"] == "$JS.API.CONSUMER.MSG.NEXT.PJ.nope"
    run(main, server.url)


def test_fetch_with_nats_py_and_ack_policy_all(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="PK", subjects=["pk.>"])
        for i in range(10):
            await js.publish("pk.a" if i % 2 else "pk.b", b"%d" % i)
        from nats.js.api import AckPolicy, ConsumerConfig
        psub = await js.pull_subscribe("pk.a", "all", config=ConsumerConfig(ack_policy=AckPolicy.ALL))
        msgs = await psub.fetch(5, timeout=2)
        assert [m.data for m in msgs] == [b"1", b"3", b"5", b"7", b"9"]
        assert [m.metadata.num_pending for m in msgs] == [4, 3, 2, 1, 0]
        await msgs[2].ack_sync()
        info = await js.consumer_info("PK", "all")
        assert info.num_ack_pending == 2 and info.ack_floor.stream_seq == 6
        from nats.errors import TimeoutError as NatsTimeout
        with pytest.raises(NatsTimeout):
            await psub.fetch(1, timeout=0.5)
        await msgs[4].ack()
        await asyncio.sleep(0.2)
        info = await js.consumer_info("PK", "all")
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 10
    run(main, server.url)


def test_request_limits_from_consumer_config(server):
    async def main(nc):
        inbox = await setup(nc, "PL", 1, max_batch=2, max_expires=1000 * MS, max_bytes=100)
        await next_req(nc, "PL", {"batch": 3}, inbox)
        await next_req(nc, "PL", {"batch": 1, "expires": 2000 * MS}, inbox)
        await next_req(nc, "PL", {"batch": 1, "max_bytes": 200}, inbox)
        msgs = await inbox.wait_count(3)
        assert sorted(status(m) for m in msgs) == [("409", "Exceeded MaxRequestBatch of 2"),
                                                   ("409", "Exceeded MaxRequestExpires of 1s"),
                                                   ("409", "Exceeded MaxRequestMaxBytes of 100")]
        await next_req(nc, "PL", b"abc", inbox)  # not JSON and not a number: a request for one message
        m = (await inbox.wait_count(4))[3]
        assert m.data == b"hello" and ack_meta(m.reply)["sseq"] == 1
    run(main, server.url)


def test_pull_request_without_requester_interest_consumes_nothing(server):
    async def main(nc):
        inbox = await setup(nc, "PM", 0)
        await publish(nc, "pm.x", b"one")
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.PM.c", json.dumps({"batch": 1}).encode(), reply="nobody.pm")
        await nc.flush()
        await asyncio.sleep(0.2)
        info = await api(nc, "CONSUMER.INFO.PM.c")
        assert info["num_pending"] == 1 and info["num_ack_pending"] == 0
        await next_req(nc, "PM", {"batch": 1}, inbox)
        assert (await inbox.wait_count(1))[0].data == b"one"
    run(main, server.url)


def test_ack_sync_after_consumer_delete_gets_no_responders(server):
    async def main(nc):
        inbox = await setup(nc, "PN", 1)
        await next_req(nc, "PN", {"batch": 1}, inbox)
        (m,) = await inbox.wait_count(1)
        assert (await api(nc, "CONSUMER.DELETE.PN.c"))["success"]
        import nats.errors
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request(m.reply, b"", timeout=5)
    run(main, server.url)


def test_filtered_ack_floor_and_start_positions(server):
    async def main(nc):
        from nats.js.api import ConsumerConfig, DeliverPolicy
        js = nc.jetstream()
        await js.add_stream(name="PO", subjects=["po.>"])
        for s in ("a", "b", "a", "b", "a", "b", "b"):
            await js.publish("po." + s, b"x")
        psub = await js.pull_subscribe("po.a", "fa")
        msgs = await psub.fetch(3, timeout=5)

        async def state(name="fa"):
            i = await js.consumer_info("PO", name)
            return (i.delivered.consumer_seq, i.delivered.stream_seq, i.ack_floor.consumer_seq,
                    i.ack_floor.stream_seq, i.num_ack_pending, i.num_pending)
        assert await state() == (3, 5, 0, 0, 3, 0)
        await msgs[1].ack_sync()
        assert await state() == (3, 5, 0, 0, 2, 0)
        await msgs[0].ack_sync()
        assert await state() == (3, 5, 2, 4, 1, 0)
        await msgs[2].ack_sync()
        assert await state() == (3, 5, 3, 5, 0, 0)
        await js.publish("po.a", b"y")
        await js.publish("po.b", b"y")
        m = (await psub.fetch(1, timeout=5))[0]
        assert await state() == (4, 8, 3, 5, 1, 0)
        await m.ack_sync()
        assert await state() == (4, 8, 4, 8, 0, 0)
        await js.pull_subscribe("po.b", "fb", config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
        assert await state("fb") == (0, 9, 0, 9, 0, 0)
        await js.pull_subscribe("po.b", "fc", config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST))
        assert await state("fc") == (0, 8, 0, 8, 0, 1)
        await js.pull_subscribe("po.a", "fd", config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                                     opt_start_seq=4))
        assert await state("fd") == (0, 3, 0, 3, 0, 2)
    run(main, server.url)


def test_concurrent_fetchers_share_work_exactly_once(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="PW", subjects=["pw.>"])
        total = 1500
        for i in range(total):
            await nc.publish("pw.x", b"%d" % i)
        await nc.flush()
        subs = [await js.pull_subscribe("pw.x", "work") for _ in range(3)]
        seen: list[int] = []

        async def worker(psub):
            while len(seen) < total:
                try:
                    msgs = await psub.fetch(50, timeout=1)
                except asyncio.TimeoutError:  # nats-py raises its own subclass or, in one path, this
                    continue
                for m in msgs:
                    seen.append(m.metadata.sequence.stream)
                    await m.ack()
        await asyncio.wait_for(asyncio.gather(*(worker(s) for s in subs)), 60)
        assert sorted(seen) == list(range(1, total + 1))
        info = await js.consumer_info("PW", "work")
        for _ in range(50):
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
            info = await js.consumer_info("PW", "work")
        assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
        assert info.ack_floor.stream_seq == total
    run(main, server.url)


def test_requests_sent_together_take_turns(server):
    """Pull requests that arrive together (one client write) are all waiting before any is
    served, as nats-server queues them for its delivery loop: with messages already stored
    they take turns, one message each, instead of the first one taking its whole batch."""
    async def main(nc):
        a = await setup(nc, "PRR", 6)
        b = await Inbox(nc, "in.PRR.b").start()
        await nc.flush()
        # no flush between the two: nats-py sends them in one write
        await next_req(nc, "PRR", {"batch": 4, "expires": 60_000 * MS}, a)
        await next_req(nc, "PRR", {"batch": 4, "expires": 60_000 * MS}, b)
        got_a = data_msgs(await a.wait_count(3))
        got_b = data_msgs(await b.wait_count(3))
        assert [ack_meta(m.reply)["sseq"] for m in got_a] == [1, 3, 5]
        assert [ack_meta(m.reply)["sseq"] for m in got_b] == [2, 4, 6]
        info = await api(nc, "CONSUMER.INFO.PRR.c")
        assert (info["num_waiting"], info["num_pending"], info["num_ack_pending"]) == (2, 0, 6)
    run(main, server.url)
