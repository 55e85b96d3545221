"""Route protocol between cluster nodes: a sans-IO parser and encoders.

How this works: `RouteParser.feed(bytes)` appends to an internal buffer and returns
every complete operation found so far as small Struct objects (`Info`, `Connect`,
`RSub`, `RUnsub`, `Msg`, `PING`, `PONG`, `OK`, `Err`). A control line ends at LF
(an optional CR before it is dropped); RMSG/HMSG payloads are read by their declared
length, never scanned, and must be followed by CRLF. The parser keeps its state across
calls, so any split of the byte stream gives the same operations. A peer that breaks
the protocol gets a `RouteProtocolError` carrying the `-ERR` text nats-server uses.

Frames follow nats-server's route protocol (account always present, `$G`):
  INFO {json}                      CONNECT {json}
  RS+ <acct> <subj> [<queue> <weight>]    RS- <acct> <subj> [<queue>]
  RMSG <acct> <subj> [reply] <size>
  RMSG <acct> <subj> + <reply> <q1> [q2..] <size>   (queue groups chosen for the receiver)
  RMSG <acct> <subj> | <q1> [q2..] <size>           (same, no reply)
  HMSG <acct> <subj> [same forms] <hdr_len> <total_len>
  PING  PONG  +OK  -ERR '<text>'
"""

from __future__ import annotations

import re

import msgspec

from cluster.runs import run_length  # shared with broker/protocol.py's runs of PUBs

ACCOUNT = "$G"
CONTROL_LINE_MAX_BYTES = 64 * 1024
PAYLOAD_MAX_BYTES = 8 * 1024 * 1024

ERR_UNKNOWN_OP = "Unknown Protocol Operation"
ERR_CONTROL_LINE = "maximum control line exceeded"
ERR_MAX_PAYLOAD = "Maximum Payload Violation"


class RouteProtocolError(Exception):
    """The peer broke the protocol; `str(err)` is the -ERR text to send before closing."""


class RouteInfo(msgspec.Struct, omit_defaults=True):
    """Route-flavour INFO. Gossip copies carry `ip` (the member's route URL)."""

    server_id: str
    server_name: str = ""
    version: str = ""
    proto: int = 0
    host: str = ""
    port: int = 0
    headers: bool = False
    max_payload: int = 1048576
    cluster: str = ""
    cluster_dynamic: bool = False
    auth_required: bool = False
    ldm: bool = False  # the sender entered lame duck mode: stop offering its client URLs
    connect_urls: list[str] = []
    ip: str = ""
    gossip_mode: int = 0
    compression: str = "off"
    route_pool_size: int = 1
    lnoc: bool = False
    jetstream: bool = False  # the sender runs JetStream (a member of the meta group)


class RouteConnect(msgspec.Struct):
    """CONNECT sent by the soliciting side. A client's CONNECT lacks `cluster` and
    carries `lang` (see the raw dict kept in `Connect`)."""

    echo: bool = True
    verbose: bool = False
    pedantic: bool = False
    tls_required: bool = False
    headers: bool = True
    name: str = ""
    cluster: str = ""
    dynamic: bool = False
    lnoc: bool = False
    user: str | None = None
    password: str | None = msgspec.field(default=None, name="pass")


class Info(msgspec.Struct, gc=False):
    info: RouteInfo


class Connect(msgspec.Struct, gc=False):
    connect: RouteConnect
    raw: dict


class RSub(msgspec.Struct, gc=False):
    account: str
    subject: str
    queue: str | None
    weight: int


class RUnsub(msgspec.Struct, gc=False):
    account: str
    subject: str
    queue: str | None


class Msg(msgspec.Struct, gc=False):
    account: str
    subject: str
    reply: str
    queues: list[str] | None
    hdr: bytes | None
    payload: bytes


class Err(msgspec.Struct, gc=False):
    text: str


class _Simple(msgspec.Struct, gc=False):
    verb: str


PING = _Simple("PING")
PONG = _Simple("PONG")
OK = _Simple("OK")

_RMSG_G = re.compile(rb"RMSG \$G ([^ \t\r\n]+) (?:([^ \t\r\n+|][^ \t\r\n]*) )?(\d{1,9})\r\n")
_info_decoder = msgspec.json.Decoder(RouteInfo)
_connect_decoder = msgspec.json.Decoder(RouteConnect)
_json_encoder = msgspec.json.Encoder()


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise RouteProtocolError(ERR_UNKNOWN_OP) from None


def _int(tok: bytes) -> int:
    if not tok.isdigit():
        raise RouteProtocolError(ERR_UNKNOWN_OP)
    return int(tok)


