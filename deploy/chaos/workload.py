"""The clients: they load the cluster while the nemesis faults it, and record a history.

Queue: `publishers` tasks, each on its own connection, publish unique values ("p1-0",
"p1-1", ...) to the R3 file stream CHAOS, one at a time, with Nats-Msg-Id = value, retrying
the same value until a PubAck arrives or RETRY_S passes. Two durable consumers read the
stream concurrently with explicit acks: "pull" (fetch batches) and "push" (a deliver
subject); each acknowledges with AckSync (+ACK as a request) and records when the
confirmation came back.

KV: `kv_writers` tasks do compare-and-set on one key of the KV_chaos bucket (its stream
keeps every revision, up to 10 million): read the latest revision, then update with that revision as the
expected one; the stored value names the writer, its counter and the revision it expected.

Ordering evidence: a redelivery counts as "after the ack was confirmed" only when it came
after the confirmation on the same connection (so the server sent it later). Each
connection numbers every message it parses (Stamper, which writes the number on the message
object); deliveries and ack confirmations carry that number ("tick").

Every loop is bounded by the run's end time and a count; every request has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig

STREAM = "CHAOS"
SUBJECTS = "chaos.q.>"
KV_BUCKET = "chaos"
KV_STREAM = f"KV_{KV_BUCKET}"
KV_KEY = "reg"
PUSH_SUBJECT = "chaos.push.deliver"
CONSUMERS = ("pull", "push")
ACK_WAIT_S = 5.0
REQUEST_TIMEOUT_S = 2.0
RETRY_S = 20.0
MAX_OPS = 1_000_000  # per task, a bound on every load loop besides time


class Recorder:
    """The history of one run (the format checker.py reads) and live counters."""

    def __init__(self, meta: dict):
        self.t0 = time.monotonic()
        self.h = {"meta": meta, "publishes": [], "stream": [], "deliveries": [], "acks": [],
                  "consumers": list(CONSUMERS), "kv_ops": [], "kv_history": [], "faults": []}

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def fault(self, kind: str, phase: str, targets: list[str], detail: str = "") -> None:
        self.h["faults"].append({"t": self.now(), "kind": kind, "phase": phase, "targets": list(targets),
                                 "detail": detail})


class Stamper:
    """Numbers every message a connection parses and writes the number on the message object
    nats-py builds for it (`of(msg)`), so order on the wire survives nats-py's queues.

    The number travels with the object, not with a key such as the reply subject: two
    deliveries can carry the same reply subject (a node that restarts with its consumer's
    delivered state older than what it had sent hands out the same consumer sequences again,
    `$JS.ACK.<stream>.<consumer>.1.<seq>.<dseq>.<ts>.<pending>` identical), and a key would give
    the first one the second's number and the second the current one, after an ack
    confirmation that in fact came later on the wire."""

    ATTR = "_chaos_tick"

    def __init__(self, nc):
        self.tick = 0
        self._parsing = 0  # the number of the message being parsed (nats-py parses one at a time)
        inner = nc._process_msg
        build = nc._build_message

        async def counted(sid, subject, reply, data, headers):
            self.tick += 1
            self._parsing = self.tick
            return await inner(sid, subject, reply, data, headers)

        def stamped(*args, **kwargs):
            msg = build(*args, **kwargs)
            setattr(msg, self.ATTR, self._parsing)
            return msg

        nc._process_msg = counted  # the parser calls them through the instance
        nc._build_message = stamped

    def of(self, msg) -> int:
        """The number of `msg` (the current one for a message that was not stamped)."""
        return getattr(msg, self.ATTR, None) or self.tick


async def connect(urls: list[str], name: str, pin: bool = False):
    """A client that reconnects forever (the run's clock bounds it), quietly."""
    async def quiet(*_a):
        return None

    nc = nats.NATS()
    if pin:  # URL mode: never learn servers' real addresses, stay behind the proxies
        inner = nc._process_info

        async def no_discovery(info, initial_connection=False):
            info = dict(info)
            info.pop("connect_urls", None)
            return await inner(info, initial_connection=initial_connection)

        nc._process_info = no_discovery
    await nc.connect(servers=urls, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                     connect_timeout=2, allow_reconnect=True, error_cb=quiet, disconnected_cb=quiet,
                     reconnected_cb=quiet, closed_cb=quiet, ping_interval=5, max_outstanding_pings=2)
    return nc


def is_not_found(exc: BaseException) -> bool:
    """A definite "no such stream/consumer" (also when wrapped by retry())."""
    while exc is not None:
        if isinstance(exc, nats.js.errors.NotFoundError):
            return True
        exc = exc.__cause__
    return False


def is_refusal(exc: BaseException) -> bool:
    """A JetStream API answer that retrying cannot change (e.g. 10074: replicas > 1 not
    supported), as opposed to timeouts, 503s and leaderless moments."""
    desc = str(getattr(exc, "description", "") or "")
    return isinstance(exc, nats.js.errors.APIError) and (
        "not supported" in desc or "not available" in desc or exc.err_code == 10074)


def describe(exc: BaseException | None) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{type(exc).__name__} {exc.code}/{exc.err_code}: {exc.description}"
    return repr(exc)


async def retry(what: str, fn, timeout: float, not_found_s: float | None = None):
    """fn() until it succeeds or `timeout` passes (then its last error is raised); a "not
    found" answer is believed after `not_found_s` seconds of it, when given."""
    start = time.monotonic()
    deadline = start + timeout
    last: Exception | None = None
    for _ in range(10_000):
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 - every error here is "cluster not ready yet"...
            last = exc
            if is_refusal(exc):  # ...except a server that cannot do this at all
                raise RuntimeError(f"{what}: refused: {describe(exc)}") from exc
        now = time.monotonic()
        if now > deadline or (not_found_s is not None and is_not_found(last) and now - start > not_found_s):
            break
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{what}: gave up after {timeout:.0f}s: {describe(last)}") from last


async def setup_streams(js, replicas: int, timeout: float) -> None:
    """Fresh CHAOS and KV_chaos streams and the two durable consumers."""
    async def fresh(cfg: StreamConfig):
        try:
            await js.delete_stream(cfg.name)
        except nats.js.errors.NotFoundError:
            pass
        await js.add_stream(cfg)

    await retry("create stream CHAOS", lambda: fresh(StreamConfig(
        name=STREAM, subjects=[SUBJECTS], storage=StorageType.FILE, num_replicas=replicas,
        duplicate_window=120.0)), timeout)
    await retry("create KV stream", lambda: fresh(StreamConfig(
        name=KV_STREAM, subjects=[f"$KV.{KV_BUCKET}.>"], storage=StorageType.FILE, num_replicas=replicas,
        max_msgs_per_subject=10_000_000, discard=DiscardPolicy.NEW, allow_rollup_hdrs=True, deny_delete=True,
        allow_direct=False, duplicate_window=120.0)), timeout)
    common = dict(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, deliver_policy=DeliverPolicy.ALL,
                  max_deliver=-1, num_replicas=replicas)
    await retry("create consumer pull", lambda: js.add_consumer(STREAM, ConsumerConfig(
        durable_name="pull", max_ack_pending=1000, **common), timeout=5), timeout)
    await retry("create consumer push", lambda: js.add_consumer(STREAM, ConsumerConfig(
        durable_name="push", deliver_subject=PUSH_SUBJECT, max_ack_pending=1000, **common), timeout=5), timeout)


async def leaders(js) -> dict:
    """Current leaders of the stream and of each durable consumer, by server name (None
    when unknown)."""
    out = {"stream": None, "pull": None, "push": None}
    try:
        si = await js.stream_info(STREAM)
        out["stream"] = si.cluster.leader if si.cluster else None
    except Exception:  # noqa: BLE001
        pass
    for c in CONSUMERS:
        try:
            ci = await js.consumer_info(STREAM, c, timeout=REQUEST_TIMEOUT_S)
            out[c] = ci.cluster.leader if ci.cluster else None
        except Exception:  # noqa: BLE001
            pass
    return out


class Workload:
    def __init__(self, rec: Recorder, urls: list[str], *, publishers: int, rate: float, kv_writers: int,
                 kv_rate: float, pin: bool = False):
        self.rec = rec
        self.urls = urls
        self.publishers = publishers
        self.rate = rate
        self.kv_writers = kv_writers
        self.kv_rate = kv_rate
        self.pin = pin
        self.stop_publishing = asyncio.Event()
        self.stop_consuming = asyncio.Event()
        self.conns: list = []

    async def conn(self, name: str):
        nc = await connect(self.urls, name, self.pin)
        self.conns.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.conns:
            try:
                await asyncio.wait_for(nc.close(), 5)
            except Exception:  # noqa: BLE001
                pass

    # ---- publishers -------------------------------------------------------------------------
    async def publisher(self, p: int) -> None:
        nc = await self.conn(f"chaos-pub-{p}")
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        for i in range(MAX_OPS):
            if self.stop_publishing.is_set():
                return
            started = time.monotonic()
            value = f"p{p}-{i}"
            rec = {"pub": p, "i": i, "value": value, "t0": self.rec.now(), "outcome": "info", "seq": None,
                   "attempts": 0}
            self.rec.h["publishes"].append(rec)
            deadline = time.monotonic() + RETRY_S
            while time.monotonic() < deadline and rec["attempts"] < 1000:
                rec["attempts"] += 1
                try:
                    ack = await js.publish(f"chaos.q.p{p}", value.encode(), stream=STREAM,
                                           headers={"Nats-Msg-Id": value}, timeout=REQUEST_TIMEOUT_S)
                    rec["outcome"], rec["seq"] = "ok", ack.seq
                    break
                except Exception:  # noqa: BLE001 - timeouts, no responders, 503s: retry the same id
                    await asyncio.sleep(0.1)
            rec["t1"] = self.rec.now()
            wait = period - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)

    # ---- consumers ----------------------------------------------------------------------------
    async def ack(self, nc, stamper: Stamper, consumer: str, msg, value: str, seq: int) -> None:
        rec = {"consumer": consumer, "value": value, "seq": seq, "t": None, "tick": None, "ok": False}
        try:
            resp = await nc.request(msg.reply, b"+ACK", timeout=REQUEST_TIMEOUT_S)
            rec["tick"] = stamper.of(resp)
            rec["ok"] = True
        except Exception:  # noqa: BLE001 - unconfirmed: the server may or may not have it
            pass
        rec["t"] = self.rec.now()
        self.rec.h["acks"].append(rec)

    def delivery(self, stamper: Stamper, consumer: str, msg) -> tuple[str, int] | None:
        if not msg.reply or not msg.reply.startswith("$JS.ACK."):
            return None  # status messages (408, 409, heartbeats)
        md = msg.metadata
        value = msg.data.decode(errors="replace")
        self.rec.h["deliveries"].append({
            "consumer": consumer, "value": value, "seq": md.sequence.stream, "n": md.num_delivered,
            "tick": stamper.of(msg), "t": self.rec.now()})
        return value, md.sequence.stream

    async def pull_consumer(self) -> None:
        nc = await self.conn("chaos-pull")
        stamper = Stamper(nc)
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        sub = None
        for _ in range(MAX_OPS):
            if self.stop_consuming.is_set():
                return
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind("pull", STREAM)
                msgs = await sub.fetch(batch=20, timeout=1.0)
            except Exception:  # noqa: BLE001 - fetch timeouts, leader changes
                await asyncio.sleep(0.1)
                continue
            for m in msgs:
                got = self.delivery(stamper, "pull", m)
                if got:
                    await self.ack(nc, stamper, "pull", m, *got)

    async def push_consumer(self) -> None:
        nc = await self.conn("chaos-push")
        stamper = Stamper(nc)
        queue: asyncio.Queue = asyncio.Queue()

        async def cb(m):
            queue.put_nowait(m)

        await nc.subscribe(PUSH_SUBJECT, cb=cb)
        for _ in range(MAX_OPS):
            if self.stop_consuming.is_set():
                return
            try:
                m = await asyncio.wait_for(queue.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            got = self.delivery(stamper, "push", m)
            if got:
                await self.ack(nc, stamper, "push", m, *got)

    # ---- KV compare-and-set ----------------------------------------------------------------------
    async def kv_writer(self, w: int) -> None:
        nc = await self.conn(f"chaos-kv-{w}")
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        kv = None
        period = 1.0 / self.kv_rate if self.kv_rate > 0 else 0.0
        for n in range(MAX_OPS):
            if self.stop_publishing.is_set():
                return
            started = time.monotonic()
            try:
                if kv is None:
                    kv = await js.key_value(KV_BUCKET)
                try:
                    expect = (await kv.get(KV_KEY)).revision
                except nats.js.errors.KeyNotFoundError:
                    expect = 0
            except Exception:  # noqa: BLE001 - no read, no attempt
                await asyncio.sleep(0.2)
                continue
            value = f"w{w}-{n}"
            rec = {"writer": w, "value": value, "expect": expect, "outcome": "info", "rev": None,
                   "t0": self.rec.now()}
            self.rec.h["kv_ops"].append(rec)
            try:
                rec["rev"] = await kv.update(KV_KEY, json.dumps({"v": value, "e": expect}).encode(), last=expect)
                rec["outcome"] = "ok"
            except nats.js.errors.KeyWrongLastSequenceError:
                rec["outcome"] = "fail"
            except nats.js.errors.APIError as exc:
                rec["outcome"] = "fail" if exc.err_code in (10071, 10164) else "info"
            except Exception:  # noqa: BLE001 - timeouts: unknown outcome
                pass
            rec["t1"] = self.rec.now()
            wait = period - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)


