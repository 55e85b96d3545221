"""-V protocol traces of client operations, in nats-server's `<<- [OP args]` shape."""

from __future__ import annotations

import logging

from broker.protocol import OP_CONNECT, OP_INFO, OP_PING, OP_PONG, OP_PUB, OP_RUN, OP_SUB, OP_UNSUB, expand_run

log = logging.getLogger("broker")


def trace_ops(conn, ops: list[tuple]) -> None:
    """One TRACE line per operation of `conn` (a run of PUBs is traced publish by publish)."""
    for op in ops:
        if op[0] == OP_RUN:
            for o in expand_run(op):
                _trace_one(conn, o)
        else:
            _trace_one(conn, op)


def _trace_one(conn, op: tuple) -> None:
    code = op[0]
    if code == OP_PUB:
        args = [op[1], op[2]] if op[2] else [op[1]]
        if op[3] is None:
            line = b"PUB " + b" ".join(args) + b" %d" % len(op[4])
        else:
            line = b"HPUB " + b" ".join(args) + b" %d %d" % (len(op[3]), len(op[3]) + len(op[4]))
    elif code == OP_SUB:
        line = b" ".join(x for x in (b"SUB", op[1], op[2], op[3]) if x)
    elif code == OP_UNSUB:
        line = b"UNSUB %b" % op[1] + (b" %d" % op[2] if op[2] else b"")
    elif code == OP_CONNECT:
        line = b"CONNECT " + op[1]
    else:
        line = {OP_PING: b"PING", OP_PONG: b"PONG", OP_INFO: b"INFO"}[code]
    log.log(5, "%s:%d - cid:%d - <<- [%s]", conn.ip, conn.port, conn.cid, line.decode("utf-8", "replace"))