class RouteParser:
    """Resumable parser for one direction of a route connection.

    With `on_msg` set, routed messages are handed to `on_msg(subject, reply, hdr,
    payload, queues)` as they are parsed (account `$G` only; others are dropped)
    instead of being returned as `Msg` objects: this is the hot path of a route. With
    `on_run` set as well, a run of n >= 2 RMSGs with the same control line (no queues,
    no headers) goes to `on_run(subject, reply, bodies, n, size)` in one call: bodies
    is the run split at that line, [b"", payload_1 CRLF, ..., payload_n CRLF], so
    line.join(bodies) is the same frames under another line. With `on_replies` set, a
    run of n >= 2 RMSGs on one subject whose replies differ (a JetStream batch: every
    ack reply is its own) goes to `on_replies(subject, replies, payloads)` in one call,
    replies and payloads as lists of bytes.
    `on_op`, when set, takes every other operation in order as it is parsed.
    `msgs`/`bytes` count routed messages and their header+payload bytes.
    """

    def __init__(
        self,
        control_line_max_bytes: int = CONTROL_LINE_MAX_BYTES,
        payload_max_bytes: int = PAYLOAD_MAX_BYTES,
        on_msg=None,
        on_run=None,
        on_op=None,
        on_replies=None,
    ) -> None:
        self._chunks: list[bytes] = []
        self._have = 0  # bytes held in _chunks
        self._control_max = control_line_max_bytes
        self._payload_max = payload_max_bytes
        self.on_msg = on_msg
        self.on_run = on_run
        self.on_replies = on_replies
        # Every other operation (RS+, RS-, PING, INFO...) goes to on_op(op) as it is parsed,
        # when set: interest then changes exactly where it stood among the messages (a reply
        # that follows an RS+ for its subject must find that interest).
        self.on_op = on_op
        self.msgs = 0
        self.bytes = 0
        self._subjects: dict[bytes, str] = {}
        # When not None: (account, subject, reply, queues, hdr_len, total_len) of a
        # message whose payload has not fully arrived yet.
        self._pending: tuple | None = None
        self._error: RouteProtocolError | None = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> list:
        """Parse what has arrived. Operations complete before a protocol error are
        returned first; the error is raised by the next call (feed(b"") will do)."""
        if self._error is not None:
            raise self._error
        ops: list = []
        if data:
            self._chunks.append(bytes(data))
            self._have += len(data)
        pending = self._pending
        if pending is not None and self._have < pending[5] + 2:
            return ops  # a large payload still arriving: do not re-join the chunks
        buf = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        pos = 0
        try:
            pos = self._parse(buf, ops)
        except RouteProtocolError as exc:
            self._error = exc
            self._chunks = []
            self._have = 0
            if not ops:
                raise
            return ops
        rest = buf[pos:]
        self._chunks = [rest] if rest else []
        self._have = len(rest)
        return ops

    def _subject(self, raw: bytes) -> str:
        s = self._subjects.get(raw)
        if s is None:
            if len(self._subjects) >= 4096:
                self._subjects.clear()
            s = self._subjects[raw] = _text(raw)
        return s

    def _parse(self, buf: bytes, ops: list) -> int:
        """Parse complete frames from buf; return the offset of the first unused byte."""
        pos = 0
        end = len(buf)
        fast = _RMSG_G.match if self.on_msg is not None else None
        while pos < end:
            if self._pending is not None:
                done = self._payload(buf, pos, ops)
                if done < 0:
                    break
                pos = done
                continue
            if fast is not None:
                m = fast(buf, pos)
                if m is not None:
                    pos = self._rmsg_run(m, buf, pos)
                    continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if end - pos > self._control_max:
                    raise RouteProtocolError(ERR_CONTROL_LINE)
                break
            if nl - pos > self._control_max:
                raise RouteProtocolError(ERR_CONTROL_LINE)
            line = buf[pos:nl]
            pos = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            op = self._control(line)
            if op is not None:
                if self.on_op is not None:
                    self.on_op(op)
                else:
                    ops.append(op)
        return pos

    def _payload(self, buf: bytes, pos: int, ops: list) -> int:
        """Finish the pending message if its payload is all here: new offset, else -1."""
        account, subject, reply, queues, hdr_len, total = self._pending
        stop = pos + total
        if len(buf) - pos < total + 2:
            return -1
        if buf[stop : stop + 2] != b"\r\n":
            raise RouteProtocolError(ERR_UNKNOWN_OP)
        if hdr_len >= 0:
            hdr = buf[pos : pos + hdr_len]
            payload = buf[pos + hdr_len : stop]
        else:
            hdr = None
            payload = buf[pos:stop]
        self._pending = None
        self.msgs += 1
        self.bytes += total
        if self.on_msg is None:
            ops.append(Msg(account, subject, reply, queues, hdr, payload))
        elif account == ACCOUNT:
            self.on_msg(subject, reply, hdr, payload, queues)
        return stop + 2

    def _rmsg_run(self, m: re.Match, buf: bytes, pos: int) -> int:
        """`RMSG $G <subject> [reply] <size>` matched at pos (the hot path): deliver it and
        every following frame with the very same control line. The frames of such a run
        are found with C-level strided slices (run_length) and, when `on_run` is set and
        the control line occurs nowhere else in them, handed over in one call.
        Returns the new offset; when the payload is incomplete it becomes pending."""
        on_msg = self.on_msg
        size = int(m.group(3))
        start = m.end()
        stop = start + size
        end = len(buf)
        if size > self._payload_max:
            raise RouteProtocolError(ERR_MAX_PAYLOAD)
        reply = m.group(2)
        subject = self._subject(m.group(1))
        reply_s = _text(reply) if reply else ""
        if stop + 2 > end:
            self._pending = (ACCOUNT, subject, reply_s, None, -1, size)
            return start
        if buf[stop : stop + 2] != b"\r\n":
            raise RouteProtocolError(ERR_UNKNOWN_OP)
        clen = start - pos
        flen = clen + size + 2
        n = run_length(buf, pos, clen, size) if buf.startswith(buf[pos:start], stop + 2) else 1
        self.msgs += n
        self.bytes += size * n
        if n > 1 and self.on_run is not None:
            bodies = buf[pos : pos + n * flen].split(buf[pos:start])
            if len(bodies) == n + 1:  # the line only where frames start (it cannot overlap itself)
                self.on_run(subject, reply_s, bodies, n, size)
                return pos + n * flen
        if n == 1 and reply and self.on_replies is not None:
            end_run = self._replies_run(m.group(1), subject, reply, buf[start:stop], buf, stop + 2)
            if end_run:
                return end_run
        for p in range(pos + clen, pos + n * flen, flen):
            on_msg(subject, reply_s, None, buf[p : p + size], None)
        return pos + n * flen

    def _replies_run(self, raw_subject: bytes, subject: str, reply: bytes, payload: bytes, buf: bytes,
                     pos: int) -> int:
        """After one complete `RMSG $G <subject> <reply> <size>` frame: the complete frames
        right after it on the same subject with a reply (each its own) go, with it, to
        on_replies in one call. Returns the offset after them, or 0 when the next frame is
        not one (the caller delivers the first frame alone). A frame that is incomplete or
        malformed ends the run; the main loop takes it from there."""
        match = _RMSG_G.match
        end = len(buf)
        replies = [reply]
        payloads = [payload]
        payload_max = self._payload_max
        while pos < end:
            m = match(buf, pos)
            if m is None or m.group(1) != raw_subject or not m.group(2):
                break
            size = int(m.group(3))
            start = m.end()
            stop = start + size
            if size > payload_max or stop + 2 > end or buf[stop : stop + 2] != b"\r\n":
                break
            replies.append(m.group(2))
            payloads.append(buf[start:stop])
            pos = stop + 2
        if len(replies) == 1:
            return 0
        self.msgs += len(replies) - 1  # the first frame was counted by the caller
        self.bytes += sum(map(len, payloads)) - len(payload)
        self.on_replies(subject, replies, payloads)
        return pos

    def _control(self, line: bytes):
        head = line[:5].upper()
        if head == b"RMSG " or head == b"HMSG ":
            self._msg_args(line[5:].split(), head == b"HMSG ")
            return None
        if head.startswith(b"RS+"):
            return _rsub(line[3:].split())
        if head.startswith(b"RS-"):
            return _runsub(line[3:].split())
        verb, _, rest = line.strip().partition(b" ")
        verb = verb.upper()
        if verb == b"PING":
            return PING
        if verb == b"PONG":
            return PONG
        if verb == b"+OK":
            return OK
        if verb == b"-ERR":
            return Err(rest.strip().strip(b"'").decode("utf-8", "replace"))
        if verb == b"INFO":
            try:
                return Info(_info_decoder.decode(rest))
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise RouteProtocolError(ERR_UNKNOWN_OP) from None
        if verb == b"CONNECT":
            try:
                return Connect(_connect_decoder.decode(rest), msgspec.json.decode(rest))
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise RouteProtocolError(ERR_UNKNOWN_OP) from None
        raise RouteProtocolError(ERR_UNKNOWN_OP)

    def _msg_args(self, args: list[bytes], headers: bool) -> None:
        tail = 2 if headers else 1
        if len(args) < 2 + tail:
            raise RouteProtocolError(ERR_UNKNOWN_OP)
        if headers:
            hdr_len = _int(args[-2])
            total = _int(args[-1])
            if hdr_len > total:
                raise RouteProtocolError(ERR_UNKNOWN_OP)
        else:
            hdr_len = -1
            total = _int(args[-1])
        if total > self._payload_max:
            raise RouteProtocolError(ERR_MAX_PAYLOAD)
        try:
            account = args[0].decode()
            subject = args[1].decode()
            middle = args[2:-tail]
            reply = ""
            queues = None
            if middle:
                mark = middle[0]
                if mark == b"+" and len(middle) >= 3:
                    reply = middle[1].decode()
                    queues = [q.decode() for q in middle[2:]]
                elif mark == b"|" and len(middle) >= 2:
                    queues = [q.decode() for q in middle[1:]]
                elif len(middle) == 1 and mark not in (b"+", b"|"):
                    reply = mark.decode()
                else:
                    raise RouteProtocolError(ERR_UNKNOWN_OP)
        except UnicodeDecodeError:
            raise RouteProtocolError(ERR_UNKNOWN_OP) from None
        self._pending = (account, subject, reply, queues, hdr_len, total)


