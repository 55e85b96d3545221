"""bench/r3_bench.py's pure logic, without starting any server: argument parsing, the
failover measurement rule, PubAck reply parsing and the report table."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import r3_bench  # noqa: E402


def test_msgs_takes_one_count_for_both_modes_or_sync_and_async_apart():
    assert r3_bench.parse_msgs("500") == (500, 500)
    assert r3_bench.parse_msgs("2000,100_000") == (2000, 100_000)
    for bad in ("", "0", "1,2,3", "x", "10,-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            r3_bench.parse_msgs(bad)


def test_kinds_and_via_are_checked():
    assert r3_bench.parse_kinds("ours") == ["ours"]
    assert r3_bench.parse_kinds(" nats-server , ours ") == ["nats-server", "ours"]
    for bad in ("", "nats", "ours,ours"):
        with pytest.raises(argparse.ArgumentTypeError):
            r3_bench.parse_kinds(bad)
    assert r3_bench.parse_vias("follower") == ["follower"]
    with pytest.raises(argparse.ArgumentTypeError):
        r3_bench.parse_vias("leader,replica")
    args = r3_bench.build_parser().parse_args(["--kinds", "ours", "--msgs", "10,20", "--size", "64", "--runs", "5"])
    assert (args.kinds, args.msgs, args.size, args.runs) == (["ours"], (10, 20), 64, 5)
    assert r3_bench.measured_metrics(["follower"], 0) == ["sync_follower", "async_follower"]
    assert r3_bench.measured_metrics(["leader"], 3)[-1] == "failover"


def test_failover_counts_only_publishes_sent_after_the_old_leader_died():
    kill, dead = 10.0, 10.002
    sends = {1: 9.99, 2: 10.001, 3: 10.5, 4: 11.2}
    acks = [(1, 10.003, True),   # sent before the kill: the old leader's last words
            (2, 10.004, True),   # sent while the SIGKILL was landing: same
            (3, 10.9, False),    # after the kill but a 503 / error
            (4, 11.25, True)]
    assert r3_bench.failover_time(kill, sends, acks, dead) == pytest.approx(1.25)
    assert r3_bench.failover_time(kill, sends, acks[:3], dead) is None
    assert r3_bench.failover_time(kill, sends, acks[:2]) == pytest.approx(0.004)  # dead_at defaults to kill


def _random_splits(make_parser, data: bytes, seed: int, rounds: int, step):
    """`rounds` times, a fresh `make_parser()` (ReplyParser, AckScanner, FrameParser) fed `data`
    in pieces of the sizes `step(rng)` gives (rng: random.Random(seed), one for all rounds);
    yields (the parser, everything its feed returned, in order) after each round."""
    rng = random.Random(seed)
    for _ in range(rounds):
        parser = make_parser()
        got, pos = [], 0
        while pos < len(data):
            n = step(rng)
            got += parser.feed(data[pos:pos + n])
            pos += n
        yield parser, got


def test_reply_parser_cuts_frames_across_any_split():
    ack = b'{"stream":"R3","seq":7}'
    frames = (b"MSG _INBOX.r3.1 1 %d\r\n%b\r\n" % (len(ack), ack)
              + b"PING\r\n"
              + b"HMSG _INBOX.r3.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
              + b'MSG _INBOX.r3.3 1 53\r\n{"error":{"code":503,"err_code":10074,"description":"x"}}\r\n')
    for parser, got in _random_splits(r3_bench.ReplyParser, frames, 3, 50, lambda rng: rng.randint(1, 9)):
        assert [g[0] for g in got] == [b"_INBOX.r3.1", b"_INBOX.r3.2", b"_INBOX.r3.3"]
        assert parser.pings == 1
        assert [r3_bench.classify_reply(h, p)[:2] for _, h, p in got] == [(True, 7), (False, None), (False, None)]
    assert "10074" in r3_bench.classify_reply(b"", got[2][2])[2]
    assert "503" in r3_bench.classify_reply(got[1][1], b"")[2]


def test_table_shows_medians_ranges_failures_and_ratios():
    samples = {"nats-server": {"sync_leader": [4000.0, 5000.0, 3000.0], "failover": [5.0, 7.5, 4.0]},
               "ours": {"sync_leader": [2500.0, 2000.0, 2600.0], "failover": [0.3, 0.2, 0.9]}}
    table = r3_bench.format_table(samples, {}, ["nats-server", "ours"], ["sync_leader", "failover"])
    lines = table.splitlines()
    assert lines[0] == "| metric | nats-server | ours | ours / nats-server |"
    assert "| 4,000 (3,000-5,000) | 2,500 (2,000-2,600) | 0.62x |" in lines[2]
    assert "| 5.000 (4.000-7.500) | 0.300 (0.200-0.900) | 0.06x |" in lines[3]
    targets = r3_bench.target_lines(samples, ["sync_leader", "failover"])
    assert "met (0.62x)" in targets[0] and "NOT" not in targets[0]
    assert "met (median 0.300 s)" in targets[1]


def test_table_reports_a_kind_that_failed_at_create_and_keeps_the_others_numbers():
    samples = {"nats-server": {"async_leader": [120000.0]}, "ours": {"async_leader": []}}
    failures = {"ours": "create refused, 10074"}
    table = r3_bench.format_table(samples, failures, ["nats-server", "ours"], ["async_leader"])
    assert table.splitlines()[2].endswith("| 120,000 | n/a (create refused, 10074) | - |")
    assert r3_bench.target_lines(samples, ["async_leader"]) == ["  not measured: ours has no numbers in this run"]
    # only one kind asked for: no ratio column
    single = r3_bench.format_table(samples, {}, ["nats-server"], ["async_leader"])
    assert single.splitlines()[0] == "| metric | nats-server |"


def test_nats_server_sync_kind_gets_its_own_ratio_column_and_targets_stay_against_the_default():
    assert r3_bench.parse_kinds("nats-server-sync,ours") == ["nats-server-sync", "ours"]
    assert r3_bench.build_parser().parse_args([]).kinds is None  # main: all three, or two with --consume
    samples = {"nats-server": {"sync_leader": [8000.0]}, "nats-server-sync": {"sync_leader": [2500.0]},
               "ours": {"sync_leader": [2000.0]}}
    lines = r3_bench.format_table(samples, {}, list(r3_bench.KINDS), ["sync_leader"]).splitlines()
    assert lines[0] == ("| metric | nats-server | nats-server-sync | ours | ours / nats-server "
                        "| ours / nats-server-sync |")
    assert lines[2].endswith("| 8,000 | 2,500 | 2,000 | 0.25x | 0.80x |")
    assert "NOT met (0.25x)" in r3_bench.target_lines(samples, ["sync_leader"])[0]
    # without ours there is nothing to divide
    assert r3_bench.format_table(samples, {}, ["nats-server", "nats-server-sync"], ["sync_leader"]
                                 ).splitlines()[0] == "| metric | nats-server | nats-server-sync |"


# ---- --consume -------------------------------------------------------------------------------

def test_consume_flags_and_metric_keys():
    args = r3_bench.build_parser().parse_args([])
    assert (args.consume, args.consume_msgs, args.batch, args.acks, args.fo_expires) == \
        (False, 50_000, 500, ["none", "explicit"], 0.1)
    args = r3_bench.build_parser().parse_args(["--consume", "--consume-msgs", "1000", "--batch", "50",
                                               "--acks", "explicit", "--via", "follower"])
    assert (args.consume, args.consume_msgs, args.batch, args.acks) == (True, 1000, 50, ["explicit"])
    for bad in ("", "all", "none,none"):
        with pytest.raises(argparse.ArgumentTypeError):
            r3_bench.parse_acks(bad)
    assert r3_bench.consume_metrics(["none", "explicit"], ["leader", "follower"], 3) == [
        "consume_none_leader", "consume_none_follower", "consume_explicit_leader",
        "consume_explicit_follower", "consumer_failover"]
    assert r3_bench.consume_metrics(["explicit"], ["follower"], 0) == ["consume_explicit_follower"]
    assert all(k in r3_bench.METRICS for k in r3_bench.consume_metrics(["none", "explicit"], ["leader", "follower"], 1))


def test_pull_request_ack_frames_and_consumer_config():
    frame = r3_bench.pull_frame("C1", b"_INBOX.r3c.7", 500, 5_000_000_000)
    assert frame == (b'PUB $JS.API.CONSUMER.MSG.NEXT.R3.C1 _INBOX.r3c.7 34\r\n'
                     b'{"batch":500,"expires":5000000000}\r\n')
    assert r3_bench.ack_frames([b"$JS.ACK.R3.C1.1.5.5.0.0", b"$JS.ACK.R3.C1.1.6.6.0.0"]) == (
        b"PUB $JS.ACK.R3.C1.1.5.5.0.0 4\r\n+ACK\r\nPUB $JS.ACK.R3.C1.1.6.6.0.0 4\r\n+ACK\r\n")
    cfg = r3_bench.consumer_config("C1", "none")
    assert cfg == {"stream_name": "R3", "config": {"durable_name": "C1", "ack_policy": "none",
                                                   "deliver_policy": "all"}}


def test_ack_reply_subjects_old_and_domain_layouts():
    assert r3_bench.ack_seq(b"$JS.ACK.R3.C1.2.1234.17.1733370000000000000.99") == (2, 1234)
    assert r3_bench.ack_seq(b"$JS.ACK._.hash123.R3.C1.1.42.42.1733370000000000000.0.tok") == (1, 42)
    assert r3_bench.status_line(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n") == \
        "408 Request Timeout"
    assert r3_bench.status_line(b"NATS/1.0 409 Leadership Change\r\n\r\n") == "409 Leadership Change"
    assert r3_bench.status_line(b"NATS/1.0\r\nX: y\r\n\r\n") is None


def _deliveries(n: int, size: int = 16, start: int = 1) -> bytes:
    payload = b"x" * size
    out = b""
    for i in range(start, start + n):
        reply = b"$JS.ACK.R3.C1.1.%d.%d.1733370000000000000.%d" % (i, i, 1000 - i)
        out += b"MSG r3.t 1 %b %d\r\n%b\r\n" % (reply, size, payload)
    return out


def test_ack_scanner_finds_each_reply_once_across_any_split():
    stream = (_deliveries(40)
              + b"HMSG _INBOX.r3c.3 1 28 28\r\nNATS/1.0 408 Request Timeout\r\n\r\n\r\n"
              + b"PING\r\n"
              + b"HMSG r3.t 1 $JS.ACK.R3.C1.1.41.41.0.0 12 28\r\nNATS/1.0\r\n\r\n" + b"x" * 16 + b"\r\n"
              + _deliveries(9, start=42))
    want = [b"$JS.ACK.R3.C1.1.%d.%d.1733370000000000000.%d" % (i, i, 1000 - i) for i in range(1, 41)]
    want += [b"$JS.ACK.R3.C1.1.41.41.0.0"]
    want += [b"$JS.ACK.R3.C1.1.%d.%d.1733370000000000000.%d" % (i, i, 1000 - i) for i in range(42, 51)]
    for _, got in _random_splits(r3_bench.AckScanner, stream, 11, 30,
                                 lambda rng: rng.choice([1, 2, 7, 33, 100, 700, 5000])):
        assert got == want
    # the token the ack-none path counts occurs once per delivery, none in status replies
    counter = __import__("loadgen").TokenCounter(b" $JS.ACK.")
    assert sum(counter.feed(stream[i:i + 5]) for i in range(0, len(stream), 5)) == 50


def test_frame_parser_gives_sid_reply_headers_and_payload():
    stream = (b"MSG r3.t 2 $JS.ACK.R3.CFO.1.9.9.0.0 3\r\nxxx\r\n"
              + b"PING\r\n"
              + b"HMSG _INBOX.r3f.a.4 1 34 34\r\nNATS/1.0 409 Leadership Change\r\n\r\n\r\n"
              + b"MSG _INBOX.r3c.info 1 2\r\n{}\r\n")
    for parser, got in _random_splits(r3_bench.FrameParser, stream, 5, 30, lambda rng: rng.randint(1, 12)):
        assert got == [(b"r3.t", b"2", b"$JS.ACK.R3.CFO.1.9.9.0.0", b"", b"xxx"),
                       (b"_INBOX.r3f.a.4", b"1", b"", b"NATS/1.0 409 Leadership Change\r\n\r\n", b""),
                       (b"_INBOX.r3c.info", b"1", b"", b"", b"{}")]
        assert parser.pings == 1
    assert r3_bench.status_line(got[1][3]) == "409 Leadership Change"


def test_consumer_failover_counts_only_messages_for_requests_sent_after_the_kill():
    kill = 20.0
    deliveries = [(19.9, False),    # before the kill
                  (20.001, False),  # the old leader's last words, for a request sent before
                  (20.4, False),    # a new leader answering an old request: not counted either
                  (20.6, True),
                  (20.5, True)]     # out of order in the list: the earliest counts
    assert r3_bench.consume_failover_time(kill, deliveries) == pytest.approx(0.5)
    assert r3_bench.consume_failover_time(kill, deliveries[:3]) is None
    assert r3_bench.repeats([1, 2, 3, 3, 4, 2]) == 2
    assert r3_bench.repeats([]) == 0


def test_consume_table_and_issue_11_targets():
    samples = {"nats-server": {"consume_none_leader": [200000.0, 250000.0, 150000.0],
                               "consumer_failover": [4.1, 4.5, 3.9]},
               "ours": {"consume_none_leader": [90000.0, 120000.0, 100000.0],
                        "consumer_failover": [0.03, 0.02, 1.5]}}
    keys = ["consume_none_leader", "consumer_failover"]
    lines = r3_bench.format_table(samples, {}, ["nats-server", "ours"], keys).splitlines()
    assert "| 200,000 (150,000-250,000) | 100,000 (90,000-120,000) | 0.50x |" in lines[2]
    assert "| 4.100 (3.900-4.500) | 0.030 (0.020-1.500) | 0.01x |" in lines[3]
    targets = r3_bench.target_lines(samples, keys, r3_bench.CONSUME_TARGETS)
    assert len(targets) == 2
    assert "ours >= 0.5x nats-server: met (0.50x)" in targets[0]
    assert "ours <= 1.0 s: met (median 0.030 s)" in targets[1]
    # the publish targets do not pick up the consume keys (nor the other way round)
    assert r3_bench.target_lines(samples, keys) == []
    assert r3_bench.target_lines({"ours": {"failover": [0.1]}, "nats-server": {}}, ["failover"],
                                 r3_bench.CONSUME_TARGETS) == []
