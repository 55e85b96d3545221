"""Replicated (R3) streams: our broker vs a three-node nats-server cluster in the same run.

For each server kind (`--kinds`, default nats-server, nats-server-sync, then ours) a fresh
three-node cluster is started by tests/jscluster/harness.py (JSCluster: names n1..n3, cluster
"jsc", every node configured with all three routes, a store directory per node) and one
stream is created:

    R3   subjects r3.>, file storage, num_replicas 3, everything else default
         (nats-server: its default lazy fsync; nats-server-sync: an fsync after every write;
         ours: fsync on a quorum before the ack)

Then, with the same raw-protocol load generator for both kinds (a forked process writing
precomputed `PUB r3.t <reply> <size>` frames and counting the PubAck replies by token, the
way bench/js_bench.py and bench/loadgen.py do; loadgen's socket helpers are reused):

  sync   N_sync publishes with 1 in flight (send, wait for its PubAck, send the next)
  async  N_async publishes with 1,000 in flight (a new one per PubAck received)
         each through a client connected to the stream leader and to a follower
         (`--via`), `--runs` times; the median msgs/s is reported
  failover
         a client connected to a follower publishes continuously with 1 in flight (a
         publish not answered within `--fo-retry` s, or answered with an error / 503, is
         followed by the next one; late answers still count); the stream leader is
         SIGKILLed; measured: time from the kill to the first successful PubAck of a
         publish sent after the kill. The killed node is restarted and the stream waited
         current between rounds (`--failovers` rounds; median and range). Also checked:
         the stream's last_seq afterwards is not below the highest acknowledged seq.

Output: one line per sample, then the table `metric | <kinds> | ratios` (ours / nats-server
and ours / nats-server-sync, of the medians) and the issue-10 targets. A kind that can not
run (e.g. ours refusing R3 with 10074 "replicas > 1 not supported in non-clustered mode")
is reported as failed, with its error, and the other kind's numbers are still printed;
the exit status is then 1.

    python bench/r3_bench.py [--kinds nats-server,nats-server-sync,ours] [--msgs 2000,100000]
                             [--size 128] [--runs 3] [--via leader,follower] [--failovers 3]
                             [--save]

The kind `nats-server-sync` is nats-server with `jetstream { sync_interval: always }` (an
fsync after every write, the durability ours always has); it is measured by default beside
nats-server's default (lazy fsync, every 2 min) and the table gets a second ratio column,
ours / nats-server-sync. Issue 10's targets are against nats-server's default. With
`--consume` the default kinds are nats-server and ours.

`--msgs N` uses N for both modes; `--msgs S,A` sets them apart. `--save` also writes the
report to bench/results/r3-<date>.txt.

`--consume` measures replicated pull consumers instead of publishing (issue 11). The stream
R3 is pre-filled with `--consume-msgs` messages (async publishes through its leader), then,
again with one raw-protocol generator process for both kinds:

  ack none      a new durable pull consumer (ack_policy none, deliver all, replicas: the
                stream's) is drained with `$JS.API.CONSUMER.MSG.NEXT.R3.<c>` requests
                {"batch": --batch, "expires": 5 s}, one request at a time (the next one goes
                out when the previous one's batch arrived, as a Fetch loop does); MSG frames
                are counted by token; msgs/s from the first request to the last message
  ack explicit  the same with ack_policy explicit and every message acknowledged (plain
                `+ACK` published to its reply subject, acks of a read written at once);
                the clock stops when CONSUMER.INFO (asked over the same connection) shows
                num_ack_pending 0 and the ack floor at the last delivered stream seq
                each through the consumer leader and a node that is not the consumer
                leader (`--via`; for nats-server also not the stream leader when possible),
                `--runs` times, a fresh consumer each time (deleted afterwards); each line
                also shows every node's CPU (CPU s / measured s) and the generator's
  failover      a durable ack-explicit consumer is fetched continuously through a node that
                is not its leader, batch 1 with `--fo-expires` expiry (an unanswered request
                is followed by the next one after that long), every message acknowledged;
                the consumer leader (CONSUMER.INFO cluster.leader) is SIGKILLed; measured:
                time from the kill to the first message delivered for a request sent after
                the killed process was reaped (requests before and after use two inbox
                subscriptions made in advance, told apart by sid; the first request
                after the kill goes out at once, then one per --fo-expires until one is
                answered). The killed node is
                restarted and the stream and consumer waited current between rounds
                (`--failovers` rounds, median and range). Also reported: deliveries of a
                stream seq that had already been acknowledged.

    python bench/r3_bench.py --consume [--kinds ..] [--consume-msgs 50000] [--batch 500]
                             [--acks none,explicit] [--size 128] [--runs 3] [--via leader,follower]
                             [--failovers 3] [--fo-expires 0.1] [--save]

`--save` then writes bench/results/r3-consume-<date>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as _dt
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

KINDS = ("nats-server", "nats-server-sync", "ours")
SYNC_KIND = "nats-server-sync"  # nats-server with jetstream { sync_interval: always }
CONSUME_KINDS = ["nats-server", "ours"]
VIAS = ("leader", "follower")
STREAM = "R3"
SUBJECTS = ["r3.>"]
INFLIGHT = 1000
REPLY_PREFIX = b"_INBOX.r3."
REPLY_TOKEN = b"MSG " + REPLY_PREFIX  # also inside "HMSG _INBOX.r3." (503 status replies)
ERR_TOKEN = b'"error"'
STATUS_503 = b"NATS/1.0 503"

# metric key -> (label, unit, higher_is_better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "sync_leader": ("publish, 1 in flight, via leader", "msgs/s", True),
    "sync_follower": ("publish, 1 in flight, via follower", "msgs/s", True),
    "async_leader": ("publish, 1,000 in flight, via leader", "msgs/s", True),
    "async_follower": ("publish, 1,000 in flight, via follower", "msgs/s", True),
    "failover": ("SIGKILL stream leader -> next PubAck (via follower)", "s", False),
}
# --consume (issue 11)
ACKS = ("none", "explicit")
CONSUMER_PREFIX = "C"
FO_CONSUMER = "CFO"
PULL_EXPIRES_NS = 5_000_000_000         # throughput pull requests: 5 s
PULL_INBOX = b"_INBOX.r3c."
FO_INBOXES = (b"_INBOX.r3f.a.", b"_INBOX.r3f.b.")  # failover: requests before / after the kill (sid 1 / 2)
FILL_SUBJECT = b"r3.t"
CONSUME_METRICS: dict[str, tuple[str, str, bool]] = {
    "consume_none_leader": ("pull consume, ack none, via consumer leader", "msgs/s", True),
    "consume_none_follower": ("pull consume, ack none, via non-leader", "msgs/s", True),
    "consume_explicit_leader": ("pull consume, every msg acked, via consumer leader", "msgs/s", True),
    "consume_explicit_follower": ("pull consume, every msg acked, via non-leader", "msgs/s", True),
    "consumer_failover": ("SIGKILL consumer leader -> next delivered msg (via non-leader)", "s", False),
}
METRICS.update(CONSUME_METRICS)
# issue 10's targets for ours: (metric prefix, bound, kind of bound)
TARGETS = (("sync", 0.5, "ratio>="), ("async", 0.5, "ratio>="), ("failover", 1.0, "seconds<="))
# issue 11's
CONSUME_TARGETS = (("consume_", 0.5, "ratio>="), ("consumer_failover", 1.0, "seconds<="))


class KindFailed(RuntimeError):
    """This server kind could not be measured: the message says where and why, `short` is
    what its table cells show."""

    def __init__(self, msg: str, short: str | None = None):
        super().__init__(msg)
        self.short = short or msg.splitlines()[0][:40]


# ---- pure helpers (tests/bench/test_r3_bench.py) -------------------------------------------

def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise argparse.ArgumentTypeError("no server kind given")
    for k in kinds:
        if k not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {k!r} (choose from {', '.join(KINDS)})")
    if len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError("a kind is listed twice")
    return kinds


def parse_vias(text: str) -> list[str]:
    vias = [v.strip() for v in text.split(",") if v.strip()]
    if not vias or any(v not in VIAS for v in vias) or len(set(vias)) != len(vias):
        raise argparse.ArgumentTypeError(f"--via takes a comma list of {', '.join(VIAS)}")
    return vias


def parse_msgs(text: str) -> tuple[int, int]:
    """`N` (both modes) or `SYNC,ASYNC`; thousands separators `_` allowed."""
    parts = [p.strip().replace("_", "") for p in text.split(",")]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--msgs wants N or SYNC,ASYNC, got {text!r}") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise argparse.ArgumentTypeError(f"--msgs wants N or SYNC,ASYNC (positive), got {text!r}")
    return nums[0], nums[1]


def parse_acks(text: str) -> list[str]:
    acks = [a.strip() for a in text.split(",") if a.strip()]
    if not acks or any(a not in ACKS for a in acks) or len(set(acks)) != len(acks):
        raise argparse.ArgumentTypeError(f"--acks takes a comma list of {', '.join(ACKS)}")
    return acks


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", type=parse_kinds, default=None,
                    help="comma list of nats-server, nats-server-sync, ours (default all three; "
                         "with --consume nats-server,ours)")
    ap.add_argument("--msgs", type=parse_msgs, default=(2000, 100_000),
                    help="messages per run: N, or SYNC,ASYNC (default 2000,100000)")
    ap.add_argument("--size", type=positive_int, default=128, help="payload bytes (default 128)")
    ap.add_argument("--runs", type=positive_int, default=3, help="runs of each publish measurement (median)")
    ap.add_argument("--via", type=parse_vias, default=list(VIAS),
                    help="publish through the stream leader and/or a follower (default both)")
    ap.add_argument("--failovers", type=int, default=3, help="SIGKILL rounds (0 = skip failover)")
    ap.add_argument("--fo-retry", type=float, default=0.05,
                    help="failover publisher: send the next publish after this long without an answer (s)")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="limit for one measurement, cluster start or failover (s)")
    ap.add_argument("--consume", action="store_true",
                    help="measure R3 pull consumers (ack none, ack explicit, consumer-leader failover) "
                         "instead of publishing")
    ap.add_argument("--consume-msgs", type=positive_int, default=50_000,
                    help="--consume: messages pre-filled and drained per run (default 50000)")
    ap.add_argument("--batch", type=positive_int, default=500, help="--consume: pull batch (default 500)")
    ap.add_argument("--acks", type=parse_acks, default=list(ACKS),
                    help="--consume: comma list of none, explicit (default both)")
    ap.add_argument("--fo-expires", type=float, default=0.1,
                    help="--consume failover: pull request expiry, and the wait before the next "
                         "request when one is unanswered (s, default 0.1)")
    ap.add_argument("--save", action="store_true",
                    help="also write bench/results/r3-<date>.txt (--consume: r3-consume-<date>.txt)")
    ap.add_argument("--keep", action="store_true", help="keep the cluster directories (logs, stores)")
    return ap


def summarize(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_value(x: float, unit: str) -> str:
    return f"{x:,.0f}" if unit == "msgs/s" else f"{x:.3f}"


def fmt_cell(samples: list[float] | None, unit: str, failure: str | None = None) -> str:
    if failure is not None:
        return f"n/a ({failure})"
    s = summarize(samples or [])
    if s is None:
        return "n/a"
    med = fmt_value(s["median"], unit)
    if s["n"] == 1:
        return med
    return f"{med} ({fmt_value(s['min'], unit)}-{fmt_value(s['max'], unit)})"


def ratio(ours: list[float] | None, ref: list[float] | None) -> float | None:
    a, b = summarize(ours or []), summarize(ref or [])
    if a is None or b is None or b["median"] == 0:
        return None
    return a["median"] / b["median"]


def format_table(samples: dict[str, dict[str, list[float]]], failures: dict[str, str],
                 kinds: list[str], metrics: list[str] | None = None) -> str:
    """Markdown table metric | <kinds...> | ours / <reference>...; cells are `median (min-max)`,
    `n/a (<why>)` for a kind that failed before measuring it (`failures`: kind -> short
    reason); a ratio (of the medians) for each nats-server kind measured beside ours."""
    refs = [k for k in ("nats-server", SYNC_KIND) if k in kinds] if "ours" in kinds else []
    head = ["metric"] + kinds + [f"ours / {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key in metrics if metrics is not None else list(METRICS):
        label, unit, higher = METRICS[key]
        row = [f"{label} ({unit}, {'higher' if higher else 'lower'} is better)"]
        for k in kinds:
            got = samples.get(k, {}).get(key)
            fail = failures[k] if k in failures and not got else None
            row.append(fmt_cell(got, unit, fail))
        for ref in refs:
            r = ratio(samples.get("ours", {}).get(key), samples.get(ref, {}).get(key))
            row.append("-" if r is None else f"{r:.2f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def measured_metrics(vias: list[str], failovers: int) -> list[str]:
    keys = [f"{mode}_{via}" for mode in ("sync", "async") for via in vias]
    return keys + (["failover"] if failovers > 0 else [])


def target_lines(samples: dict[str, dict[str, list[float]]], metrics: list[str] | None = None,
                 targets: tuple = TARGETS) -> list[str]:
    """Issue 10's targets (or `targets`) for ours, each with met / NOT met / not measured."""
    ours = samples.get("ours", {})
    ref = samples.get("nats-server", {})
    keys = metrics if metrics is not None else list(METRICS)
    if not any(ours.get(k) for k in keys):
        return ["  not measured: ours has no numbers in this run"]
    out = []
    for prefix, bound, how in targets:
        for key in keys:
            label = METRICS[key][0]
            if not key.startswith(prefix):
                continue
            if how == "ratio>=":
                r = ratio(ours.get(key), ref.get(key))
                want = f"ours >= {bound}x nats-server"
                got = "not measured" if r is None else ("met" if r >= bound else "NOT met") + f" ({r:.2f}x)"
            else:
                s = summarize(ours.get(key) or [])
                want = f"ours <= {bound} s"
                got = "not measured" if s is None else \
                    ("met" if s["median"] <= bound else "NOT met") + f" (median {s['median']:.3f} s)"
            out.append(f"  {label}: {want}: {got}")
    return out