def _rsub(args: list[bytes]) -> RSub:
    # RS+ <acct> <subj> [<queue> <weight>]
    try:
        if len(args) == 2:
            return RSub(args[0].decode(), args[1].decode(), None, 1)
        if len(args) == 4:
            return RSub(args[0].decode(), args[1].decode(), args[2].decode(), _int(args[3]))
    except UnicodeDecodeError:
        pass
    raise RouteProtocolError(ERR_UNKNOWN_OP)


def _runsub(args: list[bytes]) -> RUnsub:
    # RS- <acct> <subj> [<queue>]
    try:
        if len(args) == 2:
            return RUnsub(args[0].decode(), args[1].decode(), None)
        if len(args) == 3:
            return RUnsub(args[0].decode(), args[1].decode(), args[2].decode())
    except UnicodeDecodeError:
        pass
    raise RouteProtocolError(ERR_UNKNOWN_OP)


# ---------------------------------------------------------------- encoders


def encode_info(info: RouteInfo) -> bytes:
    return b"INFO " + _json_encoder.encode(info) + b"\r\n"


def encode_connect(connect: RouteConnect) -> bytes:
    fields = msgspec.to_builtins(connect)
    return b"CONNECT " + _json_encoder.encode({k: v for k, v in fields.items() if v is not None}) + b"\r\n"


