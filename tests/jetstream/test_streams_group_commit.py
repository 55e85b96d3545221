"""The publish path in-process: acks only after fsync, and one fsync per batch (group commit).

The JetStream runtime runs against a minimal in-process server (subscribe/publish with
wildcard matching). The stream's store.sync is wrapped so it blocks in its worker thread
until the test releases it; everything is observed through the published acks, with no
timing assumptions.
"""

from __future__ import annotations

import json
import threading

import trio

from broker.config import Options
from broker.jetstream.manager import JetStream
from broker.subjects import match


class FakeServer:
    def __init__(self, store_dir: str) -> None:
        self.opts = Options(jetstream=True, store_dir=store_dir, sync_interval="always")
        self.server_id = self.server_name = "NTEST"
        self.subs: list[tuple[str, object]] = []
        self.published: list[tuple[str, bytes]] = []
        self.nursery = None

    def subscribe(self, subject, callback, queue=None):
        sub = (subject, callback)
        self.subs.append(sub)
        return sub

    def unsubscribe(self, sub) -> None:
        self.subs.remove(sub)

    def has_interest(self, subject: str) -> bool:
        return any(match(p, subject) for p, _ in self.subs)

    def publish(self, subject, reply, hdr, payload) -> None:
        self.published.append((subject, payload))
        for pattern, callback in list(self.subs):
            if match(pattern, subject):
                callback(subject, reply, hdr, payload)

    def replies(self, prefix: str) -> list[dict]:
        return [json.loads(p) for s, p in self.published if s.startswith(prefix)]


async def _wait_for(predicate) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.005)


async def test_acks_wait_for_fsync_and_batches_share_one(tmp_path):
    server = FakeServer(str(tmp_path))
    js = JetStream(server)
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        await nursery.start(js.run)
        server.publish("$JS.API.STREAM.CREATE.GC", "r.create", None, b'{"name":"GC","subjects":["gc"]}')
        await _wait_for(lambda: server.replies("r.create"))
        stream = js.streams["GC"]
        store = stream.store
        real_sync = store.sync
        release = threading.Event()
        log: list[str] = []

        def gated_sync() -> None:
            log.append("sync-start")
            release.wait(10)
            real_sync()
            log.append("sync-done")

        store.sync = gated_sync
        # two in one batch: a lone message with nothing else to run is fsynced on the
        # event loop itself (test_lone_publish_is_fsynced_before_its_ack), not in the thread
        server.publish("gc", "r.ack.0", None, b"first")
        server.publish("gc", "r.ack.1", None, b"first")
        await _wait_for(lambda: log == ["sync-start"])
        for i in range(2, 100):  # these arrive while the first fsync is still running
            server.publish("gc", f"r.ack.{i}", None, b"more")
        await trio.sleep(0.05)
        assert server.replies("r.ack.") == []  # nothing is acknowledged before its fsync
        release.set()
        await _wait_for(lambda: len(server.replies("r.ack.")) == 100)
        assert log == ["sync-start", "sync-done", "sync-start", "sync-done"]
        assert sorted(a["seq"] for a in server.replies("r.ack.")) == list(range(1, 101))
        assert stream.store.state().messages == 100
        nursery.cancel_scope.cancel()


async def test_lone_publish_is_fsynced_before_its_ack(tmp_path):
    """One publish in flight and nothing else to run: the fsync runs on the event loop
    (no thread round trip), and still completes before the ack is published."""
    server = FakeServer(str(tmp_path))
    js = JetStream(server)
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        await nursery.start(js.run)
        server.publish("$JS.API.STREAM.CREATE.ONE", "r.create", None, b'{"name":"ONE","subjects":["one"]}')
        await _wait_for(lambda: server.replies("r.create"))
        store = js.streams["ONE"].store
        real_sync = store.sync
        log: list[tuple] = []

        def spy_sync() -> None:
            log.append(("sync-start", threading.get_ident(), len(server.replies("r.ack."))))
            real_sync()
            log.append(("sync-done", len(server.replies("r.ack."))))

        store.sync = spy_sync
        loop_thread = threading.get_ident()
        for i in range(3):
            server.publish("one", f"r.ack.{i}", None, b"m%d" % i)
            await _wait_for(lambda: len(server.replies("r.ack.")) == i + 1)
        assert log == [x for i in range(3) for x in (("sync-start", loop_thread, i), ("sync-done", i))]
        assert [a["seq"] for a in server.replies("r.ack.")] == [1, 2, 3]
        nursery.cancel_scope.cancel()


class BatchingServer(FakeServer):
    """FakeServer plus the client-read batch hooks of broker.server.Server."""

    def __init__(self, store_dir: str) -> None:
        super().__init__(store_dir)
        self.batch_hooks: dict = {}
        self.in_batch = False

    def at_batch_end(self, obj) -> bool:
        if not self.in_batch:
            return False
        self.batch_hooks[obj] = None
        return True

    def read(self, msgs) -> None:
        """What a client read does: publish each, then run the batch-end hooks."""
        self.in_batch = True
        try:
            for subject, reply, payload in msgs:
                self.publish(subject, reply, None, payload)
        finally:
            while self.batch_hooks:
                obj = next(iter(self.batch_hooks))
                del self.batch_hooks[obj]
                obj.batch_end()
            self.in_batch = False


async def test_publishes_of_a_read_are_applied_when_the_read_ends_in_order(tmp_path):
    """Publishes from a client read are stored (and, alone, fsynced and acked) at the end of
    that read with no writer-task switch; while the writer is between the chunks of a big
    batch, a read's publishes wait for it, so sequences follow arrival order."""
    server = BatchingServer(str(tmp_path))
    js = JetStream(server)
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        await nursery.start(js.run)
        server.publish("$JS.API.STREAM.CREATE.RD", "r.create", None, b'{"name":"RD","subjects":["rd.*"]}')
        await _wait_for(lambda: server.replies("r.create"))
        stream = js.streams["RD"]
        server.read([("rd.a", "r.ack.0", b"one")])
        # no await in between: stored, fsynced and acknowledged within the read itself
        assert stream.store.state().messages == 1 and [a["seq"] for a in server.replies("r.ack.")] == [1]
        # a big batch through the writer task (published outside any read); a read arrives
        # while the writer is between its chunks and must not jump the queue
        real_apply = js._apply
        seen_busy = []

        def apply(runner, batch):
            real_apply(runner, batch)
            if runner.busy and not seen_busy:
                seen_busy.append(True)
                server.read([("rd.c", "r.ack.c", b"late")])

        js._apply = apply
        for i in range(1, 1500):
            server.publish("rd.b", f"r.ack.{i}", None, b"w")
        await _wait_for(lambda: len(server.replies("r.ack.")) == 1501)
        assert seen_busy and stream.store.get(1501).subject == "rd.c"
        assert [a["seq"] for a in server.replies("r.ack.")] == list(range(1, 1502))
        nursery.cancel_scope.cancel()
