"""What a push consumer does besides delivering, as nats-server does it: flow control, idle
heartbeats and the rate limit. A mixin of consumer.Consumer (it uses the consumer's state).

Flow control (nats-server's consumer `maxpb` / `pbytes` / `fcsz`): every delivery counts its
deliver subject, reply, header and payload bytes as pending. The window starts at 2 MiB
(32 MiB / 16); after the delivery that takes the pending bytes past half of it a request
goes out (`100 FlowControl Request`, reply `$JS.FC.<stream>.<consumer>.<n>`), and delivery
stalls while more than the window is pending. The client's answer to the outstanding request
takes off the bytes counted when it was sent and doubles the window (slow start), up to
32 MiB. So where requests fall in a burst does not depend on when the client answers: an
answer always comes before the next request is due, since delivery stalls first.
"""

from __future__ import annotations

from broker import headers as hdrs

FC_WINDOW_LIMIT = 32 * 1024 * 1024  # nats-server's JsFlowControlMaxPending
FC_WINDOW_START = FC_WINDOW_LIMIT // 16


class PushFlow:
    """Flow control, heartbeats and rate limit of consumer.Consumer (the state lives there:
    pbytes, fcsz, maxpb, fc_reply, fc_seq, rl_tokens, rl_at)."""

    def _fc_count(self, size: int, now_ns: int) -> None:
        """A delivery of `size` bytes went out: nats-server's needFlowControl."""
        self.pbytes += size
        if not self.fc_reply:
            if self.pbytes > self.maxpb // 2:
                self._send_fc(now_ns)
        elif self.pbytes - self.fcsz >= self.maxpb:
            self.fcsz += size

    def _fc_cut(self, to: str, run: list) -> list:
        """The part of run that flow control lets out before its next request or stall: up to
        and including the message after which the per-message path (`_fc_count`, then the
        stall check) would send a request or stop; its bytes are counted."""
        prefix = len(to) + len(self.ack_prefix) + 5  # deliver count `1` and four dots of the ack reply
        dseq, pend = self.dseq + 1, self.npending - 1
        pbytes, fcsz, window, waiting = self.pbytes, self.fcsz, self.maxpb, bool(self.fc_reply)
        for i, m in enumerate(run):
            n = (prefix + len(str(m.seq)) + len(str(dseq + i)) + len(str(m.ts)) + len(str(pend - i))
                 + len(m.data) + (len(m.hdr) if m.hdr else 0))
            pbytes += n
            if not waiting:
                if pbytes > window // 2:  # the caller sends the request right after it
                    run = run[:i + 1]
                    break
            else:
                if pbytes - fcsz >= window:
                    fcsz += n
                if pbytes > window:  # stalled from here
                    run = run[:i + 1]
                    break
        self.pbytes, self.fcsz = pbytes, fcsz
        return run

    def _send_fc(self, now_ns: int) -> None:
        self.fc_seq += 1
        self.fc_reply = f"$JS.FC.{self.stream_name}.{self.name}.{self.fc_seq}"
        self.fcsz = self.pbytes
        to = self.cfg.deliver_subject
        self.out.append(self._out(to, to, self.fc_reply, hdrs.build(status="100", description="FlowControl Request"),
                                  b""))

    def flow_control_reply(self, subject: str) -> bool:
        """The client answered a flow-control request; True if delivery may resume."""
        if subject != self.fc_reply:
            return False
        self.maxpb = min(2 * self.maxpb, FC_WINDOW_LIMIT)
        self.pbytes = max(0, self.pbytes - self.fcsz)
        self.fc_reply, self.fcsz = "", 0
        return True

    def heartbeat(self, to: str) -> None:
        items = [("Nats-Last-Consumer", str(self.dseq)), ("Nats-Last-Stream", str(self.dsseq))]
        if self.fc_reply:
            items.append(("Nats-Consumer-Stalled", self.fc_reply))
        self.out.append(self._out(to, to, "", hdrs.build(items, status="100", description="Idle Heartbeat"), b""))

    def _rate_wait(self, now_ns: int, size: int) -> int:
        """Token bucket for rate_limit_bps (bits/s): 0 to send `size` bytes now, else when."""
        rate = self.cfg.rate_limit_bps / 8  # bytes per second
        cap = max(rate, size)
        if self.rl_at:
            self.rl_tokens = min(cap, self.rl_tokens + (now_ns - self.rl_at) * rate / 1e9)
        else:
            self.rl_tokens = cap
        self.rl_at = now_ns
        if self.rl_tokens >= size:
            self.rl_tokens -= size
            return 0
        return now_ns + int((size - self.rl_tokens) * 1e9 / rate) + 1
