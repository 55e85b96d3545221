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
  (OP_RUN, subject, reply, data, start, n, hlen, size)
      n >= 2 PUB frames with the same header line back to back in data from start:
      frame i is data[start + i*flen : start + (i+1)*flen], flen = hlen + size + 2, made
      of the header line (hlen bytes, `PUB subject [reply] size` CRLF), the payload and
      CRLF. Exactly what n OP_PUBs (subject, reply, None, payload_i) would say; expand_run
      turns it into those, run_bodies into the pieces that join under a new header line.
"""

from __future__ import annotations

from cluster.runs import run_length  # the strided-slice run finder, shared with RMSG runs (no msgspec)

OP_PUB = 1
OP_SUB = 2
OP_UNSUB = 3
OP_PING = 4
OP_PONG = 5
OP_CONNECT = 6
OP_INFO = 7
OP_RUN = 8

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"
ERR_MAX_CONTROL_LINE = "maximum control line exceeded"

_PING = (OP_PING,)
_PONG = (OP_PONG,)


class ProtocolError(Exception):
    """The peer broke the protocol. `text` is the -ERR text, or None to close silently."""

    def __init__(self, text: str | None):
        super().__init__(text or "protocol violation")
        self.text = text


class Parser:
    __slots__ = ("max_control_line", "max_payload", "error", "runs", "_pending", "_need")

    def __init__(self, max_control_line: int = 4096, max_payload: int = 1048576, runs: bool = True):
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self.runs = runs  # False: every PUB is its own OP_PUB (the general path, for tests)
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
            pos = self._scan(data, ops)
        except ProtocolError as e:
            self.error = e
            return ops
        if pos < len(data):
            self._pending.append(data[pos:])
        return ops

    def _scan(self, data: bytes, ops: list[tuple]) -> int:
        """The common frames here, anything else one op at a time by the general parser.

        A `PUB subj [reply] n` frame whose header line is followed, right after its
        payload, by the very same header line starts a run: the frames that repeat that
        header back to back are found with a few C-level strided slices (run_length) and
        become one OP_RUN instead of one op each. Returns the offset of the first byte
        not taken."""
        end = len(data)
        find = data.find
        startswith = data.startswith
        append = ops.append
        mcl = self.max_control_line
        max_payload = self.max_payload
        runs = self.runs
        budget = 2 * end
        pos = 0
        while pos < end:
            if startswith(b"PUB ", pos):
                eol = find(b"\n", pos)
                if eol > pos and data[eol - 1] == 13 and eol - 1 - pos <= mcl:
                    args = data[pos:eol - 1].split()
                    na = len(args)
                    tok = args[-1]
                    if (na == 3 or na == 4) and args[0] == b"PUB" and tok.isdigit():
                        size = int(tok)
                        stop = eol + 1 + size
                        if size <= max_payload and stop + 2 <= end and data[stop] == 13 and data[stop + 1] == 10:
                            reply = args[2] if na == 4 else b""
                            hlen = eol + 1 - pos
                            if runs and stop + 2 < end and startswith(data[pos:eol + 1], stop + 2):
                                n = run_length(data, pos, hlen, size)
                                if n > 1:
                                    append((OP_RUN, args[1], reply, data, pos, n, hlen, size))
                                    pos += n * (hlen + size + 2)
                                    continue
                            append((OP_PUB, args[1], reply, None, data[eol + 1:stop]))
                            pos = stop + 2
                            if budget > 0 and pos < end:
                                # frames that differ from one another: one C-level split of
                                # the next SPLIT_WINDOW bytes takes the stretch of them that
                                # follows (the bytes split per feed are bounded: a stream
                                # where the split scan keeps stopping early stays linear)
                                budget -= SPLIT_WINDOW
                                pos = self._scan_plain(data, ops, pos)
                            continue
            elif startswith(b"PING\r\n", pos):
                append(_PING)
                pos += 6
                continue
            elif startswith(b"PONG\r\n", pos):
                append(_PONG)
                pos += 6
                continue
            # anything else (or a PUB that is incomplete or unusual): the general parser,
            # which also raises the protocol errors
            nxt = self._parse(data, ops, pos, one=True)
            if nxt == pos:
                break
            pos = nxt
        return pos

    def _scan_plain(self, data: bytes, ops: list[tuple], pos: int) -> int:
        """From pos, plain `PUB subj [reply] n` frames and PING/PONG with one C-level split
        of the next SPLIT_WINDOW bytes (frames that end inside it). A payload counts only if its length equals the declared
        size, so a payload holding CRLF (or anything unusual) stops the scan and _scan
        takes over at that frame; so does a frame whose header line the next frame
        repeats (the start of a run). Returns the offset of the first byte not taken."""
        parts = data[pos:pos + SPLIT_WINDOW].split(b"\r\n")
        n = len(parts) - 1  # the last part has no CRLF after it yet
        i = 0
        mcl = self.max_control_line
        max_payload = self.max_payload
        runs = self.runs
        append = ops.append
        while i < n:
            h = parts[i]
            if h[:4] == b"PUB ":
                if i + 1 >= n or len(h) > mcl or (runs and i + 2 < n and parts[i + 2] == h):
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


SPLIT_WINDOW = 16384  # bytes one _scan_plain call splits


def run_bodies(op: tuple) -> list[bytes]:
    """An OP_RUN as its n frames split at their header line: [b"", payload_1 CRLF, ...,
    payload_n CRLF], so that line.join(bodies) is the n frames under another header line
    (a MSG or RMSG line). One C-level split when the header line occurs only where the
    frames start; when a payload holds that very line too, built from the payloads."""
    _, _, _, data, start, n, hlen, size = op
    flen = hlen + size + 2
    bodies = data[start:start + n * flen].split(data[start:start + hlen])
    if len(bodies) == n + 1:  # the line cannot overlap itself (only its last byte is LF),
        return bodies         # so the split found exactly the n header lines
    first = start + hlen
    return [b""] + [data[p:p + size + 2] for p in range(first, first + n * flen, flen)]


def run_payloads(op: tuple) -> list[bytes]:
    """The payloads of an OP_RUN, in order."""
    _, _, _, data, start, n, hlen, size = op
    flen = hlen + size + 2
    first = start + hlen
    return [data[p:p + size] for p in range(first, first + n * flen, flen)]


def expand_run(op: tuple) -> list[tuple]:
    """The OP_PUBs an OP_RUN stands for."""
    subject, reply = op[1], op[2]
    return [(OP_PUB, subject, reply, None, p) for p in run_payloads(op)]


def _size(tok: bytes) -> int:
    if not tok.isdigit():
        raise ProtocolError(ERR_UNKNOWN_OP)
    return int(tok)


# ---- what the server sends back ------------------------------------------------------

def err_frame(text: str) -> bytes:
    return b"-ERR '%b'\r\n" % text.encode()
