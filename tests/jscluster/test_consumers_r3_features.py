"""Replicated (R3) consumers' features across routes and leader failures, against a
three-node cluster of nats-server and of ours (harness.JSCluster), with nats-py as the client:
an ordered consumer recovering from the SIGKILL of its leader, push idle heartbeats and flow
control delivered across a route, CONSUMER.PAUSE / resume and CONSUMER.RESET (both answer the
same way and keep their effect when the consumer leader is SIGKILLed).

Ours keeps every consumer of a replicated stream on the stream's leader; nats-server places
consumer leaders on their own (an R1 consumer, as nats-py's ordered consumer is, on a random
peer of the stream). So the tests speak of "the consumer leader" (CONSUMER.INFO
`cluster.leader`) and connect their clients to a node that is not it, so that deliveries,
heartbeats, flow control and API requests cross a route.

One cluster per kind is shared by the tests (fixture `cf`); names are unique per test, and a
test that kills a node calls `restore()` in its finally block.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any, Iterator

import nats.errors
import nats.js.errors
import pytest

from tests.jscluster.harness import (JSCluster, api_any, api_retry, kind_params, make_stream_leader,
                                     publish_acked, run, shared_cluster, stream_config, wait_for)

WAIT = 60.0  # generous: elections, restarts and catch-up on a shared 2-core machine
ACK_WAIT_NS = 30_000_000_000


@pytest.fixture(scope="module", params=kind_params())
def cf(request, tmp_path_factory) -> Iterator[JSCluster]:
    """One shared three-node cluster per server kind for this module."""
    yield from shared_cluster(request, tmp_path_factory, "cr3f")


def other(cl: JSCluster, *not_these: str) -> str:
    return next(n for n in cl.names() if n not in not_these)


async def create_r3(nc, stream: str, **kw) -> None:
    resp = await api_retry(nc, f"$JS.API.STREAM.CREATE.{stream}", stream_config(stream, num_replicas=3, **kw))
    assert resp.get("did_create") is True, resp


async def create_consumer(nc, stream: str, durable: str, **kw) -> dict:
    cfg = {"durable_name": durable, "ack_policy": "explicit", "ack_wait": ACK_WAIT_NS, "deliver_policy": "all"}
    cfg.update(kw)
    resp = await api_retry(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{durable}", {"stream_name": stream, "config": cfg})
    assert "error" not in resp, resp
    return resp


async def until(cond, what: str, timeout: float = WAIT, interval: float = 0.1) -> Any:
    """asyncio's wait_for on a condition (sync or async callable)."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)


async def consumer_info(cl: JSCluster, stream: str, name: str, via: list[str] | None = None) -> dict | None:
    return await api_any(cl, f"$JS.API.CONSUMER.INFO.{stream}.{name}", via)


def consumer_leader(cl: JSCluster, stream: str, name: str, via: str | None = None, not_: str | None = None) -> str:
    """The consumer leader named by CONSUMER.INFO through `via` (any live node), other than `not_`."""
    def ok():
        info = run(consumer_info(cl, stream, name, [via] if via else None))
        leader = ((info or {}).get("cluster") or {}).get("leader")
        return leader if leader and leader != not_ and leader in cl.live() else None
    return wait_for(ok, f"a leader of consumer {stream}/{name} (not {not_})", WAIT, interval=0.2)


def wait_replicas_current(cl: JSCluster, stream: str, name: str) -> dict:
    """CONSUMER.INFO naming a leader with both other nodes current (so a SIGKILL of the leader
    leaves a replica that has everything)."""
    def ok():
        info = run(consumer_info(cl, stream, name))
        block = (info or {}).get("cluster") or {}
        reps = block.get("replicas") or []
        return info if block.get("leader") and len(reps) == 2 and all(
            r.get("current") and not r.get("offline") for r in reps) else None
    return wait_for(ok, f"{stream}/{name}: a leader and both replicas current", WAIT, interval=0.2)


async def fetch_all(sub, want: int, batch: int = 10) -> list:
    """Fetch until `want` messages came (AckSync each); a timeout or a 503 is no messages yet."""
    got: list = []
    deadline = time.monotonic() + WAIT
    while len(got) < want:
        try:
            msgs = await sub.fetch(min(batch, want - len(got)), timeout=2)
        except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError,
                nats.js.errors.ServiceUnavailableError):
            msgs = []
        for m in msgs:
            await m.ack_sync(timeout=5)
        got += msgs
        assert time.monotonic() < deadline, f"only {len(got)} of {want} fetched"
    return got


