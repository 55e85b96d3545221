"""Sans-IO parser for the client side of the NATS text protocol.

How this works: `Parser.feed(data)` takes whatever bytes the socket produced (any
split, even one byte at a time) and returns the complete operations found, as
small tuples whose first item is an OP_* code. Partial input is kept until more
arrives. A payload is read by its declared length, never scanned, and must be
followed by CRLF. On a protocol violation the parser stops, returns the operations
that preceded it and sets `error` to a ProtocolError carrying nats-server's exact
-ERR text (or None for violations nats-server answers by closing silently).

Ops (subjects, reply and sid stay bytes: the router keys its cache by the raw
subject and writes them back out unchanged):
  (OP_PUB, subject, reply, hdr_or_None, payload)      PUB and HPUB
  (OP_SUB, subject, queue_or_None, sid)
  (OP_UNSUB, sid, max_msgs)                            max_msgs 0 = none
  (OP_PING,) (OP_PONG,) (OP_CONNECT, json_bytes) (OP_INFO, json_bytes)
"""

from __future__ import annotations

OP_PUB = 1
OP_SUB = 2
OP_UNSUB = 3
OP_PING = 4
OP_PONG = 5
OP_CONNECT = 6
OP_INFO = 7

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_MAX_CONTROL_LINE = "maximum control line exceeded"

FAST_RESTARTS_MAX = 8

_PING = (OP_PING,)
_PONG = (OP_PONG,)


class ProtocolError(Exception):
    """The peer broke the protocol. `text` is the -ERR text, or None to close silently."""

    def __init__(self, text: str | None):
        super().__init__(text or "protocol violation")
        self.text = text


