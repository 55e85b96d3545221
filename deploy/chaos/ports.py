"""Loopback ports for the servers the tests and nats-chaos start.

`free_port()` hands out a port below the kernel's ephemeral range
(/proc/sys/net/ipv4/ip_local_port_range). A port the kernel picked for `bind(0)` lies in
that range, which is also where every outgoing connection's source port comes from: in the
moment between choosing a port and the server binding it, any client connection on the
machine could take it, and the server would fail with "address already in use" (CI saw a
node lose its cluster port so). Below the range only listeners compete, and this module
never hands out the same port twice in one process.
"""

from __future__ import annotations

import random
import socket

_FALLBACK_RANGE = (32768, 60999)
_LOWEST = 10000
_given: set[int] = set()
_rng = random.Random()


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def _bindable(port: int) -> bool:
    # servers listen with SO_REUSEADDR, so a port held only by TIME_WAIT counts as free
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port nobody listens on, outside the ephemeral range, new to this process."""
    lo, hi = ephemeral_range()
    span = [(_LOWEST, lo - 1)] if lo - 1 - _LOWEST >= 1000 else []
    if hi < 65000:
        span.append((hi + 1, 65535))
    for _ in range(500):
        if not span:
            break
        a, b = _rng.choice(span)
        port = _rng.randint(a, b)
        if port in _given or not _bindable(port):
            continue
        _given.add(port)
        return port
    # no room outside the ephemeral range: let the kernel choose
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _given.add(port)
    return port
