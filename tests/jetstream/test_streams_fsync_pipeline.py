"""The pipelined publish path: batches applied while an fsync runs are acknowledged only
after a later fsync, and deleting a stream waits for the fsync in flight (its acks go out
first). Observed through published replies, with store.sync gated by the test."""

from __future__ import annotations

import threading

import trio

from broker.jetstream.manager import JetStream
from tests.jetstream.test_streams_group_commit import FakeServer, _wait_for


async def _gated_stream(server, js, name: str):
    server.publish(f"$JS.API.STREAM.CREATE.{name}", "r.create", None,
                   b'{"name":"%s","subjects":["%s.>"]}' % (name.encode(), name.lower().encode()))
    await _wait_for(lambda: server.replies("r.create"))
    store = js.streams[name].store
    real_sync = store.sync
    release = threading.Event()
    started: list[int] = []

    def gated_sync() -> None:
        started.append(store.state().last_seq)  # what this fsync covers at least
        release.wait(10)
        real_sync()

    store.sync = gated_sync
    return release, started


async def test_batches_applied_during_an_fsync_wait_for_the_next(tmp_path):
    server = FakeServer(str(tmp_path))
    js = JetStream(server)
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        await nursery.start(js.run)
        release, started = await _gated_stream(server, js, "PIPE")
        server.publish("pipe.a", "r.ack.0", None, b"x")  # two in one batch: the fsync thread
        server.publish("pipe.a", "r.ack.1", None, b"x")  # (a lone one is fsynced inline)
        await _wait_for(lambda: started == [2])
        for i in range(2, 600):  # applied (stored) while the first fsync is held
            server.publish("pipe.b", f"r.ack.{i}", None, b"y")
        await _wait_for(lambda: js.streams["PIPE"].store.state().last_seq == 600)
        assert server.replies("r.ack.") == []
        release.set()
        await _wait_for(lambda: len(server.replies("r.ack.")) == 600)
        assert [a["seq"] for a in server.replies("r.ack.")] == list(range(1, 601))  # in order
        assert len(started) == 2 and started[1] == 600  # one more fsync covered all the rest
        nursery.cancel_scope.cancel()


async def test_delete_waits_for_the_fsync_in_flight(tmp_path):
    server = FakeServer(str(tmp_path))
    js = JetStream(server)
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        await nursery.start(js.run)
        release, started = await _gated_stream(server, js, "GONE")
        server.publish("gone.a", "r.ack.0", None, b"x")  # two in one batch: the fsync thread
        server.publish("gone.a", "r.ack.1", None, b"x")
        await _wait_for(lambda: started == [2])
        server.publish("$JS.API.STREAM.DELETE.GONE", "r.delete", None, b"")
        await trio.sleep(0.05)
        assert server.replies("r.delete") == [] and server.replies("r.ack.") == []
        release.set()
        await _wait_for(lambda: server.replies("r.delete"))
        assert server.replies("r.delete")[0].get("success") is True
        assert [a["seq"] for a in server.replies("r.ack.")] == [1, 2]
        order = [s for s, _ in server.published if s in ("r.ack.0", "r.ack.1", "r.delete")]
        assert order == ["r.ack.0", "r.ack.1", "r.delete"]
        nursery.cancel_scope.cancel()
