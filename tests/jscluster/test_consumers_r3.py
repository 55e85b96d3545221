"""Replicated consumers on R3 streams: project issue 11, "How it is shown".

Every test runs against a three-node cluster of nats-server and of ours (harness.JSCluster),
with nats-py as the client. The claim under test: a consumer keeps its position when its
leader dies. An acknowledged message (its AckSync answered) is never delivered again; a
message delivered but not acknowledged comes back after ack_wait; a message never
delivered is delivered once.

Where the two servers differ on purpose:
  - nats-server runs a Raft group per consumer: its consumer leader may be any replica,
    independent of the stream leader (CONSUMER.LEADER.STEPDOWN moves it alone).
  - ours keeps every consumer of a replicated stream on the stream's leader; durable
    consumers' state is recorded in the stream's own Raft log and a new stream leader starts
    them from it. So for ours the consumer leader (consumer info `cluster.leader`) is always
    the stream leader, and "kill the consumer leader" and "kill the stream leader" are the
    same act. Tests assert that identity for ours rather than skipping.

Streams and consumers get names unique to their test, so the tests share one cluster per kind
(fixture `cc`); a test that kills nodes calls `restore()` in its finally block. Findings are
printed (pytest -s) as notes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any, Callable, Iterator

import nats
import nats.errors
import nats.js.errors
import pytest

from tests.jscluster.harness import (CLUSTER_NAME, JSCluster, api, api_retry, consumer_info_any, key_paths,
                                     kind_params, make_consumer_leader, normalize, peer_id, publish_acked,
                                     run, run_sync, shared_cluster, stream_config, stream_state_on,
                                     wait_for)

WAIT = 60.0  # generous: elections, restarts and catch-up on a shared 2-core machine
ACK_WAIT_NS = 2_000_000_000

NOTES: list[str] = []


def note(kind: str, text: str) -> None:
    NOTES.append(f"[{kind}] {text}")
    print(f"\n[{kind}] {text}")


@pytest.fixture(scope="module", params=kind_params())
def cc(request, tmp_path_factory) -> Iterator[JSCluster]:
    """One shared three-node cluster per server kind for this module."""
    yield from shared_cluster(request, tmp_path_factory, "cr3")


# -- setup helpers -----------------------------------------------------------------------------------

async def create_r3(nc, stream: str, **kw) -> dict:
    resp = await api_retry(nc, f"$JS.API.STREAM.CREATE.{stream}", stream_config(stream, num_replicas=3, **kw))
    assert resp.get("did_create") is True, resp
    return resp


def consumer_config(durable: str, **kw) -> dict:
    cfg = {"durable_name": durable, "ack_policy": "explicit", "ack_wait": ACK_WAIT_NS,
           "deliver_policy": "all", "max_deliver": -1}
    cfg.update(kw)
    return cfg


async def create_consumer(nc, stream: str, durable: str, **kw) -> dict:
    body = {"stream_name": stream, "config": consumer_config(durable, **kw)}
    resp = await api_retry(nc, f"$JS.API.CONSUMER.CREATE.{stream}.{durable}", body)
    assert "error" not in resp, resp
    assert resp["config"]["ack_policy"] == kw.get("ack_policy", "explicit"), resp
    return resp


async def publish_range(nc, stream: str, tag: str, lo: int, hi: int, window: int = 50) -> dict[int, int]:
    """Publish messages lo..hi-1 (subject <stream>.m, payload and Nats-Msg-Id "<tag>-<i>"),
    `window` in flight, each retried with its id until acknowledged. Returns i -> seq."""
    seqs: dict[int, int] = {}
    await publish_acked(nc, f"{stream}.m", tag, lo, hi, seqs, window, stream=stream, wait=WAIT)
    return seqs


def wait_consumer_current(cl: JSCluster, stream: str, durable: str, timeout: float = WAIT) -> dict:
    """CONSUMER.INFO whose cluster block names a leader and both other nodes as current replicas."""
    def ok():
        info = run_sync(lambda: consumer_info_any(cl, stream, durable))
        block = (info or {}).get("cluster") or {}
        reps = block.get("replicas") or []
        if block.get("leader") and len(reps) == 2 and all(r.get("current") and not r.get("offline") for r in reps):
            return info
        return None
    return wait_for(ok, f"{stream}/{durable}: a consumer leader and both replicas current", timeout, interval=0.2)


# -- tracking deliveries and acknowledgements ----------------------------------------------------------

class Tracker:
    """Every delivery (seq, num_delivered, phase) and every confirmed AckSync. A delivery of a
    seq whose AckSync was already answered is a violation."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[int, int, str]] = []
        self.confirmed: dict[int, float] = {}  # seq -> time its AckSync was answered
        self.violations: list[tuple[int, int, str]] = []
        self.ack_failures: list[tuple[int, str]] = []
        self.phase = "before"

    def delivered(self, msg) -> int:
        md = msg.metadata
        seq, nd = md.sequence.stream, md.num_delivered
        if seq in self.confirmed:
            self.violations.append((seq, nd, self.phase))
        self.deliveries.append((seq, nd, self.phase))
        return seq

    async def ack(self, msg, seq: int, timeout: float = 2.0) -> bool:
        try:
            await msg.ack_sync(timeout=timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError) as exc:
            self.ack_failures.append((seq, type(exc).__name__))
            return False
        self.confirmed.setdefault(seq, time.monotonic())
        return True

    def times_delivered(self) -> dict[int, int]:
        """seq -> how many deliveries of it arrived."""
        return dict(collections.Counter(s for s, _, _ in self.deliveries))

    def seen(self, phase: str | None = None) -> set[int]:
        return {s for s, _, p in self.deliveries if phase is None or p == phase}

    def first_after(self, phase: str) -> dict[int, int]:
        """seq -> num_delivered of its first delivery in `phase`."""
        out: dict[int, int] = {}
        for s, nd, p in self.deliveries:
            if p == phase:
                out.setdefault(s, nd)
        return out


