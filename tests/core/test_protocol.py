"""The sans-IO client parser: whole frames, any byte split, and nats-server's errors."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from broker.protocol import (ERR_MAX_CONTROL_LINE, ERR_MAX_PAYLOAD, ERR_UNKNOWN_OP, OP_CONNECT, OP_PING,
                             OP_PONG, OP_PUB, OP_SUB, OP_UNSUB, Parser)

STREAM = (
    b'CONNECT {"verbose":false,"headers":true}\r\n'
    b"PING\r\n"
    b"SUB foo.* 1\r\n"
    b"SUB foo.bar  workers 2\r\n"
    b"PUB foo.bar 5\r\nhello\r\n"
    b"PUB foo.bar  5\r\nhello\r\n"
    b"PUB foo.bar _INBOX.x 0\r\n\r\n"
    b"HPUB foo.bar _INBOX.y 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    b"UNSUB 1 \r\n"
    b"UNSUB 2 10\r\n"
    b"pong\r\n"
)

EXPECTED = [
    (OP_CONNECT, b'{"verbose":false,"headers":true}'),
    (OP_PING,),
    (OP_SUB, b"foo.*", None, b"1"),
    (OP_SUB, b"foo.bar", b"workers", b"2"),
    (OP_PUB, b"foo.bar", b"", None, b"hello"),
    (OP_PUB, b"foo.bar", b"", None, b"hello"),
    (OP_PUB, b"foo.bar", b"_INBOX.x", None, b""),
    (OP_PUB, b"foo.bar", b"_INBOX.y", b"NATS/1.0\r\n\r\n", b"hi"),
    (OP_UNSUB, b"1", 0),
    (OP_UNSUB, b"2", 10),
    (OP_PONG,),
]


def feed_all(p: Parser, chunks) -> list:
    out = []
    for c in chunks:
        out.extend(p.feed(c))
    return out


def test_whole_stream():
    p = Parser()
    assert p.feed(STREAM) == EXPECTED
    assert p.error is None


def test_one_byte_at_a_time():
    p = Parser()
    assert feed_all(p, [STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED
    assert p.error is None


@pytest.mark.parametrize("seed", range(50))
def test_random_splits(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 30)))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    p = Parser()
    assert feed_all(p, chunks) == EXPECTED


def test_tabs_and_case():
    p = Parser()
    assert p.feed(b"sub foo\tbar 1\r\npub foo 1\r\nx\r\nPiNg\r\n") == [
        (OP_SUB, b"foo", b"bar", b"1"), (OP_PUB, b"foo", b"", None, b"x"), (OP_PING,)]


def test_large_payload_in_pieces():
    payload = bytes(range(256)) * 4000
    frame = b"PUB big %d\r\n" % len(payload) + payload + b"\r\n"
    p = Parser()
    ops = feed_all(p, [frame[i:i + 65536] for i in range(0, len(frame), 65536)])
    assert ops == [(OP_PUB, b"big", b"", None, payload)]


@pytest.mark.parametrize("data,text", [
    (b"FOO bar\r\n", ERR_UNKNOWN_OP),
    (b"PUB\r\n", ERR_UNKNOWN_OP),
    (b"PUB foo 3\r\nabcdef\r\n", ERR_UNKNOWN_OP),
    (b"PUB foo x\r\n", ERR_UNKNOWN_OP),
    (b"PUB foo 2000000\r\n", ERR_MAX_PAYLOAD),
    (b"PUB " + b"a" * 5000 + b" 1\r\n", ERR_MAX_CONTROL_LINE),
    (b"SUB " + b"a" * 5000, ERR_MAX_CONTROL_LINE),
])
def test_errors(data, text):
    p = Parser()
    p.feed(data)
    assert p.error is not None and p.error.text == text


def test_silent_close_violations():
    for data in (b"SUB a b c d\r\n", b"HPUB foo 10 5\r\n"):
        p = Parser()
        p.feed(data)
        assert p.error is not None and p.error.text is None


def test_ops_before_error_are_kept():
    p = Parser()
    ops = p.feed(b"PING\r\nPUB foo 1\r\nx\r\nBOGUS\r\nPING\r\n")
    assert ops == [(OP_PING,), (OP_PUB, b"foo", b"", None, b"x")]
    assert p.error.text == ERR_UNKNOWN_OP
    assert p.feed(b"PING\r\n") == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_never_raises(chunks):
    p = Parser(max_control_line=256, max_payload=1024)
    for c in chunks:
        ops = p.feed(c)
        assert isinstance(ops, list)
        for op in ops:
            assert op[0] in (OP_PUB, OP_SUB, OP_UNSUB, OP_PING, OP_PONG, OP_CONNECT, 7)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_frames(data):
    frame = bytearray(STREAM)
    for _ in range(data.draw(st.integers(0, 5))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    p = Parser()
    ops = p.feed(bytes(frame))
    assert len(ops) <= len(EXPECTED) + 2