def consume_metrics(acks: list[str], vias: list[str], failovers: int) -> list[str]:
    keys = [f"consume_{ack}_{via}" for ack in acks for via in vias]
    return keys + (["consumer_failover"] if failovers > 0 else [])


def consumer_config(name: str, ack: str) -> dict:
    """A durable pull consumer of the whole stream; replicas, max_ack_pending (1,000) and
    ack_wait (30 s) are left to the server's defaults, the same for both kinds."""
    return {"stream_name": STREAM,
            "config": {"durable_name": name, "ack_policy": ack, "deliver_policy": "all"}}


def pull_frame(consumer: str | bytes, reply: bytes, batch: int, expires_ns: int) -> bytes:
    """`PUB $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> <reply>` with {"batch","expires"}."""
    if isinstance(consumer, str):
        consumer = consumer.encode()
    body = b'{"batch":%d,"expires":%d}' % (batch, expires_ns)
    return b"PUB $JS.API.CONSUMER.MSG.NEXT.%b.%b %b %d\r\n%b\r\n" % (
        STREAM.encode(), consumer, reply, len(body), body)


def ack_frames(replies: list[bytes]) -> bytes:
    """Plain `+ACK` (no reply: not AckSync) to each message's reply subject."""
    return b"".join(b"PUB %b 4\r\n+ACK\r\n" % r for r in replies)