def triple(m) -> tuple[int, int, int]:
    md = m.metadata
    return md.sequence.stream, md.sequence.consumer, md.num_delivered


# -- 1. an ordered consumer across the SIGKILL of its leader ------------------------------------

@pytest.mark.timeout(300)
def test_ordered_consumer_recovers_from_its_leader_killed(cf: JSCluster):
    """nats-py's ordered consumer (R1, memory, flow control, idle_heartbeat 1 s) on an R3
    stream, subscribed through a node V that does not host it. Its node C is made the stream
    leader too (ours: always so; nats-server: by a stream leader stepdown), so one SIGKILL takes
    both. 100 messages arrive in order; then C is SIGKILLed after 20 more, and 80 more follow
    (all published one at a time through V, each retried until acked). nats-py notices the missed
    heartbeats and recreates the consumer from the last stream sequence it saw: in the end it
    has received every stored message exactly once, in stream order, with no gap, and every
    acknowledged one with its payload."""
    cl = cf
    stream = "ORD3"
    errors: list[str] = []
    got: list[tuple[int, bytes]] = []

    async def error_cb(exc):  # nats-py reports failed recreations while there is no leader
        errors.append(type(exc).__name__)

    async def main() -> tuple[str, str, int, dict[int, int], bool]:
        acked: dict[int, int] = {}
        s_leader = await asyncio.to_thread(cl.stream_leader, stream)
        via = other(cl, s_leader)
        nc = await cl.connect(via, error_cb=error_cb)
        try:
            js = nc.jetstream()

            async def cb(msg):
                got.append((msg.metadata.sequence.stream, msg.data))

            for _ in range(20):  # nats-server puts the R1 consumer on a random peer: not on V
                sub = await js.subscribe(f"{stream}.>", stream=stream, cb=cb, ordered_consumer=True,
                                         idle_heartbeat=1.0)
                name = sub._consumer
                c_node = await asyncio.to_thread(consumer_leader, cl, stream, name, via)
                if c_node != via:
                    break
                await sub.unsubscribe()
            assert c_node != via
            if cl.kind == "ours":
                assert c_node == s_leader, (c_node, s_leader)  # consumers live on the stream leader
            elif c_node != await asyncio.to_thread(cl.stream_leader, stream):
                await asyncio.to_thread(make_stream_leader, cl, stream, c_node)
            await publish_acked(nc, f"{stream}.m", "o", 0, 100, acked)
            await until(lambda: len(got) >= 100, "the first 100 through the ordered consumer")
            assert [s for s, _ in got] == list(range(1, 101)), got[:5]

            # 20 more, then the kill, then the other 80: those the consumer only gets once
            # nats-py has recreated it (killed while publishing, a fast server acknowledged all
            # 100 before the kill, and nothing was left to notice the loss with)
            await publish_acked(nc, f"{stream}.m", "o", 100, 120, acked, window=1)
            await asyncio.to_thread(cl.kill, c_node)
            await publish_acked(nc, f"{stream}.m", "o", 120, 200, acked, window=1)
            info = await api_retry(nc, f"$JS.API.STREAM.INFO.{stream}")
            last = info["state"]["last_seq"]
            await until(lambda: len(got) >= last, f"all {last} through the ordered consumer", 2 * WAIT)
            await asyncio.sleep(2.5)  # not a wait for anything: a late duplicate would show here
            return c_node, via, last, acked, sub._consumer != name
        finally:
            await nc.close()

    async def setup() -> None:
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
        finally:
            await nc.close()

    run(setup())
    try:
        c_node, via, last, acked, recreated = run(main())
        print(f"\n[{cl.kind}] ordered consumer: node {c_node} killed, client on {via}; {last} stored; "
              f"nats-py errors while recreating: {errors}")
        assert recreated, "nats-py did not recreate the ordered consumer"  # its name changes when it does
        seqs = [s for s, _ in got]
        assert seqs == list(range(1, last + 1)), f"not every stored message once, in order: {seqs}"
        assert len(acked) == 200 and max(acked.values()) <= last
        data = dict(got)
        assert all(data[seq] == f"o-{i}".encode() for i, seq in acked.items())
    finally:
        cl.restore()


# -- 2. push idle heartbeats and flow control across a route ------------------------------------

FC_START, FC_LIMIT = 2 * 1024 * 1024, 32 * 1024 * 1024  # nats-server: 32 MiB / 16, doubling to 32 MiB


