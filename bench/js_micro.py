"""In-process microbenchmark of the JetStream pull path: store read -> consumer -> frames.

No sockets and no event loop: a file store holding N 16-byte messages, a pull consumer
(ack none / ack explicit) answering batch-1,000 requests, and the frames rendered into a
client connection's buffer. Prints ns per message for each stage (best of several rounds),
so the per-message CPU cost of our own code shows without load-generator noise.

    python bench/js_micro.py
"""

from __future__ import annotations

import tempfile
import time

from broker.config import Options
from broker.connection import ClientConn
from broker.jetstream.consumer import Consumer, PullRequest
from broker.jetstream.consumerconfig import ConsumerConfig
from broker.jetstream.filestore import FileStore
from broker.server import Server
from broker.sublist import Subscription

N_MSGS = 200_000
BATCH = 1000
ROUNDS = 5


class NullStream:
    socket = None


def make_conn(server: Server) -> ClientConn:
    c = ClientConn(server, NullStream(), 1, "127.0.0.1", 1001)
    c.connected = True
    c.max_pending = 1 << 62
    c._kicked = True  # no writer task here: frames just accumulate
    return c


def fill(directory: str) -> FileStore:
    st = FileStore(directory)
    ts = time.time_ns()
    for i in range(0, N_MSGS, 1000):
        st.append_many([("bench.p", b"x" * 16)] * 1000, ts + i)
    st.sync()
    return st


def bench_get_run(st: FileStore) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        s = 1
        while s <= N_MSGS:
            s += len(st.get_run(s, BATCH))
        best = min(best, (time.perf_counter() - t0) / N_MSGS)
    return best * 1e9


def bench_pull(st: FileStore, ack: str, render: bool) -> float:
    from broker.jetstream.consumers import ConsumerManager

    class JS:
        server = Server(Options(port=0))

    js = JS()
    mgr = ConsumerManager(js)
    conn = make_conn(js.server)
    sub = Subscription(conn, "_INBOX.pull", None, b"2")
    conn.subs[b"2"] = sub
    js.server.add_sub(sub)
    best = float("inf")
    for _ in range(ROUNDS):
        cfg = ConsumerConfig(durable_name="C", name="C", ack_policy=ack, deliver_policy="all",
                             max_waiting=512, ack_wait=30_000_000_000, max_ack_pending=-1)
        now = time.time_ns()
        c = Consumer("BENCH", "C", cfg, st, now)
        c.start(now)
        conn.out = bytearray()
        t0 = time.perf_counter()
        for _ in range(N_MSGS // BATCH):
            c.add_request(PullRequest("_INBOX.pull", BATCH, 0, 0, False, 0, now), now)
            if render:
                mgr.emit(c)
            else:
                c.out.clear()
        best = min(best, (time.perf_counter() - t0) / N_MSGS)
        assert c.dseq == N_MSGS, c.dseq
    return best * 1e9


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        st = fill(d)
        rows = [("store get_run (runs of 1,000)", bench_get_run(st))]
        for ack in ("none", "explicit"):
            rows.append((f"pull ack {ack}: consumer only", bench_pull(st, ack, False)))
            rows.append((f"pull ack {ack}: + frames", bench_pull(st, ack, True)))
        st.close()
    print(f"{'stage':<36}{'ns/msg':>10}{'msgs/s (1 core)':>18}")
    for name, ns in rows:
        print(f"{name:<36}{ns:>10.0f}{1e9 / ns:>18,.0f}")


if __name__ == "__main__":
    main()