def ack_seq(reply: bytes) -> tuple[int, int]:
    """(delivery count, stream seq) from a `$JS.ACK.` reply subject, old layout
    ($JS.ACK.<stream>.<consumer>.<dc>.<sseq>.<cseq>.<ts>.<pending>) or the one with domain and
    account hash ($JS.ACK.<domain>.<hash>.<stream>.<consumer>.<dc>.<sseq>...)."""
    t = reply.split(b".")
    base = 4 if len(t) == 9 else 6
    return int(t[base]), int(t[base + 1])


def status_line(headers: bytes) -> str | None:
    """`408 Request Timeout` for a status message's header block, None for a message."""
    if not headers.startswith(b"NATS/1.0 "):
        return None
    first = headers.split(b"\r\n", 1)[0][len(b"NATS/1.0 "):].strip()
    if not first[:3].isdigit():
        return None
    return first.decode(errors="replace")


class AckScanner:
    """The `$JS.ACK.` reply subjects of the MSG / HMSG frames in a byte stream split anywhere,
    each returned once, without cutting frames apart: one regex pass over each read (the
    payloads are `x` bytes, so a header-line pattern can only match a header line). The
    unmatched end of a read (at most one partial header line) is kept for the next."""
    RX = re.compile(rb"MSG [^ \r\n]+ [^ \r\n]+ (\$JS\.ACK\.[^ \r\n]+) (?:\d+ )?\d+\r\n")
    KEEP = 1024

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.tail + data if self.tail else data
        end = 0
        out = []
        for m in self.RX.finditer(buf):
            out.append(m.group(1))
            end = m.end()
        self.tail = buf[max(end, len(buf) - self.KEEP):]
        return out


class FrameParser:
    """Cuts MSG / HMSG frames out of a byte stream split anywhere; PINGs are counted so the
    caller can answer them. feed() returns [(subject, sid, reply, header bytes, payload)]."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pings = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes, bytes, bytes]]:
        self.buf += data
        out = []
        buf = self.buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                break
            line = bytes(buf[:end])
            if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                parts = line.split()
                hmsg = parts[0] == b"HMSG"
                total = int(parts[-1])
                hdr = int(parts[-2]) if hmsg else 0
                nfix = 5 if hmsg else 4  # HMSG subj sid [reply] hdr total / MSG subj sid [reply] total
                reply = parts[3] if len(parts) > nfix else b""
                if len(buf) < end + 2 + total + 2:
                    break
                body = bytes(buf[end + 2:end + 2 + total])
                out.append((parts[1], parts[2], reply, body[:hdr], body[hdr:]))
                del buf[:end + 2 + total + 2]
                continue
            if line == b"PING":
                self.pings += 1
            del buf[:end + 2]  # PONG, +OK, INFO, -ERR (the caller sees -ERR via the socket)
        return out


def consume_failover_time(kill_at: float, deliveries: list[tuple[float, bool]]) -> float | None:
    """Seconds from the kill to the first message delivered (received at `at`) for a pull
    request sent after the killed leader was reaped (`after`: it came on the inbox of such
    requests). Messages for earlier requests may be the old leader's last words."""
    best = None
    for at, after in deliveries:
        if after and at >= kill_at and (best is None or at < best):
            best = at
    return None if best is None else best - kill_at


def repeats(seqs: list[int]) -> int:
    """Deliveries of a stream seq delivered (and so acknowledged) earlier in the list."""
    seen: set[int] = set()
    n = 0
    for q in seqs:
        if q in seen:
            n += 1
        seen.add(q)
    return n


def failover_time(kill_at: float, sends: dict[int, float], acks: list[tuple[int, float, bool]],
                  dead_at: float | None = None) -> float | None:
    """Seconds from the kill (`kill_at`, just before the SIGKILL) to the first successful
    PubAck of a publish sent after the old leader was certainly dead (`dead_at`, once the
    process was reaped; default kill_at). `sends`: publish index -> monotonic send time;
    `acks`: (index, monotonic receive time, ok). A publish sent earlier may have been
    acknowledged by the old leader in its last moments, so it does not count."""
    dead_at = kill_at if dead_at is None else dead_at
    best = None
    for idx, at, ok in acks:
        if not ok or at < kill_at:
            continue
        sent = sends.get(idx)
        if sent is None or sent < dead_at:
            continue
        if best is None or at < best:
            best = at
    return None if best is None else best - kill_at


def api_error(resp: dict) -> str | None:
    """`err_code N: description` of a JetStream API error answer, else None."""
    err = resp.get("error") if isinstance(resp, dict) else None
    if not err:
        return None
    return f"err_code {err.get('err_code')}: {err.get('description', '')} (code {err.get('code')})"


class ReplyParser(FrameParser):
    """FrameParser without the sid and reply subject: feed() returns [(subject, header bytes,
    payload)]."""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        return [(subj, hdr, body) for subj, _sid, _reply, hdr, body in super().feed(data)]


def classify_reply(headers: bytes, payload: bytes) -> tuple[bool, int | None, str | None]:
    """(ok, stream seq, error text) of one PubAck reply (a 503 no-responders status reply,
    a JSON error answer, or {"stream": .., "seq": N})."""
    if headers:
        first = headers.split(b"\r\n", 1)[0]
        parts = first.split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit() and parts[1] != b"200":
            return False, None, "status " + first.decode(errors="replace")
    try:
        doc = json.loads(payload) if payload else {}
    except ValueError:
        return False, None, f"unparsable reply {payload[:80]!r}"
    err = api_error(doc)
    if err:
        return False, None, err
    if not isinstance(doc, dict) or "seq" not in doc:
        return False, None, f"reply without seq {payload[:80]!r}"
    return True, int(doc["seq"]), None


# ---- load generator workers (forked processes, raw protocol) -------------------------------

@dataclass
class PubResult:
    mode: str
    via: str
    node: str
    sent: int = 0
    replies: int = 0
    errors: int = 0
    seconds: float = 0.0
    gen_cpu: float = 0.0      # generator CPU s / wall s
    server_cpu: float = 0.0   # all three nodes together, CPU s / wall s
    timed_out: bool = False
    note: str = ""

    @property
    def rate(self) -> float:
        return (self.replies - self.errors) / self.seconds if self.seconds > 0 else 0.0


def _open(port: int):
    import loadgen
    s = loadgen.connect(port)
    loadgen.handshake(s, b"SUB " + REPLY_PREFIX + b"* 1\r\n")
    return s


class ServerClosed(ConnectionError):
    """The server closed a failover worker's connection."""

    def __init__(self) -> None:
        super().__init__("server closed the connection")


def _failure_note(e: Exception) -> str:
    """A failover worker's note on what ended it: ServerClosed's text alone, anything else
    with its class."""
    return str(e) if isinstance(e, ServerClosed) else f"{e.__class__.__name__}: {e}"


def _recv_ready(s, until: float) -> tuple[float, bytes] | None:
    """A failover worker's read: wait for its non-blocking socket `s` until the monotonic time
    `until` (20 ms at the most, so that the worker's loop sees its stop flag and sends what is
    due) and read what arrived: (receive time, data), or None when nothing did. When the
    server closed the connection, closes `s` and raises ServerClosed."""
    import select
    r, _, _ = select.select([s], [], [], max(0.0, min(0.02, until - time.monotonic())))
    if not r:
        return None
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return None
    if not data:
        s.close()
        raise ServerClosed()
    return time.monotonic(), data


def _recv_timed(s, bufsize: int) -> bytes | None:
    """A measuring worker's read on its socket with a timeout: what arrived, or None when the
    timeout passed first. Raises ConnectionError when the server closed the connection."""
    import socket as _socket
    try:
        data = s.recv(bufsize)
    except _socket.timeout:
        return None
    if not data:
        raise ConnectionError("server closed the connection")
    return data


def _answer_pings(s, parser) -> None:
    """PONG the server PINGs `parser` (ReplyParser, FrameParser) has counted."""
    if parser.pings:
        s.sendall(b"PONG\r\n" * parser.pings)
        parser.pings = 0