def leader_elections(cl: JSCluster, stream: str) -> int:
    """How many times any node logged taking over the stream's (or one of its consumers')
    leadership: both servers log "JetStream cluster new stream leader for '$G > S'"."""
    needles = (f"new stream leader for '$G > {stream}'", f"new consumer leader for '$G > {stream} >")
    return sum(cl.log(n).count(x) for n in cl.names() for x in needles)


FETCH_OUTCOMES: dict[str, int] = {}  # failed fetches by exception name (no leader yet: 503 no responders)


async def fetch_some(sub, batch: int, timeout: float = 2.0) -> list:
    """One fetch; a timeout or a 503 (no responders: no consumer leader yet) is no messages."""
    try:
        return await sub.fetch(batch, timeout=timeout)
    except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError,
            nats.js.errors.ServiceUnavailableError) as exc:
        FETCH_OUTCOMES[type(exc).__name__] = FETCH_OUTCOMES.get(type(exc).__name__, 0) + 1
        if not isinstance(exc, (nats.errors.TimeoutError, asyncio.TimeoutError)):
            await asyncio.sleep(0.2)
        return []


async def drained(cl: JSCluster, stream: str, durable: str, last_seq: int) -> dict | None:
    """CONSUMER.INFO when the consumer has acknowledged everything up to last_seq."""
    info = await consumer_info_any(cl, stream, durable)
    if info and info["ack_floor"]["stream_seq"] >= last_seq and info["num_ack_pending"] == 0 \
            and info["num_pending"] == 0:
        return info
    return None


async def fetch_until_done(cl: JSCluster, via: str, stream: str, durable: str, tr: Tracker, last_seq: int,
                           until: float = 2 * WAIT) -> dict:
    """Fetch through node `via` (AckSync each message) until the consumer's ack floor is at
    last_seq with nothing pending; returns that CONSUMER.INFO."""
    nc = await cl.connect(via)
    try:
        js = nc.jetstream()
        sub = await until_bound(js, stream, durable)
        deadline = time.monotonic() + until
        while True:
            msgs = await fetch_some(sub, 50)
            if msgs:
                seqs = [tr.delivered(m) for m in msgs]
                await asyncio.gather(*(tr.ack(m, s) for m, s in zip(msgs, seqs)))
                continue
            info = await drained(cl, stream, durable, last_seq)
            if info:
                return info
            assert time.monotonic() < deadline, (f"{stream}/{durable} not drained through {via} in {until}s: "
                                                 f"{len(tr.confirmed)} confirmed, last info "
                                                 f"{await consumer_info_any(cl, stream, durable)}")
    finally:
        await nc.close()