def fc_positions(sizes: list[int]) -> list[int]:
    """After which delivery (1-based) nats-server sends each flow-control request, for
    deliveries of these sizes (deliver subject + reply + header + payload bytes): one when the
    bytes pending since the last answered request pass half the window; the window starts at
    2 MiB and doubles with every answer, up to 32 MiB. An answer takes off the bytes counted at
    its request; it always comes before the next request is due (delivery stalls past the
    window), so where the requests go does not depend on when the client answers."""
    out, pbytes, window = [], 0, FC_START
    for i, n in enumerate(sizes, 1):
        pbytes += n
        if pbytes > window // 2:
            out.append(i)
            pbytes, window = 0, min(2 * window, FC_LIMIT)
    return out


@pytest.mark.timeout(300)
def test_push_heartbeats_and_flow_control_across_a_route(cf: JSCluster):
    """A durable push consumer (explicit ack, idle_heartbeat 1 s, flow_control) of an R3 stream
    holding 800 messages of 10 kB (8 MB: past the first flow-control windows of 2, 4 and 8 MiB)
    is bound by nats-py through a node that is not the consumer leader (the whole burst goes
    across the route). Every frame reaching that client is recorded as it arrives. nats-py gets
    all 800 in order, answering the flow-control requests itself; each request is exactly
    `NATS/1.0 100 FlowControl Request` with a `$JS.FC.<stream>.<consumer>.<token>` reply, and
    comes after the delivery where nats-server's window puts it; once idle, heartbeats are
    exactly `NATS/1.0 100 Idle Heartbeat` with Nats-Last-Consumer / Nats-Last-Stream 800 (a
    heartbeat while stalled names the outstanding request in Nats-Consumer-Stalled)."""
    cl = cf
    stream, durable, dsubj = "HFC3", "H", "dlv.hfc3"
    n, size = 800, 10_000

    async def setup() -> None:
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
            await create_consumer(nc, stream, durable, deliver_subject=dsubj, idle_heartbeat=1_000_000_000,
                                  flow_control=True)
            await publish_acked(nc, f"{stream}.m", "h", 0, n, {}, size=size)
        finally:
            await nc.close()

    run(setup())
    wait_replicas_current(cl, stream, durable)
    leader = consumer_leader(cl, stream, durable)
    via = other(cl, leader)
    frames: list[tuple[str, str, bytes | None, int]] = []  # (subject, reply, raw header, payload size)
    got: list[int] = []

    async def main() -> None:
        nc = await cl.connect(via)
        plain = nc._process_msg

        async def spy(sid, subject, reply, data, hdr):  # every MSG/HMSG of the subscription, as it arrives
            sub = nc._subs.get(sid)
            if sub is not None and sub.subject == dsubj:
                frames.append((subject.decode(), reply.decode(), hdr, len(data)))
            await plain(sid, subject, reply, data, hdr)

        nc._process_msg = spy
        try:
            async def cb(msg):
                got.append(msg.metadata.sequence.stream)

            await nc.jetstream().subscribe(f"{stream}.>", stream=stream, durable=durable, cb=cb)
            await until(lambda: len(got) >= n, f"{n} deliveries", 2 * WAIT)
            idle = f"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: {n}\r\nNats-Last-Stream: {n}\r\n\r\n"
            await until(lambda: sum(h == idle.encode() for _, _, h, _ in frames) >= 2, "two idle heartbeats", WAIT)
            await until(lambda: _check(consumer_info(cl, stream, durable, [via]),  # nats-py acks each
                                       lambda i: i and i["ack_floor"]["stream_seq"] == n), "every ack applied")
        finally:
            await nc.close()

    run(main())
    assert got == list(range(1, n + 1))
    data = [(s, r, h, size_) for s, r, h, size_ in frames if r.startswith("$JS.ACK.")]
    assert len(data) == n and all(s == f"{stream}.m" for s, _, _, _ in data), {s for s, _, _, _ in data}
    sizes = [len(dsubj) + len(r) + len(h or b"") + size_ for _, r, h, size_ in data]
    positions, fcs, stalled, seen = [], [], [], 0
    for s, r, h, size_ in frames:
        if r.startswith("$JS.ACK."):
            seen += 1
        elif r.startswith("$JS.FC."):
            assert s == dsubj and h == b"NATS/1.0 100 FlowControl Request\r\n\r\n" and size_ == 0, (s, h)
            assert r.split(".")[:4] == ["$JS", "FC", stream, durable] and len(r.split(".")) == 5, r
            positions.append(seen)
            fcs.append(r)
        else:
            assert s == dsubj and not r and size_ == 0 and h is not None, (s, r, h)
            text = h.decode()
            assert text.startswith("NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: "), text
            if "Nats-Consumer-Stalled" in text:
                stalled.append(text.split("Nats-Consumer-Stalled: ")[1].split("\r\n")[0])
    print(f"\n[{cl.kind}] push across a route: consumer leader {leader}, client on {via}; flow control "
          f"after deliveries {positions}; stalled heartbeats {len(stalled)}")
    assert positions == fc_positions(sizes), (positions, fc_positions(sizes))
    assert set(stalled) <= set(fcs)