def _pub_worker(port: int, mode: str, total: int, size: int, timeout: float, q) -> None:
    """sync: one publish at a time; async: INFLIGHT in flight, a new one per reply, until
    `total` replies. Replies are counted by token, never parsed (loadgen.TokenCounter: a
    token split across reads is counted once). Puts (replies, errors, sent, seconds, cpu,
    timed_out, note)."""
    import loadgen
    try:
        s = _open(port)
        payload = b"x" * size
        frames = [b"PUB r3.t %b%04d %d\r\n%b\r\n" % (REPLY_PREFIX, i, size, payload) for i in range(INFLIGHT)]
        c_reply = loadgen.TokenCounter(REPLY_TOKEN)
        c_err = loadgen.TokenCounter(ERR_TOKEN)
        c_503 = loadgen.TokenCounter(STATUS_503)
        c_ping = loadgen.TokenCounter(b"PING\r\n")
        replies = errors = 0
        s.settimeout(0.5)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + timeout
        window = 1 if mode == "sync" else min(INFLIGHT, total)
        s.sendall(b"".join(frames[:window]))
        sent = window
        timed_out = False
        while replies < total:
            if time.perf_counter() > deadline:
                timed_out = True
                break
            data = _recv_timed(s, 1 << 20)
            if data is None:
                continue
            got = c_reply.feed(data)
            errors += c_err.feed(data) + c_503.feed(data)
            pings = c_ping.feed(data)
            if b"-ERR" in data:
                raise ConnectionError(data[data.find(b"-ERR"):].split(b"\r\n", 1)[0].decode(errors="replace"))
            if pings:
                s.sendall(b"PONG\r\n" * pings)
            if got:
                replies += got
                more = min(got, total - sent)
                if more > 0:
                    s.sendall(b"".join(frames[(sent + k) % INFLIGHT] for k in range(more)))
                    sent += more
        seconds = time.perf_counter() - t0
        s.close()
        q.put((replies, errors, sent, seconds, time.process_time() - cpu0, timed_out, ""))
    except Exception as e:  # noqa: BLE001 - reported to the coordinator
        q.put((0, 0, 0, 0.0, 0.0, False, f"{e.__class__.__name__}: {e}"))


def _failover_worker(port: int, size: int, retry: float, stop, ready, kill_at, first_ok, q) -> None:
    """Publish continuously, 1 in flight, until `stop`; a publish unanswered after `retry` s
    (or answered with an error) is followed by the next. `ready` is set at the first
    success; once the coordinator has set `kill_at` (monotonic: when the killed leader was
    reaped), `first_ok` gets the receive time of the first success of a publish sent after
    it. Puts (sends, acks, errors, max_seq, note): sends {index: t}, acks [(index, t, ok)],
    error texts (first 20)."""
    sends: dict[int, float] = {}
    acks: list[tuple[int, float, bool]] = []
    errs: list[str] = []
    max_seq = 0
    note = ""
    try:
        s = _open(port)
        s.setblocking(False)
        payload = b"x" * size
        parser = ReplyParser()
        i = 0
        waiting: int | None = None
        last_send = 0.0
        while not stop.value:
            now = time.monotonic()
            if waiting is None or now - last_send >= retry:
                i += 1
                s.sendall(b"PUB r3.fo %b%d %d\r\n%b\r\n" % (REPLY_PREFIX, i, size, payload))
                sends[i] = last_send = time.monotonic()
                waiting = i
            got = _recv_ready(s, last_send + retry)
            if got is None:
                continue
            at, data = got
            for subj, hdr, body in parser.feed(data):
                idx = int(subj[len(REPLY_PREFIX):])
                ok, seq, err = classify_reply(hdr, body)
                acks.append((idx, at, ok))
                if ok:
                    max_seq = max(max_seq, seq or 0)
                    ready.value = 1
                    k = kill_at.value
                    if k and not first_ok.value and sends.get(idx, 0.0) >= k:
                        first_ok.value = at
                elif len(errs) < 20:
                    errs.append(err or "?")
                if idx == waiting:
                    waiting = None
                    if not ok:  # 503 / error: fail fast, try again shortly (not a hot loop)
                        last_send = time.monotonic() - retry + 0.01
                        waiting = -1
            _answer_pings(s, parser)
        s.close()
    except Exception as e:  # noqa: BLE001
        note = _failure_note(e)
    q.put((sends, acks, errs, max_seq, note))


def _consume_worker(port: int, consumer: str, total: int, batch: int, ack: bool, timeout: float, q) -> None:
    """Drain `consumer` (`total` messages) with MSG.NEXT requests of `batch`, one at a time.
    ack none: deliveries counted by token (` $JS.ACK.` occurs once in each MSG line); ack
    explicit: their reply subjects found (AckScanner) and a `+ACK` sent to each, then
    CONSUMER.INFO is asked over the same connection until num_ack_pending is 0 and the ack
    floor is at the last delivered stream seq. Puts a dict."""
    import loadgen
    res: dict[str, Any] = {"got": 0, "seconds": 0.0, "cpu": 0.0, "timed_out": False, "note": "",
                           "statuses": [], "nstatus": 0, "requests": 0, "redelivered": 0, "max_sseq": 0,
                           "settle": 0.0, "info": None}
    try:
        s = loadgen.connect(port)
        loadgen.handshake(s, b"SUB " + PULL_INBOX + b"* 1\r\n")
        s.settimeout(0.5)
        c_msgs = loadgen.TokenCounter(b" $JS.ACK.")
        c_status = loadgen.TokenCounter(b"HMSG " + PULL_INBOX)
        c_ping = loadgen.TokenCounter(b"PING\r\n")
        scanner = AckScanner()
        got = in_req = want = nreq = nstatus = redelivered = max_sseq = 0
        statuses: list[str] = []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = t0 + timeout

        def request() -> None:
            nonlocal in_req, want, nreq
            want = min(batch, total - got)
            in_req = 0
            nreq += 1
            s.sendall(pull_frame(consumer, PULL_INBOX + b"%d" % nreq, want, PULL_EXPIRES_NS))

        request()
        while got < total:
            if time.perf_counter() > deadline:
                res["timed_out"] = True
                break
            data = _recv_timed(s, 1 << 20)
            if data is None:
                continue
            if ack:
                replies = scanner.feed(data)
                n = len(replies)
                if replies:
                    s.sendall(ack_frames(replies))
                    for r in replies:
                        dc, sseq = ack_seq(r)
                        if dc > 1:
                            redelivered += 1
                        if sseq > max_sseq:
                            max_sseq = sseq
            else:
                n = c_msgs.feed(data)
            st = c_status.feed(data)
            pings = c_ping.feed(data)
            if pings:
                s.sendall(b"PONG\r\n" * pings)
            if b"-ERR" in data:
                raise ConnectionError(data[data.find(b"-ERR"):].split(b"\r\n", 1)[0].decode(errors="replace"))
            if st:
                nstatus += st
                at = data.find(b"HMSG " + PULL_INBOX)
                if at >= 0 and len(statuses) < 5:
                    statuses.append(data[at:at + 200].split(b"\r\n")[1].decode(errors="replace"))
                if nstatus > 50:
                    raise RuntimeError(f"{nstatus} status replies to pull requests, e.g. {statuses}")
            got += n
            in_req += n
            if got < total and (in_req >= want or st):
                request()
        t_last = time.perf_counter()
        res.update(got=got, requests=nreq, nstatus=nstatus, statuses=statuses, redelivered=redelivered,
                   max_sseq=max_sseq)
        if ack and not res["timed_out"]:
            parser = ReplyParser()
            info_inbox = PULL_INBOX + b"info"
            ask = b"PUB $JS.API.CONSUMER.INFO.%b.%b %b 0\r\n\r\n" % (STREAM.encode(), consumer.encode(), info_inbox)
            while True:
                if time.perf_counter() > deadline:
                    res["timed_out"] = True
                    res["note"] = f"num_ack_pending not 0 in time (last info: {res['info']})"
                    break
                s.sendall(ask)
                doc = None
                until = time.perf_counter() + 2.0
                while doc is None and time.perf_counter() < until:
                    data = _recv_timed(s, 1 << 16)
                    if data is None:
                        continue
                    for subj, _hdr, body in parser.feed(data):
                        if subj == info_inbox:
                            doc = json.loads(body)
                    _answer_pings(s, parser)
                if doc is None:
                    continue
                res["info"] = {"num_ack_pending": doc.get("num_ack_pending"),
                               "ack_floor": (doc.get("ack_floor") or {}).get("stream_seq"),
                               "error": api_error(doc)}
                if doc.get("num_ack_pending") == 0 and (doc.get("ack_floor") or {}).get("stream_seq", 0) >= max_sseq:
                    break
                time.sleep(0.005)
        t_end = time.perf_counter()
        res.update(seconds=t_end - t0, settle=t_end - t_last, cpu=time.process_time() - cpu0)
        s.close()
    except Exception as e:  # noqa: BLE001 - reported to the coordinator
        res["note"] = f"{e.__class__.__name__}: {e}"
    q.put(res)


