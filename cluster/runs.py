"""Runs of identical frames, found with C-level strided slices.

Its own module (nothing but builtins) so that broker/protocol.py can share it without
importing cluster/protocol.py, whose msgspec import (msgspec._core with datetime, decimal,
uuid and typing_extensions: about 1.7 MiB resident) a node without routes or JetStream
never needs.
"""

from __future__ import annotations

RUN_SCAN_MIN = 8  # runs shorter than this are checked frame by frame


def run_length(data: bytes, start: int, hlen: int, size: int) -> int:
    """How many frames, the first one already checked, repeat data[start:start+hlen] (a
    control line) followed by `size` payload bytes and CRLF back to back from `start`,
    counting only complete frames. Long runs are checked a column at a time: the byte
    at offset j of every frame is one strided slice (C-level) compared by lstrip, so the
    cost is (hlen + 2) slices, not a Python step per frame. RMSG runs (cluster/protocol.py) and
    runs of client PUBs (broker/protocol.py) both use it."""
    flen = hlen + size + 2
    n = (len(data) - start) // flen
    if n < RUN_SCAN_MIN:
        hdr = data[start:start + hlen]
        k = 1
        pos = start + flen
        while k < n and data.startswith(hdr, pos) and data[pos + flen - 2] == 13 and data[pos + flen - 1] == 10:
            k += 1
            pos += flen
        return k
    stop = start + n * flen
    for j in range(hlen):
        c = data[start + j:start + j + 1]
        col = data[start + j:stop:flen]
        k = n - len(col.lstrip(c))
        if k < n:
            n = k
            stop = start + n * flen
    t = start + hlen + size
    for j, c in ((t, b"\r"), (t + 1, b"\n")):
        col = data[j:stop:flen]
        k = n - len(col.lstrip(c))
        if k < n:
            n = k
            stop = start + n * flen
    return n
