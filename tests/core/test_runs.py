"""Runs of PUBs (and routed RMSGs) against the general path, side by side.

The run path parses a stretch of frames that repeat one header line as a single OP_RUN
and delivers it whole (bytes.split / join); the general path takes one op per frame.
Hypothesis drives both over the same byte stream, cut into the same random reads, in
two in-process servers that differ only in that switch, and requires the same bytes
out on every connection and route, the same internal-subscriber calls, the same
counters and the same subscriptions at the end.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import trio
from hypothesis import given, settings, strategies as st

from broker.config import Options
from broker.connection import ClientConn
from broker.protocol import OP_PUB, OP_RUN, Parser, expand_run, run_bodies, run_length
from broker.server import Server
from cluster import protocol as rproto
from cluster.route import Route, RouteLimits


class _Sock:
    def getpeername(self):
        raise OSError("not a socket")

    def fileno(self):
        return -1


class FakeStream:
    socket = _Sock()


def make_conn(server: Server, cid: int, runs: bool) -> ClientConn:
    c = ClientConn(server, FakeStream(), cid, "127.0.0.1", 1000 + cid)
    c.parser = Parser(server.opts.max_control_line, server.opts.max_payload, runs=runs)
    c._fd = -1  # nothing is written anywhere: output accumulates in c.out
    c._kicked = True  # no writer task to wake
    c._cancel = trio.CancelScope()  # a slow consumer cut cancels this
    server.clients[cid] = c
    return c


def connect(c: ClientConn, raw: bytes) -> None:
    c.server.batched(c.process, c.parser.feed(b"CONNECT " + raw + b"\r\n"))


def feed(c: ClientConn, chunks: list[bytes]) -> None:
    """What ClientConn._reader does with each read."""
    for chunk in chunks:
        if c.closed or c._closing:
            return
        ops = c.parser.feed(chunk)
        if ops:
            c.server.batched(c.process, ops)
        if c.parser.error is not None:
            c.fail(c.parser.error.text)
            return


def make_route(rid: int) -> Route:
    return Route(FakeStream(), rid, False, False, RouteLimits())


SUBJECTS = [b"foo", b"foo.bar", b"bar", b"q.x", b"_INBOX.r"]
PAYLOADS = [b"", b"x", b"hello", b"a\r\nb", b"PUB foo 5\r\n", b"\r\n", b"PUB foo.bar 11\r\n", b"0123456789" * 3]
REPLIES = [b"", b"", b"_INBOX.r", b"r.1"]

frame_st = st.one_of(
    # a PUB repeated k times: the stuff runs are made of
    st.tuples(st.just("pub"), st.sampled_from(SUBJECTS), st.sampled_from(REPLIES),
              st.lists(st.sampled_from(PAYLOADS), min_size=1, max_size=3), st.integers(1, 30)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("sub"), st.sampled_from([b"foo", b"foo.*", b">", b"bar", b"q.*", b"_INBOX.r"]),
              st.sampled_from([None, b"g"]), st.sampled_from([b"1", b"2", b"3", b"4"])),
    st.tuples(st.just("unsub"), st.sampled_from([b"1", b"2", b"3", b"4"]), st.sampled_from([0, 0, 1, 3, 7])),
    st.tuples(st.just("hpub"), st.sampled_from(SUBJECTS), st.integers(1, 4)),
    st.tuples(st.just("bad"), st.sampled_from([b"PUB foo 5\r\nhelloX\r\n", b"PUB foo 99999999\r\n", b"XYZ\r\n"])),
)


def render(frames: list) -> bytes:
    out = bytearray()
    for f in frames:
        kind = f[0]
        if kind == "pub":
            _, subject, reply, payloads, k = f
            for i in range(k):
                p = payloads[i % len(payloads)] if len(payloads) > 1 and i % 5 == 4 else payloads[0]
                mid = b" " + reply if reply else b""
                out += b"PUB %b%b %d\r\n%b\r\n" % (subject, mid, len(p), p)
        elif kind == "ping":
            out += b"PING\r\n"
        elif kind == "sub":
            _, subject, queue, sid = f
            out += b"SUB %b %b%b\r\n" % (subject, queue + b" " if queue else b"", sid)
        elif kind == "unsub":
            _, sid, mx = f
            out += b"UNSUB %b %d\r\n" % (sid, mx) if mx else b"UNSUB %b\r\n" % sid
        elif kind == "hpub":
            _, subject, k = f
            out += b"HPUB %b 12 14\r\nNATS/1.0\r\n\r\nhi\r\n" % subject * k
        else:
            out += f[1]
    return bytes(out)


def cut(data: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(data):
        n = rnd.choice([1, 7, 33, 100, 500, 4096, 70000])
        chunks.append(data[pos:pos + n])
        pos += n
    return chunks


class World:
    """One server: a publisher, two subscriber connections, a route peer with plain
    interest in `foo.>`/`bar` and an internal subscriber on `q.*`."""

    def __init__(self, runs: bool, connect_opts: bytes, max_pending: int):
        self.server = server = Server(Options(port=0, max_pending=max_pending))
        self.pub = make_conn(server, 1, runs)
        self.subs = [make_conn(server, 2, runs), make_conn(server, 3, runs)]
        connect(self.pub, connect_opts)
        for i, c in enumerate(self.subs):
            connect(c, b'{"verbose":false,"pedantic":false,"headers":true}')
            feed(c, [b"SUB foo 1\r\nSUB foo.* 2\r\nSUB > 3\r\n" if i == 0 else b"SUB bar 7\r\nSUB q.* grp 8\r\n"])
        self.route = make_route(9)
        server.add_route_sub(self.route, "foo.>", None, 1)
        server.add_route_sub(self.route, "bar", None, 1)
        self.calls: list = []
        server.subscribe("q.*", lambda s, r, h, p: self.calls.append((s, r, h, p)))

    def state(self) -> dict:
        s = self.server
        conns = [self.pub] + self.subs
        return {
            "out": [bytes(c.out) for c in conns],
            "closing": [(c._closing, c.close_reason) for c in conns],
            "conn_counts": [(c.in_msgs, c.in_bytes, c.out_msgs, c.out_bytes) for c in conns],
            "server_counts": (s.in_msgs, s.in_bytes, s.out_msgs, s.out_bytes, s.slow_consumers,
                              s.in_msgs + s.sublist.matches - s.route_cache_misses),
            "route": (bytes(self.route._out), self.route.out_msgs, self.route.out_bytes),
            "calls": self.calls,
            "subs": sorted((c.cid, sid, sub.subject, sub.queue, sub.max_msgs, sub.delivered)
                           for c in conns for sid, sub in c.subs.items()),
            "sublist": (s.sublist.count, s.sublist.inserts, s.sublist.removes),
            "error": self.pub.parser.error and self.pub.parser.error.text,
        }


CONNECTS = [
    b'{"verbose":false,"pedantic":false,"headers":true}',
    b'{"verbose":false,"pedantic":false,"headers":true,"echo":false}',
    b'{"verbose":false,"pedantic":false,"headers":true,"no_responders":true}',
    b'{"verbose":true,"pedantic":false,"headers":true}',
    b'{"verbose":false,"pedantic":true,"headers":true}',
    b'{"verbose":false,"pedantic":false}',
]


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, min_size=1, max_size=14), st.sampled_from(CONNECTS), st.integers(0, 2**32),
       st.sampled_from([64 * 1024 * 1024, 64 * 1024 * 1024, 400]))
def test_run_path_matches_general_path(frames, connect_opts, seed, max_pending):
    data = render(frames)
    chunks = cut(data, seed)
    a = World(True, connect_opts, max_pending)
    b = World(False, connect_opts, max_pending)
    random.seed(seed)  # queue-group picks: the same sequence of choices in both
    feed(a.pub, chunks)
    random.seed(seed)
    feed(b.pub, chunks)
    assert a.state() == b.state()


class GeneralParser(Parser):
    """Only the general parser: one op at a time, no split scan, no runs."""
    __slots__ = ()

    def _scan(self, data: bytes, ops: list) -> int:
        return self._parse(data, ops, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, min_size=1, max_size=14), st.integers(0, 2**32), st.booleans())
def test_parser_runs_expand_to_the_general_ops(frames, seed, runs):
    data = render(frames)
    chunks = cut(data, seed)
    pa, pb = Parser(runs=runs), GeneralParser()
    got, want = [], []
    for c in chunks:
        for op in pa.feed(c):
            if op[0] == OP_RUN:
                assert op[5] >= 2
                bodies = run_bodies(op)
                assert len(bodies) == op[5] + 1 and bodies[0] == b""
                assert [x[:-2] for x in bodies[1:]] == [o[4] for o in expand_run(op)]
                got.extend(expand_run(op))
            else:
                got.append(op)
        want.extend(pb.feed(c))
    assert got == want
    assert (pa.error and pa.error.text) == (pb.error and pb.error.text)


def test_a_long_run_is_one_op_and_stops_at_the_first_different_frame():
    frame = b"PUB foo 5\r\nhello\r\n"
    data = frame * 100 + b"PUB foo 5\r\nhellO\r\n" + frame * 3 + b"PUB foo 6\r\nhello!\r\n" + frame[:7]
    ops = Parser().feed(data)
    assert [(op[0], op[5] if op[0] == OP_RUN else None) for op in ops] == \
        [(OP_RUN, 104), (OP_PUB, None)]
    assert run_length(data, 0, 11, 5) == 104


def test_a_run_whose_payloads_hold_its_header_line_renders_correctly():
    # each 12-byte payload is the run's own header line "PUB foo 12" CRLF: splitting the
    # run at that line finds twice as many pieces, so the bodies come from the payloads
    data = b"PUB foo 12\r\nPUB foo 12\r\n\r\n" * 20
    ops = Parser().feed(data)
    assert len(ops) == 1 and ops[0][0] == OP_RUN and ops[0][5] == 20
    bodies = run_bodies(ops[0])
    assert b"MSG foo 1 12\r\n".join(bodies) == b"MSG foo 1 12\r\nPUB foo 12\r\n\r\n" * 20


# ---- the route side --------------------------------------------------------------------

rframe_st = st.one_of(
    st.tuples(st.just("rmsg"), st.sampled_from(["foo", "foo.bar", "bar", "q.x"]),
              st.sampled_from(["", "", "r.1", "$JS.ACK.S.C.1.2.3.4.5@orig.subj"]),
              st.sampled_from(PAYLOADS), st.integers(1, 30)),
    st.tuples(st.just("queue"), st.sampled_from(["q.x", "foo"]), st.integers(1, 3)),
    st.tuples(st.just("hmsg"), st.sampled_from(["foo", "bar"]), st.integers(1, 3)),
    st.tuples(st.just("ping")),
    # a JetStream batch across a route: one subject, every frame its own reply
    # (`<ack>@<stored subject>`, or a plain reply), as broker/routed.py renders and reads them
    st.tuples(st.just("acks"), st.sampled_from(["foo", "bar", "q.x", "none.here"]),
              st.lists(st.sampled_from(["orig.subj", "a.b", "", "plain", "@"]), min_size=1, max_size=12),
              st.sampled_from(PAYLOADS)),
)


def render_route(frames: list) -> bytes:
    out = bytearray()
    for f in frames:
        if f[0] == "rmsg":
            _, subject, reply, payload, k = f
            for _ in range(k):
                rproto.append_msg(out, subject, reply, None, payload, None)
        elif f[0] == "queue":
            _, subject, k = f
            for _ in range(k):
                rproto.append_msg(out, subject, "", None, b"qq", ["grp"])
        elif f[0] == "acks":
            _, subject, stored, payload = f
            for i, s in enumerate(stored):
                reply = (f"_INBOX.r{i}" if s == "plain" else
                         f"$JS.ACK.S.C.1.{i + 10}.{i + 1}.1700000000.{len(stored) - i - 1}" +
                         ("@" if s == "@" else f"@{s}" if s else ""))  # "@": an empty subject after it
                rproto.append_msg(out, subject, reply, None, payload + b"%d" % i, None)
        elif f[0] == "hmsg":
            _, subject, k = f
            for _ in range(k):
                rproto.append_msg(out, subject, "r", b"NATS/1.0\r\n\r\n", b"h", None)
        else:
            out += b"PING\r\n"
    return bytes(out)


class RouteWorld:
    def __init__(self, runs: bool):
        self.server = server = Server(Options(port=0))
        self.subs = [make_conn(server, 2, runs), make_conn(server, 3, runs)]
        for i, c in enumerate(self.subs):
            connect(c, b'{"verbose":false,"pedantic":false,"headers":true}')
            feed(c, [b"SUB foo 1\r\nSUB > 2\r\nSUB orig.subj 5\r\n" if i == 0 else
                     b"SUB bar 7\r\nSUB q.* grp 8\r\nSUB foo 9\r\nUNSUB 9 4\r\n"])
        self.calls: list = []
        server.subscribe("q.*", lambda s, r, h, p: self.calls.append((s, r, h, p)))
        self.parser = rproto.RouteParser(on_msg=server.deliver_routed,
                                         on_run=server.deliver_routed_run if runs else None,
                                         on_replies=server.deliver_routed_replies if runs else None)

    def state(self) -> dict:
        s = self.server
        return {
            "out": [bytes(c.out) for c in self.subs],
            "counts": [(c.out_msgs, c.out_bytes) for c in self.subs],
            "server": (s.in_msgs, s.in_bytes, s.out_msgs, s.out_bytes, s.routed_in_msgs, s.routed_in_bytes),
            "parser": (self.parser.msgs, self.parser.bytes),
            "calls": self.calls,
            "subs": sorted((c.cid, sid, sub.delivered) for c in self.subs for sid, sub in c.subs.items()),
        }


@settings(max_examples=200, deadline=None)
@given(st.lists(rframe_st, min_size=1, max_size=10), st.integers(0, 2**32))
def test_routed_runs_match_message_by_message_delivery(frames, seed):
    data = render_route(frames)
    chunks = cut(data, seed)
    worlds = []
    for runs in (True, False):
        w = RouteWorld(runs)
        random.seed(seed)
        ops = []
        for c in chunks:
            w.server.batched(lambda: ops.extend(w.parser.feed(c)))
        worlds.append((w, ops))
    (a, ops_a), (b, ops_b) = worlds
    assert a.state() == b.state()
    assert [repr(o) for o in ops_a] == [repr(o) for o in ops_b]


def test_forward_bodies_writes_what_forward_writes():
    a, b = make_route(1), make_route(2)
    payloads = [b"one", b"two", b"thr"]
    bodies = [b""] + [p + b"\r\n" for p in payloads]
    a.forward_bodies("foo.bar", "r.1", bodies, 3, 3)
    for p in payloads:
        b.forward("foo.bar", "r.1", None, p, None)
    assert bytes(a._out) == bytes(b._out) == b"".join(b"RMSG $G foo.bar r.1 3\r\n%b\r\n" % p for p in payloads)
    assert (a.out_msgs, a.out_bytes) == (b.out_msgs, b.out_bytes) == (3, 9)


def test_long_mixed_streams_parse_as_the_general_parser_does():
    """Streams far longer than one split window (broker.protocol.SPLIT_WINDOW): requests
    with their own replies, runs, payloads with CRLF and PUB lines in them, PINGs."""
    for seed in range(6):
        rnd = random.Random(seed)
        out = bytearray()
        while len(out) < 120_000:
            kind = rnd.random()
            p = rnd.choice(PAYLOADS) + bytes(rnd.randrange(256) for _ in range(rnd.choice([0, 3, 40])))
            if kind < 0.5:
                out += b"PUB req _INBOX.%d %d\r\n%b\r\n" % (rnd.randrange(10**6), len(p), p)
            elif kind < 0.85:
                out += b"PUB bulk %d\r\n%b\r\n" % (len(p), p) * rnd.randint(1, 40)
            elif kind < 0.97:
                out += b"PING\r\n"
            else:
                out += b"PUB big %d\r\n%b\r\n" % (20_000, b"z" * 20_000)
        data = bytes(out)
        chunks = cut(data, seed)
        pa, pb = Parser(), GeneralParser()
        got, want = [], []
        for c in chunks:
            for op in pa.feed(c):
                got.extend(expand_run(op) if op[0] == OP_RUN else [op])
            want.extend(pb.feed(c))
        assert pa.error is None and pb.error is None
        assert got == want and len(got) > 500


def test_a_payload_ending_at_the_split_window_edge_still_needs_its_crlf():
    from broker.protocol import SPLIT_WINDOW
    first = b"PUB a 1\r\nx\r\n"  # a lone frame: the split scan starts after it
    body = bytearray()
    i = 0
    while SPLIT_WINDOW - len(body) > 200:
        body += b"PUB b _INBOX.%d 3\r\nabc\r\n" % i
        i += 1
    head = b"PUB c _INBOX.last %d\r\n"
    size = SPLIT_WINDOW - len(body) - len(head % 100)
    body += head % size + b"p" * size  # the window ends right after this payload
    assert len(body) == SPLIT_WINDOW
    for tail in (b"XY", b"\r\n"):
        data = first + bytes(body) + tail + b"PING\r\n"
        pa, pb = Parser(), GeneralParser()
        got = [x for op in pa.feed(data) for x in (expand_run(op) if op[0] == OP_RUN else [op])]
        assert got == pb.feed(data)
        assert (pa.error and pa.error.text) == (pb.error and pb.error.text)
        assert (pa.error is None) == (tail == b"\r\n")


class _Stored(NamedTuple):
    seq: int
    subject: str
    hdr: bytes | None
    data: bytes
    ts: int


stored_st = st.lists(st.tuples(st.sampled_from(["orders.a", "orders.b", "inbox.1"]),
                               st.sampled_from([None, b"NATS/1.0\r\nA: b\r\n\r\n"]),
                               st.sampled_from(PAYLOADS), st.sampled_from([1700000000, 1700000001])),
                     min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(stored_st, st.integers(1, 50), st.integers(0, 100))
def test_a_pull_batch_for_a_route_renders_what_delivering_one_by_one_writes(stored, dseq, extra):
    """Server.deliver_ack_run to a route peer (broker/routed.render_ack_run) writes the very
    frames, counts and bytes that delivering the batch's Outs one by one (deliver_as) does."""
    from broker.jetstream.consumer import Run

    msgs = [_Stored(100 + i, s, h, d, ts) for i, (s, h, d, ts) in enumerate(stored)]
    run = Run("inbox.1", msgs, "$JS.ACK.S.C.1.", dseq, len(msgs) + extra)
    routes = []
    for batched in (True, False):
        server = Server(Options(port=0))
        route = make_route(1)
        server.add_route_sub(route, "inbox.1", None, 1)
        if batched:
            assert server.deliver_ack_run(run.to, run.msgs, run.prefix.encode(), run.dseq, run.pending)
        else:
            for o in run.outs():
                server.deliver_as(*o)
        routes.append((bytes(route._out), route.out_msgs, route.out_bytes, server.out_msgs, server.out_bytes))
    assert routes[0] == routes[1]
