"""Route protocol parser/encoder: round trips, byte-by-byte and random splits, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import protocol as p


def _stream() -> bytes:
    info = p.RouteInfo(server_id="NABC", server_name="n1", cluster="test", port=6222,
                       connect_urls=["127.0.0.1:4222"])
    conn = p.RouteConnect(name="NABC", cluster="test")
    return b"".join([
        p.encode_info(info),
        p.encode_connect(conn),
        p.encode_rsub("foo.*", None, 1),
        p.encode_rsub("work", "q1", 3),
        p.encode_runsub("foo.*", None),
        p.encode_runsub("work", "q1"),
        p.encode_msg("foo.bar", "", None, b"hello", None),
        p.encode_msg("foo.bar", "_INBOX.x.1", None, b"", None),
        p.encode_msg("work", "_INBOX.y", None, b"a\r\nb", ["q1", "q2"]),
        p.encode_msg("work", "", b"NATS/1.0\r\nA: b\r\n\r\n", b"xyz", ["q1"]),
        p.encode_msg("h", "r", b"NATS/1.0\r\n\r\n", b"", None),
        p.PING_FRAME,
        p.PONG_FRAME,
        b"+OK\r\n",
        p.encode_err("Stale Connection"),
    ])


def _expected(ops: list) -> None:
    info, conn, s1, s2, u1, u2, m1, m2, m3, m4, m5, ping, pong, ok, err = ops
    assert info.info.server_id == "NABC" and info.info.connect_urls == ["127.0.0.1:4222"]
    assert info.info.port == 6222 and info.info.cluster == "test"
    assert conn.connect.name == "NABC" and conn.connect.cluster == "test"
    assert conn.raw["cluster"] == "test"
    assert (s1.account, s1.subject, s1.queue, s1.weight) == ("$G", "foo.*", None, 1)
    assert (s2.subject, s2.queue, s2.weight) == ("work", "q1", 3)
    assert (u1.subject, u1.queue) == ("foo.*", None)
    assert (u2.subject, u2.queue) == ("work", "q1")
    assert (m1.subject, m1.reply, m1.queues, m1.hdr, m1.payload) == ("foo.bar", "", None, None, b"hello")
    assert (m2.reply, m2.payload) == ("_INBOX.x.1", b"")
    assert (m3.reply, m3.queues, m3.payload) == ("_INBOX.y", ["q1", "q2"], b"a\r\nb")
    assert (m4.reply, m4.queues, m4.hdr, m4.payload) == ("", ["q1"], b"NATS/1.0\r\nA: b\r\n\r\n", b"xyz")
    assert (m5.reply, m5.hdr, m5.payload) == ("r", b"NATS/1.0\r\n\r\n", b"")
    assert ping is p.PING and pong is p.PONG and ok is p.OK
    assert err.text == "Stale Connection"


def test_round_trip_in_one_chunk():
    ops = p.RouteParser().feed(_stream())
    _expected(ops)


def test_byte_by_byte():
    parser = p.RouteParser()
    ops: list = []
    for b in _stream():
        ops += parser.feed(bytes([b]))
    _expected(ops)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_random_splits(cuts):
    data = _stream()
    points = sorted({c % (len(data) + 1) for c in cuts})
    parser = p.RouteParser()
    ops: list = []
    prev = 0
    for c in points + [len(data)]:
        ops += parser.feed(data[prev:c])
        prev = c
    _expected(ops)


@settings(max_examples=100, deadline=None)
@given(
    subject=st.from_regex(r"[a-z]{1,5}(\.[a-z*]{1,4}){0,3}", fullmatch=True),
    reply=st.sampled_from(["", "_INBOX.abc.1"]),
    hdr=st.sampled_from([None, b"NATS/1.0\r\nK: v\r\n\r\n"]),
    payload=st.binary(max_size=300),
    queues=st.sampled_from([None, ["g"], ["g1", "g.2"]]),
)
def test_msg_round_trip(subject, reply, hdr, payload, queues):
    (m,) = p.RouteParser().feed(p.encode_msg(subject, reply, hdr, payload, queues))
    assert (m.account, m.subject, m.reply, m.hdr, m.payload, m.queues) == (
        "$G", subject, reply, hdr, payload, queues)


def test_lf_only_control_lines_and_lowercase_verbs():
    ops = p.RouteParser().feed(b"ping\npong\r\nRS+ $G a\n")
    assert ops[0] is p.PING and ops[1] is p.PONG and ops[2].subject == "a"


@pytest.mark.parametrize("frame", [
    b"garbage here\r\n",
    b"RS+ $G\r\n",
    b"RS+ $G a q notanumber\r\n",
    b"RS- $G a b c\r\n",
    b"RMSG $G foo\r\n",
    b"RMSG $G foo x\r\n",
    b"RMSG $G foo + r 3\r\nabc\r\n",
    b"HMSG $G foo 9 3\r\n",
    b"INFO {not json\r\n",
    b"CONNECT [1,2]\r\n",
])
def test_bad_frames_raise_unknown_op(frame):
    with pytest.raises(p.RouteProtocolError) as exc:
        p.RouteParser().feed(frame)
    assert str(exc.value) == "Unknown Protocol Operation"


def test_payload_not_followed_by_crlf():
    with pytest.raises(p.RouteProtocolError):
        p.RouteParser().feed(b"RMSG $G foo 2\r\nabcd\r\n")


def test_caps_on_control_line_and_payload():
    parser = p.RouteParser(control_line_max_bytes=64, payload_max_bytes=10)
    with pytest.raises(p.RouteProtocolError) as exc:
        parser.feed(b"RS+ $G " + b"a" * 100)
    assert str(exc.value) == "maximum control line exceeded"
    with pytest.raises(p.RouteProtocolError) as exc:
        p.RouteParser(payload_max_bytes=10).feed(b"RMSG $G foo 11\r\n")
    assert str(exc.value) == "Maximum Payload Violation"


def test_partial_payload_waits_for_rest():
    parser = p.RouteParser()
    assert parser.feed(b"RMSG $G foo 5\r\nhel") == []
    assert parser.feed(b"lo\r") == []
    (m,) = parser.feed(b"\n")
    assert m.payload == b"hello"


def test_append_msg_matches_nats_server_forms():
    assert p.encode_msg("rt.foo", "", None, b"hello", ["workers"]) == b"RMSG $G rt.foo | workers 5\r\nhello\r\n"
    assert p.encode_msg("a", "r", None, b"x", ["q1", "q2"]) == b"RMSG $G a + r q1 q2 1\r\nx\r\n"
    assert p.encode_msg("a", "r", None, b"x", None) == b"RMSG $G a r 1\r\nx\r\n"
    assert p.encode_msg("a", "", b"NATS/1.0\r\n\r\n", b"x", None) == b"HMSG $G a 12 13\r\nNATS/1.0\r\n\r\nx\r\n"


def test_ops_before_an_error_are_returned_then_the_error():
    parser = p.RouteParser()
    ops = parser.feed(b"PING\r\nRS+ $G a\r\nBOGUS\r\nPONG\r\n")
    assert ops[0] is p.PING and ops[1].subject == "a" and len(ops) == 2
    assert parser.failed
    with pytest.raises(p.RouteProtocolError):
        parser.feed(b"")


def _msgs_via_callback(chunks) -> tuple[list, list]:
    got: list = []
    parser = p.RouteParser(on_msg=lambda *a: got.append(a))
    ops: list = []
    for c in chunks:
        ops += parser.feed(c)
    return got, ops


def _expected_msgs() -> list:
    return [(m.subject, m.reply, m.hdr, m.payload, m.queues)
            for m in p.RouteParser().feed(_stream()) if isinstance(m, p.Msg)]


def test_callback_path_byte_by_byte_matches_op_path():
    data = _stream()
    got, ops = _msgs_via_callback([bytes([b]) for b in data])
    assert got == _expected_msgs()
    assert not any(isinstance(o, p.Msg) for o in ops) and len(ops) == 10


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_callback_path_random_splits(cuts):
    data = _stream() + p.encode_msg("big", "r.1", None, b"z" * 5000, None)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    got, _ = _msgs_via_callback(chunks)
    assert got == _expected_msgs() + [("big", "r.1", None, b"z" * 5000, None)]


def test_callback_path_counts_and_drops_other_accounts():
    got: list = []
    parser = p.RouteParser(on_msg=lambda *a: got.append(a))
    parser.feed(b"RMSG $SYS x 2\r\nab\r\nRMSG $G y 3\r\nabc\r\nRMSG $G y r 1\r\nd\r\n")
    assert got == [("y", "", None, b"abc", None), ("y", "r", None, b"d", None)]
    assert parser.msgs == 3 and parser.bytes == 6


def test_callback_path_errors():
    parser = p.RouteParser(on_msg=lambda *a: None, payload_max_bytes=10)
    with pytest.raises(p.RouteProtocolError) as exc:
        parser.feed(b"RMSG $G y 11\r\n")
    assert str(exc.value) == "Maximum Payload Violation"
    with pytest.raises(p.RouteProtocolError):
        p.RouteParser(on_msg=lambda *a: None).feed(b"RMSG $G y 1\r\nabc\r\n")
    with pytest.raises(p.RouteProtocolError):
        p.RouteParser(on_msg=lambda *a: None).feed(b"RMSG $G \xff\xfe 1\r\na\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
       st.lists(st.sampled_from([b"aaaa", b"bbbb", b"RMSG $G x 4\r\n"[:4], b"\r\n\r\n"]), min_size=1, max_size=40))
def test_runs_of_identical_frames_by_length(cuts, payloads):
    frames = [p.encode_msg("run.s", "", None, pl, None) for pl in payloads]
    frames.insert(len(frames) // 2, p.encode_msg("other", "r", None, b"zz", None))
    data = b"".join(frames) + b"PING\r\n"
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    got, ops = _msgs_via_callback(chunks)
    want = [("run.s", "", None, pl, None) for pl in payloads]
    want.insert(len(payloads) // 2, ("other", "r", None, b"zz", None))
    assert got == want and ops == [p.PING]


def test_run_with_a_broken_frame_is_an_error():
    good = p.encode_msg("s", "", None, b"abcd", None)
    bad = b"RMSG $G s 4\r\nabcdXY"
    got: list = []
    parser = p.RouteParser(on_msg=lambda *a: got.append(a))
    with pytest.raises(p.RouteProtocolError):
        parser.feed(good * 3 + bad)
        parser.feed(b"")
    assert len(got) == 3


def test_interest_changes_and_messages_reach_the_host_in_wire_order():
    """With the hot-path callbacks set, an RS+ is handed over before the RMSG after it: a
    reply published to that subject while the RMSG is delivered must find the interest."""
    seen = []

    def on_op(op):
        seen.append(("ping",) if op is p.PING else ("op", type(op).__name__, op.subject))

    parser = p.RouteParser(on_msg=lambda s, r, h, b, q: seen.append(("msg", s, r, q)), on_op=on_op)
    data = (b"RS+ $G _INBOX.a\r\nRMSG $G req _INBOX.a 1\r\nx\r\nRS- $G _INBOX.a\r\nPING\r\n"
            b"RMSG $G req 1\r\ny\r\nRMSG $G req 1\r\nz\r\nRS+ $G q.b grp 1\r\nRMSG $G q.b + _INBOX.c grp 1\r\nw\r\n")
    want = [("op", "RSub", "_INBOX.a"), ("msg", "req", "_INBOX.a", None), ("op", "RUnsub", "_INBOX.a"), ("ping",),
            ("msg", "req", "", None), ("msg", "req", "", None), ("op", "RSub", "q.b"),
            ("msg", "q.b", "_INBOX.c", ["grp"])]
    for cut in range(len(data) + 1):  # any split gives the same order
        seen.clear()
        assert parser.feed(data[:cut]) == [] and parser.feed(data[cut:]) == []
        assert seen == want, (cut, seen)
