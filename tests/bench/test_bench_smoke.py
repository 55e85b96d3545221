"""Smoke test for the benchmark load generator (bench/loadgen.py) against our server.

Runs each load pattern for a fraction of a second and checks that messages really
flowed; there are no timing assertions (the benchmark itself is bench/core_bench.py
and never runs in the test suite).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402


def test_token_counter_counts_each_ping_once_across_any_split():
    rng = random.Random(7)
    frames = [b"MSG bench 1 16\r\n" + b"x" * 16 + b"\r\n", b"PING\r\n"]
    stream = b"".join(rng.choice(frames) for _ in range(3000))
    expected = stream.count(b"PING\r\n")
    assert expected > 0
    for _ in range(20):
        tc = loadgen.TokenCounter(b"PING\r\n")
        seen = pos = 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            seen += tc.feed(stream[pos:pos + step])
            pos += step
        assert seen == expected


def test_frame_sizes_match_what_the_server_sends():
    assert len(loadgen.pub_frame(b"bench", 16)) == len(b"PUB bench 16\r\n") + 16 + 2
    assert loadgen.msg_frame_size(b"bench", b"1", 16) == len(b"MSG bench 1 16\r\n") + 18
    assert loadgen.msg_frame_size(b"_INBOX.bench.00000", b"1", 16) == \
        len(b"MSG _INBOX.bench.00000 1 16\r\n") + 18


def test_pub_sub_delivers_to_every_subscriber(core_server):
    res = loadgen.pub_sub(core_server.port, size=16, nsubs=2, seconds=0.3, warmup=0.1,
                          server_pid=core_server.proc.pid, window_bytes=256 * 1024)
    assert res.errors == 0
    assert res.extra["published_total"] > 0
    # the slowest of the two subscriber connections received messages too
    assert res.extra["delivered_min"] > 0
    assert res.extra["delivered_total"] >= 2 * res.extra["delivered_min"]
    assert res.msgs_per_s > 0


def test_publish_only_is_acknowledged(core_server):
    res = loadgen.pub_sub(core_server.port, size=16, nsubs=0, seconds=0.3, warmup=0.1,
                          batch_bytes=4096)
    assert res.errors == 0
    assert res.msgs_per_s > 0
    assert res.extra["published_total"] > 0


def test_request_reply_round_trips(core_server):
    res = loadgen.request_reply(core_server.port, inflight=5, seconds=0.3, warmup=0.1)
    assert res.errors == 0
    assert res.extra["round_trips_total"] > 0


def test_holders_open_connections_and_subscriptions(core_server):
    pid = core_server.proc.pid
    held, rss, errors = loadgen.hold_connections(core_server.port, 50, lambda: loadgen.rss_kib(pid), settle=0.1)
    assert (held, errors) == (50, 0)
    assert rss > 0
    held, rss, errors = loadgen.hold_subscriptions(core_server.port, 500, 3, lambda: loadgen.rss_kib(pid),
                                                   settle=0.1)
    assert (held, errors) == (500, 0)
    assert rss > 0