def _cfailover_worker(port: int, consumer: str, expires: float, stop, ready, kill_at, first_ok, q) -> None:
    """Fetch `consumer` continuously, batch 1, `expires` s expiry, one request at a time (the
    next one when a message or a status answered it, or `expires` after it went unanswered),
    acknowledging every message. Requests go on FO_INBOXES[0] (sid 1) until the coordinator
    set `kill_at` (monotonic, once the killed leader was reaped), then on FO_INBOXES[1]
    (sid 2), the first of them at once (not after the outstanding one expired: the time
    measured is the servers', not this client's expiry). `ready`: a first message arrived; `first_ok`: receive time of the first message
    on sid 2. Puts (deliveries [(t, after, dc, sseq)], statuses [(t, sid, text)] (first 30),
    requests, note)."""
    import loadgen
    deliveries: list[tuple[float, bool, int, int]] = []
    statuses: list[tuple[float, str, str]] = []
    nreq = 0
    note = ""
    try:
        s = loadgen.connect(port)
        loadgen.handshake(s, b"SUB %b* 1\r\nSUB %b* 2\r\n" % FO_INBOXES)
        s.setblocking(False)
        parser = FrameParser()
        exp_ns = int(expires * 1e9)
        outstanding = False
        last_send = 0.0
        after = False
        while not stop.value:
            now = time.monotonic()
            if not after and kill_at.value:
                after = True
                outstanding = False  # a first request on the new inbox right away
            if not outstanding or now - last_send >= expires:
                nreq += 1
                inbox = FO_INBOXES[1 if after else 0]
                s.sendall(pull_frame(consumer, inbox + b"%d" % nreq, 1, exp_ns))
                last_send = time.monotonic()
                outstanding = True
            got = _recv_ready(s, last_send + expires)
            if got is None:
                continue
            at, data = got
            acks = []
            for _subj, sid, reply, hdr, _body in parser.feed(data):
                st = status_line(hdr) if hdr else None
                if st is not None or not reply.startswith(b"$JS.ACK."):
                    if len(statuses) < 30:
                        statuses.append((at, sid.decode(), st or "?"))
                    # the next request 5 ms later: no hot loop on an immediate error status
                    last_send = min(last_send, at - expires + 0.005)
                    continue
                dc, sseq = ack_seq(reply)
                deliveries.append((at, sid == b"2", dc, sseq))
                acks.append(reply)
                ready.value = 1
                if sid == b"2" and not first_ok.value:
                    first_ok.value = at
                outstanding = False
            if acks:
                s.sendall(ack_frames(acks))
            _answer_pings(s, parser)
        s.close()
    except Exception as e:  # noqa: BLE001
        note = _failure_note(e)
    q.put((deliveries, statuses, nreq, note))


# ---- the coordinator -------------------------------------------------------------------------

_live_clusters: list[Any] = []


def _stop_all() -> None:
    while _live_clusters:
        cl = _live_clusters.pop()
        try:
            cl.stop()
        except Exception as e:  # noqa: BLE001
            print(f"stopping {cl.kind} cluster: {e}", file=sys.stderr)


def _on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cluster_cpu(cl) -> float:
    import loadgen
    total = 0.0
    for node in cl.nodes.values():
        if node.alive:
            try:
                total += loadgen.cpu_seconds(node.proc.proc.pid)
            except OSError:
                pass
    return total


def node_cpu(cl) -> dict[str, float]:
    import loadgen
    out = {}
    for name, node in cl.nodes.items():
        if node.alive:
            try:
                out[name] = loadgen.cpu_seconds(node.proc.proc.pid)
            except OSError:
                pass
    return out


async def _api(cl, via: str, subject: str, body: Any = b"", timeout: float = 5.0) -> dict:
    from tests.jscluster.harness import api
    nc = await cl.connect(via)
    try:
        return await api(nc, subject, body, timeout=timeout)
    finally:
        await nc.close()


def api_sync(cl, via: str, subject: str, body: Any = b"", timeout: float = 5.0) -> dict:
    return asyncio.run(_api(cl, via, subject, body, timeout))


def create_stream(cl, timeout: float) -> dict:
    from tests.jscluster.harness import api_retry, stream_config

    async def go():
        nc = await cl.connect(cl.live()[0])
        try:
            return await api_retry(nc, f"$JS.API.STREAM.CREATE.{STREAM}",
                                   stream_config(STREAM, SUBJECTS, num_replicas=3), until=timeout)
        finally:
            await nc.close()
    resp = asyncio.run(go())
    err = api_error(resp)
    if err:
        code = ((resp.get("error") or {}).get("err_code"))
        raise KindFailed(f"stream create (R3, file) refused: {err}", short=f"create refused, {code}")
    return resp


def stream_state(cl, timeout: float) -> tuple[str, dict]:
    """Wait until STREAM.INFO names a live leader and every replica it lists is current;
    returns (leader, info)."""
    return _current(cl, f"$JS.API.STREAM.INFO.{STREAM}", timeout, f"stream {STREAM}", "no stream leader")


def _current(cl, subject: str, timeout: float, what: str, short: str) -> tuple[str, dict]:
    """Ask `subject` (an INFO request) through the live nodes until it names a live leader and
    every replica it lists is current; returns (leader, info)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for via in cl.live():
            try:
                info = api_sync(cl, via, subject, timeout=2)
            except Exception as e:  # noqa: BLE001 - timeouts, no responders: not yet
                last = e
                continue
            if api_error(info):
                last = api_error(info)
                continue
            clu = info.get("cluster") or {}
            leader = clu.get("leader")
            reps = clu.get("replicas")
            if leader not in cl.live():
                last = f"leader {leader!r} not a live node"
                continue
            if reps is not None and (len(reps) != 2 or not all(r.get("current") for r in reps)):
                last = f"replicas {[(r.get('name'), r.get('current')) for r in reps]}"
                continue
            return leader, info
        time.sleep(0.2)
    raise KindFailed(f"{what} has no current leader with current replicas within {timeout}s "
                     f"(last: {last})", short=short)


def warm_up(cl, node: str, size: int, timeout: float) -> None:
    """One acknowledged publish through `node`, retried (5 s each) until `timeout`: right
    after a create the stream's interest may still be crossing the routes (503)."""
    deadline = time.monotonic() + timeout
    while True:
        res = run_pub(cl, node, "sync", 1, size, 5.0, via="warmup")
        if not (res.note or res.timed_out or res.errors):
            return
        if time.monotonic() > deadline:
            raise KindFailed(f"no acknowledged publish through {node} within {timeout}s "
                             f"({res.note or ('timed out' if res.timed_out else 'error reply')})",
                             short=f"no PubAck via {node}")
        time.sleep(0.2)


