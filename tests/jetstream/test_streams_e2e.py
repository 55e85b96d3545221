"""Streams end to end through nats-py: persistence, retention, expiry, direct get,
republish, config-file options and the /jsz and /healthz monitoring endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request

import nats
import pytest
from nats.js.api import RePublish, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from tests.conftest import our_server


def _run(url, body):
    async def main():
        nc = await nats.connect(url)
        try:
            return await body(nc, nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(main())


def _http(srv, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}{path}", timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture
def server(tmp_path):
    srv = our_server(tmp_path).start()
    yield srv
    srv.stop()


def test_restart_keeps_file_streams_drops_memory_streams(server):
    async def before(nc, js):
        await js.add_stream(name="FILE", subjects=["f.*"], max_msgs_per_subject=3, description="kept")
        await js.add_stream(name="MEM", subjects=["m.*"], storage=StorageType.MEMORY)
        for i in range(5):
            await js.publish("f.a", f"v{i}".encode())
        ack = await js.publish("f.b", b"once", headers={"Nats-Msg-Id": "once"})
        await js.publish("m.a", b"gone")
        return ack.seq

    async def after(nc, js):
        names = await js.streams_info()
        assert [s.config.name for s in names] == ["FILE"]
        info = await js.stream_info("FILE")
        assert (info.state.messages, info.state.first_seq, info.state.last_seq) == (4, 3, 6)
        assert info.config.description == "kept" and info.config.max_msgs_per_subject == 3
        dup = await js.publish("f.b", b"once", headers={"Nats-Msg-Id": "once"})
        assert dup.duplicate is True
        msg = await js.get_msg("FILE", 5)
        assert msg.data == b"v4"
        return dup.seq

    seq = _run(server.url, before)
    server.restart()
    assert _run(server.url, after) == seq


def test_workqueue_and_interest_retention(server):
    async def body(nc, js):
        await js.add_stream(name="WQ", subjects=["wq"], retention=RetentionPolicy.WORK_QUEUE)
        for i in range(3):
            await js.publish("wq", f"job{i}".encode())
        sub = await js.pull_subscribe("wq", durable="worker")
        msgs = await sub.fetch(3, timeout=5)
        assert [m.data for m in msgs] == [b"job0", b"job1", b"job2"]
        for m in msgs:
            await m.ack_sync()
        assert await _eventually(js, "WQ", 0)

        await js.add_stream(name="INT", subjects=["int"], retention=RetentionPolicy.INTEREST)
        await js.publish("int", b"nobody")
        assert (await js.stream_info("INT")).state.messages == 0
        isub = await js.pull_subscribe("int", durable="reader")
        await js.publish("int", b"somebody")
        assert (await js.stream_info("INT")).state.messages == 1
        got = await isub.fetch(1, timeout=5)
        await got[0].ack_sync()
        assert await _eventually(js, "INT", 0)
    _run(server.url, body)


async def _eventually(js, stream, messages) -> bool:
    for _ in range(100):
        if (await js.stream_info(stream)).state.messages == messages:
            return True
        await asyncio.sleep(0.05)
    return False


def test_max_age_expiry_runs_without_reads(server):
    async def body(nc, js):
        await js.add_stream(name="AGE", subjects=["age"], max_age=0.5)
        for _ in range(3):
            await js.publish("age", b"x")
    _run(server.url, body)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # /jsz reads counters only, so only the timer can expire
        if _http(server, "/jsz")[1]["messages"] == 0:
            break
        time.sleep(0.1)
    status, jsz = _http(server, "/jsz")
    assert (status, jsz["messages"], jsz["streams"]) == (200, 0, 1)


def test_direct_get_and_republish(server):
    async def body(nc, js):
        await js.add_stream(StreamConfig(name="D", subjects=["d.*"], allow_direct=True,
                                         republish=RePublish(src="d.*", dest="rp.{{wildcard(1)}}")))
        sub = await nc.subscribe("rp.>")
        await js.publish("d.a", b"one", headers={"X": "1"})
        await js.publish("d.a", b"two")
        got = await sub.next_msg(timeout=5)
        assert got.subject == "rp.a" and got.data == b"one"
        assert got.headers["Nats-Stream"] == "D" and got.headers["Nats-Sequence"] == "1"
        assert got.headers["Nats-Last-Sequence"] == "0" and got.headers["X"] == "1"
        second = await sub.next_msg(timeout=5)
        assert second.headers["Nats-Last-Sequence"] == "1"
        msg = await js.get_msg("D", 1, direct=True)
        assert (msg.data, msg.subject, msg.headers["X"]) == (b"one", "d.a", "1")
        last = await js.get_msg("D", subject="d.a", direct=True)
        assert (last.data, last.seq) == (b"two", 2)
        with pytest.raises(NotFoundError):
            await js.get_msg("D", 99, direct=True)
        assert await js.find_stream_name_by_subject("d.zzz") == "D"
    _run(server.url, body)


def test_invalid_requests_change_nothing(server):
    async def body(nc, js):
        await js.add_stream(name="V", subjects=["v"], max_msg_size=8, discard="new", max_msgs=1)
        resp = await nc.request("v", b"123456789", timeout=5)
        assert json.loads(resp.data)["error"]["err_code"] == 10054
        await js.publish("v", b"ok")
        resp = await nc.request("v", b"x", timeout=5, headers={"Nats-Expected-Last-Sequence": "0"})
        assert json.loads(resp.data)["error"] == {"code": 400, "err_code": 10071,
                                                  "description": "wrong last sequence: 1"}
        resp = await nc.request("$JS.API.STREAM.UPDATE.V", b'{"name":"V","storage":"memory"}', timeout=5)
        assert json.loads(resp.data)["error"]["err_code"] == 10052
        resp = await nc.request("$JS.API.STREAM.CREATE.V", b"{not json", timeout=5)
        assert json.loads(resp.data)["error"]["err_code"] == 10025
        info = await js.stream_info("V")
        assert (info.state.messages, info.config.storage, info.config.max_msg_size) == (1, StorageType.FILE, 8)
        resp = await nc.request("$JS.API.STREAM.INFO.NOPE", b"", timeout=5)
        assert json.loads(resp.data)["error"]["err_code"] == 10059
        account = await js.account_info()
        assert (account.streams, account.api.errors) == (1, 3)  # publish errors are not API errors
    _run(server.url, body)


def test_config_file_jetstream_block(tmp_path):
    store = tmp_path / "cfgstore"
    conf = tmp_path / "js.conf"
    conf.write_text(f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 1GB\n'
                    f'  max_file_store: 2GB\n  sync_interval: "1s"\n}}\n')
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        async def body(nc, js):
            await js.add_stream(name="C", subjects=["c"])
            await js.publish("c", b"x")
        _run(srv.url, body)
        status, jsz = _http(srv, "/jsz?streams=1")
        assert status == 200
        assert jsz["config"]["store_dir"] == str(store / "jetstream")
        assert jsz["config"]["sync_interval"] == 1_000_000_000
        assert (jsz["config"]["max_memory"], jsz["config"]["max_storage"]) == (1 << 30, 2 << 30)
        detail = jsz["account_details"][0]["stream_detail"][0]
        assert (detail["name"], detail["state"]["messages"]) == ("C", 1)
        assert _http(srv, "/healthz")[1] == {"status": "ok"}
        assert (store / "jetstream" / "$G" / "streams" / "C" / "meta.json").is_file()
    finally:
        srv.stop()


def test_storage_limits_and_unsupported_features(tmp_path):
    conf = tmp_path / "small.conf"
    conf.write_text(f'jetstream {{ store_dir: "{tmp_path / "small"}", max_file_store: 2KB }}\n')
    srv = our_server(tmp_path, "-c", str(conf), jetstream=False).start()
    try:
        async def body(nc, js):
            resp = await nc.request("$JS.API.STREAM.CREATE.BIG",
                                    b'{"name":"BIG","subjects":["big"],"max_bytes":4096}', timeout=5)
            assert json.loads(resp.data)["error"] == {
                "code": 500, "err_code": 10047, "description": "insufficient storage resources available"}
            await js.add_stream(name="S", subjects=["s"])
            errors = []
            for _ in range(40):
                resp = json.loads((await nc.request("s", b"x" * 100, timeout=5)).data)
                if "error" in resp:
                    errors.append(resp["error"])
            assert errors and errors[0] == {"code": 503, "err_code": 10023, "description": "insufficient resources"}
            info = await js.stream_info("S")
            assert 2048 <= info.state.bytes < 2048 + 138
            resp = await nc.request("$JS.API.STREAM.CREATE.M",  # external mirrors are not implemented
                                    b'{"name":"M","mirror":{"name":"S","external":{"api":"$JS.hub.API"}}}',
                                    timeout=5)
            assert json.loads(resp.data)["error"]["err_code"] == 10052
            assert [s.config.name for s in await js.streams_info()] == ["S"]
        _run(srv.url, body)
    finally:
        srv.stop()


def test_no_ack_stream_stores_without_answering(server):
    async def body(nc, js):
        await js.add_stream(name="NA", subjects=["na"], no_ack=True)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.request("na", b"quiet", timeout=0.5)
        assert (await js.stream_info("NA")).state.messages == 1
    _run(server.url, body)


def test_interest_retention_keeps_only_what_a_consumer_filter_wants(server):
    async def body(nc, js):
        await js.add_stream(name="IF", subjects=["if.*"], retention=RetentionPolicy.INTEREST)
        sub = await js.pull_subscribe("if.a", durable="only_a")
        await js.publish("if.a", b"wanted")
        await js.publish("if.b", b"unwanted")
        info = await js.stream_info("IF", subjects_filter=">")
        assert info.state.subjects == {"if.a": 1}
        msgs = await sub.fetch(1, timeout=5)
        await msgs[0].ack_sync()
        assert await _eventually(js, "IF", 0)
    _run(server.url, body)


def test_delete_and_recreate_while_publishing(server):
    async def body(nc, js):
        await js.add_stream(name="CH", subjects=["ch"])
        pending = [await js.publish_async("ch", b"x" * 64) for _ in range(500)]
        await js.delete_stream("CH")
        # publishes still queued for the deleted stream get no ack (as with nats-server)
        await asyncio.wait(pending, timeout=2)
        await js.add_stream(name="CH", subjects=["ch"])
        ack = await js.publish("ch", b"fresh")
        assert ack.seq == 1
        info = await js.stream_info("CH")
        assert (info.state.messages, info.state.last_seq) == (1, 1)
    _run(server.url, body)


def test_damaged_stream_meta_is_reported_and_others_still_load(server):
    async def create(nc, js):
        await js.add_stream(name="GOOD", subjects=["good"])
        await js.add_stream(name="BAD", subjects=["bad"])
        await js.publish("good", b"kept")
    _run(server.url, create)
    server.stop()
    meta = f"{server.store_dir}/jetstream/$G/streams/BAD/meta.json"
    with open(meta, "wb") as f:
        f.write(b"{ not json")
    server.start()

    async def check(nc, js):
        assert [s.config.name for s in await js.streams_info()] == ["GOOD"]
        assert (await js.stream_info("GOOD")).state.messages == 1
        assert (await js.publish("good", b"still works")).seq == 2
    _run(server.url, check)
    status, body = _http_status(server, "/healthz")
    assert status == 503 and "BAD" in json.dumps(body)


def _http_status(srv, path):
    try:
        return _http(srv, path)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sequences_survive_purge_and_restart(server):
    async def before(nc, js):
        await js.add_stream(name="SEQ", subjects=["seq"])
        for _ in range(5):
            await js.publish("seq", b"x")
        await js.purge_stream("SEQ")
        await js.add_stream(name="SKIP", subjects=["skip"])
        await js.publish("skip", b"x")
        await js.purge_stream("SKIP", seq=40)
        await js.add_stream(name="HOLE", subjects=["hole"])
        for _ in range(4):
            await js.publish("hole", b"x")
        await js.delete_msg("HOLE", 2)

    async def after(nc, js):
        st = (await js.stream_info("SEQ")).state
        assert (st.messages, st.first_seq, st.last_seq) == (0, 6, 5)
        assert (await js.publish("seq", b"y")).seq == 6
        st = (await js.stream_info("SKIP")).state
        assert (st.messages, st.first_seq, st.last_seq) == (0, 40, 39)
        assert (await js.publish("skip", b"y")).seq == 40
        st = (await js.stream_info("HOLE")).state
        assert (st.messages, st.first_seq, st.last_seq, st.num_deleted) == (3, 1, 4, 1)
        with pytest.raises(NotFoundError):
            await js.get_msg("HOLE", 2)

    _run(server.url, before)
    server.restart()
    _run(server.url, after)


def test_leftover_files_of_a_deleted_stream_do_not_return(server):
    async def before(nc, js):
        await js.add_stream(name="OLD", subjects=["old"])
        await js.publish("old", b"stale")
    _run(server.url, before)
    server.stop()
    os.remove(f"{server.store_dir}/jetstream/$G/streams/OLD/meta.json")  # a delete cut short
    server.start()

    async def after(nc, js):
        assert await js.streams_info() == []
        await js.add_stream(name="OLD", subjects=["old"])
        st = (await js.stream_info("OLD")).state
        assert (st.messages, st.last_seq) == (0, 0)
    _run(server.url, after)
