"""Core NATS through unmodified nats-py against our server process."""

import asyncio
import json
import signal
import ssl
import urllib.request

import nats
import pytest
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from tests.conftest import our_server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def varz(srv):
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/varz", timeout=5) as r:
        return json.loads(r.read())


def connz(srv, q=""):
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/connz{q}", timeout=5) as r:
        return json.loads(r.read())


def test_seed_core_publish_subscribe(core_server):
    """The seed article's Core Publish-Subscribe example, output line by line."""
    async def main():
        nc = await nats.connect(core_server.url)
        lines = []
        await nc.publish("greet.1", b"hello")
        sub = await nc.subscribe("greet.*")
        try:
            msg = await sub.next_msg(timeout=0.05)
        except NatsTimeout:
            msg = None
        lines.append("subscribed after a publish...")
        lines.append(f"msg is nil? {'true' if msg is None else 'false'}")
        await nc.publish("greet.2", b"hello")
        await nc.publish("greet.3", b"hello")
        for _ in range(2):
            m = await sub.next_msg(timeout=1)
            lines.append(f'msg data: "{m.data.decode()}" on subject "{m.subject}"')
        await nc.publish("greet.4", b"hello")
        m = await sub.next_msg(timeout=1)
        lines.append(f'msg data: "{m.data.decode()}" on subject "{m.subject}"')
        await nc.drain()
        return lines
    assert run(main()) == [
        "subscribed after a publish...",
        "msg is nil? true",
        'msg data: "hello" on subject "greet.2"',
        'msg data: "hello" on subject "greet.3"',
        'msg data: "hello" on subject "greet.4"',
    ]


def test_seed_request_reply(core_server):
    """The seed article's Request-Reply example, including the final no-responders error."""
    async def main():
        nc = await nats.connect(core_server.url)
        out = []

        async def handler(msg):
            await msg.respond(b"hello, " + msg.subject[6:].encode())
        sub = await nc.subscribe("greet.*", cb=handler)
        for name in ("joe", "sue", "bob"):
            rep = await nc.request(f"greet.{name}", b"", timeout=1)
            out.append(rep.data.decode())
        await sub.unsubscribe()
        try:
            await nc.request("greet.joe", b"", timeout=1)
        except NoRespondersError as e:
            out.append(str(e))
        await nc.drain()
        return out
    assert run(main()) == ["hello, joe", "hello, sue", "hello, bob", "nats: no responders available for request"]


def test_wildcards_queue_groups_headers(core_server):
    async def main():
        nc = await nats.connect(core_server.url)
        got = {"star": [], "gt": [], "q1": 0, "q2": 0, "hdr": None}
        async def star(m): got["star"].append(m.subject)
        async def gt(m): got["gt"].append(m.subject)
        async def q1(m): got["q1"] += 1
        async def q2(m): got["q2"] += 1
        await nc.subscribe("a.*", cb=star)
        await nc.subscribe("a.>", cb=gt)
        await nc.subscribe("work", queue="g", cb=q1)
        await nc.subscribe("work", queue="g", cb=q2)
        hsub = await nc.subscribe("h")
        await nc.publish("a.b", b"1")
        await nc.publish("a.b.c", b"2")
        for _ in range(200):
            await nc.publish("work", b"x")
        await nc.publish("h", b"body", headers={"X-Trace": "t1", "Other": "v"})
        m = await hsub.next_msg(timeout=2)
        await nc.flush()
        await asyncio.sleep(0.2)
        await nc.drain()
        return got, m
    got, m = run(main())
    assert got["star"] == ["a.b"]
    assert got["gt"] == ["a.b", "a.b.c"]
    assert got["q1"] + got["q2"] == 200 and got["q1"] > 0 and got["q2"] > 0
    assert m.data == b"body" and m.headers == {"X-Trace": "t1", "Other": "v"}


def test_unsubscribe_after_n_and_drain(core_server):
    async def main():
        nc = await nats.connect(core_server.url)
        got = []
        async def cb(m): got.append(m.data)
        sub = await nc.subscribe("n", cb=cb)
        await sub.unsubscribe(limit=3)
        for i in range(10):
            await nc.publish("n", str(i).encode())
        await nc.flush()
        await asyncio.sleep(0.2)
        slow = []
        async def slow_cb(m):
            await asyncio.sleep(0.01)
            slow.append(m.data)
        await nc.subscribe("d", cb=slow_cb)
        for i in range(20):
            await nc.publish("d", b"x")
        await nc.flush()
        await nc.drain()
        return got, slow
    got, slow = run(main())
    assert got == [b"0", b"1", b"2"]
    assert len(slow) == 20