def _reap(p, q, wait: float, fallback):
    """What the generator process `p` puts on `q` within `wait` s (`fallback` when nothing
    comes); then `p` is joined, and terminated if it has not ended within 5 s."""
    try:
        return q.get(timeout=wait)
    except Exception:  # noqa: BLE001 - queue.Empty
        return fallback
    finally:
        p.join(5)
        if p.is_alive():
            p.terminate()
            p.join(2)


def _kill_under_load(cl, victim: str, target, args: tuple, timeout: float, not_ready: str, short: str,
                     fallback) -> tuple[float | None, float | None, Any]:
    """A failover round's generator and kill: `target(*args, stop, ready, kill_at, first_ok, q)`
    runs in a process (a failover worker); once it has set `ready` (else KindFailed(not_ready)
    after `timeout` s or when it died), 0.5 s of steady state, then `victim` is SIGKILLed
    (cl.kill returns once it is reaped) and the process told the reaping time in `kill_at`;
    then at most `timeout` s for its `first_ok` and 0.3 s more, and the process is stopped.
    Returns (the kill's start, the reaping time, what the process reported or `fallback`)."""
    import loadgen
    stop = loadgen._ctx.RawValue("b", 0)
    ready = loadgen._ctx.RawValue("b", 0)
    kill_v = loadgen._ctx.RawValue("d", 0.0)
    first_ok = loadgen._ctx.RawValue("d", 0.0)
    q = loadgen._ctx.Queue()
    p = loadgen._ctx.Process(target=target, args=(*args, stop, ready, kill_v, first_ok, q), daemon=True)
    p.start()
    kill_at = dead_at = None
    try:
        deadline = time.monotonic() + timeout
        while not ready.value:
            if time.monotonic() > deadline or not p.is_alive():
                raise KindFailed(not_ready, short=short)
            time.sleep(0.02)
        time.sleep(0.5)  # steady state
        kill_at = time.monotonic()
        cl.kill(victim)  # SIGKILL, then reaped: dead from here on
        dead_at = time.monotonic()
        kill_v.value = dead_at
        deadline = time.monotonic() + timeout
        while not first_ok.value and time.monotonic() < deadline and p.is_alive():
            time.sleep(0.01)
        time.sleep(0.3)  # a little more steady state after the failover
    finally:
        stop.value = 1
        got = _reap(p, q, 10, fallback)
    return kill_at, dead_at, got


def run_pub(cl, node: str, mode: str, total: int, size: int, timeout: float, via: str) -> PubResult:
    import loadgen
    q = loadgen._ctx.Queue()
    cpu0 = cluster_cpu(cl)
    t0 = time.perf_counter()
    p = loadgen._ctx.Process(target=_pub_worker, args=(cl.node(node).port, mode, total, size, timeout, q),
                             daemon=True)
    p.start()
    replies, errors, sent, seconds, gcpu, timed_out, note = _reap(
        p, q, timeout + 30, (0, 0, 0, 0.0, 0.0, True, "generator hung"))
    wall = time.perf_counter() - t0
    return PubResult(mode, via, node, sent, replies, errors, seconds,
                     gen_cpu=gcpu / seconds if seconds else 0.0,
                     server_cpu=(cluster_cpu(cl) - cpu0) / wall if wall else 0.0,
                     timed_out=timed_out, note=note)


@dataclass
class FailoverResult:
    took: float | None
    killed: str
    via: str
    was_meta_leader: bool
    acked: int = 0
    tries: int = 0  # publishes sent from the kill to the first PubAck after it, that one included
    max_seq: int = 0
    last_seq: int = 0
    new_leader: str = ""
    errors: list[str] = field(default_factory=list)
    note: str = ""


def failover_round(cl, size: int, retry: float, timeout: float) -> FailoverResult:
    leader, _ = stream_state(cl, timeout)
    meta = cl.meta_leader()
    follower = [n for n in cl.live() if n != leader][0]
    kill_at, dead_at, (sends, acks, errs, max_seq, note) = _kill_under_load(
        cl, leader, _failover_worker, (cl.node(follower).port, size, retry), timeout,
        f"failover: no acknowledged publish through {follower} before the kill", "no PubAck before the kill",
        ({}, [], [], 0, "failover publisher did not report"))
    took = failover_time(kill_at, sends, acks, dead_at) if dead_at is not None else None
    res = FailoverResult(took, leader, follower, meta == leader, acked=sum(1 for a in acks if a[2]),
                         max_seq=max_seq, errors=errs, note=note)
    if took is not None:
        res.tries = sum(1 for t in sends.values() if kill_at <= t <= kill_at + took)
    cl.restore(timeout=timeout)
    res.new_leader, info = stream_state(cl, timeout)
    res.last_seq = (info.get("state") or {}).get("last_seq", 0)
    return res


# ---- --consume ---------------------------------------------------------------------------------

def create_consumer(cl, name: str, ack: str, timeout: float) -> dict:
    from tests.jscluster.harness import api_retry

    async def go():
        nc = await cl.connect(cl.live()[0])
        try:
            return await api_retry(nc, f"$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{name}",
                                   consumer_config(name, ack), until=timeout)
        finally:
            await nc.close()
    resp = asyncio.run(go())
    err = api_error(resp)
    if err:
        code = (resp.get("error") or {}).get("err_code")
        raise KindFailed(f"consumer {name} (ack {ack}) create refused: {err}", short=f"consumer create refused, {code}")
    return resp


def delete_consumer(cl, name: str) -> None:
    for via in cl.live():
        try:
            if not api_error(api_sync(cl, via, f"$JS.API.CONSUMER.DELETE.{STREAM}.{name}", timeout=5)):
                return
        except Exception:  # noqa: BLE001 - try the next node
            continue


def consumer_state(cl, name: str, timeout: float) -> tuple[str, dict]:
    """Wait until CONSUMER.INFO names a live leader and every replica it lists is current;
    returns (leader, info)."""
    return _current(cl, f"$JS.API.CONSUMER.INFO.{STREAM}.{name}", timeout, f"consumer {name}", "no consumer leader")


def non_leader(cl, consumer_leader: str, stream_leader: str) -> str:
    """A live node that is not the consumer leader, and not the stream leader when possible."""
    others = [n for n in cl.live() if n != consumer_leader]
    apart = [n for n in others if n != stream_leader]
    return (apart or others)[0]


@dataclass
class ConsumeResult:
    ack: str
    via: str
    node: str
    total: int
    got: int = 0
    seconds: float = 0.0
    settle: float = 0.0        # ack explicit: from the last message to num_ack_pending 0
    requests: int = 0
    gen_cpu: float = 0.0
    server_cpu: float = 0.0
    node_cpu: dict[str, float] = field(default_factory=dict)  # per node, CPU s / measured s
    timed_out: bool = False
    note: str = ""
    statuses: list[str] = field(default_factory=list)
    redelivered: int = 0
    info: dict | None = None

    @property
    def rate(self) -> float:
        return self.got / self.seconds if self.seconds > 0 else 0.0


def run_consume(cl, node: str, consumer: str, total: int, batch: int, ack: str, timeout: float,
                via: str) -> ConsumeResult:
    import loadgen
    q = loadgen._ctx.Queue()
    cpu0 = node_cpu(cl)
    t0 = time.perf_counter()
    p = loadgen._ctx.Process(target=_consume_worker,
                             args=(cl.node(node).port, consumer, total, batch, ack != "none", timeout, q),
                             daemon=True)
    p.start()
    r = _reap(p, q, timeout + 30, {"timed_out": True, "note": "generator hung"})
    wall = time.perf_counter() - t0
    cpu1 = node_cpu(cl)
    secs = r.get("seconds", 0.0)
    span = secs or wall  # the servers' CPU while the generator measured (start-up is a few ms)
    per_node = {n: (cpu1[n] - cpu0[n]) / span for n in cpu1 if n in cpu0} if span else {}
    return ConsumeResult(ack, via, node, total, got=r.get("got", 0), seconds=secs, settle=r.get("settle", 0.0),
                         requests=r.get("requests", 0), gen_cpu=r.get("cpu", 0.0) / secs if secs else 0.0,
                         server_cpu=sum(per_node.values()), node_cpu=per_node,
                         timed_out=r.get("timed_out", False), note=r.get("note", ""),
                         statuses=r.get("statuses", []), redelivered=r.get("redelivered", 0), info=r.get("info"))


