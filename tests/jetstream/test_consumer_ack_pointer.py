"""An AckSync is confirmed only when it can keep the message from coming back.

A consumer hands out stream sequences below its delivery pointer (`sseq`, nats-server's
`o.sseq`). An ack for a sequence at or above it changes nothing: the message has not been
delivered by this consumer's state, and will be delivered as new. nats-server does not
answer such an ack (processAckMsg returns false before touching any state, so processAck
skips the reply); the client's AckSync times out and the client knows its ack did not take.
Answering it instead confirms an ack that is then followed by a delivery of the same message,
which is what nats-chaos counts as "delivered again after the ack was confirmed".

It happens after a crash: the delivered state is written lazily (the acks are fsynced before
their confirmation, the deliveries are not), so a node killed within the flush interval comes
back with its pointer behind deliveries the client still holds and acks.
"""

from __future__ import annotations

import asyncio
import os

import nats
import pytest

from tests.conftest import our_server, reference
from tests.jetstream.consumer_fixtures import add_consumer, add_stream, publish, run

MS = 1_000_000
SYNC_TIMEOUT_S = 1.0  # how long an AckSync waits for its confirmation (an unanswered one is unconfirmed)


@pytest.fixture(params=["ours", "ref"])
def srv(request, tmp_path):
    s = (our_server(tmp_path) if request.param == "ours" else reference(tmp_path)).start()
    yield s
    s.stop()


async def ack_sync(nc, reply: str) -> bool:
    """AckSync by hand: True when the server confirmed the ack."""
    try:
        await nc.request(reply, b"+ACK", timeout=SYNC_TIMEOUT_S)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False
    return True


async def fetch_all(js, durable: str, stream: str, n: int) -> list[int]:
    sub = await js.pull_subscribe_bind(durable, stream=stream)
    got: list[int] = []
    for _ in range(10):
        try:
            msgs = await sub.fetch(n - len(got), timeout=2)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            msgs = []
        got += [m.metadata.sequence.stream for m in msgs]
        if len(got) >= n:
            break
    return got


async def stream_and_durable(nc, stream: str, n: int) -> None:
    """Stream `stream` (subjects <stream, lower case>.>) holding `n` messages on <lower>.x, and
    its explicit-ack durable "d" (ack_wait 30 s), created without an error."""
    low = stream.lower()
    await add_stream(nc, stream, [f"{low}.>"])
    await publish(nc, f"{low}.x", b"m", n)
    r = await add_consumer(nc, stream, {"durable_name": "d", "name": "d", "ack_policy": "explicit",
                                        "ack_wait": 30_000 * MS}, "d")
    assert "error" not in r


def test_ack_above_the_delivery_pointer_is_not_confirmed(srv):
    """An ack for a stored message the consumer has not delivered yet (here: a reply subject
    built for seq 3 while only seq 1 went out) gets no confirmation; seq 3 is then delivered.
    Whatever was confirmed is never delivered afterwards."""
    async def go(nc):
        await stream_and_durable(nc, "AP", 3)
        js = nc.jetstream()
        sub = await js.pull_subscribe_bind("d", stream="AP")
        (first,) = await sub.fetch(1, timeout=5)
        t = first.reply.split(".")  # $JS.ACK.AP.d.<dc>.<sseq>.<dseq>.<ts>.<pending>
        early = ".".join(t[:5] + ["3", "3"] + t[7:8] + ["0"])
        confirmed = {}
        confirmed[3] = await ack_sync(nc, early)
        confirmed[1] = await ack_sync(nc, first.reply)
        later = await fetch_all(js, "d", "AP", 2)
        return confirmed, later

    confirmed, later = run(go, srv.url)
    assert sorted(later) == [2, 3]
    assert confirmed[1], "an ack of a delivered message is confirmed"
    assert not {s for s, ok in confirmed.items() if ok} & set(later), (confirmed, later)


def test_ack_of_a_delivery_the_crash_forgot_is_not_confirmed(tmp_path):
    """SIGKILL within the flush interval after a fetch: the node restarts with the consumer's
    state from before the fetch (made deterministic here by putting that state file back, as
    the crash leaves it when the flush had not run yet). The client acks what it holds; any
    ack the restarted node confirms must not be followed by a delivery of that message."""
    srv = our_server(tmp_path).start()
    try:
        async def before(nc):
            await stream_and_durable(nc, "AC", 5)
            state = os.path.join(srv.store_dir, "jetstream", "$G", "streams", "AC", "obs", "d", "state.json")
            with open(state, "rb") as f:
                undelivered = f.read()  # written at create: nothing delivered yet
            sub = await nc.jetstream().pull_subscribe_bind("d", stream="AC")
            msgs = await sub.fetch(5, timeout=5)
            assert [m.metadata.sequence.stream for m in msgs] == [1, 2, 3, 4, 5]
            return state, undelivered, [(m.metadata.sequence.stream, m.reply) for m in msgs]

        state, undelivered, held = run(before, srv.url)
        srv.kill()
        with open(state, "wb") as f:
            f.write(undelivered)
        srv.start()

        async def after(nc):
            oks = await asyncio.gather(*(ack_sync(nc, reply) for _, reply in held))
            confirmed = {seq for (seq, _), ok in zip(held, oks) if ok}
            later = await fetch_all(nc.jetstream(), "d", "AC", 5)
            return confirmed, later

        confirmed, later = run(after, srv.url)
        assert sorted(later) == [1, 2, 3, 4, 5]  # the restarted consumer delivers them again (at least once)
        assert not confirmed & set(later), (sorted(confirmed), later)
    finally:
        srv.stop()