async def until_bound(js, stream: str, durable: str, until: float = WAIT):
    """pull_subscribe_bind (it asks nothing of the server in nats-py 2.x, but retry anyway)."""
    deadline = time.monotonic() + until
    while True:
        try:
            return await js.pull_subscribe_bind(durable=durable, stream=stream)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- the pull scenario shared by tests 1, 2 and 5 ------------------------------------------------------

def pull_position_scenario(cl: JSCluster, stream: str, durable: str,
                           choose: Callable[[str, str], tuple[list[str], str, str]],
                           arrange: Callable[[], None] | None = None, kill_all: bool = False) -> Tracker:
    """An R3 stream with 200 messages and a durable pull consumer (explicit ack, ack_wait 2 s).
    `arrange()` may place the leaders; `choose(stream_leader, consumer_leader)` returns
    (nodes to SIGKILL, node to fetch through before, node to fetch through after). 100 are
    fetched and the first 50 of them (by stream seq) AckSynced; the victims are killed (with
    kill_all: every node at once, then all restarted); then fetching through the other node goes on until
    the consumer has acknowledged all 200. Asserts: no acknowledged message delivered again,
    the 50 delivered-unacknowledged ones come back with delivery count 2, the 100 never
    delivered ones come with delivery count 1, nothing is missing."""
    tr = Tracker()

    async def setup() -> None:
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
            seqs = await publish_range(nc, stream, "p", 0, 200)
            assert sorted(seqs.values()) == list(range(1, 201))
            await create_consumer(nc, stream, durable)
        finally:
            await nc.close()

    run(setup())
    wait_consumer_current(cl, stream, durable)
    if arrange:
        arrange()
    s_leader = cl.stream_leader(stream)
    c_leader = cl.consumer_leader(stream, durable)
    victims, via_before, via_after = choose(s_leader, c_leader)
    assert via_before not in victims and via_after not in victims and via_before in cl.names()

    async def before() -> None:
        elections = leader_elections(cl, stream)
        nc = await cl.connect(via_before)
        try:
            sub = await until_bound(nc.jetstream(), stream, durable)
            got: list = []
            deadline = time.monotonic() + WAIT
            while len(got) < 100:
                got += await fetch_some(sub, 100 - len(got))
                assert time.monotonic() < deadline, f"only {len(got)} of 100 fetched through {via_before}"
            seqs = [tr.delivered(m) for m in got]
            assert sorted(seqs) == list(range(1, 101)) and all(nd == 1 for _, nd, _ in tr.deliveries), tr.deliveries
            for m, s in sorted(zip(got, seqs), key=lambda p: p[1])[:50]:
                ok = await tr.ack(m, s, timeout=5)
                # An AckSync whose answer was held for a commit that a new leader took over is
                # not answered (by nats-server either); only then does the client ask again.
                for _ in range(3):
                    if ok or leader_elections(cl, stream) == elections:
                        break
                    ok = await tr.ack(m, s, timeout=5)
                assert ok, (f"AckSync of {s} unanswered with no leader change "
                            f"(failures {tr.ack_failures}, elections {elections} -> {leader_elections(cl, stream)})")
        finally:
            await nc.close()

    run(before())
    assert sorted(tr.confirmed) == list(range(1, 51))
    t_kill = time.monotonic()
    for n in victims:
        cl.kill(n)
    if kill_all:
        victims = cl.names()
        for n in victims:  # SIGKILL all three at once, then reap and start them again
            cl.node(n).proc.signal(9)
        for n in victims:
            cl.kill(n)
        for n in victims:
            cl.restart(n)
        cl.wait_ready(WAIT)
    tr.phase = "after"
    info = run(fetch_until_done(cl, via_after, stream, durable, tr, 200))
    took = time.monotonic() - t_kill

    after = tr.first_after("after")
    redelivered = {s: nd for s, nd in after.items() if 51 <= s <= 100}
    fresh = {s: nd for s, nd in after.items() if s > 100}
    again = sorted(s for s in after if s <= 50)
    order = [s for s, _, p in tr.deliveries if p == "after"]
    last_redelivery = max((i for i, s in enumerate(order) if 51 <= s <= 100), default=-1)
    first_fresh = min((i for i, s in enumerate(order) if s > 100), default=len(order))
    new_leader = cl.consumer_leader(stream, durable, via=via_after)
    note(cl.kind, f"{stream}: killed {victims} (stream leader {s_leader}, consumer leader {c_leader}), fetched "
                  f"through {via_before} then {via_after}; drained {took:.1f}s after the kill, new consumer leader "
                  f"{new_leader}; after the kill {len(order)} deliveries, redeliveries of 51..100 "
                  f"{'all before' if last_redelivery < first_fresh else 'interleaved with'} the new ones; "
                  f"AckSync failures {tr.ack_failures[:5]} ({len(tr.ack_failures)}); failed fetches so far in "
                  f"this module {FETCH_OUTCOMES}")
    assert not tr.violations, f"delivered again after their AckSync was answered: {tr.violations[:10]}"
    assert not again, f"acknowledged messages delivered again: {again}"
    assert sorted(redelivered) == list(range(51, 101)), f"missing redeliveries: {sorted(set(range(51, 101)) - set(redelivered))}"
    assert all(nd == 2 for nd in redelivered.values()), f"delivery counts of 51..100 after the kill: {redelivered}"
    assert sorted(fresh) == list(range(101, 201)), f"missing new messages: {sorted(set(range(101, 201)) - set(fresh))}"
    assert all(nd == 1 for nd in fresh.values()), f"delivery counts of 101..200: {fresh}"
    assert set(tr.seen()) == set(range(1, 201))
    assert info["ack_floor"]["stream_seq"] == 200 and info["num_ack_pending"] == 0 and info["num_pending"] == 0, info
    assert info["config"]["num_replicas"] in (0, 3), info["config"]
    return tr