@dataclass
class ConsumerFailoverResult:
    took: float | None
    killed: str
    via: str
    stream_leader: str
    delivered: int = 0
    repeats: int = 0           # deliveries of a stream seq already delivered and acked in this round
    redelivered: int = 0       # deliveries with a delivery count above 1
    requests: int = 0
    new_leader: str = ""
    statuses: list[str] = field(default_factory=list)
    note: str = ""


def consumer_failover_round(cl, expires: float, timeout: float) -> ConsumerFailoverResult:
    stream_leader, _ = stream_state(cl, timeout)
    leader, _ = consumer_state(cl, FO_CONSUMER, timeout)
    via = non_leader(cl, leader, stream_leader)
    kill_at, _, (deliveries, statuses, nreq, note) = _kill_under_load(
        cl, leader, _cfailover_worker, (cl.node(via).port, FO_CONSUMER, expires), timeout,
        f"consumer failover: no message through {via} before the kill", "no message before the kill",
        ([], [], 0, "failover consumer did not report"))
    took = consume_failover_time(kill_at, [(d[0], d[1]) for d in deliveries]) if kill_at is not None else None
    res = ConsumerFailoverResult(took, leader, via, stream_leader, delivered=len(deliveries),
                                 repeats=repeats([d[3] for d in deliveries]),
                                 redelivered=sum(1 for d in deliveries if d[2] > 1), requests=nreq,
                                 statuses=[f"{t - kill_at:+.3f}s sid {sid}: {st}" for t, sid, st in statuses
                                           if kill_at is not None], note=note)
    cl.restore(timeout=timeout)
    stream_state(cl, timeout)
    res.new_leader, _ = consumer_state(cl, FO_CONSUMER, timeout)
    return res


def make_cluster(kind: str, workdir: Path, args):
    """The three-node cluster of `kind`; nats-server-sync is nats-server whose nodes get
    `jetstream { sync_interval: always }` (an fsync after every write, as ours does)."""
    from tests.jscluster.harness import JSCluster
    cl = JSCluster("nats-server" if kind == SYNC_KIND else kind, workdir)
    if kind == SYNC_KIND:
        conf = Path(workdir) / "sync-always.conf"
        conf.write_text("jetstream { sync_interval: always }\n")
        for node in cl.nodes.values():
            node.proc.extra = ["-c", str(conf)] + node.proc.extra
    return cl


def start_with_stream(cl, kind: str, args, out) -> str:
    """Start `cl` (KindFailed when it does not come up within --timeout), say how long that
    took, create the stream R3; returns its leader."""
    t0 = time.monotonic()
    try:
        cl.start(wait_leader=False)
        cl.wait_ready(timeout=args.timeout)
    except Exception as e:  # noqa: BLE001
        raise KindFailed(f"cluster did not start: {e}", short="cluster did not start") from e
    out(f"{kind}: cluster ready in {time.monotonic() - t0:.2f}s")
    create_stream(cl, args.timeout)
    leader, _ = stream_state(cl, args.timeout)
    return leader


def bench_consume_kind(kind: str, args, workdir: Path, samples: dict[str, list[float]], out) -> None:
    cl = make_cluster(kind, workdir, args)
    _live_clusters.append(cl)
    try:
        leader = start_with_stream(cl, kind, args, out)
        warm_up(cl, leader, args.size, args.timeout)
        res = run_pub(cl, leader, "async", args.consume_msgs, args.size, args.timeout, via="fill")
        if res.note or res.timed_out or res.errors:
            raise KindFailed(f"pre-fill through {leader}: {res.note or ('timed out' if res.timed_out else f'{res.errors} error replies')}",
                             short="pre-fill failed")
        leader, info = stream_state(cl, args.timeout)
        total = (info.get("state") or {}).get("messages", 0)
        out(f"{kind}: stream {STREAM} (R3, file) pre-filled with {total:,} msgs of {args.size} B "
            f"({res.rate:,.0f} msgs/s), leader {leader}")
        for r in range(args.runs):
            for ack in args.acks:
                for via in args.via:
                    name = f"{CONSUMER_PREFIX}{ack[0].upper()}{via[0].upper()}{r + 1}"
                    create_consumer(cl, name, ack, args.timeout)
                    cleader, cinfo = consumer_state(cl, name, args.timeout)
                    sleader, _ = stream_state(cl, args.timeout)
                    node = cleader if via == "leader" else non_leader(cl, cleader, sleader)
                    res = run_consume(cl, node, name, total, args.batch, ack, args.timeout, via)
                    line = (f"{kind}: run {r + 1} ack {ack:<8} via {via:<8} ({node}; consumer leader {cleader}, "
                            f"stream leader {sleader}, {len((cinfo.get('cluster') or {}).get('replicas') or []) + 1} "
                            f"replicas): {res.got:,}/{total:,} in {res.seconds:.2f}s = {res.rate:,.0f} msgs/s "
                            f"({res.requests} requests; servers cpu {res.server_cpu:.2f} ("
                            + ", ".join(f"{n} {c:.2f}" for n, c in sorted(res.node_cpu.items()))
                            + f"), generator cpu {res.gen_cpu:.2f})")
                    if ack != "none":
                        line += f"; num_ack_pending 0 {res.settle * 1000:.0f} ms after the last message"
                    if res.redelivered:
                        line += f"; {res.redelivered} redeliveries"
                    if res.statuses:
                        line += f"; statuses {res.statuses}"
                    if res.timed_out:
                        line += "  TIMED OUT"
                    if res.note:
                        line += f"  {res.note}"
                    after = None
                    try:
                        after = api_sync(cl, node, f"$JS.API.CONSUMER.INFO.{STREAM}.{name}", timeout=5)
                        line += (f"; afterwards num_pending {after.get('num_pending')}, num_ack_pending "
                                 f"{after.get('num_ack_pending')}, delivered stream seq "
                                 f"{(after.get('delivered') or {}).get('stream_seq')}")
                    except Exception as e:  # noqa: BLE001
                        line += f"; consumer info afterwards failed: {e.__class__.__name__}: {e}"
                    out(line)
                    if res.note or res.timed_out or res.got < total:
                        raise KindFailed(f"consume ack {ack} via {via}: {res.note or 'timed out'} "
                                         f"({res.got:,}/{total:,} delivered)",
                                         short=f"ack {ack} via {via}: {'timed out' if res.timed_out else 'failed'}")
                    if after is not None and (after.get("num_pending") or after.get("num_ack_pending")):
                        raise KindFailed(f"consume ack {ack} via {via}: consumer not drained afterwards: "
                                         f"num_pending {after.get('num_pending')}, num_ack_pending "
                                         f"{after.get('num_ack_pending')}", short="not drained")
                    samples[f"consume_{ack}_{via}"].append(res.rate)
                    delete_consumer(cl, name)
        if args.failovers > 0:
            create_consumer(cl, FO_CONSUMER, "explicit", args.timeout)
        for f in range(args.failovers):
            res = consumer_failover_round(cl, args.fo_expires, args.timeout)
            took = "no message after the kill" if res.took is None else f"{res.took:.3f}s"
            line = (f"{kind}: consumer failover {f + 1}: killed consumer leader {res.killed}"
                    f"{' (also stream leader)' if res.killed == res.stream_leader else f' (stream leader {res.stream_leader})'}"
                    f", fetching via {res.via}: next message after {took}; {res.delivered} delivered in the round "
                    f"({res.requests} requests), {res.repeats} of an already acked seq, {res.redelivered} redelivered; "
                    f"consumer leader afterwards {res.new_leader}")
            if res.statuses:
                line += f"; statuses {res.statuses[:4]}"
            if res.note:
                line += f"; {res.note}"
            out(line)
            if res.took is None:
                raise KindFailed(f"consumer failover {f + 1}: no message after the kill",
                                 short="no message after the kill")
            samples["consumer_failover"].append(res.took)
    except Exception as e:  # noqa: BLE001 - KindFailed too: with the nodes' log tails
        tails = []
        for n in cl.names():
            tail = cl.log(n).splitlines()[-12:]
            tails.append(f"--- {n} log tail ---\n" + "\n".join(tail))
        if isinstance(e, KindFailed):
            raise KindFailed(f"{e}\n" + "\n".join(tails), short=e.short) from e
        raise KindFailed(f"{e.__class__.__name__}: {e}\n" + "\n".join(tails), short=e.__class__.__name__) from e
    finally:
        cl.stop()
        if cl in _live_clusters:
            _live_clusters.remove(cl)


