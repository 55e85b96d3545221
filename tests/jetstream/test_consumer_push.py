"""Push consumers: delivery to deliver_subject, queue groups, flow control, heartbeats,
ordered consumers, headers_only, deliver and replay policies, inactivity cleanup.

Runs against our broker and the real nats-server."""

from __future__ import annotations

import asyncio
import datetime

from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.jetstream.consumer_fixtures import (Inbox, ack_meta, add_consumer, add_stream, api, data_msgs, publish,
                                               run, server_fixture, status)

server = server_fixture()
MS = 1_000_000


def test_push_delivers_only_with_interest_and_reports_push_bound(server):
    async def main(nc):
        await add_stream(nc, "QA", ["qa.>"])
        await publish(nc, "qa.1", b"one", 3)
        r = await add_consumer(nc, "QA", {"durable_name": "p", "name": "p", "deliver_subject": "dl.qa",
                                          "ack_policy": "explicit"}, "p")
        assert "push_bound" not in r
        await asyncio.sleep(0.2)
        info = await api(nc, "CONSUMER.INFO.QA.p")
        assert info["delivered"]["consumer_seq"] == 0 and info["num_pending"] == 3
        inbox = await Inbox(nc, "dl.qa").start()
        msgs = await inbox.wait_count(3)
        assert [ack_meta(m.reply)["pending"] for m in msgs] == [2, 1, 0]
        assert all(m.subject == "qa.1" for m in msgs)
        info = await api(nc, "CONSUMER.INFO.QA.p")
        assert info["push_bound"] is True and info["num_ack_pending"] == 3
    run(main, server.url)


def test_js_subscribe_auto_ack_and_queue_group(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="QB", subjects=["qb.>"])
        got_a, got_b = [], []

        async def cb_a(m):
            got_a.append(m.data)

        async def cb_b(m):
            got_b.append(m.data)
        await js.subscribe("qb.>", queue="workers", cb=cb_a)
        await js.subscribe("qb.>", queue="workers", cb=cb_b)
        for i in range(20):
            await js.publish("qb.x", b"%d" % i)
        for _ in range(200):
            if len(got_a) + len(got_b) >= 20:
                break
            await asyncio.sleep(0.05)
        assert sorted(got_a + got_b, key=int) == [b"%d" % i for i in range(20)]
        info = await js.consumer_info("QB", "workers")
        assert info.config.deliver_group == "workers"
        for _ in range(100):
            info = await js.consumer_info("QB", "workers")
            if info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 20
    run(main, server.url)


def test_idle_heartbeats_and_flow_control(server):
    async def main(nc):
        await add_stream(nc, "QC", ["qc.>"])
        inbox = await Inbox(nc, "dl.qc").start()
        await add_consumer(nc, "QC", {"name": "h", "deliver_subject": "dl.qc", "ack_policy": "none",
                                      "flow_control": True, "idle_heartbeat": 200 * MS}, "h")
        hb = await inbox.wait_for(lambda m: status(m) is not None)
        assert status(hb) == ("100", "Idle Heartbeat") and hb.reply == ""
        assert hb.headers["Nats-Last-Consumer"] == "0" and hb.headers["Nats-Last-Stream"] == "0"
        big = b"z" * (512 * 1024)
        for _ in range(12):
            await publish(nc, "qc.big", big)
        fc = await inbox.wait_for(lambda m: status(m) == ("100", "FlowControl Request"))
        assert fc.reply.startswith("$JS.FC.QC.")
        stalled = await inbox.wait_for(lambda m: status(m) is not None and "Nats-Consumer-Stalled" in m.headers)
        assert stalled.headers["Nats-Consumer-Stalled"] == fc.reply
        assert len(data_msgs(inbox.msgs)) < 12  # delivery waits for the flow-control answer
        answered = set()
        while len(data_msgs(inbox.msgs)) < 12:
            for m in list(inbox.msgs):
                if status(m) == ("100", "FlowControl Request") and m.reply not in answered:
                    answered.add(m.reply)
                    await nc.publish(m.reply, b"")
            await asyncio.sleep(0.05)
        n0 = len(inbox.msgs)
        last = await inbox.wait_for(lambda m: inbox.msgs.index(m) >= n0 and status(m) is not None
                                    and status(m)[1] == "Idle Heartbeat")
        assert last.headers["Nats-Last-Consumer"] == "12" and last.headers["Nats-Last-Stream"] == "12"
    run(main, server.url)


def test_ordered_consumer_with_nats_py(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="QD", subjects=["qd.>"])
        for i in range(50):
            await js.publish(f"qd.{i % 5}", b"%d" % i)
        sub = await js.subscribe("qd.>", ordered_consumer=True)
        got = [(await sub.next_msg(5)).data for _ in range(50)]
        assert got == [b"%d" % i for i in range(50)]
        await js.publish("qd.0", b"tail")
        assert (await sub.next_msg(5)).data == b"tail"
        await sub.unsubscribe()
    run(main, server.url)


