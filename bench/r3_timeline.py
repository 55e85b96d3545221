"""Where one replicated publish spends its time: a timeline across the three nodes of ours.

    python bench/r3_timeline.py [--msgs 3000] [--size 128] [--keep]

Starts a three-node cluster of ours (tests/jscluster/harness.py) in which every node runs
through this file's `--node` mode: the broker, with a timestamp (CLOCK_MONOTONIC, shared by
every process on the machine) taken at the entry of a few methods on the publish path, kept in
memory and written out when the node exits. It creates the R3 file stream r3_bench.py uses,
publishes `--msgs` messages with 1 in flight through the stream leader with r3_bench's load
generator, stops the cluster and prints, for the events of each publish (from the leader
reading the PUB to the leader reading the next one), the median time since the PUB was read,
in µs, and how often the event occurred per publish:

    L:pub_in       the leader's client connection processes the PUB
    L:submit       the stream's replica takes the publish batch
    L:drain        the Raft host loop runs (after the wake-up)
    L:route_out    a route write (the appends to the followers)
    L:save0/save1  the leader's WAL write starts / its fsync has returned
    F:<n>:...      the same on follower <n>; raft_in = a Raft message handed to its host,
                   commit = its commit index moved, apply = the stream state machine applies
    L:raft_in      a follower's acknowledgement reaches the leader's host
    L:commit, L:apply, L:answer, L:client_out   committed, applied, PubAck made, written
    next_pub       the leader reads the next PUB

The first fifth of the publishes is left out (warm-up). The hooks cost about a microsecond
each, so the rate printed is a little below r3_bench's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# (module, class, method, tag, after): the timestamp is taken at entry, or at return if after
HOOKS = (
    ("broker.connection", "ClientConn", "process", "pub_in", False),
    ("broker.jetstream.cluster.replica", "StreamReplica", "submit", "submit", False),
    ("raft.host", "RaftHost", "deliver_bytes", "raft_in", False),
    ("raft.host", "RaftHost", "_drain", "drain", False),
    ("raft.log", "RaftLog", "commit_to", "commit", False),
    ("raft.storage", "Storage", "save", "save0", False),
    ("raft.storage", "Storage", "save", "save1", True),
    ("cluster.route", "Route", "flush_now", "route_out", False),
    ("broker.jetstream.cluster.streamsm", "StreamSM", "apply", "apply", False),
    ("broker.jetstream.cluster.replica", "StreamReplica", "_answer_publishes", "answer", False),
    ("broker.connection", "ClientConn", "flush_now", "client_out", False),
)


# ---- the node side ---------------------------------------------------------------------------

def run_node(out: str, argv: list[str]) -> None:
    """The broker with HOOKS installed; the events go to `out` at exit (os._exit included)."""
    import importlib
    import runpy
    events: list[tuple[int, str]] = []
    clock = time.perf_counter_ns
    for mod, cls_name, meth, tag, after in HOOKS:
        cls = getattr(importlib.import_module(mod), cls_name)
        orig = getattr(cls, meth)

        def hooked(*a, _orig=orig, _tag=tag, _after=after, **k):
            if not _after:
                events.append((clock(), _tag))
                return _orig(*a, **k)
            try:
                return _orig(*a, **k)
            finally:
                events.append((clock(), _tag))
        setattr(cls, meth, hooked)
    real_exit = os._exit

    def write_and_exit(code: int) -> None:
        with open(out, "w") as f:
            f.writelines(f"{t} {tag}\n" for t, tag in events)
        real_exit(code)
    os._exit = write_and_exit
    sys.argv = ["broker"] + argv
    runpy.run_module("broker", run_name="__main__")


# ---- analysis (tests/bench/test_r3_timeline.py) ----------------------------------------------

def timeline(events: list[tuple[int, str, str]], leader: str, skip: float = 0.2) -> list[tuple[str, float, float]]:
    """events: (ns, node, tag) from every node. Per publish (a leader `pub_in` up to the next),
    the first occurrence of each event, in µs after that pub_in; returns (key, median µs,
    occurrences per publish) for the keys seen in at least half of the publishes, by time.
    Keys: `L:<tag>` on the leader, `F:<node>:<tag>` on the others, and `next_pub`."""
    events = sorted(events)
    starts = [i for i, (_, node, tag) in enumerate(events) if node == leader and tag == "pub_in"]
    rows = []
    for a, b in zip(starts, starts[1:]):
        t0 = events[a][0]
        seen: dict[str, float] = {}
        for t, node, tag in events[a:b]:
            key = f"L:{tag}" if node == leader else f"F:{node}:{tag}"
            seen.setdefault(key, (t - t0) / 1000)
        seen["next_pub"] = (events[b][0] - t0) / 1000
        rows.append(seen)
    rows = rows[int(len(rows) * skip):]
    counts = Counter(k for r in rows for k in r)
    out = [(k, statistics.median(r[k] for r in rows if k in r), counts[k] / len(rows))
           for k in counts if counts[k] >= len(rows) / 2]
    return sorted(out, key=lambda x: x[1])


def read_events(path: Path, node: str) -> list[tuple[int, str, str]]:
    out = []
    for line in path.read_text().splitlines():
        t, tag = line.split()
        out.append((int(t), node, tag))
    return out


# ---- the driver ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--msgs", type=int, default=3000, help="publishes with 1 in flight (default 3000)")
    ap.add_argument("--size", type=int, default=128, help="payload bytes (default 128)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--keep", action="store_true", help="keep the cluster directory (logs, event files)")
    args = ap.parse_args(argv)
    import shutil

    import r3_bench
    from tests.jscluster.harness import JSCluster
    work = Path(tempfile.mkdtemp(prefix="r3_timeline-"))
    cl = JSCluster("ours", work)
    for name, node in cl.nodes.items():
        node.proc.argv_head = [sys.executable, str(Path(__file__).resolve()), "--node", str(work / f"{name}.events")]
    r3_bench._live_clusters.append(cl)
    try:
        cl.start(wait_leader=False)
        cl.wait_ready(timeout=args.timeout)
        r3_bench.create_stream(cl, args.timeout)
        leader, _ = r3_bench.stream_state(cl, args.timeout)
        r3_bench.warm_up(cl, leader, args.size, args.timeout)
        res = r3_bench.run_pub(cl, leader, "sync", args.msgs, args.size, args.timeout, via="leader")
    finally:
        cl.stop()
        r3_bench._live_clusters.remove(cl)
    events = []
    for name in cl.nodes:
        path = work / f"{name}.events"
        if path.exists():
            events += read_events(path, name)
    print(f"r3_timeline: {args.msgs:,} publishes of {args.size} B, 1 in flight via the stream leader {leader}: "
          f"{res.rate:,.0f} msgs/s ({res.replies:,} acked)")
    print(f"{'median µs':>10}  {'per publish':>11}  event")
    for key, us, per in timeline(events, leader):
        print(f"{us:10.1f}  {per:11.2f}  {key}")
    if args.keep:
        print(f"cluster directory kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if res.replies == args.msgs else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--node":
        run_node(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