# -- 3. pause and resume --------------------------------------------------------------------------

def rfc3339(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, last digit not 0


def stream_with_consumer(cl: JSCluster, stream: str, durable: str, tag: str, count: int) -> tuple[str, str]:
    """An R3 stream holding `count` acknowledged messages and a durable on it, every replica
    current: returns (the consumer leader, another node)."""
    async def setup() -> None:
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
            await publish_acked(nc, f"{stream}.m", tag, 0, count, {})
            await create_consumer(nc, stream, durable)
        finally:
            await nc.close()

    run(setup())
    wait_replicas_current(cl, stream, durable)
    leader = consumer_leader(cl, stream, durable)
    return leader, other(cl, leader)


@pytest.mark.timeout(300)
def test_pause_and_resume_survive_a_consumer_leader_kill(cf: JSCluster):
    """`$JS.API.CONSUMER.PAUSE.<stream>.<consumer>` on a durable pull consumer of an R3 stream,
    asked through a node that is not the consumer leader. With {"pause_until": <in 2 min>} the
    answer is exactly {type, paused: true, pause_until: <as sent>, pause_remaining: <ns>};
    consumer info (through every node) comes to show paused, pause_remaining and
    config.pause_until; a fetch gets nothing. The consumer leader is SIGKILLed: the new one is
    still paused (info through both surviving nodes; a fetch still gets nothing). With {} the answer is
    exactly {type, paused: false, pause_until: "0001-01-01T00:00:00Z"}, info stops showing
    paused, and the 10 messages are fetched, each delivered once."""
    cl = cf
    stream, durable = "PZ3", "PZ"

    leader, via = stream_with_consumer(cl, stream, durable, "p", 10)
    until_ = rfc3339(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2))

    def shows_paused(info: dict | None) -> bool:
        return bool(info) and info.get("paused") is True and 0 < info.get("pause_remaining", 0) <= 120e9 \
            and info["config"].get("pause_until") == until_

    async def paused_part() -> None:
        nc = await cl.connect(via)
        try:
            resp = await api_retry(nc, f"$JS.API.CONSUMER.PAUSE.{stream}.{durable}", {"pause_until": until_})
            assert set(resp) == {"type", "paused", "pause_until", "pause_remaining"}, resp
            assert resp["type"] == "io.nats.jetstream.api.v1.consumer_pause_response" and resp["paused"] is True
            assert resp["pause_until"] == until_ and 0 < resp["pause_remaining"] <= 120e9, resp
            for node in cl.names():  # nats-server: paused once the meta layer applied the change
                await until(lambda n=node: _check(consumer_info(cl, stream, durable, [n]), shows_paused),
                            f"info through {node} showing paused")
            sub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
            with pytest.raises(nats.errors.TimeoutError):
                await sub.fetch(1, timeout=2)
        finally:
            await nc.close()

    async def resumed_part() -> list:
        nc = await cl.connect(via)
        try:
            for node in cl.live():  # the new leader and the other survivor
                await until(lambda n=node: _check(consumer_info(cl, stream, durable, [n]), shows_paused),
                            f"info through {node} showing paused after the kill")
            sub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
            with pytest.raises(nats.errors.TimeoutError):
                await sub.fetch(1, timeout=2)
            await until(lambda: _check(consumer_info(cl, stream, durable, [via]),  # that request expired
                                       lambda i: i and i["num_waiting"] == 0), "no pull request waiting")
            resp = await api_retry(nc, f"$JS.API.CONSUMER.PAUSE.{stream}.{durable}", {})
            assert resp == {"type": "io.nats.jetstream.api.v1.consumer_pause_response", "paused": False,
                            "pause_until": "0001-01-01T00:00:00Z"}, resp
            await until(lambda: _check(consumer_info(cl, stream, durable, [via]),
                                       lambda i: i and "paused" not in i and "pause_remaining" not in i
                                       and not i["config"].get("pause_until")), "info showing resumed")
            return await fetch_all(sub, 10)
        finally:
            await nc.close()

    try:
        new_leader, msgs = across_leader_kill(cl, stream, durable, leader, via, paused_part, resumed_part)
        print(f"\n[{cl.kind}] pause: consumer leader {leader} killed, then {new_leader}; client on {via}")
        assert [triple(m) for m in msgs] == [(i, i, 1) for i in range(1, 11)]
    finally:
        cl.restore()


