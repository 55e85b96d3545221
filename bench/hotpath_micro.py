"""In-process microbenchmark of the publish hot path: parse -> match -> frame for one subscriber.

No sockets and no event loop, so the per-message CPU cost of our own code shows without
load-generator noise. Prints CPU ns per message (process time, best of several rounds, so
other load on a shared machine moves it little). The "distinct
replies" rows give every PUB its own reply subject (as requests do), so no two frames
share a header line and the run path never applies: the general path's cost per message.
Rows marked "routed" feed RMSG frames to the route parser of a node with one subscriber.

    python bench/hotpath_micro.py [--profile NAME]   (cProfile of one row instead)
"""

from __future__ import annotations

import sys
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


def run(payload_len: int, subs: int, distinct_replies: bool = False, inboxes: bool = False,
        per_read: int = 0) -> float:
    """inboxes: every PUB goes to its own subject `_INBOX.r.<n>`, subscribed as `_INBOX.r.*`
    (a responder's replies); per_read: frames per feed (default: a 64 KiB read's worth)."""
    server = Server(Options(port=0))
    pub = make_conn(server, 1)
    readers = [make_conn(server, 2 + i) for i in range(subs)]
    for r in readers:
        s = Subscription(r, "_INBOX.r.*" if inboxes else "bench.subject", None, b"1")
        r.subs[b"1"] = s
        server.add_sub(s)
    payload = b"x" * payload_len
    if distinct_replies:
        frames = [b"PUB bench.subject _INBOX.r.%05d %d\r\n%s\r\n" % (i, payload_len, payload) for i in range(4096)]
    elif inboxes:
        frames = [b"PUB _INBOX.r.%05d %d\r\n%s\r\n" % (i, payload_len, payload) for i in range(50)]
    else:
        frames = [b"PUB bench.subject %d\r\n%s\r\n" % (payload_len, payload)]
    per_chunk = per_read or max(1, 65536 // len(frames[0]))
    chunk = b"".join(frames[i % len(frames)] for i in range(per_chunk))
    chunks = N_MSGS // per_chunk
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(chunks):
            ops = pub.parser.feed(chunk)
            pub.process(ops)
            for r in readers:
                r.out = bytearray()  # as a flush would
        el = time.process_time() - t0
        best = min(best, el / (chunks * per_chunk))
    return best * 1e9


def run_routed(payload_len: int) -> float:
    from cluster.protocol import RouteParser, append_msg
    server = Server(Options(port=0))
    reader = make_conn(server, 2)
    s = Subscription(reader, "bench.subject", None, b"1")
    reader.subs[b"1"] = s
    server.add_sub(s)
    parser = RouteParser(on_msg=server.deliver_routed, on_run=getattr(server, "deliver_routed_run", None))
    frame = bytearray()
    append_msg(frame, "bench.subject", "", None, b"x" * payload_len, None)
    per_chunk = max(1, 65536 // len(frame))
    chunk = bytes(frame) * per_chunk
    chunks = N_MSGS // per_chunk
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.process_time()
        for _ in range(chunks):
            parser.feed(chunk)
            reader.out = bytearray()
        el = time.process_time() - t0
        best = min(best, el / (chunks * per_chunk))
    return best * 1e9


ROWS = {
    "pub->1 sub 16 B": lambda: run(16, 1),
    "pub->1 sub 1 KiB": lambda: run(1024, 1),
    "pub->4 subs 16 B": lambda: run(16, 4),
    "pub only 16 B": lambda: run(16, 0),
    "distinct replies ->1 sub 16 B": lambda: run(16, 1, distinct_replies=True),
    "requests, 8 a read": lambda: run(16, 1, distinct_replies=True, per_read=8),
    "replies to 50 inboxes, 8 a read": lambda: run(16, 1, inboxes=True, per_read=8),
    "request, 1 a read": lambda: run(16, 1, distinct_replies=True, per_read=1),
    "reply, 1 a read": lambda: run(16, 1, inboxes=True, per_read=1),
    "routed ->1 sub 16 B": lambda: run_routed(16),
}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profile":
        import cProfile
        import pstats
        global ROUNDS
        ROUNDS = 1
        cProfile.run(f"ROWS[{sys.argv[2]!r}]()", "/tmp/hotpath.prof")
        pstats.Stats("/tmp/hotpath.prof").sort_stats("tottime").print_stats(15)
        return
    print(f"{'scenario':<32}{'ns/msg':>10}{'msgs/s (1 core)':>18}")
    for name, fn in ROWS.items():
        ns = fn()
        print(f"{name:<32}{ns:>10.0f}{1e9 / ns:>18,.0f}")


if __name__ == "__main__":
    main()
