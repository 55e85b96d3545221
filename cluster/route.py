"""One route connection to another node: framing, outbound buffer, liveness (trio).

A `Route` owns its stream. Reading is pulled by the manager (`read_ops`), which also
decides what each operation means. Writing goes through one writer task: `forward`
and `send` are plain `def`s that append to an outbound bytearray and wake the
writer, so a publisher never waits for a route. A route whose buffer grows past
`pending_bytes_max` is cut (it reconnects and re-syncs its interest). The pinger
sends PING every `ping_interval_s` and cuts the route with 'Stale Connection' once
`ping_max` PINGs are outstanding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from cluster import protocol as proto

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

    def _queued(self, out: bytearray) -> None:
        """After frames were added to `out`: cut a peer that lets too much pile up (slow
        consumer), else wake the writer."""
        if len(out) > self._pending_max:
            log.warning("%r: Slow Consumer Detected: MaxPending of %d Exceeded", self, self._pending_max)
            self.abort()
            return
        if not self._wake_set:
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
                with trio.move_on_after(self.limits.write_timeout_s) as timeout:
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self.abort()
                        return
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