def other(cl: JSCluster, *not_these: str) -> str:
    return next(n for n in cl.names() if n not in not_these)


# -- 1. the consumer leader SIGKILLed ------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_pull_consumer_keeps_position_when_its_leader_is_killed(cc: JSCluster):
    """Durable pull consumer (explicit ack, ack_wait 2 s) on an R3 stream of 200 messages: 100
    fetched through a node that is not the consumer leader, 50 AckSynced; the consumer leader
    is SIGKILLed; fetching through the third node never returns one of the 50, the other 50
    come back (delivery count 2) after ack_wait, the 100 never delivered follow, nothing is
    missing. (Ours: the consumer leader is the stream leader.)"""
    cl = cc

    def choose(s_leader: str, c_leader: str):
        if cl.kind == "ours":
            assert c_leader == s_leader
        before = other(cl, c_leader)
        return [c_leader], before, other(cl, c_leader, before)

    try:
        pull_position_scenario(cl, "CR3KILL", "D1", choose)
    finally:
        cl.restore()


# -- 2. stream leader and consumer leader apart, each killed in turn ------------------------------------

@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", ["consumer-leader", "stream-leader"])
def test_pull_consumer_keeps_position_with_leaders_apart(cc: JSCluster, victim: str):
    """As test 1, with the stream leader S and the consumer leader C on different nodes and
    fetches through the third node T; `victim` says which of S and C is SIGKILLed (after the
    kill fetching continues through T).

    nats-server: when C lands on S, C is moved to another node with CONSUMER.LEADER.STEPDOWN
    (body {"placement": {"preferred": <node>}}, plain stepdowns if refused).
    ours: a replicated stream's consumers live on its leader, so C == S always; the test
    asserts exactly that (consumer info `cluster.leader` equals the stream's) and kills that
    node, fetching before through one other node and after through the last one. Both
    parameters then run the same scenario on fresh streams."""
    cl = cc
    stream = "CR3APART" + ("C" if victim == "consumer-leader" else "S")

    def arrange() -> None:
        if cl.kind == "ours":
            return
        s_leader = cl.stream_leader(stream)
        c_now = cl.consumer_leader(stream, "D2")
        if c_now == s_leader:
            make_consumer_leader(cl, stream, "D2", other(cl, s_leader))
        wait_for(lambda: cl.consumer_leader(stream, "D2") != cl.stream_leader(stream), "leaders apart", WAIT)

    def choose(s_leader: str, c_leader: str):
        if cl.kind == "ours":
            assert c_leader == s_leader, (c_leader, s_leader)
            before = other(cl, s_leader)
            return [s_leader], before, other(cl, s_leader, before)
        assert c_leader != s_leader, (c_leader, s_leader)
        third = other(cl, s_leader, c_leader)
        return [c_leader if victim == "consumer-leader" else s_leader], third, third

    try:
        pull_position_scenario(cl, stream, "D2", choose, arrange)
    finally:
        cl.restore()


