"""Server shutdown with pull requests waiting: every request hears `409 Server Shutdown` with
`Nats-Pending-Messages` / `Nats-Pending-Bytes` (what it still wanted) before the connection
closes, byte for byte as nats-server sends it; nats-py pull and ordered consumers carry on
after the server comes back on the same store directory.

Each test runs against our broker and the real nats-server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time

import nats
import pytest

from tests.conftest import our_server, reference
from tests.jetstream.consumer_fixtures import WAIT_S


@pytest.fixture(params=["ours", "ref"])
def srv(request, tmp_path):
    s = (our_server(tmp_path) if request.param == "ours" else reference(tmp_path)).start()
    yield s
    s.stop()


class Raw:
    """A bare protocol client that keeps every byte the server sends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.buf = b""
        self.eof = False
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"protocol":1}\r\n'
                          b"SUB R.> 1\r\nPING\r\n")
        self.read_until(lambda b: b"PONG\r\n" in b)

    def read_until(self, pred, timeout: float = WAIT_S) -> bytes:
        deadline = time.monotonic() + timeout
        while not pred(self.buf):
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise AssertionError(f"condition not met; got {self.buf!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                self.eof = True
            self.buf += data
        return self.buf

    def pub(self, subject: str, body, reply: str = "") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.sock.sendall(f"PUB {subject} {reply} {len(data)}\r\n".encode() + data + b"\r\n")

    def request(self, subject: str, body, reply: str) -> dict:
        """Send an API request and wait for its MSG reply."""
        start = len(self.buf)
        self.pub(subject, body, reply)
        pat = re.compile(rb"MSG " + re.escape(reply.encode()) + rb" 1 (\d+)\r\n")
        buf = self.read_until(lambda b: (m := pat.search(b, start)) is not None
                              and len(b) >= m.end() + int(m.group(1)) + 2)
        m = pat.search(buf, start)
        return json.loads(buf[m.end():m.end() + int(m.group(1))])


def frames(data: bytes) -> list[tuple[str, bytes]]:
    """(subject, header block) of every HMSG in data."""
    out = []
    for m in re.finditer(rb"HMSG (\S+) 1 (\d+) (\d+)\r\n", data):
        out.append((m.group(1).decode(), data[m.end():m.end() + int(m.group(2))]))
    return out


def test_waiting_pull_requests_get_409_server_shutdown(srv):
    c = Raw(srv.port)
    assert "error" not in c.request("$JS.API.STREAM.CREATE.SD", {"name": "SD", "subjects": ["sd"]}, "R.a1")
    assert "error" not in c.request("$JS.API.CONSUMER.CREATE.SD.C", {"stream_name": "SD", "config": {
        "durable_name": "C", "name": "C", "ack_policy": "explicit"}}, "R.a2")
    for i in range(2):
        c.request("sd", b"hello", f"R.p{i}")
    # w1 takes the two stored messages and keeps waiting for three more (and fewer bytes)
    c.pub("$JS.API.CONSUMER.MSG.NEXT.SD.C", {"batch": 5, "expires": 60 * 10**9, "max_bytes": 1000}, "R.w1")
    c.read_until(lambda b: b.count(b"MSG sd 1 $JS.ACK.SD.C.") == 2)
    c.pub("$JS.API.CONSUMER.MSG.NEXT.SD.C", {"batch": 7, "expires": 60 * 10**9}, "R.w2")
    c.pub("$JS.API.CONSUMER.MSG.NEXT.SD.C", {"batch": 2, "expires": 60 * 10**9,
                                             "idle_heartbeat": 10 * 10**9}, "R.w3")
    for n in range(100):
        if c.request("$JS.API.CONSUMER.INFO.SD.C", b"", f"R.i{n}")["num_waiting"] == 3:
            break
    else:
        raise AssertionError("pull requests not registered")
    mark = len(c.buf)
    srv.signal(signal.SIGTERM)
    c.read_until(lambda b: False if not c.eof else True, timeout=WAIT_S)
    got = sorted(frames(c.buf[mark:]))
    assert got == [
        ("R.w1", b"NATS/1.0 409 Server Shutdown\r\nNats-Pending-Messages: 3\r\nNats-Pending-Bytes: 906\r\n\r\n"),
        ("R.w2", b"NATS/1.0 409 Server Shutdown\r\nNats-Pending-Messages: 7\r\nNats-Pending-Bytes: 0\r\n\r\n"),
        ("R.w3", b"NATS/1.0 409 Server Shutdown\r\nNats-Pending-Messages: 2\r\nNats-Pending-Bytes: 0\r\n\r\n"),
    ]
    srv.proc.wait(WAIT_S)


def test_nats_py_pull_and_ordered_consumers_resume_after_restart(srv):
    async def main():
        events: list[str] = []

        async def on_reconnect():
            events.append("reconnected")

        nc = await nats.connect(srv.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                reconnected_cb=on_reconnect)
        try:
            js = nc.jetstream()
            await js.add_stream(name="RR", subjects=["rr.>"])
            for i in range(3):
                await js.publish("rr.a", f"m{i}".encode())
            psub = await js.pull_subscribe("rr.a", durable="d")
            for m in await psub.fetch(3, timeout=WAIT_S):
                await m.ack_sync()
            seen: list[bytes] = []
            got = asyncio.Event()

            async def on_ordered(m):
                seen.append(m.data)
                got.set()

            await js.subscribe("rr.>", cb=on_ordered, ordered_consumer=True, idle_heartbeat=1.0)
            while len(seen) < 3:
                got.clear()
                await asyncio.wait_for(got.wait(), WAIT_S)
            # a fetch waiting for a fourth message when the server goes down (nats-py 2.16 reads
            # the 409 as a temporary error and keeps waiting until its own timeout)
            waiting = asyncio.ensure_future(psub.fetch(1, timeout=3))
            info = await js.consumer_info("RR", "d")
            while info.num_waiting == 0:
                await asyncio.sleep(0.01)
                info = await js.consumer_info("RR", "d")
            await asyncio.to_thread(srv.stop)
            await asyncio.to_thread(srv.start)
            with pytest.raises(nats.errors.TimeoutError):
                await asyncio.wait_for(waiting, WAIT_S)
            while "reconnected" not in events:
                await asyncio.sleep(0.05)
            for i in range(3, 5):
                await js.publish("rr.a", f"m{i}".encode())
            msgs = await psub.fetch(2, timeout=WAIT_S)
            assert [m.data for m in msgs] == [b"m3", b"m4"]
            assert [(m.metadata.sequence.stream, m.metadata.sequence.consumer) for m in msgs] == [(4, 4), (5, 5)]
            for m in msgs:
                await m.ack_sync()
            deadline = asyncio.get_running_loop().time() + 30
            while len(seen) < 5:  # the ordered consumer re-creates itself after missed heartbeats
                got.clear()
                left = deadline - asyncio.get_running_loop().time()
                assert left > 0, seen
                try:
                    await asyncio.wait_for(got.wait(), left)
                except asyncio.TimeoutError:
                    pass
            assert seen == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        finally:
            await nc.close()
    asyncio.run(asyncio.wait_for(main(), 90))
