"""JetStream batches across a route, as runs instead of message by message.

A pull batch (or push turn) delivered to a subscriber on another node crosses the route as
one RMSG per stored message: `RMSG $G <deliver subject> <ack reply>@<stored subject> <size>`
(nats-server's shape, see server._routed_reply). Every frame has its own reply, so the
identical-line runs of the core path never form. Here the sending node renders a whole
batch for a route in one pass (render_ack_run), and the receiving node, whose route parser
hands over a run of frames on one subject with differing replies at once, renders each
subscriber's MSG frames in one pass (Server.deliver_routed_replies), instead of a sublist
match, a string round trip and a ClientConn.deliver call per message.
"""

from __future__ import annotations

_ACK = b"$JS.ACK."


def render_ack_run(to: bytes, msgs: list, prefix: bytes, dseq: int, pending: int) -> tuple[bytes, int]:
    """The route frames of Server.deliver_ack_run's batch: stored message msgs[i] (seq,
    subject, hdr, data, ts) to `to` with reply `<prefix><seq>.<dseq + i>.<ts>.<pending -
    i>@<subject>` (no `@` when the subject is `to` itself). Returns (frames, header+payload
    bytes)."""
    parts = []
    add = parts.append
    size = 0
    subject = None
    tail = b""
    head = b"RMSG $G %b %b" % (to, prefix)
    hhead = b"HMSG $G %b %b" % (to, prefix)
    ts = None
    tsb = b""
    for m in msgs:
        if m.subject is not subject:
            subject = m.subject
            sb = subject.encode()
            tail = b"" if sb == to else b"@" + sb
        if m.ts != ts:
            ts = m.ts
            tsb = b"%d" % ts
        data = m.data
        hdr = m.hdr
        if hdr is None:
            n = len(data)
            add(b"%b%d.%d.%b.%d%b %d\r\n%b\r\n" % (head, m.seq, dseq, tsb, pending, tail, n, data))
        else:
            hl = len(hdr)
            n = hl + len(data)
            add(b"%b%d.%d.%b.%d%b %d %d\r\n%b%b\r\n" % (hhead, m.seq, dseq, tsb, pending, tail, hl, n, hdr, data))
        size += n
        dseq += 1
        pending -= 1
    return b"".join(parts), size


def shown(subject: bytes, replies: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(subject shown, reply) for each routed reply: a JetStream delivery's
    `<ack reply>@<stored subject>` shows the stored subject with the bare ack reply."""
    out = []
    for r in replies:
        if r.startswith(_ACK):
            at = r.rfind(b"@")
            if 0 < at < len(r) - 1:
                out.append((r[at + 1:], r[:at]))
                continue
        out.append((subject, r))
    return out


def render_replies(sids: list[bytes], pairs: list[tuple[bytes, bytes]], payloads: list[bytes]) -> bytes:
    """One connection's MSG frames for routed messages with their own subjects and replies:
    each message under each of its matching subscriptions `sids` in turn, as delivering
    message by message would."""
    if len(sids) == 1:
        sid = sids[0]
        return b"".join([b"MSG %b %b %b %d\r\n%b\r\n" % (s, sid, r, len(p), p) for (s, r), p in zip(pairs, payloads)])
    return b"".join([b"MSG %b %b %b %d\r\n%b\r\n" % (s, sid, r, len(p), p)
                     for (s, r), p in zip(pairs, payloads) for sid in sids])