# -- 3. a push consumer with a deliver group ----------------------------------------------------------

@pytest.mark.timeout(300)
def test_push_consumer_with_deliver_group_survives_leader_failover(cc: JSCluster):
    """A durable push consumer (explicit ack, ack_wait 2 s, deliver_group "g", max_ack_pending
    20 so that deliveries are outstanding at the kill) on an R3 stream;
    two queue subscribers, one on each node that is not the consumer leader, AckSync every
    message they get (a timed-out AckSync is left: the message comes back). 100 messages are
    published; once 50 are confirmed the consumer leader is SIGKILLed; 100 more are published.
    Every message is delivered and acknowledged (the consumer's ack floor reaches 200 with
    nothing pending, and each was confirmed or at least AckSynced), and none is delivered again
    after its AckSync was answered."""
    cl = cc
    stream, durable, dsubj = "CR3PUSH", "P3", "dlv.cr3push"
    tr = Tracker()

    async def main() -> tuple[str, dict, dict]:
        nc0 = await cl.connect("n1")
        try:
            await create_r3(nc0, stream)
            await create_consumer(nc0, stream, durable, deliver_subject=dsubj, deliver_group="g",
                                  max_ack_pending=20)
        finally:
            await nc0.close()
        await asyncio.to_thread(wait_consumer_current, cl, stream, durable)
        leader = await asyncio.to_thread(cl.consumer_leader, stream, durable)
        if cl.kind == "ours":
            assert leader == await asyncio.to_thread(cl.stream_leader, stream)
        subs_on = [n for n in cl.names() if n != leader]
        conns = {n: await cl.connect(n) for n in subs_on}
        per_sub: dict[str, int] = {n: 0 for n in subs_on}
        tasks: set = set()
        attempted: set[int] = set()
        try:
            for n, nc in conns.items():
                async def cb(msg, n=n):
                    per_sub[n] += 1
                    seq = tr.delivered(msg)
                    attempted.add(seq)
                    t = asyncio.create_task(tr.ack(msg, seq))
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
                await nc.subscribe(dsubj, queue="g", cb=cb)
                await nc.flush()
            pub_nc = conns[subs_on[0]]
            await publish_range(pub_nc, stream, "a", 0, 100)
            deadline = time.monotonic() + WAIT
            while len(tr.confirmed) < 50:
                assert time.monotonic() < deadline, f"only {len(tr.confirmed)} confirmed before the kill"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cl.kill, leader)
            tr.phase = "after"
            await publish_range(pub_nc, stream, "b", 100, 200)
            deadline = time.monotonic() + 2 * WAIT
            while True:
                info = await drained(cl, stream, durable, 200)
                if info and not tasks:
                    break
                assert time.monotonic() < deadline, (f"not drained: {len(tr.confirmed)} confirmed, "
                                                     f"info {await consumer_info_any(cl, stream, durable)}")
                await asyncio.sleep(0.5)
            assert attempted == set(range(1, 201)), sorted(set(range(1, 201)) - attempted)[:10]
            return leader, per_sub, info
        finally:
            for nc in conns.values():
                await nc.close()

    try:
        leader, per_sub, info = run(main())
        counts = tr.times_delivered()
        note(cl.kind, f"push/deliver group: leader {leader} killed; deliveries per subscriber {per_sub}; "
                      f"{sum(c > 1 for c in counts.values())} messages delivered more than once; "
                      f"{len(tr.ack_failures)} AckSync timeouts; confirmed {len(tr.confirmed)}")
        assert not tr.violations, f"delivered again after their AckSync was answered: {tr.violations[:10]}"
        assert info["ack_floor"]["stream_seq"] == 200 and info["num_ack_pending"] == 0, info
    finally:
        cl.restore()


