"""Load generator for the core benchmark: raw sockets, precomputed frames, separate processes.

How this works: every role (publisher, subscribers, responder, requester, connection
and subscription holders) runs in its own OS process, started with the fork context,
and talks to the server over a plain blocking or selector-driven socket. Nothing is
parsed per message on the hot paths:

* The publisher sends one precomputed buffer of N identical `PUB subj n\r\n<payload>\r\n`
  frames followed by `PING\r\n`, and counts the PONGs that come back: each PONG means
  the server has processed one more whole batch. It keeps at most `max_batches` batches
  un-acknowledged (server-side flow control) and, when subscribers exist, never runs more
  than `window_msgs` ahead of the slowest subscriber (end-to-end flow control), so a
  server that buffers (ours) is never driven into unbounded memory or slow-consumer
  disconnects. Both servers get exactly the same flow control.
* A subscriber counts bytes. Within one scenario every MSG frame has the same size, so
  delivered messages = (bytes received - bytes of server PINGs) / frame size, exactly.
  A server PING (`PING\r\n`, which can never occur inside our frames) is found with a
  C-level `bytes.count` over the chunk plus the previous chunk's last 5 bytes, and
  answered with PONG.
* The responder finds the reply subjects with one compiled regex over each chunk and
  answers with precomputed PUB frames; the requester keeps K requests in flight over K
  fixed-width reply subjects (`_INBOX.bench.00000` ..) and counts replies by bytes.

Counters live in a shared RawArray that the coordinating process samples at the start
and the end of the measuring window; the coordinator also samples the CPU time of the
server and of every generator process from /proc so the report can show whether the
generator was the bottleneck.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import resource
import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

CONNECT = b"CONNECT " + json.dumps(
    {"verbose": False, "pedantic": False, "headers": True, "echo": True, "protocol": 1,
     "name": "bench", "lang": "python-raw", "version": "0"}, separators=(",", ":")).encode() + b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
RECV_BYTES = 1 << 20

# shared counter slots
C_SUB_MIN = 0        # messages received by the slowest subscriber connection
C_SUB_TOTAL = 1      # messages received by all subscriber connections together
C_PUB_SENT = 2       # messages written by the publisher
C_PUB_ACKED = 3      # messages the server acknowledged (PONG after their batch)
C_RR_DONE = 4        # request-reply round trips completed
C_ERRORS = 5         # a worker saw -ERR or a closed socket
C_READY = 6          # workers that finished their handshake / setup
C_HELD = 7           # connections (or subscriptions) a holder managed to open
N_COUNTERS = 8

_ctx = mp.get_context("fork")


class BenchError(RuntimeError):
    pass


# ---- socket helpers --------------------------------------------------------------------

def connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_pong(s: socket.socket, buf: bytes = b"") -> bytes:
    """Read until a PONG arrives; answer server PINGs; raise on -ERR. Returns bytes after PONG."""
    while True:
        i = buf.find(PONG)
        if i >= 0:
            return buf[i + len(PONG):]
        if b"-ERR" in buf:
            line = buf[buf.find(b"-ERR"):].split(b"\r\n", 1)[0]
            raise BenchError(f"server error during handshake: {line.decode(errors='replace')}")
        data = s.recv(65536)
        if not data:
            raise BenchError("server closed the connection during handshake")
        buf += data
        if PING in buf:
            s.sendall(PONG * buf.count(PING))
            buf = buf.replace(PING, b"")


def handshake(s: socket.socket, extra: bytes = b"") -> bytes:
    """CONNECT (+ extra ops, e.g. SUBs) + PING, wait for PONG: the server has processed them.

    nats-server answers a protocol-1 CONNECT with an extra INFO (connect_info) that may
    trail the first PONG, so a second PING round trip follows; INFO lines before the
    second PONG are dropped. Returns whatever followed that PONG (normally nothing)."""
    s.sendall(CONNECT + extra + PING)
    rest = read_until_pong(s)
    s.sendall(PING)
    rest = read_until_pong(s, rest)
    return rest


class TokenCounter:
    """Counts a token (e.g. PING) in a byte stream split at arbitrary points, each once.

    A match that straddles two reads is found in `tail + data[:k-1]` (the tail is one byte
    shorter than the token, so such a match always ends in the new data and can never be
    seen twice); matches inside `data` are found by one C-level bytes.count.
    """
    __slots__ = ("token", "keep", "tail")

    def __init__(self, token: bytes = PING):
        self.token = token
        self.keep = len(token) - 1
        self.tail = b""

    def feed(self, data: bytes) -> int:
        token = self.token
        keep = self.keep
        n = data.count(token)
        tail = self.tail
        if tail:
            n += (tail + data[:keep]).count(token)
        self.tail = data[-keep:] if len(data) >= keep else (tail + data)[-keep:]
        return n


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else want
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def _worker_error(counters, e: BaseException) -> None:
    counters[C_ERRORS] += 1
    print(f"loadgen worker {os.getpid()}: {e.__class__.__name__}: {e}", file=sys.stderr, flush=True)


def _err_line(data: bytes) -> str:
    i = data.find(b"-ERR")
    return data[i:].split(b"\r\n", 1)[0].decode(errors="replace")


# ---- frames --------------------------------------------------------------------------------

def payload_of(size: int) -> bytes:
    return b"x" * size


def pub_frame(subject: bytes, size: int, reply: bytes = b"") -> bytes:
    if reply:
        return b"PUB %b %b %d\r\n%b\r\n" % (subject, reply, size, payload_of(size))
    return b"PUB %b %d\r\n%b\r\n" % (subject, size, payload_of(size))


def msg_frame_size(subject: bytes, sid: bytes, size: int, reply: bytes = b"") -> int:
    head = b"MSG %b %b %b %d\r\n" % (subject, sid, reply, size) if reply else \
        b"MSG %b %b %d\r\n" % (subject, sid, size)
    return len(head) + size + 2


# ---- workers (each runs in its own process) --------------------------------------------

def _publisher(port: int, subject: bytes, size: int, batch_msgs: int, max_batches: int,
               window_msgs: int, with_subs: bool, counters, stop, go) -> None:
    try:
        s = connect(port)
        handshake(s)
        batch = pub_frame(subject, size) * batch_msgs + PING
        counters[C_READY] += 1
        go.wait()
        sent = acked = 0
        outstanding = 0
        pongs_seen = TokenCounter(PONG)
        pings_seen = TokenCounter(PING)
        while not stop.value:
            if with_subs:
                # end-to-end window: never run far ahead of the slowest subscriber
                while sent - counters[C_SUB_MIN] > window_msgs and not stop.value:
                    time.sleep(0.0002)
            s.sendall(batch)
            sent += batch_msgs
            counters[C_PUB_SENT] = sent
            outstanding += 1
            while outstanding >= max_batches and not stop.value:
                data = s.recv(65536)
                if not data:
                    _worker_error(counters, BenchError("server closed the connection"))
                    return
                pings = pings_seen.feed(data)
                if pings:
                    s.sendall(PONG * pings)
                if b"-ERR" in data:
                    _worker_error(counters, BenchError(_err_line(data)))
                    return
                pongs = pongs_seen.feed(data)
                if pongs:
                    outstanding -= pongs
                    acked += pongs * batch_msgs
                    counters[C_PUB_ACKED] = acked
        s.close()
    except (OSError, BenchError) as e:
        _worker_error(counters, e)


def _subscribers(port: int, subject: bytes, nsubs: int, frame: int, counters, stop) -> None:
    """nsubs subscriber connections in one process (one selector), counting by bytes."""
    try:
        socks = []
        for i in range(nsubs):
            s = connect(port)
            leftover = handshake(s, b"SUB %b %d\r\n" % (subject, i + 1))
            if leftover:
                raise BenchError("unexpected bytes after handshake")
            s.setblocking(False)
            socks.append(s)
        sel = selectors.DefaultSelector()
        nbytes = [0] * nsubs
        pings = [TokenCounter(PING) for _ in range(nsubs)]
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        counters[C_READY] += 1
        while not stop.value:
            for key, _ in sel.select(0.05):
                i = key.data
                s = key.fileobj
                try:
                    data = s.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    _worker_error(counters, BenchError("server closed the connection"))
                    return
                n = pings[i].feed(data)
                if n:
                    s.sendall(PONG * n)
                    nbytes[i] -= 6 * n
                if b"-ERR" in data:
                    _worker_error(counters, BenchError(_err_line(data)))
                    return
                nbytes[i] += len(data)
            counts = [b // frame for b in nbytes]
            counters[C_SUB_MIN] = min(counts)
            counters[C_SUB_TOTAL] = sum(counts)
        for s in socks:
            s.close()
    except (OSError, BenchError) as e:
        _worker_error(counters, e)


def _responder(port: int, size: int, inflight: int, counters, stop) -> None:
    try:
        s = connect(port)
        handshake(s, b"SUB req 1\r\n")
        payload = payload_of(size)
        pat = re.compile(rb"MSG req 1 (\S+) %d\r\n" % size)
        replies = {b"_INBOX.bench.%05d" % k: pub_frame(b"_INBOX.bench.%05d" % k, size)
                   for k in range(inflight)}
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ)
        counters[C_READY] += 1
        buf = b""
        while not stop.value:
            if not sel.select(0.05):
                continue
            try:
                data = s.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            if not data:
                _worker_error(counters, BenchError("server closed the connection"))
                return
            buf = buf + data if buf else data
            out = []
            pos = 0
            n = len(buf)
            while pos < n:
                m = pat.match(buf, pos)
                if m is None:
                    if buf.startswith(PING, pos):
                        out.append(PONG)
                        pos += 6
                        continue
                    if buf.startswith(b"-ERR", pos):
                        _worker_error(counters, BenchError(_err_line(buf[pos:])))
                        return
                    break  # partial frame: wait for more
                end = m.end() + size + 2
                if end > n:
                    break
                reply = m.group(1)
                frame = replies.get(reply)
                out.append(frame if frame is not None else pub_frame(reply, size))
                pos = end
            buf = buf[pos:]
            if out:
                # blocking send of the whole reply batch; the requester bounds it by K
                s.setblocking(True)
                s.sendall(b"".join(out))
                s.setblocking(False)
        del payload
        s.close()
    except (OSError, BenchError) as e:
        _worker_error(counters, e)


def _requester(port: int, size: int, inflight: int, counters, stop, go) -> None:
    try:
        s = connect(port)
        handshake(s, b"SUB _INBOX.bench.* 1\r\n")
        reqs = [pub_frame(b"req", size, b"_INBOX.bench.%05d" % k) for k in range(inflight)]
        frame = msg_frame_size(b"_INBOX.bench.00000", b"1", size)
        counters[C_READY] += 1
        go.wait()
        s.settimeout(0.2)
        s.sendall(b"".join(reqs))
        sent = inflight
        done = 0
        nbytes = 0
        pings = TokenCounter(PING)
        while not stop.value:
            try:
                data = s.recv(RECV_BYTES)
            except socket.timeout:
                continue
            if not data:
                _worker_error(counters, BenchError("server closed the connection"))
                return
            n = pings.feed(data)
            if n:
                s.sendall(PONG * n)
                nbytes -= 6 * n
            if b"-ERR" in data:
                _worker_error(counters, BenchError(_err_line(data)))
                return
            nbytes += len(data)
            now_done = nbytes // frame
            new = now_done - done
            if new:
                done = now_done
                counters[C_RR_DONE] = done
                # reply j frees slot j % K; request j + K reuses it
                first = sent % inflight
                if new == 1:
                    s.sendall(reqs[first])
                else:
                    s.sendall(b"".join(reqs[(first + k) % inflight] for k in range(new)))
                sent += new
        s.close()
    except (OSError, BenchError) as e:
        _worker_error(counters, e)


def _conn_holder(port: int, nconns: int, counters, stop, batch: int = 200) -> None:
    """Open nconns idle client connections (CONNECT + PING, wait PONG each); keep them open."""
    socks: list[socket.socket] = []
    try:
        raise_nofile(nconns + 64)
        opened = 0
        while opened < nconns:
            group = []
            for _ in range(min(batch, nconns - opened)):
                try:
                    s = connect(port, timeout=30)
                except OSError:
                    break
                s.sendall(CONNECT + PING)
                group.append(s)
            if not group:
                break
            for s in group:
                read_until_pong(s)
                socks.append(s)
            opened += len(group)
            counters[C_HELD] = opened
            if len(group) < batch and opened < nconns:
                break
    except (OSError, BenchError) as e:
        _worker_error(counters, e)
    counters[C_READY] += 1
    # idle, but answer the server's keepalive PINGs so neither server drops us
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while not stop.value:
        for key, _ in sel.select(0.1):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            if data and PING in data:
                key.fileobj.sendall(PONG * data.count(PING))
    for s in socks:
        s.close()


def _sub_holder(port: int, nsubs: int, nconns: int, counters, stop) -> None:
    """nsubs subscriptions `sub.<i>` spread over nconns connections; keep them open."""
    socks = []
    try:
        per = -(-nsubs // nconns)
        made = 0
        for c in range(nconns):
            lo, hi = c * per, min(nsubs, (c + 1) * per)
            if lo >= hi:
                break
            s = connect(port, timeout=60)
            lines = b"".join(b"SUB sub.%d %d\r\n" % (i, i) for i in range(lo, hi))
            handshake(s, lines)
            socks.append(s)
            made += hi - lo
            counters[C_HELD] = made
    except (OSError, BenchError) as e:
        _worker_error(counters, e)
    counters[C_READY] += 1
    while not stop.value:
        for s in socks:
            s.settimeout(0.01)
            try:
                data = s.recv(4096)
            except (socket.timeout, BlockingIOError):
                continue
            if data and PING in data:
                s.sendall(PONG * data.count(PING))
        time.sleep(0.05)
    for s in socks:
        s.close()


# ---- coordinator -------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    msgs_per_s: float             # the scenario's headline rate (delivered / acked / round trips)
    published_per_s: float = 0.0  # publisher side, for pub/sub scenarios
    seconds: float = 0.0
    server_cpu: float = 0.0       # server CPU seconds / wall seconds (1.0 = one core)
    gen_cpu: float = 0.0          # all generator processes together
    errors: int = 0
    extra: dict = field(default_factory=dict)


class _Run:
    """Shared state + the processes of one scenario run."""

    def __init__(self):
        self.counters = _ctx.RawArray("q", N_COUNTERS)
        self.stop = _ctx.RawValue("b", 0)
        self.go = _ctx.Event()
        self.procs: list = []

    def start(self, target, *args) -> None:
        p = _ctx.Process(target=target, args=args, daemon=True)
        p.start()
        self.procs.append(p)

    def wait_ready(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counters[C_READY] < n:
            if self.counters[C_ERRORS]:
                raise BenchError("a load-generator worker failed during setup")
            if any(not p.is_alive() for p in self.procs) and self.counters[C_READY] < n:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead and self.counters[C_READY] < n:
                    raise BenchError("a load-generator worker exited during setup")
            if time.monotonic() > deadline:
                raise BenchError("load-generator workers did not get ready in time")
            time.sleep(0.005)

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                total += cpu_seconds(p.pid)
            except OSError:
                pass
        return total

    def finish(self) -> None:
        self.stop.value = 1
        self.go.set()
        for p in self.procs:
            p.join(5)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2)


def _measure(run: _Run, server_pid: int | None, warmup: float, seconds: float, slots: list[int]):
    time.sleep(warmup)
    c = run.counters
    t0 = time.perf_counter()
    v0 = [c[i] for i in slots]
    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    g0 = run.cpu()
    time.sleep(seconds)
    t1 = time.perf_counter()
    v1 = [c[i] for i in slots]
    s1 = cpu_seconds(server_pid) if server_pid else 0.0
    g1 = run.cpu()
    dt = t1 - t0
    rates = [(b - a) / dt for a, b in zip(v0, v1)]
    return dt, rates, (s1 - s0) / dt, (g1 - g0) / dt


def pub_sub(port: int, *, size: int = 16, nsubs: int = 1, seconds: float = 3.0, warmup: float = 0.5,
            server_pid: int | None = None, name: str = "", batch_bytes: int = 64 * 1024,
            max_batches: int = 4, window_bytes: int = 4 * 1024 * 1024, subject: bytes = b"bench") -> Result:
    """Publisher -> nsubs subscribers (nsubs = 0: publish only). Rate = msgs delivered/s
    (summed over subscribers), or msgs acknowledged by the server/s for publish only."""
    frame_in = len(pub_frame(subject, size))
    batch_msgs = max(1, batch_bytes // frame_in)
    window_msgs = max(batch_msgs * 2, window_bytes // frame_in)
    run = _Run()
    try:
        ready = 1
        if nsubs:
            frame_out = msg_frame_size(subject, b"1", size)
            if nsubs > 9:
                raise BenchError("sid widths must be equal: at most 9 subscribers")
            run.start(_subscribers, port, subject, nsubs, frame_out, run.counters, run.stop)
            run.wait_ready(1)
            ready = 2
        run.start(_publisher, port, subject, size, batch_msgs, max_batches, window_msgs, bool(nsubs),
                  run.counters, run.stop, run.go)
        run.wait_ready(ready)
        run.go.set()
        slots = [C_SUB_TOTAL, C_PUB_ACKED] if nsubs else [C_PUB_ACKED, C_PUB_ACKED]
        dt, rates, scpu, gcpu = _measure(run, server_pid, warmup, seconds, slots)
    finally:
        run.finish()
    errors = run.counters[C_ERRORS]
    return Result(name, rates[0], published_per_s=rates[1], seconds=dt, server_cpu=scpu, gen_cpu=gcpu,
                  errors=errors, extra={"delivered_total": run.counters[C_SUB_TOTAL],
                                        "delivered_min": run.counters[C_SUB_MIN],
                                        "published_total": run.counters[C_PUB_SENT]})


def request_reply(port: int, *, inflight: int = 1, size: int = 16, seconds: float = 3.0,
                  warmup: float = 0.5, server_pid: int | None = None, name: str = "") -> Result:
    """One responder, one requester keeping `inflight` requests outstanding; round trips/s."""
    run = _Run()
    try:
        run.start(_responder, port, size, inflight, run.counters, run.stop)
        run.wait_ready(1)
        run.start(_requester, port, size, inflight, run.counters, run.stop, run.go)
        run.wait_ready(2)
        run.go.set()
        dt, rates, scpu, gcpu = _measure(run, server_pid, warmup, seconds, [C_RR_DONE])
    finally:
        run.finish()
    return Result(name, rates[0], seconds=dt, server_cpu=scpu, gen_cpu=gcpu, errors=run.counters[C_ERRORS],
                  extra={"round_trips_total": run.counters[C_RR_DONE]})


def hold_connections(port: int, nconns: int, measure, settle: float = 1.0, timeout: float = 300.0):
    """Open nconns idle connections, call measure() while they are all open; (opened, value, errors)."""
    run = _Run()
    try:
        run.start(_conn_holder, port, nconns, run.counters, run.stop)
        run.wait_ready(1, timeout=timeout)
        time.sleep(settle)
        value = measure()
        return run.counters[C_HELD], value, run.counters[C_ERRORS]
    finally:
        run.finish()


def hold_subscriptions(port: int, nsubs: int, nconns: int, measure, settle: float = 1.0,
                       timeout: float = 300.0):
    run = _Run()
    try:
        run.start(_sub_holder, port, nsubs, nconns, run.counters, run.stop)
        run.wait_ready(1, timeout=timeout)
        time.sleep(settle)
        value = measure()
        return run.counters[C_HELD], value, run.counters[C_ERRORS]
    finally:
        run.finish()
