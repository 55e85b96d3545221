"""JetStream runtime for one node: stream lifecycle, the publish path, persistence.

How this works: every stream subject gets an internal subscription whose callback only
appends (subject, reply, hdr, payload) to that stream's inbox and wakes the stream's
writer task. The writer takes the whole inbox and applies it to the pure `Stream`
(checks, dedupe, limits, store append; header-less batches in one store call), in
chunks of 512 with a checkpoint between them. Memory streams and lazy-fsync file streams
publish the PubAcks at once. For file streams with `sync_interval: always` the acks wait
for an fsync (group commit): the first applied batch hands its buffers to the OS and
starts an fdatasync in the stream's fsync thread; batches applied while it runs queue up
and are covered together by the next fsync, started the moment the previous one
returns. The writer never waits for the disk, so applying and fsyncing overlap. Acks
and consumer notifications leave in order, only once their fsync has returned.
API requests on `$JS.API.>` are
queued to one API task (streamapi.py handles the STREAM.* verbs), so admin operations
are applied in arrival order and may wait for a writer (stream delete).
Stream configs live in <store_dir>/jetstream/$G/streams/<name>/meta.json (written
atomically); file streams keep messages in msgs/ next to it. Memory streams are not
persisted, as with a standalone nats-server.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time

import msgspec
import trio

from broker.jetstream import api, errors, streamapi, transform
from broker.jetstream.consumers import ConsumerManager
from broker.jetstream.filestore import FileStore
from broker.jetstream.monitor import JetStreamMonitor
from broker.jetstream.sourcing import DIRECT_GROUP, Sourcing
from broker.jetstream.store import MemoryStore
from broker.jetstream.stream import Stream, parse_go_duration

log = logging.getLogger("broker.jetstream")

_APPLY_CHUNK = 512  # messages applied between checkpoints (see _writer)

API_SUBJECTS = ("$JS.API.*", "$JS.API.STREAM.>", "$JS.API.CONSUMER.>", "$JS.API.ACCOUNT.>",
                "$JS.API.META.>", "$JS.API.SERVER.>")


class StreamMeta(msgspec.Struct):
    config: api.StreamConfig
    created: int


_meta_decoder = msgspec.json.Decoder(StreamMeta)


class _Runner:
    """Runtime attachments of one stream: inbox, subscriptions, writer task."""

    __slots__ = ("stream", "inbox", "wake", "subs", "direct_subs", "cancel", "done", "err_prefix",
                 "applied", "syncing", "fsync", "closed", "sync_done", "busy", "at_batch_end", "drain",
                 "replica")

    def __init__(self, stream: Stream, at_batch_end=None, drain=None, replica=None) -> None:
        self.stream = stream
        self.replica = replica  # cluster/replica.py StreamReplica of a replicated stream
        self.at_batch_end = at_batch_end  # Server.at_batch_end, if the server has it
        self.drain = drain  # JetStream._drain: applies the inbox without the writer task
        self.busy = False  # the writer is between the chunks of a big batch
        self.inbox: list[tuple[str, str, bytes | None, bytes]] = []
        self.wake = trio.Event()
        self.subs: list = []
        self.direct_subs: list = []
        self.cancel = trio.CancelScope()
        self.done = trio.Event()
        self.err_prefix = b'{"error":'
        self.applied: list[tuple[list[tuple[str, bytes]], list[tuple[int, str]]]] = []  # awaiting fsync
        self.syncing = False  # an fsync for earlier batches is running
        self.fsync: _SyncThread | None = None  # file streams with sync_interval always
        self.closed = False
        self.sync_done: trio.Event | None = None  # detach() waits on it for a running fsync

    def push(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        inbox = self.inbox
        if not inbox:
            # Published by a client read: applied when that read's batch ends (no task
            # switch; its acks join the read's output). Otherwise the writer task does it
            # (it swaps in a fresh inbox together with a fresh wake event).
            if self.busy or self.at_batch_end is None or not self.at_batch_end(self):
                self.wake.set()
        inbox.append((subject, reply, hdr, payload))

    def batch_end(self) -> None:
        """Server.at_batch_end hook: the read that published into the inbox is done."""
        if self.busy or self.closed:
            self.wake.set()  # the writer keeps the order (or finds the stream gone)
        elif self.inbox:
            self.drain(self)


class _SyncThread:
    """A long-lived thread that runs one stream's store.sync() calls, one at a time.
    Cheaper per call than trio.to_thread (no thread-cache dispatch, no context copy, no
    task to wake): a queue put, and a run_sync_soon callback when the call returns."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._loop, name=f"js-fsync-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done = job
            try:
                fn()
                err = None
            except BaseException as e:  # handed back to the awaiting task
                err = e
            try:
                self._token.run_sync_soon(done, err)
            except trio.RunFinishedError:
                return

    def submit(self, fn, done) -> None:
        """Run fn() in the thread, then done(exception or None) on the trio thread
        (trio.lowlevel.TrioToken.run_sync_soon): done must not raise."""
        self._jobs.put((fn, done))

    def stop(self) -> None:
        self._jobs.put(None)