# -- 4. a work queue stream ---------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_workqueue_r3_processes_each_once_across_failover_and_empties_every_replica(cc: JSCluster):
    """A work queue stream (R3) of 300 messages and a durable pull consumer (explicit ack,
    ack_wait 2 s), fetched through a node that is not the stream leader in batches of 25, each
    message AckSynced; the stream leader (ours: also the consumer leader) is SIGKILLed once
    100 are confirmed. Every message is confirmed exactly once and none is delivered after its
    confirmation; after the killed node is restarted every node's own store (/jsz) holds no
    message (first_seq 301, last_seq 300)."""
    cl = cc
    stream, durable = "CR3WQ", "W4"
    tr = Tracker()

    async def main() -> tuple[str, str, str]:
        nc0 = await cl.connect("n1")
        try:
            await create_r3(nc0, stream, retention="workqueue")
            seqs = await publish_range(nc0, stream, "w", 0, 300)
            assert sorted(seqs.values()) == list(range(1, 301))
            await create_consumer(nc0, stream, durable)
        finally:
            await nc0.close()
        await asyncio.to_thread(wait_consumer_current, cl, stream, durable)
        leader = await asyncio.to_thread(cl.stream_leader, stream)
        c_leader = await asyncio.to_thread(cl.consumer_leader, stream, durable)
        if cl.kind == "ours":
            assert c_leader == leader
        via = other(cl, leader)
        nc = await cl.connect(via)
        try:
            sub = await until_bound(nc.jetstream(), stream, durable)
            deadline = time.monotonic() + 2 * WAIT
            while True:
                msgs = await fetch_some(sub, 25)
                if msgs:
                    seqs_ = [tr.delivered(m) for m in msgs]
                    await asyncio.gather(*(tr.ack(m, s) for m, s in zip(msgs, seqs_)))
                    if tr.phase == "before" and len(tr.confirmed) >= 100:
                        await asyncio.to_thread(cl.kill, leader)
                        tr.phase = "after"
                    continue
                if tr.phase == "after" and await drained(cl, stream, durable, 300):
                    return leader, c_leader, via
                assert time.monotonic() < deadline, (f"not drained: {len(tr.confirmed)} confirmed, "
                                                     f"{await consumer_info_any(cl, stream, durable)}")
        finally:
            await nc.close()

    try:
        leader, c_leader, via = run(main())
        counts = tr.times_delivered()
        assert not tr.violations, f"delivered again after their AckSync was answered: {tr.violations[:10]}"
        assert set(counts) == set(range(1, 301))
        unconfirmed = sorted(set(range(1, 301)) - set(tr.confirmed))
        cl.restore()
        seen: dict = {}

        def empty_everywhere():
            states = {n: stream_state_on(cl, n, stream) for n in cl.names()}
            seen["last"] = states
            return all(s is not None and s.get("messages") == 0 and s.get("first_seq") == 301
                       and s.get("last_seq") == 300 for s in states.values())
        try:
            wait_for(empty_everywhere, f"{stream} empty on every node", WAIT, interval=0.3)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last states {seen.get('last')}") from None
        note(cl.kind, f"workqueue: stream leader {leader} (consumer leader {c_leader}) killed at 100 confirmed, "
                      f"fetching through {via}; {sum(c > 1 for c in counts.values())} delivered more than once; "
                      f"unconfirmed (AckSync timed out, acked by the server all the same): {unconfirmed}")
        # processed once: every message's AckSync was answered at most once (no delivery after it),
        # and every one the server took as acknowledged is gone from every replica
        assert len(tr.confirmed) + len(unconfirmed) == 300
    finally:
        cl.restore()


# -- 5. every node SIGKILLed at once ------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_pull_consumer_position_survives_all_nodes_killed(cc: JSCluster):
    """Test 1's scenario, but all three nodes are SIGKILLed at once and restarted; fetching
    resumes through any node once the cluster is ready."""
    cl = cc

    def choose(s_leader: str, c_leader: str):
        if cl.kind == "ours":
            assert c_leader == s_leader
        before = other(cl, c_leader)
        return [], before, other(cl, c_leader, before)  # the victims: all, by kill_all

    try:
        pull_position_scenario(cl, "CR3ALL", "D5", choose, kill_all=True)
    finally:
        cl.restore()


# -- 6. CONSUMER.LEADER.STEPDOWN and the cluster block ------------------------------------------------

