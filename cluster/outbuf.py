"""The write at the end of a batch, shared by client connections and routes.

Its own module (nothing but os) so that broker/connection.py can share it without importing
cluster/route.py and what that imports.
"""

from __future__ import annotations

import os


def write_some(fd: int, out: bytearray) -> bool:
    """One non-blocking write of `out` to the socket `fd`, as nats-server's reader does at the
    end of a batch; what went is removed from `out`. True when all of it went. A would-block
    writes nothing; any other error is left for the connection's writer task, which meets it
    on its own write and closes the connection properly."""
    try:
        k = os.write(fd, out)
    except OSError:
        return False
    if k == len(out):
        out.clear()
        return True
    if k:
        del out[:k]
    return False
