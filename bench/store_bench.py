"""Throughput of the JetStream message stores.

    python bench/store_bench.py [--msgs N] [--payload BYTES] [--dir PATH]

FileStore: appends followed by one sync() (fdatasync) per batch, i.e. group commit with
batches of 1, 100 and 1000 publishes; plain appends; get(); reopen (full replay).
MemoryStore: appends and get(). There is no nats-server counterpart to run side by
side here (its stores are not reachable from outside the server); the end-to-end
publish benchmarks compare against it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from broker.jetstream.filestore import FileStore  # noqa: E402
from broker.jetstream.store import MemoryStore  # noqa: E402


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_file_batches(root: str, msgs: int, payload: bytes, batch: int) -> tuple[float, float]:
    d = os.path.join(root, f"batch{batch}")
    s = FileStore(d)
    # fsync-per-message is slow: cap its run so the bench stays short
    n = min(msgs, 2000) if batch == 1 else msgs
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch, n - done)
        for _ in range(k):
            s.append("bench.file", None, payload, 1)
        s.sync()
        done += k
    dt = time.perf_counter() - t0
    s.delete()
    return _rate(n, dt), _rate(-(-n // batch), dt)


def bench_file_plain(root: str, msgs: int, payload: bytes) -> tuple[float, float, float]:
    d = os.path.join(root, "plain")
    s = FileStore(d)
    t0 = time.perf_counter()
    for _ in range(msgs):
        s.append("bench.file", None, payload, 1)
    appends = _rate(msgs, time.perf_counter() - t0)
    s.close()
    t0 = time.perf_counter()
    s = FileStore(d)
    reopen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in range(1, msgs + 1):
        s.get(q)
    gets = _rate(msgs, time.perf_counter() - t0)
    s.delete()
    return appends, gets, reopen_s


def bench_memory(msgs: int, payload: bytes) -> tuple[float, float]:
    s = MemoryStore()
    t0 = time.perf_counter()
    for _ in range(msgs):
        s.append("bench.mem", None, payload, 1)
    appends = _rate(msgs, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in range(1, msgs + 1):
        s.get(q)
    return appends, _rate(msgs, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msgs", type=int, default=100_000)
    ap.add_argument("--payload", type=int, default=128)
    ap.add_argument("--dir", default=None, help="where the file store writes (default: a temp dir)")
    args = ap.parse_args()
    payload = b"x" * args.payload
    root = tempfile.mkdtemp(prefix="store-bench-", dir=args.dir)
    rows: list[tuple[str, str, str]] = []
    try:
        for batch in (1, 100, 1000):
            msgs_s, syncs_s = bench_file_batches(root, args.msgs, payload, batch)
            rows.append((f"FileStore append+sync, batch {batch}", f"{msgs_s:,.0f} msgs/s",
                         f"{syncs_s:,.0f} syncs/s"))
        appends, gets, reopen_s = bench_file_plain(root, args.msgs, payload)
        rows.append(("FileStore append (no sync)", f"{appends:,.0f} msgs/s", ""))
        rows.append(("FileStore get", f"{gets:,.0f} msgs/s", ""))
        rows.append((f"FileStore reopen ({args.msgs:,} msgs)", f"{reopen_s:.2f} s", ""))
        appends, gets = bench_memory(args.msgs, payload)
        rows.append(("MemoryStore append", f"{appends:,.0f} msgs/s", ""))
        rows.append(("MemoryStore get", f"{gets:,.0f} msgs/s", ""))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"payload {args.payload} B, {args.msgs:,} messages, python {sys.version.split()[0]}")
    print(f"{'case':<{w0}}  {'throughput':>{w1}}  syncs")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")


if __name__ == "__main__":
    main()
