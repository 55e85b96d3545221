"""Random and mutated frames against a live server: it never crashes and keeps serving."""

import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import our_server

SEED_FRAMES = [
    b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n',
    b"SUB foo.* q 1\r\n", b"SUB > 2\r\n", b"PUB foo.bar reply 5\r\nhello\r\n",
    b"HPUB foo.bar 22 24\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n", b"UNSUB 1 3\r\n", b"PING\r\n", b"PONG\r\n",
    b"PUB foo 1000000\r\n", b"SUB foo..bar 3\r\n",
]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = our_server(tmp, jetstream=True).start()
    yield srv
    srv.stop()


def blast(port: int, data: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    try:
        s.recv(65536)
        s.sendall(data)
        s.settimeout(0.05)
        try:
            s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()


def alive(port: int) -> bool:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.recv(65536)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        return s.recv(65536).startswith(b"PONG")
    finally:
        s.close()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_frames_never_crash(live, data):
    frames = data.draw(st.lists(st.sampled_from(SEED_FRAMES), min_size=1, max_size=8))
    buf = bytearray(b"".join(frames))
    for _ in range(data.draw(st.integers(0, 6))):
        op = data.draw(st.integers(0, 2))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == 0 and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == 1:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[i:i + data.draw(st.integers(1, 8))]
    blast(live.port, bytes(buf))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(live, raw):
    blast(live.port, raw)


def test_still_serving_after_fuzz(live):
    assert alive(live.port)
    assert "Traceback" not in live.log_text()
