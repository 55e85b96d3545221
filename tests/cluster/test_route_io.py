"""Route I/O: output batches written directly at their end, reads straight from the socket."""

from __future__ import annotations

import pytest
import trio

from cluster.route import Route, RouteClosed, RouteLimits


class _Host:
    batch: dict | None = None


async def _pair() -> tuple[Route, trio.SocketStream, _Host]:
    """A route over a loopback TCP connection, and the peer's end of it."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    ours = await trio.open_tcp_stream("127.0.0.1", port)
    peer = await listener.accept()
    await listener.aclose()
    route = Route(ours, 1, False, False, RouteLimits())
    host = _Host()
    route.batches = host
    return route, peer, host


def _end(host: _Host) -> None:
    batch, host.batch = host.batch, None
    for conn in batch:
        conn.flush_now()


async def test_a_route_written_to_in_a_batch_is_flushed_directly_when_it_ends():
    route, peer, host = await _pair()
    host.batch = {}
    route.forward("foo", "", None, b"hi", None)
    route.forward("foo", "r.1", None, b"yo", None)
    assert list(host.batch) == [route] and not route._wake_set  # no writer task woken
    _end(host)
    assert route.pending_size == 0 and not route._wake_set
    got = b""
    while len(got) < 38:
        got += await peer.receive_some(100)
    assert got == b"RMSG $G foo 2\r\nhi\r\nRMSG $G foo r.1 2\r\nyo\r\n"


async def test_outside_a_batch_or_while_the_writer_sends_the_writer_task_writes():
    route, peer, host = await _pair()
    route.forward("foo", "", None, b"a", None)
    assert route._wake_set and route.pending_size > 0  # no batch: the writer is woken
    route._wake_set = False
    route._sending = True  # the writer is inside send_all: a direct write would interleave
    host.batch = {}
    route.forward("foo", "", None, b"b", None)
    _end(host)
    assert route._wake_set and route.pending_size == len(b"RMSG $G foo 1\r\na\r\n") * 2


async def test_read_some_returns_what_arrived_and_raises_route_closed_at_eof():
    route, peer, _ = await _pair()
    await peer.send_all(b"PING\r\n")
    assert await route.read_some() == b"PING\r\n"
    await peer.send_all(b"PONG\r\n")
    assert await route.read_some() == b"PONG\r\n"
    await peer.aclose()
    with pytest.raises(RouteClosed):
        await route.read_some()