def bench_kind(kind: str, args, workdir: Path, samples: dict[str, list[float]], out) -> None:
    n_sync, n_async = args.msgs
    cl = make_cluster(kind, workdir, args)
    _live_clusters.append(cl)
    try:
        leader = start_with_stream(cl, kind, args, out)
        out(f"{kind}: stream {STREAM} (R3, file) created, leader {leader}")
        for node in cl.names():
            warm_up(cl, node, args.size, args.timeout)
        for r in range(args.runs):
            for mode, total in (("sync", n_sync), ("async", n_async)):
                for via in args.via:
                    leader, _ = stream_state(cl, args.timeout)
                    node = leader if via == "leader" else [n for n in cl.names() if n != leader][0]
                    res = run_pub(cl, node, mode, total, args.size, args.timeout, via)
                    line = (f"{kind}: run {r + 1} {mode:>5} via {via:<8} ({node}): "
                            f"{res.replies - res.errors:,}/{total:,} acked in {res.seconds:.2f}s = "
                            f"{res.rate:,.0f} msgs/s  (servers cpu {res.server_cpu:.2f}, generator cpu "
                            f"{res.gen_cpu:.2f})")
                    if res.errors:
                        line += f"  {res.errors} error replies"
                    if res.timed_out:
                        line += "  TIMED OUT"
                    if res.note:
                        line += f"  {res.note}"
                    out(line)
                    if res.note or res.timed_out:
                        raise KindFailed(f"{mode} publish via {via}: {res.note or 'timed out'}",
                                         short=f"{mode} via {via}: {'timed out' if res.timed_out else 'failed'}")
                    samples[f"{mode}_{via}"].append(res.rate)
        for f in range(args.failovers):
            res = failover_round(cl, args.size, args.fo_retry, args.timeout)
            took = "no ack after the kill" if res.took is None else f"{res.took:.3f}s"
            lost = res.max_seq - res.last_seq
            line = (f"{kind}: failover {f + 1}: killed stream leader {res.killed}"
                    f"{' (also meta leader)' if res.was_meta_leader else ''}, publishing via {res.via}: "
                    f"next PubAck after {took} ({res.tries} publishes sent meanwhile); {res.acked} acked, highest acked seq {res.max_seq}, "
                    f"stream last_seq afterwards {res.last_seq}, leader afterwards {res.new_leader}" + (f" (BEHIND by {lost})" if lost > 0 else ""))
            if res.errors:
                line += f"; error replies seen: {sorted(set(res.errors))[:3]}"
            if res.note:
                line += f"; {res.note}"
            out(line)
            if res.took is None:
                raise KindFailed(f"failover {f + 1}: no acknowledged publish after the kill",
                                 short="no PubAck after the kill")
            samples["failover"].append(res.took)
    except KindFailed:
        raise
    except Exception as e:  # noqa: BLE001
        tails = []
        for n in cl.names():
            tail = cl.log(n).splitlines()[-8:]
            tails.append(f"--- {n} log tail ---\n" + "\n".join(tail))
        raise KindFailed(f"{e.__class__.__name__}: {e}\n" + "\n".join(tails), short=e.__class__.__name__) from e
    finally:
        cl.stop()
        if cl in _live_clusters:
            _live_clusters.remove(cl)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kinds is None:
        args.kinds = list(CONSUME_KINDS if args.consume else KINDS)
    if shutil.which("nats-server") is None and any(k.startswith("nats-server") for k in args.kinds):
        print("nats-server is not on PATH", file=sys.stderr)
        return 2
    atexit.register(_stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # SIGINT: KeyboardInterrupt already unwinds
        if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. nohup
            signal.signal(sig, _on_signal)
    report: list[str] = []

    def out(line: str) -> None:
        report.append(line)
        print(line, flush=True)

    n_sync, n_async = args.msgs
    started = _dt.datetime.now()
    if args.consume:
        out(f"r3_bench --consume {started:%Y-%m-%d %H:%M}: {os.cpu_count()} cores; R3 file stream pre-filled with "
            f"{args.consume_msgs:,} msgs of {args.size} B; durable pull consumers (replicas and max_ack_pending "
            f"default), batch {args.batch}, one request at a time, ack {', '.join(args.acks)}, via "
            f"{', '.join(args.via)}, {args.runs} runs; {args.failovers} SIGKILLs of the consumer leader "
            f"(ack explicit, batch 1, expires {args.fo_expires}s)")
    else:
        out(f"r3_bench {started:%Y-%m-%d %H:%M}: {os.cpu_count()} cores; R3 file stream; payload {args.size} B; "
            f"sync {n_sync:,} msgs x {args.runs} runs, async ({INFLIGHT:,} in flight) {n_async:,} msgs x "
            f"{args.runs} runs, via {', '.join(args.via)}; {args.failovers} SIGKILL failovers "
            f"(retry {args.fo_retry}s)")
    if SYNC_KIND in args.kinds:
        out(f"{SYNC_KIND} is nats-server with `jetstream {{ sync_interval: always }}`: it fsyncs every write, "
            "as ours does; nats-server is its default (lazy fsync)")
    samples = {k: {m: [] for m in METRICS} for k in args.kinds}
    failures: dict[str, str] = {}
    details: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp(prefix="r3_bench-"))
    try:
        for kind in args.kinds:
            try:
                (bench_consume_kind if args.consume else bench_kind)(kind, args, tmp / kind, samples[kind], out)
            except KindFailed as e:
                failures[kind] = e.short
                details[kind] = str(e)
                out(f"{kind}: FAILED: {e}")
    finally:
        _stop_all()
        if args.keep:
            print(f"cluster directories kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out("")
    if args.consume:
        metrics = consume_metrics(args.acks, args.via, args.failovers)
    else:
        metrics = measured_metrics(args.via, args.failovers)
    out(format_table(samples, failures, args.kinds, metrics))
    if args.failovers and args.consume:
        out(f"(failover resolution: the first pull request after the kill goes out at once; one unanswered "
            f"for --fo-expires {args.fo_expires}s is followed by the next)")
    elif args.failovers:
        out(f"(failover resolution: a publish unanswered for --fo-retry {args.fo_retry}s is followed by the "
            f"next, so a failover faster than that shows as about {args.fo_retry}s)")
    if "ours" in args.kinds and "nats-server" in args.kinds:
        out("")
        out(f"issue {11 if args.consume else 10} targets for ours:")
        for line in target_lines(samples, metrics, CONSUME_TARGETS if args.consume else TARGETS):
            out(line)
    for kind, msg in details.items():
        out("")
        out(f"{kind} FAILED: {msg}")
    if args.save:
        path = BENCH / "results" / f"r3-{'consume-' if args.consume else ''}{started:%Y-%m-%d}.txt"
        path.write_text("\n".join(report) + "\n")
        print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: clusters stopped", file=sys.stderr)
        sys.exit(130)
