"""A subscriber that stops reading is cut off; the publisher and other subscribers never stall."""

import asyncio
import json
import socket
import urllib.request

import nats

from tests.conftest import our_server

PAYLOAD = b"x" * 1024
COUNT = 20000  # ~20 MiB, far over the 2 MiB max_pending below


def test_slow_consumer_is_disconnected_and_counted(tmp_path):
    conf = tmp_path / "sc.conf"
    conf.write_text("max_pending: 2MB\nmax_payload: 64KB\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", srv.port))
        slow.recv(4096)
        slow.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB data 1\r\nPING\r\n')
        assert slow.recv(4096).startswith(b"PONG")

        async def main():
            fast = await nats.connect(srv.url, pending_size=64 * 1024 * 1024)
            got = []
            done = asyncio.Event()

            async def cb(msg):
                got.append(len(msg.data))
                if len(got) == COUNT:
                    done.set()
            await fast.subscribe("data", cb=cb, pending_msgs_limit=COUNT * 2)
            pub = await nats.connect(srv.url)
            for i in range(COUNT):
                await pub.publish("data", PAYLOAD)
                if i % 500 == 499:  # keep the healthy subscriber's backlog well under max_pending
                    await pub.flush(timeout=30)
            await pub.flush(timeout=30)
            await asyncio.wait_for(done.wait(), 60)
            await pub.close()
            await fast.close()
            return len(got)
        assert asyncio.run(main()) == COUNT

        with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/varz", timeout=5) as r:
            v = json.loads(r.read())
        assert v["slow_consumers"] >= 1
        # the slow connection was closed by the server: draining it ends in EOF
        slow.settimeout(10)
        while True:
            try:
                chunk = slow.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
        slow.close()
    finally:
        srv.stop()