def encode_rsub(subject: str, queue: str | None, weight: int, account: str = ACCOUNT) -> bytes:
    if queue is None:
        return f"RS+ {account} {subject}\r\n".encode()
    return f"RS+ {account} {subject} {queue} {weight}\r\n".encode()


def encode_runsub(subject: str, queue: str | None, account: str = ACCOUNT) -> bytes:
    if queue is None:
        return f"RS- {account} {subject}\r\n".encode()
    return f"RS- {account} {subject} {queue}\r\n".encode()


def encode_err(text: str) -> bytes:
    return f"-ERR '{text}'\r\n".encode()


PING_FRAME = b"PING\r\n"
PONG_FRAME = b"PONG\r\n"


def append_msg(
    out: bytearray,
    subject: str,
    reply: str,
    hdr: bytes | None,
    payload: bytes,
    queues: list[str] | None,
    account: str = ACCOUNT,
) -> None:
    """Append one RMSG (or HMSG when `hdr` is not None) frame to `out`."""
    if queues:
        qs = " ".join(queues)
        mid = f" + {reply} {qs}" if reply else f" | {qs}"
    elif reply:
        mid = " " + reply
    else:
        mid = ""
    if hdr is None:
        out += f"RMSG {account} {subject}{mid} {len(payload)}\r\n".encode()
        out += payload
    else:
        hl = len(hdr)
        out += f"HMSG {account} {subject}{mid} {hl} {hl + len(payload)}\r\n".encode()
        out += hdr
        out += payload
    out += b"\r\n"


def encode_msg(
    subject: str, reply: str, hdr: bytes | None, payload: bytes, queues: list[str] | None
) -> bytes:
    out = bytearray()
    append_msg(out, subject, reply, hdr, payload, queues)
    return bytes(out)
