"""Key-value basics through nats-py 2.16 (bucket lifecycle, put/get/create/update/delete/purge)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.errors import BadRequestError, ServerError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from tests.conftest import our_server, reference


@pytest.fixture(params=["ours", "nats-server"])
def server(request, tmp_path):
    """Each test runs on our server and, to pin the expectations, on nats-server."""
    make = our_server if request.param == "ours" else reference
    srv = make(tmp_path).start()
    yield srv
    srv.stop()


def _run(url, body):
    async def main():
        nc = await nats.connect(url)
        try:
            await body(nc, nc.jetstream())
        finally:
            await nc.close()
    asyncio.run(main())


def test_kv_put_get_create_update(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="CFG", history=5)
        r1 = await kv.put("color", b"red")
        assert r1 == 1
        entry = await kv.get("color")
        assert (entry.key, entry.value, entry.revision) == ("color", b"red", 1)
        r2 = await kv.update("color", b"blue", last=r1)
        assert r2 == 2
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.update("color", b"green", last=r1)
        assert (await kv.get("color")).value == b"blue"
        r3 = await kv.create("size", b"L")
        with pytest.raises(KeyWrongLastSequenceError):
            await kv.create("size", b"XL")
        assert (await kv.get("size")).revision == r3
        old = await kv.get("color", revision=1)
        assert old.value == b"red"
        with pytest.raises(KeyNotFoundError):
            await kv.get("missing")
        status = await kv.status()
        assert status.bucket == "CFG"
        assert status.history == 5
        assert status.values == 3
    _run(server.url, body)


def test_kv_delete_purge_and_recreate(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="B1", history=3)
        await kv.put("k", b"1")
        await kv.put("k", b"2")
        await kv.delete("k")
        with pytest.raises(KeyNotFoundError):  # nats-py turns KeyDeletedError into this in get()
            await kv.get("k")
        # create over a tombstone succeeds (nats-py retries with the tombstone revision)
        rev = await kv.create("k", b"3")
        assert (await kv.get("k")).value == b"3"
        await kv.purge("k")
        with pytest.raises(KeyNotFoundError):
            await kv.get("k")
        info = await js.stream_info("KV_B1")
        assert info.state.messages == 1  # only the purge marker is left for k
        assert rev > 0
        # deleting a key with a wrong expected revision changes nothing
        await kv.put("j", b"x")
        with pytest.raises(BadRequestError) as exc:
            await kv.delete("j", last=1)
        assert exc.value.err_code == 10071
        assert (await kv.get("j")).value == b"x"
    _run(server.url, body)


def test_kv_history_limit_and_bucket_lifecycle(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="HIST", history=2)
        for i in range(5):
            await kv.put("h", str(i).encode())
        info = await js.stream_info("KV_HIST")
        assert info.state.messages == 2
        assert info.config.max_msgs_per_subject == 2
        assert info.config.deny_delete is True
        assert info.config.allow_rollup_hdrs is True
        kv2 = await js.key_value("HIST")
        assert (await kv2.get("h")).value == b"4"
        assert await js.delete_key_value("HIST") is True
        with pytest.raises(BucketNotFoundError):
            await js.key_value("HIST")
    _run(server.url, body)


def test_kv_direct_get_and_ttl_bucket(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="DIR", direct=True, history=2)
        info = await js.stream_info("KV_DIR")
        assert info.config.allow_direct is True
        await kv.put("a", b"1")
        await kv.put("a", b"2")
        entry = await kv.get("a")
        assert (entry.value, entry.revision) == (b"2", 2)
        assert (await kv.get("a", revision=1)).value == b"1"
        ttl = await js.create_key_value(bucket="TTL", ttl=60)
        sinfo = await js.stream_info("KV_TTL")
        assert sinfo.config.max_age == 60
        assert sinfo.config.duplicate_window == 60
        await ttl.put("x", b"y")
        assert (await ttl.get("x")).value == b"y"
    _run(server.url, body)


def test_kv_purge_deletes(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="PD", history=5)
        await kv.put("a", b"1")
        await kv.delete("a")
        await kv.put("b", b"2")
        await kv.purge("c")
        await kv.purge_deletes(olderthan=-1)
        info = await js.stream_info("KV_PD", subjects_filter=">")
        assert info.state.subjects == {"$KV.PD.b": 1}
        assert (await kv.get("b")).value == b"2"
    _run(server.url, body)


def test_kv_invalid_bucket_config_changes_nothing(server):
    async def body(nc, js):
        with pytest.raises(ServerError) as exc:
            await js.add_stream(name="KV_BAD", subjects=["$KV.BAD.>"], max_age=-1)
        assert (exc.value.err_code, exc.value.description) == (10052, "max age can not be negative")
        names = await js.streams_info()
        assert [s.config.name for s in names] == []
    _run(server.url, body)


def test_per_message_ttl_and_limit_markers(server):
    async def body(nc, js):
        kv = await js.create_key_value(bucket="TT", history=2, limit_marker_ttl=5)
        sinfo = await js.stream_info("KV_TT")
        assert sinfo.config.allow_msg_ttl is True
        assert sinfo.config.subject_delete_marker_ttl == 5
        await kv.create("short", b"v", msg_ttl=1)
        await kv.put("long", b"v")
        assert (await kv.get("short")).value == b"v"
        for _ in range(100):  # expiry is due after 1 s; poll generously
            try:
                await kv.get("short")
            except KeyNotFoundError:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(KeyNotFoundError):
            await kv.get("short")
        assert (await kv.get("long")).value == b"v"
        await js.add_stream(name="T", subjects=["t"], allow_msg_ttl=True)
        await js.publish("t", b"gone soon", msg_ttl=1)
        await js.publish("t", b"stays")
        for _ in range(100):
            if (await js.stream_info("T")).state.messages == 1:
                break
            await asyncio.sleep(0.1)
        assert (await js.stream_info("T")).state.messages == 1
        assert (await js.get_last_msg("T", "t")).data == b"stays"
    _run(server.url, body)