class JetStream(JetStreamMonitor):
    def __init__(self, server) -> None:
        self.server = server
        opts = server.opts
        # nats-server's default: <tmp>/nats, with streams under <tmp>/nats/jetstream
        self.store_dir = opts.store_dir or os.path.join(tempfile.gettempdir(), "nats")
        self.streams: dict[str, Stream] = {}
        self._runners: dict[str, _Runner] = {}
        self.api_total = 0
        self.api_errors = 0
        self.max_memory = opts.max_memory_store
        self.max_storage = opts.max_file_store
        interval = (opts.sync_interval or "always").strip()
        self.sync_always = interval.lower() == "always"
        self.sync_interval_ns = 0 if self.sync_always else (parse_go_duration(interval) or 120_000_000_000)
        self._api_inbox: list[tuple[str, str, bytes | None, bytes]] = []
        self._api_wake = trio.Event()
        self._api_subs: list = []
        self._timer_wake = trio.Event()
        self._timer_at = 0
        self._marked: set[str] = set()  # streams holding subject delete markers not yet fsynced
        self._nursery: trio.Nursery | None = None
        self.write_error: str | None = None  # a failed fsync: publishing stops, /healthz reports it
        self.load_errors: list[str] = []  # streams that could not be restored (reported by /healthz)
        self.cluster = None  # clustered JetStream (cluster/runtime.py) when routes are configured
        if opts.cluster_port:
            from broker.jetstream.cluster.runtime import JetStreamCluster

            server.js_cluster_wide = True  # every JetStream subscription is the cluster's
            self.cluster = JetStreamCluster(self)
        self.consumers = ConsumerManager(self)
        self.sourcing = Sourcing(self)  # mirrors and sources

    # ---- paths and persistence ----
    @property
    def jetstream_dir(self) -> str:
        return os.path.join(self.store_dir, "jetstream")

    def streams_dir(self) -> str:
        return os.path.join(self.jetstream_dir, "$G", "streams")

    def stream_dir(self, name: str) -> str:
        return os.path.join(self.streams_dir(), name)

    def save_meta(self, stream: Stream) -> None:
        if stream.config.storage != "file":
            return
        d = self.stream_dir(stream.name)
        os.makedirs(d, exist_ok=True)
        body = msgspec.json.encode(StreamMeta(stream.config, stream.created_ns))
        tmp = os.path.join(d, "meta.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(d, "meta.json"))
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def open_store(self, config: api.StreamConfig):
        if config.storage == "memory":
            return MemoryStore()
        return FileStore(os.path.join(self.stream_dir(config.name), "msgs"))

    def _load_streams(self) -> list[Stream]:
        root = self.streams_dir()
        if not os.path.isdir(root):
            return []
        loaded = []
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name, "meta.json")
            if not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as f:
                    meta = _meta_decoder.decode(f.read())
                if self.cluster is not None and meta.config.num_replicas > 1:
                    continue  # a replica: opened with its Raft group when the meta log assigns it
                stream = Stream(meta.config, self.open_store(meta.config), meta.created)
            except Exception as e:  # a damaged stream must not keep the others from starting
                self.load_errors.append(f"JetStream stream '$G > {name}' could not be restored: {e}")
                log.error("Error recreating stream %r: %s", name, e)
                continue
            stream.expire(time.time_ns())
            self.streams[stream.name] = stream
            loaded.append(stream)
            log.info("Restored %d messages for stream '$G > %s'", stream.store.state().messages, name)
        return loaded

    # ---- lifecycle ----
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for stream in self._load_streams():
                    self.attach(stream)
                # a cluster answers nothing, not no-responders, to a subject outside the API
                for subject in (("$JS.API.>",) if self.cluster is not None else API_SUBJECTS):
                    self._api_subs.append(self.server.subscribe(subject, self._on_api))
                if self.cluster is not None:
                    await nursery.start(self.cluster.run)
                nursery.start_soon(self._api_loop)
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self.sourcing.run)
                if not self.sync_always:
                    nursery.start_soon(self._sync_loop)
                for stream in list(self.streams.values()):
                    await self.consumers.restore(stream)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        try:
            self.sourcing.close()
            self.consumers.close()
        finally:
            for stream in self.streams.values():
                runner = self._runners.get(stream.name)
                try:
                    if runner is not None and runner.replica is not None:
                        runner.replica.close(snapshot=True)  # syncs the store with the snapshot
                    else:
                        stream.store.sync()
                finally:
                    stream.store.close()

    # ---- stream attachment ----
    def attach(self, stream: Stream, replica=None) -> None:
        """Subscribe a stream's subjects and start its writer task. A replicated stream's
        subjects are subscribed only while this node leads it (`replica.takes_publishes`)."""
        runner = _Runner(stream, getattr(self.server, "at_batch_end", None), self._drain, replica)
        if replica is not None:
            replica.runner = runner
        self._runners[stream.name] = runner
        self.streams[stream.name] = stream
        self._subscribe(runner)
        assert self._nursery is not None
        self._nursery.start_soon(self._writer, runner)
        if replica is None:
            self.sourcing.attach(stream)  # (a replicated stream's leader copies: cluster/replica.py)
        self.kick_timer()

    def _subscribe(self, runner: _Runner) -> None:
        stream = runner.stream
        replica = runner.replica
        if replica is None or replica.takes_publishes:
            push = transform.wrap_push(stream.config, runner.push)  # subject_transform, if any
            for subject in stream.config.subject_list():
                runner.subs.append(self.server.subscribe(subject, push))
        if stream.config.allow_direct and (replica is None or replica.serves_reads):
            on_direct = streamapi.direct_get_handler(self, stream)
            for subject in (f"$JS.API.DIRECT.GET.{stream.name}", f"$JS.API.DIRECT.GET.{stream.name}.>"):
                # one queue group with mirror_direct mirrors (sourcing.py): one of them answers
                runner.direct_subs.append(self.server.subscribe(subject, on_direct, DIRECT_GROUP))

    def _unsubscribe(self, runner: _Runner) -> None:
        for sub in runner.subs + runner.direct_subs:
            self.server.unsubscribe(sub)
        runner.subs.clear()
        runner.direct_subs.clear()

    def resubscribe(self, stream: Stream) -> None:
        runner = self._runners[stream.name]
        self._unsubscribe(runner)
        self._subscribe(runner)

    async def detach(self, stream: Stream) -> None:
        """Stop ingest and wait for the writer (it may be inside an fsync) to finish."""
        runner = self._runners.pop(stream.name)
        self._unsubscribe(runner)
        self.sourcing.detach(stream.name)
        runner.cancel.cancel()
        await runner.done.wait()
        while runner.syncing:  # its acks and consumer notifications go out first
            runner.sync_done = trio.Event()
            await runner.sync_done.wait()
        self.streams.pop(stream.name, None)

    def replica(self, name: str):
        """The StreamReplica of a replicated stream held here, else None."""
        runner = self._runners.get(name)
        return runner.replica if runner is not None else None

    async def sync_stream(self, stream: Stream) -> None:
        """Make an admin change (purge, delete, new limits) durable before it is acknowledged.
        (A replicated stream's changes are durable once their entry committed.)"""
        if self.replica(stream.name) is not None:
            return
        if self.sync_always and stream.config.storage == "file":
            await trio.to_thread.run_sync(stream.store.sync)

    def forget_meta(self, name: str) -> None:
        """First step of a delete: without meta.json the stream is gone, even after a crash."""
        path = os.path.join(self.stream_dir(name), "meta.json")
        try:
            os.remove(path)
        except FileNotFoundError:
            return
        dfd = os.open(self.stream_dir(name), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove_files(self, name: str) -> None:
        shutil.rmtree(self.stream_dir(name), ignore_errors=True)

    # ---- the publish path ----
    async def _writer(self, runner: _Runner) -> None:
        """Applies each inbox batch to the stream as soon as it arrives. For file streams
        with sync_interval always the acks wait in `runner.applied` for their fsync; the
        writer does not wait for it, so the next batch is applied while it runs."""
        stream = runner.stream
        try:
            with runner.cancel:
                if self.sync_always and stream.config.storage == "file" and runner.replica is None:
                    runner.fsync = _SyncThread(stream.name)  # (a replica's writes are its Raft log's)
                while True:
                    await runner.wake.wait()
                    runner.wake = trio.Event()
                    if len(runner.inbox) <= _APPLY_CHUNK:
                        self._drain(runner)
                        continue
                    if stream.name in self.sourcing.queued:
                        self._apply_copies(runner)
                    batch, runner.inbox = runner.inbox, []
                    n = len(batch)
                    # A big batch goes in chunks with a checkpoint between them: other tasks
                    # run meanwhile, and the first chunk's fsync overlaps the next ones.
                    # With 1,000 publishes in flight, 512 measured best (median of 7 runs:
                    # 256 -> 119k msgs/s, 512 -> 143k, 1024 -> 119k): smaller chunks cost
                    # more fsyncs and callbacks, bigger ones lose the overlap.
                    runner.busy = True  # pushes meanwhile wait for this writer (order)
                    try:
                        for i in range(0, n, _APPLY_CHUNK):
                            self._apply(runner, batch[i:i + _APPLY_CHUNK])
                            await trio.lowlevel.checkpoint()
                    finally:
                        runner.busy = False
                    if runner.inbox:
                        runner.wake.set()  # pushed while busy: their batch_end left them here
        finally:
            runner.closed = True  # an fsync still running completes; nothing new starts
            if runner.fsync is not None:
                runner.fsync.stop()
            runner.done.set()

    def _apply(self, runner: _Runner, batch) -> None:
        if runner.replica is not None:  # the stream leader proposes them (cluster/replica.py)
            runner.replica.submit(batch)
            return
        stream = runner.stream
        acks: list[tuple[str, bytes]] = []
        stored: list[tuple[int, str]] = []
        process = stream.process
        now = time.time_ns()
        refused = self.write_error is not None or self._over_limit(stream.config.storage)
        if refused:
            process = _refuse
        if stream.config.no_ack is True:  # no_ack streams never answer publishers
            batch = [(subject, "", hdr, payload) for subject, _, hdr, payload in batch]
        ack_prefix = stream.ack_prefix
        if not refused and stream.batch_ok() and self._plain_batch(stream, batch):
            # The common case, done with C-level loops: store them, build every ack at once.
            n = len(batch)
            seq = stream.append_plain([(m[0], m[3]) for m in batch], now)
            stored = list(zip(range(seq, seq + n), [m[0] for m in batch]))
            replies = [m[1] for m in batch]
            bodies = stream.pub_acks(seq, n)
            if all(replies):
                acks = list(zip(replies, bodies))
            else:
                acks = [(reply, body) for reply, body in zip(replies, bodies) if reply]
            batch = ()
        for subject, reply, hdr, payload in batch:
            try:
                seq, dup = process(subject, hdr, payload, now)
            except errors.JSError as e:
                if reply:
                    acks.append((reply, self.pub_error(stream, e)))
                continue
            if not dup:
                stored.append((seq, subject))
                if reply:
                    acks.append((reply, ack_prefix + str(seq).encode() + b"}"))
            elif reply:
                acks.append((reply, stream.pub_ack(seq, dup)))
        if runner.fsync is not None and (stored or runner.syncing):
            # Acks (even a duplicate's, which names a stored seq) leave only after an fsync
            # that started after this batch was applied.
            runner.applied.append((acks, stored))
            if not runner.syncing:
                self._start_sync(runner)
        else:
            self._finish(stream, acks, stored)

    def _drain(self, runner: _Runner) -> None:
        """Store what the inbox (and mirror/source links) hold, with no checkpoint: the
        writer's work for a small inbox, and all of it at the end of the client read that
        filled the inbox (_Runner.batch_end): no task switch between a publish and its
        append, and with one message in flight the fsync and the ack happen in one step."""
        if runner.stream.name in self.sourcing.queued:
            self._apply_copies(runner)
        batch, runner.inbox = runner.inbox, []
        if len(batch) <= _APPLY_CHUNK:
            if batch:
                self._apply(runner, batch)
            return
        for i in range(0, len(batch), _APPLY_CHUNK):
            self._apply(runner, batch[i:i + _APPLY_CHUNK])

    def _apply_copies(self, runner: _Runner) -> None:
        """Store what mirror/source links (sourcing.py) queued for this stream: in its
        writer, like publishes, so limits, ordering and group commit hold for copies too."""
        stream = runner.stream
        if runner.replica is not None:  # its leader proposes them (cluster/replica.py)
            runner.replica.copies()
            return
        refused = None
        if self.write_error is not None or self._over_limit(stream.config.storage):
            refused = errors.insufficient_resources()
        stored = self.sourcing.apply(stream, time.time_ns(), refused)
        if not stored:
            return
        if runner.fsync is not None:
            runner.applied.append(([], stored))
            if not runner.syncing:
                self._start_sync(runner)
        else:
            self._finish(stream, [], stored)

    @staticmethod
    def _plain_batch(stream: Stream, batch) -> bool:
        """No headers and nothing over max_msg_size: every message is a plain append."""
        max_size = stream.config.max_msg_size
        for m in batch:
            if m[2] is not None:
                return False
        if max_size >= 0:
            for m in batch:
                if len(m[3]) > max_size:
                    return False
        return True

    def _start_sync(self, runner: _Runner) -> None:
        """Group commit: one fsync covers every batch applied before it started. The next
        one starts when it completes (_synced), with whatever was applied meanwhile."""
        pending, runner.applied = runner.applied, []
        runner.syncing = True
        if self.write_error is not None:
            self._synced(runner, pending, self.write_error)
            return
        store = runner.stream.store
        flush = getattr(store, "flush", None)
        if flush is not None:
            try:
                flush()  # pwrite on the event loop; the thread only waits for fdatasync
            except OSError as e:
                self._synced(runner, pending, self._disk_failed(runner.stream, e))
                return
        fsync = runner.fsync
        assert fsync is not None
        if len(pending) == 1 and len(pending[0][1]) <= 1 and \
                trio.lowlevel.current_statistics().tasks_runnable == 0:
            # One message and nothing else ready to run (a lone publisher waiting for its
            # ack): fsync right here. Handing it to the thread costs two thread wakeups
            # (~40 us to start, ~80 us for the loop to notice the end: measured 442 -> 271 us
            # per ack); while the loop is idle, blocking it for one fsync delays nobody
            # already waiting. With more in flight the thread keeps applying and fsyncing
            # overlapped.
            err: BaseException | None = None
            try:
                store.sync()
            except Exception as e:
                err = e
            self._on_synced(runner, pending, err)
            return
        fsync.submit(store.sync, lambda err: self._on_synced(runner, pending, err))

    def _on_synced(self, runner: _Runner, pending, err: BaseException | None) -> None:
        """Runs as a trio run_sync_soon callback: it must never raise."""
        try:
            failed = None
            if isinstance(err, OSError):  # the disk failed: nothing in these batches is acknowledged
                failed = self._disk_failed(runner.stream, err)
            elif err is not None:
                log.error("stream '%s': fsync failed", runner.stream.name, exc_info=err)
                failed = str(err)
            batched = getattr(self.server, "batched", None)
            if batched is not None:
                batched(self._synced, runner, pending, failed)
            else:
                self._synced(runner, pending, failed)
        except Exception:
            log.exception("stream '%s': completing a group commit failed", runner.stream.name)

    def _disk_failed(self, stream: Stream, e: OSError) -> str:
        self.write_error = f"JetStream stream '$G > {stream.name}' write error: {e}"
        log.error("%s", self.write_error)
        return str(e)

    def _synced(self, runner: _Runner, pending, failed: str | None) -> None:
        """The fsync covering `pending` returned: publish their acks in order (errors if it
        failed, or an earlier one did), then start the next fsync if batches are waiting."""
        runner.syncing = False
        if runner.sync_done is not None:
            runner.sync_done.set()
        try:
            if failed is None and self.write_error is not None:
                failed = self.write_error  # an earlier fsync failed: durability is unknown
            stream = runner.stream
            for acks, stored in pending:
                if failed is not None:
                    err = errors.store_failed(failed)
                    acks = [(reply, self.pub_error(stream, err)) for reply, _ in acks]
                    stored = []
                self._finish(stream, acks, stored)
        finally:
            if runner.applied and not runner.closed:
                self._start_sync(runner)

    def _finish(self, stream: Stream, acks: list[tuple[str, bytes]], stored: list[tuple[int, str]]) -> None:
        """Publish the acks of an applied (and, where required, fsynced) batch."""
        if acks:
            publish_many = getattr(self.server, "publish_many", None)
            if publish_many is not None:
                publish_many(acks)
            else:
                publish = self.server.publish
                for reply, body in acks:
                    publish(reply, "", None, body)
        if stored:
            try:
                self._after_store(stream, stored)
            except Exception:  # our bug; the messages are stored and acked, keep the stream running
                log.exception("stream '%s': post-store processing failed", stream.name)

    def _after_store(self, stream: Stream, stored: list[tuple[int, str]]) -> None:
        cfg = stream.config
        if isinstance(cfg.republish, dict):
            streamapi.republish(self, stream, stored)
        self.sourcing.origin_stored(stream.name)
        on_stored = self.consumers.on_stored
        for seq, subject in stored:
            on_stored(stream, seq, subject)
        if cfg.retention == "interest":  # kept only while some consumer's filter wants it
            needs = self.consumers.needs_msg
            wants = self.sourcing.wants  # a mirror/source of this stream is interest too
            for seq, subject in stored:
                if not needs(stream, seq, subject) and not wants(stream, seq, subject):
                    stream.remove_acked(seq)
        if cfg.max_age > 0 or cfg.allow_msg_ttl:
            at = stream.next_expiry_ns()
            if at and (self._timer_at == 0 or at < self._timer_at):
                self.kick_timer()

    def _over_limit(self, storage: str) -> bool:
        limit = self.max_memory if storage == "memory" else self.max_storage
        if limit <= 0:
            return False
        used = sum(s.store.state().bytes for s in self.streams.values() if s.config.storage == storage)
        return used >= limit

    def check_reservation(self, cfg: api.StreamConfig) -> None:
        """A stream's max_bytes must fit in what the server still has (nats-server 10047/10028)."""
        if cfg.max_bytes <= 0:
            return
        memory = cfg.storage == "memory"
        limit = self._config_block()["max_memory" if memory else "max_storage"]
        reserved = sum(s.config.max_bytes for s in self.streams.values()
                       if s.config.storage == cfg.storage and s.config.max_bytes > 0 and s.name != cfg.name)
        if reserved + cfg.max_bytes > limit:
            raise errors.memory_resources_exceeded() if memory else errors.storage_resources_exceeded()

    @staticmethod
    def pub_error(stream: Stream, e: errors.JSError) -> bytes:
        return msgspec.json.encode({"error": e.as_dict(), "stream": stream.name, "seq": 0})

    # ---- timers ----
    def kick_timer(self) -> None:
        self._timer_wake.set()

    async def _expiry_loop(self) -> None:
        while True:
            now = time.time_ns()
            nxt = 0
            for stream in list(self.streams.values()):
                replica = self.replica(stream.name)
                if replica is not None:  # only its leader expires, by proposing it
                    at = replica.expire_due(now)
                    if at and (nxt == 0 or at < nxt):
                        nxt = at
                    continue
                self.expire_stream(stream, now)
                if stream.config.storage == "file" and self.sync_always and stream.name in self._marked:
                    self._marked.discard(stream.name)
                    await trio.to_thread.run_sync(stream.store.sync)
                at = stream.next_expiry_ns()
                if at and (nxt == 0 or at < nxt):
                    nxt = at
            self._timer_at = nxt
            delay = 1.0 if nxt == 0 else min(1.0, max(0.0, (nxt - time.time_ns()) / 1e9))
            with trio.move_on_after(delay):
                await self._timer_wake.wait()
            self._timer_wake = trio.Event()

    def expire_stream(self, stream: Stream, now: int) -> None:
        """Apply due expiries; subject delete markers it stored reach consumers like messages.
        A replicated stream's leader proposes them instead (every replica applies them)."""
        replica = self.replica(stream.name)
        if replica is not None:
            replica.expire_due(now)
            return
        if stream.expire(now):
            self.consumers.stream_purged(stream)
        if stream.markers:
            markers, stream.markers = stream.markers, []
            self._marked.add(stream.name)
            for seq, subject in markers:
                self.consumers.on_stored(stream, seq, subject)
            self.kick_timer()

    async def _sync_loop(self) -> None:
        while True:
            await trio.sleep(self.sync_interval_ns / 1e9)
            for stream in list(self.streams.values()):
                runner = self._runners.get(stream.name)
                if stream.config.storage == "file" and runner is not None and runner.replica is None:
                    await trio.to_thread.run_sync(stream.store.sync)

    # ---- the API ----
    def _on_api(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        if subject.startswith("$JS.API.DIRECT."):
            return
        if self.cluster is not None and not self.cluster.on_api(subject, reply, hdr, payload):
            return  # another node answers, or the cluster layer does
        self._api_inbox.append((subject, reply, hdr, payload))
        self._api_wake.set()

    async def _api_loop(self) -> None:
        while True:
            await self._api_wake.wait()
            self._api_wake = trio.Event()
            batch, self._api_inbox = self._api_inbox, []
            for subject, reply, hdr, payload in batch:
                try:
                    await self._dispatch(subject, reply, hdr, payload)
                except Exception:  # our bug: log it, keep serving the API
                    log.exception("JetStream API request on %s failed", subject)
            try:
                self.consumers.api_batch_end()
            except Exception:  # our bug: log it, keep serving the API
                log.exception("serving pull requests after an API batch failed")

    async def _dispatch(self, subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        tokens = subject.split(".")
        if len(tokens) < 3:
            return
        kind = tokens[2]
        if kind == "INFO" and len(tokens) == 3:
            info = self.account_info()
            self.count_api(False)  # counted after the reply is built, as nats-server does
            self.reply_json(reply, info)
        elif kind == "STREAM" and len(tokens) >= 4:
            await streamapi.handle(self, tokens[3:], reply, hdr, payload)
        elif kind == "CONSUMER" and len(tokens) >= 4:
            op = tokens[3]
            rest = tokens[4:]
            if op in ("DURABLE", "MSG", "LEADER") and rest:
                op, rest = op + "." + rest[0], rest[1:]
            self.consumers.handle(op, rest, reply, hdr, payload)

    # ---- the interface J2 (consumers) relies on ----
    def stream_acked(self, stream_name: str, seq: int) -> None:
        stream = self.streams.get(stream_name)
        if stream is None or stream.config.retention == "limits":
            return
        msg = stream.store.get(seq)
        if msg is None:
            return
        replica = self.replica(stream_name)
        if stream.config.retention == "workqueue" or not (
                self.consumers.needs_msg(stream, seq, msg.subject) or self.sourcing.wants(stream, seq, msg.subject)
                or (replica is not None and self.cluster.remote_interest(stream_name, msg.subject))):
            if replica is not None:
                replica.remove([seq])  # through the stream's leader, on every replica
            else:
                stream.remove_acked(seq)

    def cluster_block(self, stream_name: str = "") -> api.ClusterInfo | None:
        """The `cluster` block of this node's stream (and consumer) infos in a cluster."""
        return self.cluster.stream_block(stream_name) if self.cluster is not None else None

    def count_api(self, error: bool) -> None:
        self.api_total += 1
        if error:
            self.api_errors += 1

    def reply_json(self, reply: str, obj) -> None:
        if reply:
            self.server.publish(reply, "", None, api.encoder.encode(obj))


def _refuse(subject: str, hdr, data: bytes, now_ns: int):
    """Stands in for Stream.process while storage is over its limit or failed."""
    raise errors.insufficient_resources()