# nats-server 2.15.1's CONSUMER.INFO cluster block of an R3 consumer with both followers current
NATS_CONSUMER_CLUSTER_KEYS = {"name", "raft_group", "leader", "leader_since", "system_account",
                              "traffic_account", "replicas", "replicas[].name", "replicas[].current",
                              "replicas[].active", "replicas[].peer"}
OPTIONAL_KEYS = {"replicas[].lag", "replicas[].offline"}
_reference: dict[str, Any] = {}


@pytest.mark.timeout(300)
def test_consumer_leader_stepdown_and_cluster_block(cc: JSCluster):
    """`$JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<consumer>` answers success (ours moves the
    stream leader too; only what both share is asserted: success, then a fetch works and the
    acknowledged messages are not delivered again). Before it, consumer info's `cluster`
    block is compared with nats-server's."""
    cl = cc
    stream, durable = "CR3SD", "D6"
    tr = Tracker()

    async def setup() -> None:
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
            await publish_range(nc, stream, "s", 0, 20)
            await create_consumer(nc, stream, durable)
        finally:
            await nc.close()

    run(setup())
    info = wait_consumer_current(cl, stream, durable)
    block = info["cluster"]
    paths = key_paths(block) - OPTIONAL_KEYS
    leader = block["leader"]
    assert block["name"] == CLUSTER_NAME and leader in cl.names(), block
    assert sorted(r["name"] for r in block["replicas"]) == sorted(set(cl.names()) - {leader}), block
    for r in block["replicas"]:
        assert r["current"] is True and r["peer"] == peer_id(r["name"]), block
    if cl.kind == "nats-server":
        _reference["block"] = normalize(block)
        assert paths == NATS_CONSUMER_CLUSTER_KEYS, sorted(paths)
    else:
        assert leader == cl.stream_leader(stream)
        stream_group = (run_sync(lambda: api_info(cl, leader, stream)).get("cluster") or {}).get("raft_group")
        note(cl.kind, f"consumer cluster block: raft_group {block['raft_group']!r} (the stream's: "
                      f"{stream_group!r}), leader {leader} (= the stream leader)")
        # the same key paths as nats-server 2.15.1 (checked against a live answer when this
        # module's nats-server run came first)
        assert paths == NATS_CONSUMER_CLUSTER_KEYS, sorted(paths)
        ref = _reference.get("block")
        if ref is not None:
            mine = normalize(block)
            strip = lambda b: {k: v for k, v in b.items() if k != "replicas"}  # noqa: E731
            assert strip(mine) == strip(ref), (mine, ref)
            assert [sorted(r) for r in mine["replicas"]] == [sorted(r) for r in ref["replicas"]], (mine, ref)

    async def first_half() -> None:
        nc = await cl.connect(other(cl, leader))
        try:
            sub = await until_bound(nc.jetstream(), stream, durable)
            got: list = []
            deadline = time.monotonic() + WAIT
            while len(got) < 10:
                got += await fetch_some(sub, 10 - len(got))
                assert time.monotonic() < deadline
            for m in got:
                assert await tr.ack(m, tr.delivered(m), timeout=5)
            assert sorted(tr.confirmed) == list(range(1, 11))
            resp = await api(nc, f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}")
            assert resp.get("success") is True and "error" not in resp, resp
            assert resp.get("type") == "io.nats.jetstream.api.v1.consumer_leader_stepdown_response", resp
        finally:
            await nc.close()

    run(first_half())
    tr.phase = "after"
    done = run(fetch_until_done(cl, other(cl, leader), stream, durable, tr, 20))
    new_leader = cl.consumer_leader(stream, durable)
    note(cl.kind, f"consumer stepdown: {leader} -> {new_leader}")
    assert not tr.violations and not (tr.seen("after") & set(range(1, 11))), tr.deliveries
    assert tr.seen("after") == set(range(11, 21))
    assert done["ack_floor"]["stream_seq"] == 20


async def api_info(cl: JSCluster, via: str, stream: str) -> dict:
    nc = await cl.connect(via)
    try:
        return await api(nc, f"$JS.API.STREAM.INFO.{stream}")
    finally:
        await nc.close()


# -- a fetch waiting when the consumer leader is killed ----------------------------------------------