def across_leader_kill(cl: JSCluster, stream: str, durable: str, leader: str, via: str, before, after):
    """run(before()); SIGKILL the consumer leader `leader`; wait for CONSUMER.INFO through `via`
    to name another live leader; run(after()). Returns (that new leader, what after() returned).
    The caller restores the cluster."""
    run(before())
    cl.kill(leader)
    new_leader = consumer_leader(cl, stream, durable, via, not_=leader)
    return new_leader, run(after())


async def _check(info_coro, pred) -> bool:
    return bool(pred(await info_coro))


# -- 4. CONSUMER.RESET ----------------------------------------------------------------------------

# nats-server 2.15.1's CONSUMER.RESET answer of a clustered pull consumer
RESET_KEYS = {"type", "stream_name", "name", "created", "config", "delivered", "ack_floor", "num_ack_pending",
              "num_redelivered", "num_waiting", "num_pending", "cluster", "ts", "reset_seq"}


@pytest.mark.timeout(300)
def test_reset_answers_and_position_survive_a_consumer_leader_kill(cf: JSCluster):
    """`$JS.API.CONSUMER.RESET.<stream>.<consumer>` (ADR-60; nats-server 2.14+) on a durable
    pull consumer of an R3 stream with 20 messages, through a node that is not the consumer
    leader, after 10 were fetched and 1..5 AckSynced. An empty body resets to the ack floor:
    reset_seq 6, delivered and ack_floor {consumer_seq 0, stream_seq 5}, nothing ack pending,
    15 pending; {"seq": 12} then gives reset_seq 12, floors at stream_seq 11, 9 pending (the
    answer is a consumer info plus reset_seq, with nats-server's keys). The consumer leader is
    SIGKILLed right after that answer: the new leader reports the same position, and fetching
    gets 12..20 with consumer sequences from 1, each delivered once."""
    cl = cf
    stream, durable = "RS3", "RS"

    leader, via = stream_with_consumer(cl, stream, durable, "r", 20)

    def position(info: dict) -> tuple:
        return (info["delivered"]["consumer_seq"], info["delivered"]["stream_seq"], info["ack_floor"]["consumer_seq"],
                info["ack_floor"]["stream_seq"], info["num_ack_pending"], info["num_redelivered"], info["num_pending"])

    async def before() -> None:
        nc = await cl.connect(via)
        try:
            sub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
            got: list = []
            while len(got) < 10:
                got += await sub.fetch(10 - len(got), timeout=5)
            assert [triple(m) for m in got] == [(i, i, 1) for i in range(1, 11)]
            for m in got[:5]:
                await m.ack_sync(timeout=5)
            resp = await api_retry(nc, f"$JS.API.CONSUMER.RESET.{stream}.{durable}", b"")
            assert resp["type"] == "io.nats.jetstream.api.v1.consumer_reset_response" and "error" not in resp, resp
            assert list(resp)[-2:] == ["ts", "reset_seq"] and resp["reset_seq"] == 6, resp
            assert RESET_KEYS <= set(resp) <= RESET_KEYS | {"push_bound", "paused", "pause_remaining"}, sorted(resp)
            assert position(resp) == (0, 5, 0, 5, 0, 0, 15), resp
            resp = await api_retry(nc, f"$JS.API.CONSUMER.RESET.{stream}.{durable}", {"seq": 12})
            assert resp["reset_seq"] == 12 and position(resp) == (0, 11, 0, 11, 0, 0, 9), resp
        finally:
            await nc.close()

    async def after() -> tuple[dict, list]:
        info = await until(lambda: consumer_info(cl, stream, durable, [via]), "consumer info after the kill")
        nc = await cl.connect(via)
        try:
            sub = await nc.jetstream().pull_subscribe_bind(durable=durable, stream=stream)
            msgs = await fetch_all(sub, 9)
            with pytest.raises(nats.errors.TimeoutError):  # and nothing more
                await sub.fetch(1, timeout=2)
            return info, msgs
        finally:
            await nc.close()

    try:
        new_leader, (info, msgs) = across_leader_kill(cl, stream, durable, leader, via, before, after)
        print(f"\n[{cl.kind}] reset: consumer leader {leader} killed right after the reset, then {new_leader}")
        assert position(info) == (0, 11, 0, 11, 0, 0, 9), info
        assert [triple(m) for m in msgs] == [(11 + i, i, 1) for i in range(1, 10)]
    finally:
        cl.restore()

