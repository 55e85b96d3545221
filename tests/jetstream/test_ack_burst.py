"""Acks sent in one burst (one client write, so one read on the server) mixing plain acks
with NAK, TERM, WPI, duplicate acks and an ack-all style pattern: the consumer ends in the
same state as on nats-server, and the NAKed messages come back in the same order. Plain
acks of one read are applied together when the read ends; this checks that batching keeps
the order the client sent them in."""

from __future__ import annotations

import asyncio
import json

from tests.jetstream.consumer_fixtures import Inbox, add_consumer, add_stream, api, ack_meta, publish, run
from tests.jetstream.consumer_fixtures import server_fixture

server = server_fixture()

N = 40


def _burst(replies: list[str]) -> list[tuple[str, bytes]]:
    ops = []
    for i, r in enumerate(replies):
        k = i % 8
        if k in (0, 1, 4):
            ops.append((r, b""))  # plain ack, empty body
        elif k == 2:
            ops.append((r, b"+ACK"))
            ops.append((r, b"+ACK"))  # a duplicate ack changes nothing
        elif k == 3:
            ops.append((r, b"-NAK"))
        elif k == 5:
            ops.append((r, b"+WPI"))
            ops.append((r, b"+ACK"))  # progress, then the ack, in one read
        elif k == 6:
            ops.append((r, b"+TERM"))
        # k == 7: left pending
    return ops


def test_one_burst_of_mixed_acks_matches_nats_server(server):
    async def body(nc):
        await add_stream(nc, "AB", ["ab.>"])
        await publish(nc, "ab.x", b"m", N)
        r = await add_consumer(nc, "AB", {"durable_name": "c", "ack_policy": "explicit",
                                          "ack_wait": 60 * 10**9}, "c")
        assert "error" not in r, r
        inbox = await Inbox(nc, "in.ab").start()
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.AB.c", json.dumps({"batch": N}).encode(), reply=inbox.subject)
        msgs = await inbox.wait_count(N)
        for subject, payload in _burst([m.reply for m in msgs]):
            await nc.publish(subject, payload)  # buffered by nats-py: one write at flush
        await nc.flush()
        left = sum(1 for i in range(N) if i % 8 in (3, 7))
        for _ in range(200):  # nats-server applies acks asynchronously: wait until it has
            info = await api(nc, "CONSUMER.INFO.AB.c")
            if info["num_ack_pending"] == left:
                break
            await asyncio.sleep(0.01)
        start = len(inbox.msgs)
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.AB.c", json.dumps({"batch": N, "no_wait": True}).encode(),
                         reply=inbox.subject)
        await inbox.wait_for(lambda m: len(inbox.msgs) > start and (m.headers or {}).get("Status") is not None)
        again = [ack_meta(m.reply) for m in inbox.msgs[start:] if m.reply]
        return ({k: info[k] for k in ("delivered", "ack_floor", "num_ack_pending", "num_redelivered",
                                      "num_pending")},
                [(a["sseq"], a["delivered"]) for a in again])

    state, redelivered = run(body, server.url)
    for block in ("delivered", "ack_floor"):
        state[block].pop("last_active", None)
    nak = [i + 1 for i in range(N) if i % 8 == 3]
    assert redelivered == [(s, 2) for s in nak]
    left = [i + 1 for i in range(N) if i % 8 in (3, 7)]
    assert state["num_ack_pending"] == len(left) and state["num_redelivered"] == 0  # none redelivered yet
    assert state["ack_floor"] == {"consumer_seq": 3, "stream_seq": 3}
    assert state["delivered"] == {"consumer_seq": N, "stream_seq": N}
