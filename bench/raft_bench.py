"""Raft commit throughput and latency: three in-process nodes, real files, real fsync.

    python bench/raft_bench.py [--proposals 2000] [--payload 128] [--dir /path/on/the/disk/to/test]

For each batch size B, B concurrent clients each keep one proposal in flight at the leader
(B = 1 is one at a time); the leader batches whatever is queued into one append and fsync.
A proposal's latency runs from `propose()` until it is committed and applied on the leader:
the leader's fsync overlapped with the followers' (each follower acknowledges only after its
own fsync), then the commit. Messages travel through the in-memory transport, encoded
and decoded as on the wire. There is no reference Raft server to compare with here; the
table prints the fsyncs per committed proposal instead, which is what batching buys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from raft.core import RaftConfig  # noqa: E402
from raft.messages import ConfState, Entry  # noqa: E402
from raft.node import RaftNode  # noqa: E402
from raft.storage import OsDisk, Storage  # noqa: E402
from raft.transport import InMemoryNetwork  # noqa: E402

VOTERS = (1, 2, 3)
tick_interval_s = 0.05
leader_wait_s = 30


class CountingMachine:
    def __init__(self) -> None:
        self.count = 0

    def apply(self, entry: Entry) -> int:
        self.count += 1
        return self.count

    def snapshot(self) -> bytes:
        return b"%d" % self.count

    def restore(self, data: bytes) -> None:
        self.count = int(data or b"0")


async def run_case(root: str, batch: int, proposals: int, payload: int) -> dict:
    net = InMemoryNetwork()
    nodes: dict[int, RaftNode] = {}
    storages = []
    async with trio.open_nursery() as nursery:
        for i in VOTERS:
            disk = OsDisk(os.path.join(root, f"b{batch}-n{i}"))
            storage = Storage.open(disk, ConfState(VOTERS))
            storages.append((disk, storage))
            node = RaftNode(RaftConfig(node_id=i, append_entries_max=512, inflight_messages_max=64), storage,
                            CountingMachine(), net.transport(i), seed=i, tick_interval_s=tick_interval_s,
                            snapshot_entries=50_000)
            net.register(i, node.deliver)
            nodes[i] = node
            await nursery.start(node.run)
        with trio.fail_after(leader_wait_s):
            while not any(n.is_leader for n in nodes.values()):
                await trio.sleep(0.01)
        leader = next(n for n in nodes.values() if n.is_leader)
        await leader.propose(b"warm-up")
        fsyncs_before = sum(s.fsyncs for _, s in storages)
        latencies: list[float] = []
        data = b"x" * payload
        start = time.perf_counter()

        remaining = [proposals]

        async def client() -> None:  # one of `batch` clients, each with one proposal in flight
            while remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                await leader.propose(data)
                latencies.append(time.perf_counter() - t0)

        async with trio.open_nursery() as clients:
            for _ in range(batch):
                clients.start_soon(client)
        elapsed = time.perf_counter() - start
        fsyncs = sum(s.fsyncs for _, s in storages) - fsyncs_before
        nursery.cancel_scope.cancel()
    for disk, _ in storages:
        disk.close()
    latencies.sort()
    return {
        "batch": batch,
        "proposals": proposals,
        "per_s": proposals / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "fsyncs_per_proposal": fsyncs / proposals,
    }


async def main_async(args) -> list[dict]:
    results = []
    for batch, proposals in ((1, args.proposals // 4), (100, args.proposals * 5)):
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            results.append(await run_case(root, batch, max(proposals, batch), args.payload))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proposals", type=int, default=2000)
    ap.add_argument("--payload", type=int, default=128, help="bytes per proposal")
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: system temp)")
    args = ap.parse_args()
    results = trio.run(main_async, args)
    print(f"raft: 3 in-process nodes, real fsync, payload {args.payload} B, "
          f"dir {args.dir or tempfile.gettempdir()}")
    print(f"{'batch':>6} {'proposals':>10} {'commits/s':>11} {'p50 ms':>9} {'p99 ms':>9} {'fsync/prop':>11}")
    for r in results:
        print(f"{r['batch']:>6} {r['proposals']:>10} {r['per_s']:>11.0f} {r['p50_ms']:>9.2f} "
              f"{r['p99_ms']:>9.2f} {r['fsyncs_per_proposal']:>11.3f}")


if __name__ == "__main__":
    main()
