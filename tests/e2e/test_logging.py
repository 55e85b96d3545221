"""-V traces client operations with nats-server's level label and arrow; -l writes a log file."""

import socket
import time

from tests.conftest import our_server


def test_trace_and_log_file(tmp_path):
    logfile = tmp_path / "node.log"
    srv = our_server(tmp_path, "-V", "-l", str(logfile), jetstream=False).start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.recv(65536)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB a.b 7\r\nPUB a.b 2\r\nhi\r\nPING\r\n')
        buf = b""
        while b"PONG" not in buf:
            buf += s.recv(65536)
        s.close()
        deadline = time.monotonic() + 10
        text = ""
        while "<<- [PING]" not in text and time.monotonic() < deadline:
            time.sleep(0.1)
            text = logfile.read_text()
        assert "[TRC]" in text
        for line in ("<<- [SUB a.b 7]", "<<- [PUB a.b 2]", "<<- [PING]"):
            assert line in text
        assert "[INF] Server is ready" in text
    finally:
        srv.stop()
