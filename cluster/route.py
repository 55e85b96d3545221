"""One route connection to another node: framing, outbound buffer, liveness (trio).

A `Route` owns its stream. Reading is pulled by the manager (`read_ops` during the
handshake, then `read_some`), which also decides what each operation means. Writing:
`forward` and `send` are plain `def`s that append to an outbound bytearray, so a
publisher never waits for a route. Outside an output batch they wake the writer task;
inside one (the host's `batch` dict is set: a client read, a route read, a Raft cycle)
the route joins the batch and the host calls `flush_now()` when it ends, one direct
non-blocking write with the writer task left for what does not fit, as nats-server's
readLoop flushes the connections it wrote to. A route whose buffer grows past
`pending_bytes_max` is cut (it reconnects and re-syncs its interest). The pinger
sends PING every `ping_interval_s` and cuts the route with 'Stale Connection' once
`ping_max` PINGs are outstanding.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import trio

from cluster import protocol as proto
from cluster.outbuf import write_some

log = logging.getLogger("cluster.route")

RECEIVE_BYTES = 256 * 1024


@dataclass
class RouteLimits:
    ping_interval_s: float = 2.0
    ping_max: int = 3
    pending_bytes_max: int = 64 * 1024 * 1024
    payload_max_bytes: int = proto.PAYLOAD_MAX_BYTES
    write_timeout_s: float = 10.0


class RouteClosed(Exception):
    """The peer closed the connection (EOF or reset)."""


class Route:
    is_route = True  # what the broker's sublist checks to tell route peers from clients
    kind = "Router"

    def __init__(self, stream: trio.SocketStream, rid: int, solicited: bool, configured: bool,
                 limits: RouteLimits) -> None:
        self.stream = stream
        self.rid = rid
        self.did_solicit = solicited
        self.is_configured = configured
        self.limits = limits
        self.parser = proto.RouteParser(payload_max_bytes=limits.payload_max_bytes)
        self.remote: proto.RouteInfo | None = None
        self.remote_id = ""
        self.is_self = False  # the handshake found this is a route to ourselves
        self.name = ""  # remote server name (or id until the handshake is done)
        self.route_url = ""  # "host:port" where the remote's cluster listener can be dialed
        try:
            peer = stream.socket.getpeername()
            self.ip, self.port = str(peer[0]), int(peer[1])
        except OSError:
            self.ip, self.port = "", 0
        self.start = time.time()
        self.last_activity = self.start
        self.rtt_s = 0.0
        self.out_msgs = self.out_bytes = 0
        self._prefixes: dict = {}
        self._pending_max = limits.pending_bytes_max
        self._wake_set = False
        self.subs: dict[tuple[str, str | None], int] = {}
        self.registered = False
        self._out = bytearray()
        self._wake = trio.Event()
        self._closing = False
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._pings_out = 0
        self._ping_sent_at = 0.0
        try:
            self._fd = stream.socket.fileno()
        except (AttributeError, OSError):
            self._fd = -1
        self._sending = False  # the writer task is inside send_all: no direct write now
        self._waited = True
        self._drained = False
        self.batches = None  # set by the manager: an object whose `batch` is the open output batch or None

    def __repr__(self) -> str:
        return f"<Route rid={self.rid} {self.name or '?'} {self.ip}:{self.port}>"

    # -------------------------------------------------------------- outbound (sync)

    def forward(self, subject: str, reply: str, hdr: bytes | None, payload: bytes, queues: list[str] | None) -> None:
        """Router hook: queue one routed message. Never blocks."""
        if self._closing:
            return
        out = self._out
        if hdr is None and not queues:
            key = (subject, reply) if reply else subject
            prefix = self._prefixes.get(key)
            if prefix is None:
                prefix = self._prefix(subject, reply)
            out += b"%s%d\r\n%s\r\n" % (prefix, len(payload), payload)
            self.out_bytes += len(payload)
        else:
            proto.append_msg(out, subject, reply, hdr, payload, queues)
            self.out_bytes += len(payload) if hdr is None else len(payload) + len(hdr)
        self.out_msgs += 1
        self._queued(out)

    def forward_bodies(self, subject: str, reply: str, bodies: list, n: int, size: int) -> None:
        """Router hook: queue n routed messages on one subject at once. bodies is [b"",
        payload CRLF, ...] (n payloads of `size` bytes), so one join under the RMSG line
        makes the frames. Never blocks."""
        if self._closing:
            return
        key = (subject, reply) if reply else subject
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._prefix(subject, reply)
        out = self._out
        out += (b"%s%d\r\n" % (prefix, size)).join(bodies)
        self.out_bytes += n * size
        self.out_msgs += n
        self._queued(out)

    def forward_frames(self, frames: bytes, n: int, nbytes: int) -> None:
        """Router hook: queue n routed messages already rendered as RMSG/HMSG frames
        (nbytes of header and payload). Never blocks."""
        if self._closing:
            return
        out = self._out
        out += frames
        self.out_bytes += nbytes
        self.out_msgs += n
        self._queued(out)

    def _queued(self, out: bytearray) -> None:
        """After frames were added to `out`: cut a peer that lets too much pile up (slow
        consumer), else wake the writer."""
        if len(out) > self._pending_max:
            log.warning("%r: Slow Consumer Detected: MaxPending of %d Exceeded", self, self._pending_max)
            self.abort()
            return
        host = self.batches
        if host is not None:
            batch = host.batch
            if batch is not None:
                batch[self] = None
                return
        if not self._wake_set:
            self._wake_set = True
            self._wake.set()

    def flush_now(self) -> None:
        """End of an output batch: one non-blocking write straight to the socket unless
        the writer task is mid-write; what does not fit is left to the writer."""
        out = self._out
        if out and not self._sending and not self._closing and self._fd >= 0 and write_some(self._fd, out):
            return
        if (out or self._closing) and not self._wake_set:
            self._wake_set = True
            self._wake.set()

    def _prefix(self, subject: str, reply: str) -> bytes:
        if len(self._prefixes) >= 4096:
            self._prefixes.clear()
        key = (subject, reply) if reply else subject
        line = f"RMSG {proto.ACCOUNT} {subject} {reply} " if reply else f"RMSG {proto.ACCOUNT} {subject} "
        prefix = self._prefixes[key] = line.encode()
        return prefix

    def send(self, data: bytes) -> None:
        if self._closing:
            return
        self._out += data
        self._wake_set = True
        self._wake.set()

    @property
    def in_msgs(self) -> int:
        return self.parser.msgs

    @property
    def in_bytes(self) -> int:
        return self.parser.bytes

    @property
    def pending_size(self) -> int:
        return len(self._out)

    def close(self, err: str | None = None) -> None:
        """Flush what is queued (plus an -ERR when given), then close."""
        if self._closing:
            return
        if err:
            self._out += proto.encode_err(err)
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        """Close now, dropping whatever is queued."""
        self._closing = True
        self._out = bytearray()
        if self._scope is not None:
            self._scope.cancel()

    # -------------------------------------------------------------- tasks

    async def run(self, body) -> None:
        """Run `body()` (the manager's reader loop) with the writer, until either ends."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                self._nursery = nursery
                nursery.start_soon(self._writer)
                try:
                    await body()
                finally:
                    if self._closing:
                        self._wake.set()  # the writer flushes (e.g. an -ERR), then cancels
                    else:
                        nursery.cancel_scope.cancel()
        finally:
            self._closing = True
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.stream.aclose()

    def start_pinger(self) -> None:
        assert self._nursery is not None, "start_pinger() only inside run()"
        self._nursery.start_soon(self._pinger)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._wake_set = False
            while self._out:
                data, self._out = self._out, bytearray()
                self._sending = True
                with trio.move_on_after(self.limits.write_timeout_s) as timeout:
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.abort()
                        return
                    finally:
                        self._sending = False
                if timeout.cancelled_caught:
                    log.warning("%r: write deadline exceeded", self)
                    self.abort()
                    return
            if self._closing and self._scope is not None:
                self._scope.cancel()
                return

    async def _pinger(self) -> None:
        while not self._closing:
            await trio.sleep(self.limits.ping_interval_s)
            if self._pings_out >= self.limits.ping_max:
                log.warning("%r: Stale Connection", self)
                self.close("Stale Connection")
                return
            self._pings_out += 1
            self._ping_sent_at = time.monotonic()
            self.send(proto.PING_FRAME)

    def got_pong(self) -> None:
        if self._ping_sent_at:
            self.rtt_s = time.monotonic() - self._ping_sent_at
        self._pings_out = 0

    # -------------------------------------------------------------- inbound

    async def read_some(self) -> bytes:
        """The next bytes from the peer, read straight from the socket: a read right after a
        wait is handled at once (trio's SocketStream adds a scheduling pass after every
        read), a read that did not wait yields first so a busy route never starves the
        rest. Raises RouteClosed on EOF or a broken socket."""
        fd = self._fd
        try:
            if fd < 0:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            else:
                while True:
                    if self._drained:  # the last read was short: wait, not a read that fails
                        await trio.lowlevel.wait_readable(fd)
                        self._waited = True
                    try:
                        data = os.read(fd, RECEIVE_BYTES)
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(fd)
                        self._waited = True
                        self._drained = False
                        continue
                    if not self._waited:
                        await trio.lowlevel.checkpoint()
                    self._waited = False
                    self._drained = len(data) < RECEIVE_BYTES
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise RouteClosed() from None
        if not data:
            raise RouteClosed()
        self.last_activity = time.time()
        self._pings_out = 0  # any traffic proves the peer is alive
        return data

    async def read_ops(self) -> list:
        """Wait for the next batch of operations. Raises RouteClosed on EOF and
        RouteProtocolError when the peer breaks the protocol."""
        while True:
            if self.parser.failed:
                self.parser.feed(b"")  # raises the error held back after the last good ops
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise RouteClosed() from None
            if not data:
                raise RouteClosed()
            self.last_activity = time.time()
            self._pings_out = 0  # any traffic proves the peer is alive
            ops = self.parser.feed(data)
            if ops:
                return ops
