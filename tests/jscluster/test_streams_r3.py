"""Replicated streams (Replicas 3, a Raft group per stream): project issue 10, "How it is shown".

Every test runs against a three-node cluster of nats-server and of ours; `ours` is skipped
until OURS_R3_READY below is flipped (and harness.OURS_READY is on). The clients are nats-py
and publish as a real client would: many requests in flight, and a request that times out or
finds no responders is sent again with the same Nats-Msg-Id.

"Every replica" is checked two ways: each node's own store state from its /jsz?streams=1
(no leader or quorum needed), and the whole content read through each replica in turn, made
the stream leader with `$JS.API.STREAM.LEADER.STEPDOWN.<stream>` and body
{"placement": {"preferred": "<node>"}} (nats-server 2.15 honours it), read message by
message with `$JS.API.STREAM.MSG.GET` (served by the leader only), checking that the leader
did not change while it was read. `offline_contents` is a hook for a later per-store check of
our server's files on disk; the tests use it when it returns something and never need it.

Streams get names unique to their test, so the tests share one cluster per kind (fixture
`r3c`); tests that kill nodes call `restore()` in their finally block. The partition test
runs its own cluster with proxied routes (harness.ProxiedJSCluster).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Iterator

import nats.errors
import pytest

from tests.jscluster.harness import (CLUSTER_NAME, OURS_READY, OURS_SKIP_REASON, JSCluster, ProxiedJSCluster,
                                     api, api_retry, key_paths, make_stream_leader, normalize, peer_id,
                                     run, shared_cluster, stream_config, stream_info_any, stream_state_on,
                                     wait_for)

# Flip to True when replicated streams land in our server: every `ours` test here runs.
OURS_R3_READY = True
OURS_R3_SKIP_REASON = "replicated streams not built yet"

WAIT = 60.0  # generous: elections, restarts and catch-up on a shared 2-core machine
WINDOW = 200  # publishes in flight at once
PER_TRY = 2.0  # seconds one publish attempt waits for its ack before it is sent again
RETRY_AFTER = 0.25  # pause before the retry of a publish that failed

# Findings about nats-server, printed by the tests (pytest -s) and summed up in the report.
NOTES: list[str] = []


def note(kind: str, text: str) -> None:
    NOTES.append(f"[{kind}] {text}")
    print(f"\n[{kind}] {text}")


def r3_params() -> list:
    reason = OURS_R3_SKIP_REASON if OURS_READY else OURS_SKIP_REASON
    ours = pytest.mark.skipif(not (OURS_READY and OURS_R3_READY), reason=reason)
    return [pytest.param("nats-server", id="nats-server"), pytest.param("ours", id="ours", marks=[ours])]


@pytest.fixture(scope="module", params=r3_params())
def r3c(request, tmp_path_factory) -> Iterator[JSCluster]:
    """One shared three-node cluster per server kind for this module."""
    yield from shared_cluster(request, tmp_path_factory, "r3")


def offline_contents(cl: JSCluster, node: str, stream: str) -> list[tuple[int, str | None, str, bytes]] | None:
    """Hook: the stream's messages as (seq, msg id, subject, data) read from node `node`'s
    store files while that node is stopped, for kind "ours" once its on-disk format is settled.
    None means "not available": every test passes without it."""
    return None


# -- publishing and reading ----------------------------------------------------------------------

class Publisher:
    """Publishes with Nats-Msg-Id, retrying a timed-out or unanswered attempt with the same id,
    and records every ack. `log` keeps each failed attempt's outcome with its time."""

    def __init__(self, nc, stream: str, tag: str):
        self.nc = nc
        self.stream = stream
        self.tag = tag
        self.sent: dict[str, tuple[str, bytes]] = {}  # msg id -> (subject, payload)
        self.acked: dict[str, int] = {}  # msg id -> seq
        self.dups: dict[str, int] = {}  # msg id -> seq of a duplicate=true ack
        self.failures: list[tuple[float, str, str]] = []  # (time, msg id, outcome)
        self.errors: list[tuple[str, dict]] = []  # acks that are errors other than 503
        self.ack_times: list[float] = []

    def message(self, i: int) -> tuple[str, str, bytes]:
        mid = f"{self.tag}-{i:05d}"
        subject = f"{self.stream}.s{i % 7}"
        payload = f"{mid}:".encode() + os.urandom(6).hex().encode()
        return mid, subject, payload

    async def attempt(self, mid: str, headers: dict | None = None) -> dict | None:
        subject, payload = self.sent[mid]
        hdrs = {"Nats-Msg-Id": mid}
        hdrs.update(headers or {})
        try:
            msg = await self.nc.request(subject, payload, timeout=PER_TRY, headers=hdrs)
        except nats.errors.NoRespondersError:
            self.failures.append((time.monotonic(), mid, "no responders (503 status)"))
            return None
        except nats.errors.TimeoutError:
            self.failures.append((time.monotonic(), mid, "timeout"))
            return None
        body = json.loads(msg.data)
        err = body.get("error")
        if err and err.get("code") == 503:
            self.failures.append((time.monotonic(), mid, f"error {err}"))
            return None
        return body

    async def publish(self, i: int, headers: dict | None = None, until: float = WAIT) -> dict:
        """Send message `i` until it is acknowledged (or answered with a non-503 error)."""
        mid, subject, payload = self.message(i)
        self.sent.setdefault(mid, (subject, payload))
        deadline = time.monotonic() + until
        while True:
            body = await self.attempt(mid, headers)
            if body is not None:
                if "error" in body:
                    self.errors.append((mid, body))
                    return body
                assert body.get("stream") == self.stream, body
                if mid in self.acked:
                    assert self.acked[mid] == body["seq"], (mid, self.acked[mid], body)
                self.acked[mid] = body["seq"]
                if body.get("duplicate"):
                    self.dups[mid] = body["seq"]
                self.ack_times.append(time.monotonic())
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{mid} not acknowledged within {until}s; last outcomes "
                                     f"{self.failures[-3:]}")
            await asyncio.sleep(RETRY_AFTER)

    async def publish_range(self, start: int, stop: int, window: int = WINDOW) -> None:
        for lo in range(start, stop, window):
            await asyncio.gather(*(self.publish(i) for i in range(lo, min(lo + window, stop))))
        assert not self.errors, self.errors[:5]

    def expected(self) -> list[tuple[int, str, str, bytes]]:
        """(seq, msg id, subject, payload) of every acknowledged message, by seq."""
        return sorted((seq, mid, *self.sent[mid]) for mid, seq in self.acked.items())