def test_headers_only_and_deliver_policies(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="QE", subjects=["qe.>"])
        await js.publish("qe.a", b"abc", headers={"X-Y": "z"})
        await js.publish("qe.b", b"defgh")
        await js.publish("qe.a", b"ij")
        sub = await js.subscribe("qe.>", config=ConsumerConfig(headers_only=True), manual_ack=True)
        m = await sub.next_msg(5)
        assert m.data == b"" and m.headers == {"X-Y": "z", "Nats-Msg-Size": "3"}
        m = await sub.next_msg(5)
        assert m.headers == {"Nats-Msg-Size": "5"}
        last = await js.subscribe("qe.>", deliver_policy=DeliverPolicy.LAST)
        assert (await last.next_msg(5)).metadata.sequence.stream == 3
        new = await js.subscribe("qe.>", deliver_policy=DeliverPolicy.NEW)
        by_seq = await js.subscribe("qe.>", config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                                   opt_start_seq=2))
        assert (await by_seq.next_msg(5)).metadata.sequence.stream == 2
        lps = await js.subscribe("qe.>", deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        seqs = [(await lps.next_msg(5)).metadata.sequence.stream for _ in range(2)]
        assert seqs == [2, 3]
        await js.publish("qe.c", b"new")
        assert (await new.next_msg(5)).data == b"new"
    run(main, server.url)


def test_by_start_time_and_replay_original(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="QF", subjects=["qf.>"])
        await js.publish("qf.a", b"old")
        await asyncio.sleep(0.05)
        mid = datetime.datetime.now(datetime.timezone.utc)
        await asyncio.sleep(0.05)
        await js.publish("qf.a", b"new1")
        await asyncio.sleep(0.1)
        await js.publish("qf.a", b"new2")
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                             opt_start_time=mid.isoformat().replace("+00:00", "Z"))
        sub = await js.subscribe("qf.>", config=cfg)
        assert (await sub.next_msg(5)).data == b"new1"
        rp = await js.subscribe("qf.>", config=ConsumerConfig(replay_policy="original"))
        assert [(await rp.next_msg(5)).data for _ in range(3)] == [b"old", b"new1", b"new2"]
    run(main, server.url)


def test_ephemeral_inactive_threshold_cleanup(server):
    async def main(nc):
        await add_stream(nc, "QG", ["qg.>"])
        r = await add_consumer(nc, "QG", {"deliver_subject": "nobody.qg", "ack_policy": "none",
                                          "inactive_threshold": 300 * MS})
        name = r["name"]
        pull = await add_consumer(nc, "QG", {"ack_policy": "explicit", "inactive_threshold": 300 * MS})
        for _ in range(100):
            names = (await api(nc, "CONSUMER.NAMES.QG"))["consumers"]
            if not names:
                break
            await asyncio.sleep(0.1)
        assert name not in names and pull["name"] not in names
    run(main, server.url)


def test_kv_style_ordered_consumer_num_pending_exact(server):
    async def main(nc):
        await add_stream(nc, "QH", ["qh.>"])
        for k in ("a", "b", "a", "c", "b"):
            await publish(nc, f"qh.{k}", k.encode())
        inbox = await Inbox(nc, "dl.qh").start()
        await add_consumer(nc, "QH", {"deliver_subject": "dl.qh", "ack_policy": "none", "max_deliver": 1,
                                      "deliver_policy": "last_per_subject", "filter_subject": "qh.>",
                                      "flow_control": True, "idle_heartbeat": 5000 * MS, "mem_storage": True,
                                      "num_replicas": 1})
        msgs = await inbox.wait_count(3)
        assert [(m.subject, ack_meta(m.reply)["sseq"], ack_meta(m.reply)["pending"]) for m in msgs] == \
            [("qh.a", 3, 2), ("qh.c", 4, 1), ("qh.b", 5, 0)]
    run(main, server.url)


def test_two_ephemeral_push_consumers_each_get_everything(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="QI", subjects=["qi"])
        for i in range(10):
            await js.publish("qi", b"%d" % i)
        sub1 = await js.subscribe("qi")
        sub2 = await js.subscribe("qi")
        for i in range(10):
            m = await sub1.next_msg(5)
            await m.ack_sync()
        for _ in range(100):  # both consumers deliver on their own, without waiting for each other
            if sub2.pending_msgs == 10:
                break
            await asyncio.sleep(0.01)
        assert sub2.pending_msgs == 10
    run(main, server.url)
