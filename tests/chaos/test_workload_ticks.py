"""The workload's ordering evidence ("tick") on a scripted wire.

A node that restarts with its consumer's delivered state older than what it had sent hands out
the same consumer sequences again: the second delivery's reply subject is identical to the first
one's. nats-chaos found such a pair (push consumer, seq 740, both with delivery count 1) on the
wire before the ack confirmation of the first; the recorded history put the second after the
confirmation and counted "delivered again after the ack was confirmed". Each delivery must keep
the number of its own place on the wire.
"""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from deploy.chaos.checker import check
from deploy.chaos.workload import Recorder, Stamper, Workload

REPLY = "$JS.ACK.CHAOS.push.1.740.739.1700000000000000000.0"  # delivery count 1, seq 740, consumer seq 739
NEXT = "$JS.ACK.CHAOS.push.1.741.740.1700000000000000001.0"


class Wire:
    """Stands in for a nats-py client: the test says what arrives on the wire and when; every
    arrival goes through _process_msg and _build_message as nats-py's parser makes it."""

    def __init__(self):
        self.parsed: list[Msg] = []
        self.after_request: list[tuple[str, str, bytes]] = []  # (subject, reply, data) arriving with the response
        self.requests: list[str] = []

    def _build_message(self, sid, subject, reply, data, headers):
        return Msg(_client=None, subject=subject.decode(), reply=reply.decode(), data=data, headers=headers,
                   _sid=sid)

    async def _process_msg(self, sid, subject, reply, data, headers):
        self.parsed.append(self._build_message(sid, subject, reply, data, headers))

    async def arrive(self, subject: str, reply: str = "", data: bytes = b"") -> Msg:
        await self._process_msg(1, subject.encode(), reply.encode(), data, None)
        return self.parsed[-1]

    async def request(self, subject: str, payload: bytes, timeout: float) -> Msg:
        self.requests.append(subject)
        resp = await self.arrive("_INBOX.resp.1")  # the confirmation (empty body)...
        for s, r, d in self.after_request:  # ...and what the parser reads before the caller resumes
            await self.arrive(s, r, d)
        return resp


def record(second_before_confirmation: bool) -> dict:
    """Wire order: delivery X of p2-245, then (restart replay) delivery Y with the same reply
    subject either before or after the confirmation of X's ack, then the next message."""
    async def go():
        wire = Wire()
        stamper = Stamper(wire)
        wl = Workload(Recorder({}), [], publishers=0, rate=0, kv_writers=0, kv_rate=0)
        x = await wire.arrive("chaos.push.deliver", REPLY, b"p2-245")
        y = await wire.arrive("chaos.push.deliver", REPLY, b"p2-245") if second_before_confirmation else None
        wire.after_request = ([] if second_before_confirmation else [("chaos.push.deliver", REPLY, b"p2-245")]) + [
            ("chaos.push.deliver", NEXT, b"p3-246")]
        got = wl.delivery(stamper, "push", x)
        await wl.ack(wire, stamper, "push", x, *got)
        if y is None:
            y = wire.parsed[-2]
        wl.delivery(stamper, "push", y)
        wl.delivery(stamper, "push", wire.parsed[-1])
        assert wire.requests == [REPLY]
        return wl.rec.h

    return asyncio.run(go())


def test_same_reply_delivered_twice_before_the_confirmation_is_no_redelivery_after_ack():
    h = record(second_before_confirmation=True)
    ticks = [d["tick"] for d in h["deliveries"]]
    (ack,) = h["acks"]
    assert ack["ok"] and ticks[0] < ticks[1] < ack["tick"] < ticks[2], (ticks, ack)
    assert check(h)["counts"]["redelivered_after_ack"] == 0


def test_same_reply_delivered_again_after_the_confirmation_is_counted():
    h = record(second_before_confirmation=False)
    ticks = [d["tick"] for d in h["deliveries"]]
    (ack,) = h["acks"]
    assert ack["ok"] and ticks[0] < ack["tick"] < ticks[1] < ticks[2], (ticks, ack)
    result = check(h)
    assert result["counts"]["redelivered_after_ack"] == 1
    assert result["ids"]["redelivered_after_ack"] == ["push:p2-245"]