@pytest.mark.timeout(300)
def test_fetch_waiting_at_consumer_leader_kill(cc: JSCluster):
    """A pull request is waiting (nothing to deliver) through a surviving node when the
    consumer leader is SIGKILLed. The new leader answers it with `409 Leadership Change` (both
    replicate waiting requests: ours records them with the consumer's state in the stream's
    log), and nats-py's fetch carries on (a later fetch gets a message published after the
    failover)."""
    cl = cc
    stream, durable = "CR3WAIT", "D7"

    async def main() -> tuple[str, list, list]:
        nc0 = await cl.connect("n1")
        try:
            await create_r3(nc0, stream)
            await create_consumer(nc0, stream, durable)
        finally:
            await nc0.close()
        await asyncio.to_thread(wait_consumer_current, cl, stream, durable)
        leader = await asyncio.to_thread(cl.consumer_leader, stream, durable)
        via = other(cl, leader)
        nc = await cl.connect(via)
        raw: list = []
        fetched: list = []
        try:
            inbox = nc.new_inbox()
            t0 = time.monotonic()

            async def cb(msg):
                raw.append((round(time.monotonic() - t0, 2), (msg.headers or {}).get("Status"),
                            (msg.headers or {}).get("Description"), msg.data[:40]))
            await nc.subscribe(inbox, cb=cb)
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                             json.dumps({"batch": 1, "expires": 8_000_000_000}).encode(), reply=inbox)
            await nc.flush()
            js = nc.jetstream()
            sub = await until_bound(js, stream, durable)
            fetch_task = asyncio.create_task(_fetch_outcome(sub, 8))
            await asyncio.sleep(1.5)
            t0 = time.monotonic()
            await asyncio.to_thread(cl.kill, leader)
            fetched.append(await fetch_task)
            # the client carries on: a message published now is fetched through the same node
            await publish_range(nc, stream, "x", 0, 1)
            deadline = time.monotonic() + WAIT
            while True:
                got = await fetch_some(sub, 1, timeout=3)
                if got:
                    fetched.append(("later fetch", got[0].metadata.sequence.stream))
                    break
                assert time.monotonic() < deadline, "no fetch succeeded after the failover"
            await asyncio.sleep(0.5)
            return leader, raw, fetched
        finally:
            await nc.close()

    try:
        leader, raw, fetched = run(main())
        note(cl.kind, f"waiting pull at the kill of consumer leader {leader}: raw request got {raw}; "
                      f"nats-py fetch(1, timeout=8) got {fetched[0]}; then {fetched[1]}")
        assert fetched[1][0] == "later fetch"
        assert any(status == "409" and desc == "Leadership Change" for _, status, desc, _ in raw), raw
    finally:
        cl.restore()


async def _fetch_outcome(sub, timeout: float) -> tuple:
    t0 = time.monotonic()
    try:
        msgs = await sub.fetch(1, timeout=timeout)
        return ("messages", [m.metadata.sequence.stream for m in msgs], round(time.monotonic() - t0, 2))
    except Exception as exc:
        return (type(exc).__name__, str(exc)[:80], round(time.monotonic() - t0, 2))


def test_consumer_replicas_must_match_an_interest_or_workqueue_stream(cc: JSCluster):
    """On a replicated work queue or interest stream a consumer with another replica count is
    refused with nats-server's 400/10134 and nothing is made; the stream's count (or 0, the
    default) is accepted."""
    cl = cc

    async def main():
        nc = await cl.connect("n1")
        try:
            for stream, retention in (("CR3WQR", "workqueue"), ("CR3INR", "interest")):
                await create_r3(nc, stream, retention=retention)
                bad = await api_retry(nc, f"$JS.API.CONSUMER.CREATE.{stream}.R1C", json.dumps(
                    {"stream_name": stream, "config": consumer_config("R1C", num_replicas=1)}).encode())
                assert bad["error"] == {"code": 400, "err_code": 10134,
                                        "description": "consumer config replicas must match interest "
                                                       "retention stream's replicas"}, bad
                names = await api_retry(nc, f"$JS.API.CONSUMER.NAMES.{stream}")
                assert not names.get("consumers"), names
                ok = await api_retry(nc, f"$JS.API.CONSUMER.CREATE.{stream}.R3C", json.dumps(
                    {"stream_name": stream, "config": consumer_config("R3C", num_replicas=3)}).encode())
                assert "error" not in ok, ok
        finally:
            await nc.close()

    run(main())
