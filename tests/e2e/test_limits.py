"""Connection-level limits against a server process: stale connections, max connections, max subs."""

import json
import socket
import time
import urllib.error
import urllib.request

from tests.conftest import our_server


def read_until_closed(s: socket.socket, timeout: float = 15.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return out
        if not chunk:
            return out + b"<closed>"
        out += chunk


def connect(port: int, connect_json: bytes = b'{"verbose":false,"pedantic":false}') -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    info = s.recv(65536)
    assert info.startswith(b"INFO ")
    s.sendall(b"CONNECT " + connect_json + b"\r\nPING\r\n")
    assert s.recv(65536).startswith(b"PONG")
    return s


def test_stale_connection(tmp_path):
    conf = tmp_path / "stale.conf"
    conf.write_text("ping_interval: 1s\nping_max: 2\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        s = connect(srv.port)
        out = read_until_closed(s, 30)
        assert out.endswith(b"-ERR 'Stale Connection'\r\n<closed>")
        assert out.count(b"PING\r\n") == 2
    finally:
        srv.stop()


def test_pings_answered_keep_connection(tmp_path):
    conf = tmp_path / "ping.conf"
    conf.write_text("ping_interval: 1s\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        s = connect(srv.port)
        s.settimeout(10)
        pings = 0
        buf = b""
        while pings < 4:
            buf += s.recv(4096)
            while b"PING\r\n" in buf:
                buf = buf.replace(b"PING\r\n", b"", 1)
                pings += 1
                s.sendall(b"PONG\r\n")
        s.sendall(b"PING\r\n")
        assert s.recv(4096).startswith(b"PONG")
        s.close()
    finally:
        srv.stop()


def _until_no_clients(srv, timeout: float = 10.0) -> None:
    """The client port accepts (into its backlog) as soon as it is bound, so the monitor
    may still be coming up when the harness's probe got through: refused is retried too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/varz", timeout=5) as resp:
                if json.loads(resp.read())["connections"] == 0:
                    return
        except urllib.error.URLError:
            pass
        assert time.monotonic() < deadline, "the port probe's connection never went away"
        time.sleep(0.02)


def test_max_connections(tmp_path):
    conf = tmp_path / "maxc.conf"
    conf.write_text("max_connections: 2\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        _until_no_clients(srv)  # the harness's port probe must not count as one of the two
        a = connect(srv.port)
        b = connect(srv.port)
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        out = read_until_closed(c)
        assert out.startswith(b"INFO ")
        assert out.endswith(b"-ERR 'maximum connections exceeded'\r\n<closed>")
        a.sendall(b"PING\r\n")
        assert a.recv(4096).startswith(b"PONG")
        a.close()
        b.close()
        time.sleep(0.2)
        d = connect(srv.port)
        d.close()
    finally:
        srv.stop()


def test_max_subscriptions(tmp_path):
    conf = tmp_path / "maxs.conf"
    conf.write_text("max_subscriptions: 2\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        s = connect(srv.port)
        s.sendall(b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n")
        s.settimeout(5)
        out = b""
        while b"PONG" not in out:
            out += s.recv(4096)
        assert out == b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n"
        s.close()
    finally:
        srv.stop()
