"""In-process microbenchmark of the publish hot path: parse -> match -> frame for one subscriber.

No sockets and no event loop, so the per-message CPU cost of our own code shows without
load-generator noise. Prints ns per message (best of several rounds).
"""

from __future__ import annotations

import time

from broker.config import Options
from broker.connection import ClientConn
from broker.server import Server
from broker.sublist import Subscription

N_MSGS = 200_000
ROUNDS = 5


class NullStream:
    socket = None


def make_conn(server: Server, cid: int) -> ClientConn:
    c = ClientConn(server, NullStream(), cid, "127.0.0.1", 1000 + cid)
    c.connected = True
    c._fast_pub = True
    c.max_pending = 1 << 62
    c._kicked = True  # no writer task here: frames just accumulate
    return c


def run(payload_len: int, subs: int) -> float:
    server = Server(Options(port=0))
    pub = make_conn(server, 1)
    readers = [make_conn(server, 2 + i) for i in range(subs)]
    for r in readers:
        s = Subscription(r, "bench.subject", None, b"1")
        r.subs[b"1"] = s
        server.add_sub(s)
    frame = b"PUB bench.subject %d\r\n%s\r\n" % (payload_len, b"x" * payload_len)
    per_chunk = max(1, 65536 // len(frame))
    chunk = frame * per_chunk
    chunks = N_MSGS // per_chunk
    best = float("inf")
    for _ in range(ROUNDS):
        for r in readers:
            r.out = bytearray()
        t0 = time.perf_counter()
        for _ in range(chunks):
            ops = pub.parser.feed(chunk)
            pub.process(ops)
        el = time.perf_counter() - t0
        best = min(best, el / (chunks * per_chunk))
    return best * 1e9


def main() -> None:
    print(f"{'scenario':<28}{'ns/msg':>10}{'msgs/s (1 core)':>18}")
    for name, size, subs in (("pub->1 sub 16 B", 16, 1), ("pub->1 sub 1 KiB", 1024, 1),
                             ("pub->4 subs 16 B", 16, 4), ("pub only 16 B", 16, 0)):
        ns = run(size, subs)
        print(f"{name:<28}{ns:>10.0f}{1e9 / ns:>18,.0f}")


if __name__ == "__main__":
    main()