# ---- after the run ----------------------------------------------------------------------------------
async def read_stream(js, stream: str, subject: str, timeout: float) -> list[tuple[int, bytes]]:
    """Every message of `stream` (seq, data), through an ephemeral pull consumer without acks."""
    deadline = time.monotonic() + timeout
    try:
        info = await retry(f"stream info {stream}", lambda: js.stream_info(stream), timeout, not_found_s=5)
    except RuntimeError as exc:
        if is_not_found(exc):
            return []  # the stream is gone: it holds nothing
        raise
    last = info.state.last_seq
    out: dict[int, bytes] = {}
    if info.state.messages == 0:
        return []
    sub = await retry(f"read consumer on {stream}", lambda: js.pull_subscribe(
        subject, durable=None, stream=stream, config=ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=120,
            num_replicas=1, mem_storage=True)), max(5.0, deadline - time.monotonic()))
    try:
        for _ in range(MAX_OPS):
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {stream}: only up to seq {max(out, default=0)} of {last} "
                                   f"within {timeout:.0f}s")
            try:
                msgs = await sub.fetch(batch=500, timeout=2)
            except Exception:  # noqa: BLE001
                msgs = []
            for m in msgs:
                if m.reply and m.reply.startswith("$JS.ACK."):
                    out[m.metadata.sequence.stream] = m.data
            if out and max(out) >= last:
                break
            if not msgs and (await sub.consumer_info()).num_pending == 0:
                break  # the consumer has nothing more: the stream is read
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001
            pass
    return sorted(out.items())


async def healthy(js, replicas: int) -> str | None:
    """None when the streams and consumers have leaders and every replica is current."""
    try:
        for name in (STREAM, KV_STREAM):
            si = await js.stream_info(name)
            if replicas > 1:
                if not si.cluster or not si.cluster.leader:
                    return f"{name} has no leader"
                peers = si.cluster.replicas or []
                if len(peers) < replicas - 1 or any(not p.current or p.offline for p in peers):
                    return f"{name} replicas not current"
        for c in CONSUMERS:
            ci = await js.consumer_info(STREAM, c, timeout=REQUEST_TIMEOUT_S)
            if replicas > 1 and (not ci.cluster or not ci.cluster.leader):
                return f"consumer {c} has no leader"
    except Exception as exc:  # noqa: BLE001
        return repr(exc)
    return None


async def consumers_done(js, last_seq: int) -> bool:
    for c in CONSUMERS:
        ci = await js.consumer_info(STREAM, c, timeout=REQUEST_TIMEOUT_S)
        if ci.num_pending or ci.num_ack_pending or ci.delivered.stream_seq < last_seq:
            return False
    return True
