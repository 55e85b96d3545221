"""Object store through nats-py: put, get, info, list, delete, watch (ordered consumers on
chunk and meta subjects, flow control for large objects). Runs against ours and nats-server."""

from __future__ import annotations

import hashlib

import pytest
from nats.js.errors import NotFoundError, ObjectNotFoundError

from tests.jetstream.consumer_fixtures import run, server_fixture

server = server_fixture()


def blob(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d" % i).digest()
        i += 1
    return bytes(out[:n])


def test_put_get_info_small_and_large(server):
    async def main(nc):
        obs = await nc.jetstream().create_object_store("OB1")
        small = await obs.put("small.txt", b"hello world")
        assert (small.name, small.size, small.chunks) == ("small.txt", 11, 1)
        data = blob(3 * 1024 * 1024 + 17)  # 25 chunks of 128 KiB: exercises flow control
        info = await obs.put("big.bin", data)
        assert info.size == len(data) and info.chunks == 25
        res = await obs.get("big.bin")
        assert res.data == data and res.info.digest == info.digest
        assert (await obs.get("small.txt")).data == b"hello world"
        got = await obs.get_info("big.bin")
        assert got.nuid == info.nuid and got.size == len(data)
        with pytest.raises((ObjectNotFoundError, NotFoundError)):
            await obs.get("missing")
    run(main, server.url)


def test_overwrite_list_and_delete(server):
    async def main(nc):
        obs = await nc.jetstream().create_object_store("OB2")
        await obs.put("a", b"one")
        await obs.put("b", blob(300_000))
        await obs.put("a", b"two")
        assert (await obs.get("a")).data == b"two"
        names = sorted(i.name for i in await obs.list())
        assert names == ["a", "b"]
        await obs.delete("b")
        with pytest.raises((ObjectNotFoundError, NotFoundError)):
            await obs.get("b")
        listed = {i.name: i.deleted for i in await obs.list(ignore_deletes=False)}
        assert listed == {"a": None, "b": True} or listed == {"a": False, "b": True}
        status = await obs.status()
        assert status.bucket == "OB2"
    run(main, server.url)


def test_watch(server):
    async def main(nc):
        obs = await nc.jetstream().create_object_store("OB3")
        await obs.put("first", b"1")
        w = await obs.watch()
        e = await w.updates(timeout=5)
        assert e.name == "first"
        assert await w.updates(timeout=5) is None
        await obs.put("second", b"22")
        e = await w.updates(timeout=5)
        assert (e.name, e.size) == ("second", 2)
        await obs.delete("first")
        e = await w.updates(timeout=5)
        assert e.name == "first" and e.deleted
        await w.stop()
    run(main, server.url)