class Parser:
    __slots__ = ("max_control_line", "max_payload", "error", "_pending", "_need")

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1048576):
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self.error: ProtocolError | None = None
        self._pending: list[bytes] = []  # unconsumed input, oldest first
        self._need = 0  # bytes the pending op needs before parsing is worth retrying

    def feed(self, data: bytes) -> list[tuple]:
        if self.error is not None:
            return []
        if self._pending:
            self._pending.append(data)
            if self._need and sum(map(len, self._pending)) < self._need:
                return []
            data = b"".join(self._pending)
            self._pending = []
        self._need = 0
        ops: list[tuple] = []
        try:
            pos = self._scan_plain(data, ops, 0)
            restarts = 0
            while pos < len(data):
                # one op the short scan could not take, then back to the short scan (bounded,
                # so an unusual mix of ops cannot make a feed quadratic)
                nxt = self._parse(data, ops, pos, one=restarts < FAST_RESTARTS_MAX)
                if nxt == pos or nxt >= len(data) or restarts >= FAST_RESTARTS_MAX:
                    pos = nxt
                    break
                restarts += 1
                pos = nxt + self._scan_plain(data[nxt:], ops, 0) if self._fast_ok(data, nxt) else nxt
        except ProtocolError as e:
            self.error = e
            return ops
        if pos < len(data):
            self._pending.append(data[pos:])
        return ops

    @staticmethod
    def _fast_ok(data: bytes, pos: int) -> bool:
        return data.startswith(b"PUB ", pos) or data.startswith(b"PING\r\n", pos) or \
            data.startswith(b"PONG\r\n", pos)

    def _scan_plain(self, data: bytes, ops: list[tuple], pos: int) -> int:
        """The common case in one C-level split: a leading run of `PUB subj [reply] n`
        frames and PING/PONG. A payload counts only if its length equals the declared size,
        so a payload holding CRLF (or anything unusual) stops the scan and the general
        parser takes over at that frame. Returns the offset of the first byte not taken."""
        parts = data.split(b"\r\n")
        n = len(parts) - 1  # the last part has no CRLF after it yet
        i = 0
        mcl = self.max_control_line
        max_payload = self.max_payload
        append = ops.append
        while i < n:
            h = parts[i]
            if h[:4] == b"PUB ":
                if i + 1 >= n or len(h) > mcl:
                    break
                args = h.split()
                na = len(args)
                if na == 3:
                    reply = b""
                elif na == 4:
                    reply = args[2]
                else:
                    break
                tok = args[-1]
                if not tok.isdigit():
                    break
                pl = parts[i + 1]
                size = len(pl)
                if size != int(tok) or size > max_payload:
                    break
                append((OP_PUB, args[1], reply, None, pl))
                pos += len(h) + size + 4
                i += 2
            elif h == b"PING":
                append(_PING)
                pos += 6
                i += 1
            elif h == b"PONG":
                append(_PONG)
                pos += 6
                i += 1
            else:
                break
        return pos

    def _parse(self, data: bytes, ops: list[tuple], pos: int = 0, one: bool = False) -> int:
        end = len(data)
        find = data.find
        mcl = self.max_control_line
        max_payload = self.max_payload
        append = ops.append
        start = pos
        while pos < end:
            if one and pos != start:
                return pos
            eol = find(b"\n", pos)
            if eol < 0:
                if end - pos > mcl:
                    raise ProtocolError(ERR_MAX_CONTROL_LINE)
                return pos
            line_end = eol - 1 if eol > pos and data[eol - 1] == 13 else eol
            if line_end - pos > mcl:
                raise ProtocolError(ERR_MAX_CONTROL_LINE)
            c = data[pos] | 0x20  # lower-case the first letter
            if c == 0x70:  # p: PUB, PING, PONG
                c2 = data[pos + 1] | 0x20 if pos + 1 < end else 0
                if c2 == 0x75:  # pu
                    args = data[pos:line_end].split()
                    n = len(args)
                    if n == 3:
                        reply = b""
                    elif n == 4:
                        reply = args[2]
                    else:
                        raise ProtocolError(ERR_UNKNOWN_OP)
                    verb = args[0]
                    if verb != b"PUB" and verb.upper() != b"PUB":
                        raise ProtocolError(ERR_UNKNOWN_OP)
                    tok = args[-1]
                    if not tok.isdigit():
                        raise ProtocolError(ERR_UNKNOWN_OP)
                    size = int(tok)
                    if size > max_payload:
                        raise ProtocolError(ERR_MAX_PAYLOAD)
                    start = eol + 1
                    stop = start + size
                    if stop + 2 > end:
                        self._need = stop + 2 - pos
                        return pos
                    if data[stop] != 13 or data[stop + 1] != 10:
                        raise ProtocolError(ERR_UNKNOWN_OP)
                    append((OP_PUB, args[1], reply, None, data[start:stop]))
                    pos = stop + 2
                    continue
                word = data[pos:line_end].strip().upper()
                if word == b"PING":
                    append(_PING)
                elif word == b"PONG":
                    append(_PONG)
                else:
                    raise ProtocolError(ERR_UNKNOWN_OP)
                pos = eol + 1
            elif c == 0x68:  # h: HPUB
                args = data[pos:line_end].split()
                if args[0].upper() != b"HPUB":
                    raise ProtocolError(ERR_UNKNOWN_OP)
                n = len(args)
                if n == 4:
                    reply = b""
                elif n == 5:
                    reply = args[2]
                else:
                    raise ProtocolError(ERR_UNKNOWN_OP)
                hsize = _size(args[-2])
                size = _size(args[-1])
                if size > self.max_payload:
                    raise ProtocolError(ERR_MAX_PAYLOAD)
                if hsize > size:
                    raise ProtocolError(None)
                start = eol + 1
                stop = start + size
                if stop + 2 > end:
                    self._need = stop + 2 - pos
                    return pos
                if data[stop:stop + 2] != b"\r\n":
                    raise ProtocolError(ERR_UNKNOWN_OP)
                append((OP_PUB, args[1], reply, data[start:start + hsize], data[start + hsize:stop]))
                pos = stop + 2
            elif c == 0x73:  # s: SUB
                args = data[pos:line_end].split()
                if args[0].upper() != b"SUB":
                    raise ProtocolError(ERR_UNKNOWN_OP)
                n = len(args)
                if n == 3:
                    append((OP_SUB, args[1], None, args[2]))
                elif n == 4:
                    append((OP_SUB, args[1], args[2], args[3]))
                else:
                    raise ProtocolError(None)
                pos = eol + 1
            elif c == 0x75:  # u: UNSUB
                args = data[pos:line_end].split()
                if args[0].upper() != b"UNSUB":
                    raise ProtocolError(ERR_UNKNOWN_OP)
                n = len(args)
                if n == 2:
                    append((OP_UNSUB, args[1], 0))
                elif n == 3:
                    append((OP_UNSUB, args[1], _size(args[2])))
                else:
                    raise ProtocolError(None)
                pos = eol + 1
            elif c == 0x63 or c == 0x69:  # c: CONNECT, i: INFO
                head, _, rest = data[pos:line_end].partition(b" ")
                if not rest:
                    head, _, rest = data[pos:line_end].partition(b"\t")
                word = head.upper()
                if word == b"CONNECT":
                    append((OP_CONNECT, rest.strip()))
                elif word == b"INFO":
                    append((OP_INFO, rest.strip()))
                else:
                    raise ProtocolError(ERR_UNKNOWN_OP)
                pos = eol + 1
            elif data[pos] in b"\r\n\t ":
                # blank line or stray whitespace between ops: skip it
                pos = eol + 1
            else:
                raise ProtocolError(ERR_UNKNOWN_OP)
        return pos


def _size(tok: bytes) -> int:
    if not tok.isdigit():
        raise ProtocolError(ERR_UNKNOWN_OP)
    return int(tok)


# ---- what the server sends back ------------------------------------------------------

def err_frame(text: str) -> bytes:
    return b"-ERR '%b'\r\n" % text.encode()