def test_headers_stripped_for_clients_without_headers(core_server):
    async def main():
        nc = await nats.connect(core_server.url)
        reader, writer = await asyncio.open_connection("127.0.0.1", core_server.port)
        await reader.readline()
        writer.write(b'CONNECT {"verbose":false}\r\nSUB h 1\r\nPING\r\n')
        await writer.drain()
        assert await reader.readline() == b"PONG\r\n"
        await nc.publish("h", b"data", headers={"A": "b"})
        await nc.flush()
        line = await reader.readline()
        body = await reader.readline()
        writer.close()
        await nc.close()
        return line, body
    line, body = run(main())
    assert line == b"MSG h 1 4\r\n" and body == b"data\r\n"


def test_varz_and_connz_counters_match_client_stats(tmp_path):
    srv = our_server(tmp_path, jetstream=False).start()
    try:
        async def main():
            nc = await nats.connect(srv.url, name="counter")
            sub = await nc.subscribe("c")
            for _ in range(100):
                await nc.publish("c", b"x")
            await nc.flush()
            for _ in range(100):
                await sub.next_msg(timeout=2)
            v = varz(srv)
            c = connz(srv, "?subs=1")
            stats = dict(nc.stats)
            await nc.close()
            return v, c, stats
        v, c, stats = run(main())
        assert v["in_msgs"] == 100 and v["in_bytes"] == 100
        assert v["out_msgs"] == 100 and v["out_bytes"] == 100
        assert v["connections"] == 1 and v["subscriptions"] == 1
        conn = c["connections"][0]
        assert conn["name"] == "counter" and conn["subscriptions_list"] == ["c"]
        assert conn["in_msgs"] == stats["out_msgs"] == 100
        assert conn["out_msgs"] == stats["in_msgs"] == 100
        assert conn["in_bytes"] == stats["out_bytes"] == 100
    finally:
        srv.stop()


@pytest.mark.parametrize("mode", ["userpass", "token"])
def test_auth(tmp_path, mode):
    extra = ["--user", "alice", "--pass", "s3cret"] if mode == "userpass" else ["--auth", "tok123"]
    srv = our_server(tmp_path, *extra, jetstream=False).start()
    good = f"nats://alice:s3cret@127.0.0.1:{srv.port}" if mode == "userpass" else f"nats://tok123@127.0.0.1:{srv.port}"
    bad = f"nats://alice:wrong@127.0.0.1:{srv.port}" if mode == "userpass" else f"nats://nope@127.0.0.1:{srv.port}"
    try:
        async def main():
            nc = await nats.connect(good)
            sub = await nc.subscribe("x")
            await nc.publish("x", b"ok")
            msg = await sub.next_msg(timeout=2)
            await nc.close()
            errors = []
            async def err_cb(e): errors.append(e)
            with pytest.raises(Exception) as ei:
                await nats.connect(bad, allow_reconnect=False, error_cb=err_cb, max_reconnect_attempts=0)
            return msg.data, str(ei.value), errors
        data, err, errors = run(main())
        assert data == b"ok"
        assert "authorization violation" in (err + " ".join(map(str, errors))).lower()
    finally:
        srv.stop()


def test_auth_timeout(tmp_path):
    srv = our_server(tmp_path, "--user", "a", "--pass", "b", jetstream=False).start()
    try:
        async def main():
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            info = await reader.readline()
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return info, rest
        info, rest = run(main())
        assert b'"auth_required":true' in info
        assert rest == b"-ERR 'Authentication Timeout'\r\n"
    finally:
        srv.stop()


def test_tls(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))
    srv = our_server(tmp_path, "--tls", "--tlscert", str(cert_path), "--tlskey", str(key_path),
                     jetstream=False).start()
    try:
        async def main():
            ctx = ssl.create_default_context(cafile=str(ca_path))
            nc = await nats.connect(f"tls://127.0.0.1:{srv.port}", tls=ctx)
            sub = await nc.subscribe("secure")
            await nc.publish("secure", b"tls works")
            m = await sub.next_msg(timeout=2)
            r = m.data
            await nc.close()
            return r
        assert run(main()) == b"tls works"
    finally:
        srv.stop()


def test_lame_duck_mode(tmp_path):
    conf = tmp_path / "ldm.conf"
    conf.write_text("lame_duck_duration: 30s\nlame_duck_grace_period: 1s\n")
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        async def main():
            fired = asyncio.Event()
            async def ldm_cb():
                fired.set()
            nc = await nats.connect(srv.url, lame_duck_mode_cb=ldm_cb, allow_reconnect=False)
            srv.signal(signal.SIGUSR2)
            await asyncio.wait_for(fired.wait(), 10)
            await nc.close()
            return True
        assert run(main())
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()


def test_graceful_sigterm_flushes_and_exits(tmp_path):
    srv = our_server(tmp_path, jetstream=False).start()
    async def main():
        closed = asyncio.Event()
        async def closed_cb():
            closed.set()
        nc = await nats.connect(srv.url, allow_reconnect=False, closed_cb=closed_cb)
        srv.signal(signal.SIGTERM)
        await asyncio.wait_for(closed.wait(), 10)
        return True
    assert run(main())
    assert srv.proc.wait(10) == 0