def msg_id_of(hdrs_b64: str | None) -> str | None:
    if not hdrs_b64:
        return None
    for line in base64.b64decode(hdrs_b64).decode().split("\r\n")[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "nats-msg-id":
            return v.strip()
    return None


async def read_all(nc, stream: str, last_seq: int, chunk: int = WINDOW) -> list[tuple[int, str | None, str, bytes]]:
    """Every message 1..last_seq by `$JS.API.STREAM.MSG.GET` (chunk requests in flight);
    a sequence with no message is left out."""
    async def get(seq: int):
        for _ in range(5):
            try:
                resp = await api(nc, f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": seq}, timeout=5)
                break
            except nats.errors.TimeoutError:
                continue
        else:
            raise AssertionError(f"MSG.GET {stream} seq {seq} timed out 5 times")
        if "error" in resp:
            assert resp["error"]["err_code"] == 10037, resp  # no message found
            return None
        m = resp["message"]
        assert m["seq"] == seq, resp
        return seq, msg_id_of(m.get("hdrs")), m["subject"], base64.b64decode(m.get("data") or "")

    out = []
    for lo in range(1, last_seq + 1, chunk):
        got = await asyncio.gather(*(get(s) for s in range(lo, min(lo + chunk, last_seq + 1))))
        out.extend(g for g in got if g is not None)
    return out


def read_through(cl: JSCluster, stream: str, replica: str, last_seq: int, timeout: float = 2 * WAIT):
    """Make `replica` the stream leader, wait until its state reaches last_seq, read everything
    through it; the leader must not change during the read. Returns (contents, info)."""
    make_stream_leader(cl, stream, replica, timeout)

    async def main():
        nc = await cl.connect(replica)
        try:
            deadline = time.monotonic() + timeout
            while True:
                before = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
                if "error" not in before and before["cluster"]["leader"] == replica and \
                        before["state"]["last_seq"] >= last_seq:
                    break
                assert time.monotonic() < deadline, f"{replica} never led {stream} at last_seq {last_seq}: {before}"
                await asyncio.sleep(0.2)
            contents = await read_all(nc, stream, before["state"]["last_seq"])
            after = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
            assert (after["cluster"]["leader"], after["cluster"].get("leader_since")) == \
                (replica, before["cluster"].get("leader_since")), (before["cluster"], after["cluster"])
            return contents, before
        finally:
            await nc.close()

    return run(main())


def wait_stores_agree(cl: JSCluster, stream: str, names: list[str] | None = None, timeout: float = WAIT) -> dict:
    """Wait until every node's own store (its /jsz) has the same messages/first/last/bytes."""
    keys = ("messages", "first_seq", "last_seq", "bytes")

    seen: dict = {}

    def same():
        states = {n: stream_state_on(cl, n, stream) for n in names or cl.names()}
        seen["last"] = states
        if any(s is None for s in states.values()):
            return None
        views = {tuple(s.get(k) for k in keys) for s in states.values()}
        return states if len(views) == 1 else None

    try:
        return wait_for(same, f"every store of {stream} at the same state", timeout, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last states {seen.get('last')}") from None


def check_every_replica(cl: JSCluster, stream: str, expected: list, *, exact: bool = True) -> dict[str, list]:
    """`expected`: (seq, msg id, subject, payload) of the acknowledged messages. Every replica
    holds each of them at its acknowledged seq, with its payload; with `exact` nothing else.
    All replicas hold the same content, and every node's own store (/jsz) ends at the same
    state. Returns each replica's content.

    The reads come first: they change the leader, and nats-server 2.15.1 was seen to leave a
    restarted former leader retrying its catch-up ("Expected first catchup entry to be a
    snapshot and peerstate, will retry") until the stream leader changed."""
    last = max((e[0] for e in expected), default=0)
    seen: dict[str, list] = {}
    for name in cl.names():
        contents, info = read_through(cl, stream, name, last)
        by_seq = {c[0]: c for c in contents}
        missing = [e for e in expected if by_seq.get(e[0]) != e]
        assert not missing, f"{name}: {len(missing)} acknowledged messages absent or different, e.g. " \
                            f"{missing[:3]} (there: {[by_seq.get(e[0]) for e in missing[:3]]})"
        ids = [c[1] for c in contents]
        assert len(ids) == len(set(ids)), f"{name}: a message id stored twice"
        if exact:
            assert contents == expected, f"{name}: content beyond the acknowledged messages"
            assert info["state"]["messages"] == len(expected) and info["state"]["last_seq"] == last
        offline = offline_contents(cl, name, stream)
        if offline is not None:
            assert offline == contents, name
        seen[name] = contents
    first = seen[cl.names()[0]]
    assert all(c == first for c in seen.values()), "replicas differ"
    states = wait_stores_agree(cl, stream)
    assert all(s["messages"] == len(first) for s in states.values()), states
    return seen


async def create_r3(nc, name: str, **kw) -> dict:
    resp = await api_retry(nc, f"$JS.API.STREAM.CREATE.{name}", stream_config(name, num_replicas=3, **kw))
    assert resp.get("did_create") is True, resp
    return resp


async def create_r3_publish_via_follower(cl: JSCluster, stream: str, tag: str):
    """Create the R3 stream `stream` through n1, then connect to a node that is not its leader.
    Returns (leader, via, nc, Publisher(nc, stream, tag)); the caller closes nc."""
    nc0 = await cl.connect("n1")
    try:
        await create_r3(nc0, stream)
    finally:
        await nc0.close()
    leader = cl.stream_leader(stream)
    via = next(n for n in cl.names() if n != leader)
    nc = await cl.connect(via)
    return leader, via, nc, Publisher(nc, stream, tag)


def wait_replicas_current(cl: JSCluster, stream: str, timeout: float = WAIT) -> dict:
    """STREAM.INFO whose cluster block shows both followers current with no lag."""
    def ok():
        info = run(stream_info_any(cl, stream))
        reps = ((info or {}).get("cluster") or {}).get("replicas") or []
        if len(reps) == 2 and all(r.get("current") and not r.get("lag") and not r.get("offline") for r in reps):
            return info
        return None
    return wait_for(ok, f"both followers of {stream} current", timeout, interval=0.2)


def followers(info: dict) -> list[str]:
    return sorted(r["name"] for r in info["cluster"]["replicas"])


# -- 1. 10,000 deduplicated publishes, the leader SIGKILLed part-way ------------------------------

@pytest.mark.timeout(600)
def test_10000_publishes_with_msg_ids_survive_leader_kill_exactly_once_on_every_replica(r3c: JSCluster):
    """10,000 publishes with Nats-Msg-Id, 200 in flight, through a node that is not the stream
    leader; the leader is SIGKILLed after 3,000 acks and restarted once the new leader has
    acknowledged 1,000 more. Every message is acknowledged (retried with its id) and every
    replica holds each exactly once at the seq it was acknowledged with, with its payload."""
    total, kill_at = 10_000, 3_000
    cl = r3c
    stream = "R3DEDUP"

    async def main():
        leader, via, nc, pub = await create_r3_publish_via_follower(cl, stream, "d")
        killed: dict = {}

        async def chaos():
            while len(pub.acked) < kill_at:
                await asyncio.sleep(0.01)
            killed["at"] = time.monotonic()
            await asyncio.to_thread(cl.kill, leader)
            killed["acked"] = len(pub.acked)
            while len(pub.acked) < killed["acked"] + 1000:
                await asyncio.sleep(0.05)
            # acks already on their way when the leader died can still arrive: the new leader's
            # first is the first ack after the first failed attempt that followed the kill
            first_fail = min((t for t, _, _ in pub.failures if t > killed["at"]), default=killed["at"])
            first_after = min(t for t in pub.ack_times if t > first_fail)
            killed["failover_s"] = first_after - killed["at"]
            killed["new_leader"] = await asyncio.to_thread(cl.stream_leader, stream, via)
            await asyncio.to_thread(cl.restart, leader)

        try:
            await asyncio.gather(pub.publish_range(0, total), chaos())
        finally:
            await nc.close()
        return leader, via, pub, killed

    try:
        leader, via, pub, killed = run(main())
        assert killed.get("failover_s") is not None, "the leader was never killed"
        cl.wait_ready()
        assert len(pub.acked) == total
        seqs = sorted(pub.acked.values())
        assert seqs == list(range(1, total + 1)), "acknowledged seqs are not exactly 1..10000"
        assert killed["new_leader"] != leader
        check_every_replica(cl, stream, pub.expected())
        outcomes = sorted({o.split(" {")[0] for _, _, o in pub.failures})
        note(cl.kind, f"dedupe/kill: leader {leader} killed after {killed['acked']} acks (publishing via {via}); "
                      f"first ack after the kill {killed['failover_s']:.2f}s later from {killed['new_leader']}; "
                      f"{len(pub.failures)} failed attempts ({outcomes}), {len(pub.dups)} duplicate acks")
    finally:
        cl.restore()


# -- 2. expected-last-sequence chain across a failover -------------------------------------------

WRONG_SEQ = {"code": 400, "err_code": 10071}


@pytest.mark.timeout(300)
def test_expected_last_sequence_chain_stays_correct_across_leader_failover(r3c: JSCluster):
    """A chain of 300 publishes, each with Nats-Expected-Last-Sequence = the previous ack's seq
    (and its own Nats-Msg-Id, so a retry after a lost ack is answered as a duplicate, which
    nats-server checks before the expected sequence); the leader is SIGKILLed while link 100
    is in flight.
    The stream ends as exactly the chain: link i at seq i+1, no gap, no duplicate. A stale
    expectation before and after the failover is refused with nats-server's error:
    400 / 10071 "wrong last sequence: <last>", and stores nothing."""
    cl = r3c
    stream = "R3CHAIN"
    links, kill_after = 300, 100

    async def stale(pub: Publisher, i: int, expect: int) -> dict:
        return await pub.publish(i, headers={"Nats-Expected-Last-Sequence": str(expect)})

    async def main():
        leader, _via, nc, pub = await create_r3_publish_via_follower(cl, stream, "c")
        refusals = []
        try:
            last = 0
            for i in range(links):
                if i == 50 or i == kill_after + 20:
                    r = await stale(pub, 10_000 + i, last - 1)  # one behind: someone else's view
                    refusals.append((r, last))
                    pub.errors.clear()
                link = pub.publish(i, headers={"Nats-Expected-Last-Sequence": str(last)})
                if i == kill_after:  # SIGKILL racing with this link's first attempt
                    ack, _ = await asyncio.gather(link, asyncio.to_thread(cl.kill, leader))
                else:
                    ack = await link
                assert "error" not in ack, (i, last, ack)
                assert ack["seq"] == last + 1, (i, last, ack)
                last = ack["seq"]
            # an expectation ahead of the stream is refused the same way
            r = await stale(pub, 20_000, last + 5)
            refusals.append((r, last))
        finally:
            await nc.close()
        return leader, pub, refusals

    try:
        leader, pub, refusals = run(main())
        for r, last in refusals:
            assert r == {"error": {**WRONG_SEQ, "description": f"wrong last sequence: {last}"},
                         "stream": stream, "seq": 0}, r
        expected = [e for e in pub.expected() if e[1].startswith("c-0")]
        assert [e[0] for e in expected] == list(range(1, links + 1))
        assert [e[1] for e in expected] == [f"c-{i:05d}" for i in range(links)]
        cl.restore()
        check_every_replica(cl, stream, expected)
        note(cl.kind, f"expected-seq chain: leader {leader} killed after link {kill_after}; "
                      f"{len(pub.failures)} failed attempts, {len(pub.dups)} duplicate acks; refusal body "
                      f"{refusals[0][0]}")
    finally:
        cl.restore()


# -- 3. a follower stopped while 5,000 publishes go in, then restarted --------------------------

@pytest.mark.timeout(600)
def test_restarted_follower_catches_up_and_serves_everything(r3c: JSCluster):
    """A follower F is SIGKILLed, 5,000 publishes go in (5,100 with the ones before), F is
    restarted. F becomes current: the leader's cluster block shows it current with no lag.

    How "F still serves everything after the other two are killed" is shown: with two of three
    nodes dead there is no quorum, so a read through a leader is impossible. Instead F is made
    the leader (stepdown with preferred placement) and everything is read through it; then the
    other two are SIGKILLed and F's own store (its /jsz, which needs no quorum) still holds all
    5,100; they are restarted, F is made the leader again and everything is re-read through it.
    (nats-server only snapshots a stream's Raft log past its compaction thresholds, so 5,000
    small messages may be caught up from the log rather than a snapshot; either way F must end
    with everything.)"""
    cl = r3c
    stream = "R3CATCH"

    async def publish(pub_via: str, pub: Publisher | None, start: int, stop: int) -> Publisher:
        nc = await cl.connect(pub_via)
        try:
            if pub is None:
                await create_r3(nc, stream)
                pub = Publisher(nc, stream, "f")
            pub.nc = nc
            await pub.publish_range(start, stop)
            return pub
        finally:
            await nc.close()

    try:
        pub = run(publish("n1", None, 0, 100))
        info = wait_replicas_current(cl, stream)
        leader = info["cluster"]["leader"]
        follower = followers(info)[0]
        others = [n for n in cl.names() if n != follower]
        cl.kill(follower)
        pub = run(publish(leader, pub, 100, 5_100))
        assert sorted(pub.acked.values()) == list(range(1, 5_101))
        t0 = time.monotonic()
        cl.restart(follower)

        def current():
            info = run(stream_info_any(cl, stream))
            reps = {r["name"]: r for r in ((info or {}).get("cluster") or {}).get("replicas") or []}
            r = reps.get(follower)
            return info if r and r.get("current") is True and r.get("lag", 0) == 0 and not r.get("offline") else None

        info = wait_for(current, f"{follower} current in {stream}'s cluster block", WAIT, interval=0.2)
        caught_up_s = time.monotonic() - t0
        wait_for(lambda: stream_state_on(cl, follower, stream)["last_seq"] == 5_100, f"{follower}'s store at 5100")
        expected = pub.expected()
        contents, _ = read_through(cl, stream, follower, 5_100)
        assert contents == expected

        for n in others:
            cl.kill(n)
        alone = stream_state_on(cl, follower, stream)
        assert (alone["messages"], alone["first_seq"], alone["last_seq"]) == (5_100, 1, 5_100), alone
        offline = offline_contents(cl, follower, stream)
        if offline is not None:
            assert offline == expected
        for n in others:
            cl.restart(n)
        cl.wait_ready(WAIT)
        contents, _ = read_through(cl, stream, follower, 5_100)
        assert contents == expected
        check_every_replica(cl, stream, expected)
        note(cl.kind, f"catch-up: follower {follower} restarted after 5,000 publishes without it; current "
                      f"(lag 0) {caught_up_s:.1f}s after the restart began")
    finally:
        cl.restore()


# -- 4. every node SIGKILLed at once ---------------------------------------------------------------

@pytest.mark.timeout(600)
def test_all_three_killed_at_once_lose_nothing_acknowledged(r3c: JSCluster):
    """2,000 publishes are acknowledged, then publishing goes on (200 in flight, single
    attempts) while all three nodes are SIGKILLed at once. After restarting them every
    acknowledged message is on every replica at its seq with its payload; a message whose
    ack never came may or may not be there, at most once."""
    cl = r3c
    stream = "R3ALLDOWN"

    async def main():
        nc = await cl.connect("n1")
        try:
            await create_r3(nc, stream)
            pub = Publisher(nc, stream, "k")
            await pub.publish_range(0, 2_000)
            stop = asyncio.Event()

            async def keep_publishing():
                i = 2_000
                while not stop.is_set():
                    batch = range(i, i + WINDOW)
                    for j in batch:
                        mid, subject, payload = pub.message(j)
                        pub.sent[mid] = (subject, payload)

                    async def once(j):
                        mid = pub.message(j)[0]
                        try:
                            body = await pub.attempt(mid)
                        except (nats.errors.ConnectionClosedError, nats.errors.StaleConnectionError,
                                nats.errors.UnexpectedEOF, OSError):
                            return
                        if body and "error" not in body:
                            pub.acked[mid] = body["seq"]
                    await asyncio.gather(*(once(j) for j in batch))
                    i += WINDOW

            task = asyncio.create_task(keep_publishing())
            while len(pub.acked) < 2_500:
                await asyncio.sleep(0.01)
            for n in cl.names():  # SIGKILL all three, then reap
                cl.node(n).proc.signal(9)
            for n in cl.names():
                await asyncio.to_thread(cl.kill, n)
            stop.set()
            await asyncio.wait_for(task, 30)
            return pub
        finally:
            await nc.close()

    try:
        pub = run(main())
        for n in cl.names():
            cl.restart(n)
        cl.wait_ready(WAIT)
        expected = pub.expected()
        assert len(expected) == len(pub.acked) >= 2_500
        last = max(e[0] for e in expected)
        wait_for(lambda: run(stream_info_any(cl, stream)), f"{stream} answering after the restart", WAIT)
        seen = check_every_replica(cl, stream, expected, exact=False)
        contents = seen[cl.names()[0]]
        unacked = [c for c in contents if c[1] not in pub.acked]
        for seq, mid, subject, payload in unacked:
            assert mid in pub.sent and pub.sent[mid] == (subject, payload), (seq, mid)
        note(cl.kind, f"all killed: {len(expected)} acknowledged (last seq {last}), all present; "
                      f"{len(unacked)} unacknowledged ones present too, {len(contents)} in the stream")
    finally:
        cl.restore()


# -- 5. the leader partitioned by cutting its routes ----------------------------------------------

@pytest.mark.slow  # its own proxied cluster and 12+ s of partition: ~30 s for nats-server alone
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", r3_params())
def test_partitioned_leader_acknowledges_nothing_and_replicas_converge_after_healing(kind: str, tmp_path: Path):
    """Routes cross toxiproxy-API proxies (harness.ProxiedJSCluster). After 300 acknowledged
    publishes, every proxy to and from the stream leader L is disabled (its routes close).
    Then, at once:
      - a client connected to L keeps publishing (50 in flight, single attempts with fresh
        ids): not one of these may be acknowledged; every outcome is recorded;
      - a client connected to a majority node publishes 300 more, retrying with the same id
        until acknowledged: the majority elects a new leader that takes them.
    After healing, every acknowledged message is on every replica at its acknowledged seq,
    the replicas hold the same content, and nothing unacknowledged appears twice."""
    stream = "R3PART"
    with ProxiedJSCluster(kind, tmp_path / "part") as cl:
        wait_for(lambda: all(cl.routes_of(n) >= 2 for n in cl.names()), "routes through the proxies")

        async def before() -> Publisher:
            nc = await cl.connect("n1")
            try:
                await create_r3(nc, stream)
                pub = Publisher(nc, stream, "p")
                await pub.publish_range(0, 300)
                return pub
            finally:
                await nc.close()

        pub = run(before())
        info = wait_replicas_current(cl, stream)
        leader = info["cluster"]["leader"]
        majority = [n for n in cl.names() if n != leader]

        async def partitioned():
            iso_nc = await cl.connect(leader)
            maj_nc = await cl.connect(majority[0])
            iso = Publisher(iso_nc, stream, "iso")
            iso_outcomes: list[tuple[float, str]] = []
            iso_acks: list[tuple[float, str, dict]] = []
            pub.nc = maj_nc
            try:
                cut = await asyncio.to_thread(cl.isolate, leader)
                t_cut = time.monotonic()
                assert len(cut) == 4
                await asyncio.to_thread(wait_for, lambda: cl.routes_of(leader) == 0, f"{leader}'s routes closed")
                done = asyncio.Event()

                async def on_isolated():
                    i = 0
                    while not done.is_set():
                        async def once(j):
                            mid, subject, payload = iso.message(j)
                            iso.sent[mid] = (subject, payload)
                            nfail = len(iso.failures)
                            body = await iso.attempt(mid)
                            at = time.monotonic() - t_cut
                            if body is None:
                                iso_outcomes.append((at, iso.failures[nfail][2] if len(iso.failures) > nfail
                                                     else "failed"))
                            elif "error" in body:
                                iso_outcomes.append((at, f"error {body['error']}"))
                            else:
                                iso_acks.append((at, mid, body))
                                iso.acked[mid] = body["seq"]
                        await asyncio.gather(*(once(j) for j in range(i, i + 50)))
                        i += 50
                        await asyncio.sleep(0.05)

                async def on_majority():
                    try:
                        await pub.publish_range(300, 600)
                        # keep the isolated side publishing past a few election timeouts
                        await asyncio.sleep(max(0.0, ISOLATED_FOR - (time.monotonic() - t_cut)))
                    finally:
                        done.set()

                async def watch_isolated():  # when the isolated node stops calling itself leader
                    while not done.is_set():
                        try:
                            doc = await asyncio.to_thread(cl.jsz, leader, "streams=1")
                            sd = [d for a in doc.get("account_details") or [] for d in a.get("stream_detail") or []
                                  if d["name"] == stream]
                            if sd and (sd[0].get("cluster") or {}).get("leader") != leader:
                                stepped_down.append(time.monotonic() - t_cut)
                                return
                        except OSError:
                            pass
                        await asyncio.sleep(0.25)

                stepped_down: list[float] = []
                acked_before = len(pub.ack_times)
                await asyncio.gather(on_isolated(), on_majority(), watch_isolated())
                first_maj = pub.ack_times[acked_before] - t_cut
                new_leader = (await api(maj_nc, f"$JS.API.STREAM.INFO.{stream}"))["cluster"]["leader"]
                try:  # what the isolated node says about the stream by now
                    own = await api(iso_nc, f"$JS.API.STREAM.INFO.{stream}", timeout=3)
                    iso_view = own.get("error") or (own.get("cluster") or {}).get("leader")
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                    iso_view = type(exc).__name__
                return iso, iso_outcomes, iso_acks, first_maj, new_leader, (iso_view, stepped_down)
            finally:
                await iso_nc.close()
                await maj_nc.close()

        iso, iso_outcomes, iso_acks, first_maj, new_leader, (iso_view, stepped_down) = run(partitioned())
        summary = summarize(iso_outcomes)
        note(kind, f"partition: leader {leader} isolated; publishes through it after the cut: {summary}; "
                   f"acknowledged by it: {len(iso_acks)} {iso_acks[:3]}; majority's new leader {new_leader}, "
                   f"first majority ack {first_maj:.2f}s after the cut; the isolated node's own STREAM.INFO "
                   f"{ISOLATED_FOR:.0f}s after the cut: leader {iso_view!r}; its /jsz stopped naming itself leader "
                   f"{f'{stepped_down[0]:.1f}s after the cut' if stepped_down else 'never'}")
        assert not iso_acks, f"the isolated leader acknowledged {len(iso_acks)} publishes after the cut: {iso_acks[:5]}"
        assert new_leader in majority, new_leader
        assert len(pub.acked) == 600 and sorted(pub.acked.values()) == list(range(1, 601))

        cl.heal()
        cl.wait_ready(WAIT)
        wait_for(lambda: all(cl.routes_of(n) >= 2 for n in cl.names()), "routes back after healing")
        seen = check_every_replica(cl, stream, pub.expected(), exact=False)
        contents = seen[cl.names()[0]]
        extra = [c for c in contents if c[1] not in pub.acked]
        for seq, mid, subject, payload in extra:
            assert iso.sent.get(mid) == (subject, payload), (seq, mid)
        note(kind, f"partition healed: {len(contents)} messages on every replica, {len(extra)} of them "
                   f"unacknowledged publishes sent to the isolated leader")


ISOLATED_FOR = 12.0  # seconds the isolated leader keeps being sent publishes, at least


def summarize(outcomes: list[tuple[float, str]]) -> str:
    """'<outcome> x<count> (<first>s..<last>s after the cut)' per distinct outcome."""
    spans: dict[str, list[float]] = {}
    for at, what in outcomes:
        spans.setdefault(what.split(" {")[0] if what.startswith("error") else what, []).append(at)
    return "; ".join(f"{w} x{len(ts)} ({min(ts):.1f}s..{max(ts):.1f}s)" for w, ts in spans.items()) or "none"


# -- 6. the cluster block of an R3 stream, through every node -------------------------------------

# nats-server 2.15.1's STREAM.INFO cluster block of an R3 stream with both followers current
# (replicas[].lag and replicas[].offline are omitted while zero / false)
R3_CLUSTER_KEYS = {"name", "raft_group", "leader", "leader_since", "system_account", "traffic_account",
                   "replicas", "replicas[].name", "replicas[].current", "replicas[].active", "replicas[].peer"}
OPTIONAL_KEYS = {"replicas[].lag", "replicas[].offline"}

_reference_blocks: dict[str, dict] = {}


async def cluster_blocks(cl: JSCluster, stream: str) -> dict[str, dict]:
    """STREAM.INFO of a fresh R3 stream with 5 messages, asked through every node, once every
    follower is current."""
    c = await cl.connect_all()
    try:
        await create_r3(c["n1"], stream)
        p = Publisher(c["n2"], stream, "sh")
        for i in range(5):
            await p.publish(i)
        deadline = time.monotonic() + WAIT
        while True:
            infos = {n: await api(nc, f"$JS.API.STREAM.INFO.{stream}") for n, nc in c.items()}
            reps = [r for i in infos.values() for r in (i.get("cluster") or {}).get("replicas") or []]
            if all("error" not in i for i in infos.values()) and reps and \
                    all(r.get("current") and not r.get("lag") for r in reps):
                return infos
            assert time.monotonic() < deadline, infos
            await asyncio.sleep(0.2)
    finally:
        for nc in c.values():
            await nc.close()


def reference_cluster_block(tmp_path: Path) -> dict:
    """nats-server's normalized cluster block (from this module's nats-server run, else from a
    fresh nats-server cluster)."""
    if "block" not in _reference_blocks:
        with JSCluster("nats-server", tmp_path / "shape-ref") as ref:
            infos = run(cluster_blocks(ref, "R3SHAPEREF"))
        _reference_blocks["block"] = normalize(infos["n1"]["cluster"])
    return _reference_blocks["block"]


def test_r3_stream_info_cluster_block_from_every_node(r3c: JSCluster, tmp_path: Path):
    """STREAM.INFO through each node names the same leader and the two others as replicas,
    each with its peer id (nats-server: a hash of the server name), current, an active
    duration in ns; the key paths are nats-server's, compared with a live nats-server answer."""
    cl = r3c
    stream = "R3SHAPE"
    infos = run(cluster_blocks(cl, stream))
    leaders = {i["cluster"]["leader"] for i in infos.values()}
    assert len(leaders) == 1, infos
    leader = leaders.pop()
    assert leader in cl.names()
    for n, info in infos.items():
        block = info["cluster"]
        assert key_paths(block) - OPTIONAL_KEYS == R3_CLUSTER_KEYS, (n, block)
        assert block["name"] == CLUSTER_NAME and isinstance(block["raft_group"], str) and block["raft_group"]
        assert sorted(r["name"] for r in block["replicas"]) == sorted(set(cl.names()) - {leader}), (n, block)
        for r in block["replicas"]:
            assert r["peer"] == peer_id(r["name"]) and r["current"] is True
            assert isinstance(r["active"], int) and r["active"] >= 0 and r.get("lag", 0) == 0, (n, r)
        assert block["raft_group"] == infos["n1"]["cluster"]["raft_group"]
        assert info["config"]["num_replicas"] == 3 and info["state"]["messages"] == 5
    for n in cl.names():  # each node's own /jsz knows the stream, its leader and its 5 messages
        wait_for(lambda n=n: (stream_state_on(cl, n, stream) or {}).get("messages") == 5, f"{n}'s store of {stream}")
    mine = normalize(infos["n1"]["cluster"])
    if cl.kind == "nats-server":
        _reference_blocks.setdefault("block", mine)
    ref = reference_cluster_block(tmp_path)
    assert sorted(key_paths(mine) - OPTIONAL_KEYS) == sorted(key_paths(ref) - OPTIONAL_KEYS)
    strip = lambda b: {k: v for k, v in b.items() if k != "replicas"}  # noqa: E731 (names depend on the leader)
    assert strip(mine) == strip(ref), (mine, ref)
    assert [sorted(r) for r in mine["replicas"]] == [sorted(r) for r in ref["replicas"]]
