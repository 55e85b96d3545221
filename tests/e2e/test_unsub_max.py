"""UNSUB <sid> <max> against nats-server: the messages a subscription received before the
UNSUB count toward max (3 received, then `UNSUB 1 5`: 2 more; received >= max: removed at
once), for plain and queue subscriptions, published on the subscriber's node or across a
route, and /connz?subs=detail shows the subscription's msgs and max.

Each side is a two-node cluster (ours, and nats-server's) driven by raw TCP clients.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

import pytest

from tests.conftest import free_port, our_server, reference

WAIT_S = 10.0
CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
MSG_RE = re.compile(rb"MSG (\S+) (\S+) (\d+)\r\n")


class Client:
    """A raw NATS client: what it sends, and the MSG frames it has read so far."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.buf = b""
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = b""
        self.msgs: list[tuple[bytes, bytes]] = []  # (subject, sid)
        self.pongs = 0
        self.send(CONNECT)
        self.flush()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError("connection closed")
        self.buf += chunk
        while True:
            if self.buf.startswith((b"PING\r\n", b"PONG\r\n", b"+OK\r\n")) or \
                    (self.buf.startswith((b"INFO ", b"-ERR")) and b"\r\n" in self.buf):
                line, _, self.buf = self.buf.partition(b"\r\n")
                if line == b"PING":
                    self.send(b"PONG\r\n")
                elif line == b"PONG":
                    self.pongs += 1
                continue
            m = MSG_RE.match(self.buf)
            if m is None or len(self.buf) < m.end() + int(m.group(3)) + 2:
                return
            self.msgs.append((m.group(1), m.group(2)))
            self.buf = self.buf[m.end() + int(m.group(3)) + 2:]

    def flush(self) -> None:
        """PING, and read until its PONG: the server has processed what was sent before."""
        want = self.pongs + 1
        self.send(b"PING\r\n")
        while self.pongs < want:
            self._read()

    def wait_msg(self, subject: bytes) -> None:
        deadline = time.monotonic() + WAIT_S
        while not any(s == subject for s, _ in self.msgs):
            assert time.monotonic() < deadline, f"no MSG on {subject!r}"
            self._read()

    def count(self, subject: bytes) -> int:
        return sum(1 for s, _ in self.msgs if s == subject)

    def close(self) -> None:
        self.sock.close()


def http_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def start_pair(tmp, make, name: str) -> list:
    cports = [free_port(), free_port()]
    nodes = []
    for i in range(2):
        p = make(tmp, "--cluster", f"nats://127.0.0.1:{cports[i]}", "--routes", f"nats://127.0.0.1:{cports[0]}",
                 "--cluster_name", name, "-n", f"{name}{i + 1}", jetstream=False, name=f"{name}{i + 1}")
        nodes.append(p.start())
    deadline = time.monotonic() + 20
    while not all(http_json(p.http_port, "/routez")["num_routes"] >= 1 for p in nodes):  # (nats-server pools routes)
        assert time.monotonic() < deadline, f"{name}: the two nodes did not connect"
        time.sleep(0.05)
    return nodes


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unsubmax")
    started = []
    try:
        for make, name in ((our_server, "ours"), (reference, "ref")):
            started.append(start_pair(tmp, make, name))
        yield {"ours": started[0], "ref": started[1]}
    finally:
        for nodes in started:
            for p in nodes:
                p.stop()


_seq = iter(range(1, 1 << 30))


def scenario(nodes: list, queue: bool, routed: bool, before: int, unsub: bytes, after: int = 10) -> dict:
    """A subscription on node 1 receives `before` messages, then sends `unsub`, then `after`
    more are published (on node 2 when routed). What it received after, and its
    /connz?subs=detail entry right after the UNSUB."""
    n = next(_seq)
    subj, sync = b"um.%d" % n, b"um.sync.%d" % n
    sub = Client(nodes[0].port)
    pub = Client(nodes[1 if routed else 0].port)
    try:
        sub.send(b"SUB %b %b1\r\nSUB %b 2\r\n" % (subj, b"grp " if queue else b"", sync))
        sub.flush()
        # node 2 has both interests once a sync message gets through (RS+ arrive in order)
        deadline = time.monotonic() + WAIT_S
        while True:
            pub.send(b"PUB %b 0\r\n\r\n" % sync)
            pub.flush()
            try:
                sub.sock.settimeout(0.2)
                sub.wait_msg(sync)
                break
            except (socket.timeout, AssertionError):
                assert time.monotonic() < deadline, "interest did not cross the route"
            finally:
                sub.sock.settimeout(WAIT_S)
        sub.msgs.clear()

        def publish(k: int) -> None:
            pub.send(b"PUB %b 1\r\nx\r\n" % subj * k + b"PUB %b 0\r\n\r\n" % sync)
            pub.flush()
            sub.wait_msg(sync)  # after the k messages on the same path

        publish(before)
        got_before = sub.count(subj)
        sub.send(unsub)
        sub.flush()
        detail = [d for c in http_json(nodes[0].http_port, "/connz?subs=detail")["connections"]
                  for d in c.get("subscriptions_list_detail", []) if d["subject"] == subj.decode()]
        sub.msgs.clear()
        publish(after)
        return {"before": got_before, "after": sub.count(subj),
                "detail": [{k: d.get(k) for k in ("sid", "qgroup", "msgs", "max")} for d in detail]}
    finally:
        sub.close()
        pub.close()


CASES = {
    # name: (received before, UNSUB line, expected deliveries after)
    "received_below_max": (3, b"UNSUB 1 5\r\n", 2),
    "received_equals_max": (3, b"UNSUB 1 3\r\n", 0),
    "received_above_max": (5, b"UNSUB 1 3\r\n", 0),
    "none_received": (0, b"UNSUB 1 2\r\n", 2),
    "max_zero": (3, b"UNSUB 1 0\r\n", 0),
    "no_max": (3, b"UNSUB 1\r\n", 0),
    "max_raised": (3, b"UNSUB 1 4\r\nUNSUB 1 6\r\n", 3),
}


@pytest.mark.parametrize("routed", [False, True], ids=["local", "routed"])
@pytest.mark.parametrize("queue", [False, True], ids=["plain", "queue"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unsub_max_counts_messages_received_before_the_unsub(clusters, case, queue, routed):
    before, unsub, want_after = CASES[case]
    want = scenario(clusters["ref"], queue, routed, before, unsub)
    got = scenario(clusters["ours"], queue, routed, before, unsub)
    assert want["before"] == before and want["after"] == want_after, want  # what nats-server does
    assert got == want
