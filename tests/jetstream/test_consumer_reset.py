"""CONSUMER.RESET (ADR-60, nats-server 2.14+; nats-py `reset_consumer`): restart a consumer's
delivery at its ack floor or at a chosen stream sequence, and the rejections nats-server gives.

Every test runs against our broker and the real nats-server (see consumer_fixtures)."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.errors import ConsumerInvalidResetError

from tests.jetstream.consumer_fixtures import WAIT_S, add_stream, api, publish, run, server_fixture

server = server_fixture()


async def _setup(nc, stream: str, n: int = 10, **cfg) -> None:
    await add_stream(nc, stream, [f"{stream.lower()}.>"])
    await publish(nc, f"{stream.lower()}.a", b"x", n)
    js = nc.jetstream()
    await js.add_consumer(stream, durable_name="c", ack_policy="explicit", **cfg)


async def _fetch(nc, stream: str, n: int):
    sub = await nc.jetstream().pull_subscribe_bind("c", stream)
    msgs = await sub.fetch(n, timeout=WAIT_S)
    await sub.unsubscribe()
    return msgs


def test_reset_to_ack_floor_restarts_delivery(server):
    async def main(nc):
        await _setup(nc, "RS1")
        msgs = await _fetch(nc, "RS1", 5)
        for m in msgs[:2]:
            await m.ack_sync()
        r = await nc.jetstream().reset_consumer("RS1", "c")
        assert r.reset_seq == 3
        info = r.info
        assert (info.delivered.consumer_seq, info.delivered.stream_seq) == (0, 2)
        assert (info.ack_floor.consumer_seq, info.ack_floor.stream_seq) == (0, 2)
        assert info.delivered.last_active is None and info.ack_floor.last_active is None
        assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 8)
        again = await _fetch(nc, "RS1", 3)
        assert [(m.metadata.sequence.stream, m.metadata.sequence.consumer, m.metadata.num_delivered)
                for m in again] == [(3, 1, 1), (4, 2, 1), (5, 3, 1)]
        raw = await api(nc, "CONSUMER.RESET.RS1.c")
        assert raw["type"] == "io.nats.jetstream.api.v1.consumer_reset_response"
        assert list(raw)[-2:] == ["ts", "reset_seq"] and raw["reset_seq"] == 3
    run(main, server.url)


def test_reset_to_sequence(server):
    async def main(nc):
        await _setup(nc, "RS2")
        await _fetch(nc, "RS2", 4)
        r = await nc.jetstream().reset_consumer("RS2", "c", seq=7)
        assert r.reset_seq == 7
        assert (r.info.delivered.stream_seq, r.info.ack_floor.stream_seq, r.info.num_pending) == (6, 6, 4)
        msgs = await _fetch(nc, "RS2", 1)
        assert (msgs[0].metadata.sequence.stream, msgs[0].metadata.sequence.consumer) == (7, 1)
        r = await nc.jetstream().reset_consumer("RS2", "c", seq=2)  # deliver all: backwards is fine too
        assert (r.reset_seq, r.info.num_pending, r.info.num_ack_pending) == (2, 9, 0)
        r = await nc.jetstream().reset_consumer("RS2", "c", seq=100)  # beyond the end
        assert (r.reset_seq, r.info.delivered.stream_seq, r.info.num_pending) == (100, 99, 0)
    run(main, server.url)


def test_reset_below_start_sequence_is_rejected(server):
    async def main(nc):
        await _setup(nc, "RS3", deliver_policy="by_start_sequence", opt_start_seq=5)
        js = nc.jetstream()
        with pytest.raises(ConsumerInvalidResetError) as ei:
            await js.reset_consumer("RS3", "c", seq=3)
        assert (ei.value.code, ei.value.err_code, ei.value.description) == (400, 10204,
                                                                            "invalid reset: below start seq")
        r = await js.reset_consumer("RS3", "c")  # to the ack floor: allowed
        assert r.reset_seq == 5
        r = await js.reset_consumer("RS3", "c", seq=5)
        assert r.reset_seq == 5 and r.info.num_pending == 6
    run(main, server.url)


def test_reset_below_start_time_is_rejected(server):
    async def main(nc):
        await add_stream(nc, "RS4", ["rs4.>"])
        await publish(nc, "rs4.a", b"x", 6)
        js = nc.jetstream()
        fifth = json.loads((await nc.request("$JS.API.STREAM.MSG.GET.RS4", b'{"seq":5}', timeout=WAIT_S)).data)
        start = fifth["message"]["time"]
        await api(nc, "CONSUMER.CREATE.RS4.c", {"stream_name": "RS4", "config": {
            "durable_name": "c", "name": "c", "ack_policy": "explicit", "deliver_policy": "by_start_time",
            "opt_start_time": start}})
        with pytest.raises(ConsumerInvalidResetError) as ei:
            await js.reset_consumer("RS4", "c", seq=4)
        assert ei.value.description == "invalid reset: below start time"
        r = await js.reset_consumer("RS4", "c", seq=6)
        assert r.reset_seq == 6 and r.info.num_pending == 1
    run(main, server.url)


@pytest.mark.parametrize("policy", ["last", "new", "last_per_subject"])
def test_reset_to_sequence_not_allowed_for_other_policies(server, policy):
    async def main(nc):
        stream = f"RS5{policy.replace('_', '')}"
        extra = {"filter_subject": f"{stream.lower()}.a"} if policy == "last_per_subject" else {}
        await _setup(nc, stream, 4, deliver_policy=policy, **extra)
        js = nc.jetstream()
        with pytest.raises(ConsumerInvalidResetError) as ei:
            await js.reset_consumer(stream, "c", seq=2)
        assert (ei.value.err_code, ei.value.description) == (10204, "invalid reset: not allowed")
        r = await js.reset_consumer(stream, "c")  # to the ack floor is always allowed
        assert r.reset_seq == r.info.ack_floor.stream_seq + 1
    run(main, server.url)


@pytest.mark.parametrize("body,err", [
    (b'{"seq":-1}', "invalid JSON: json: cannot unmarshal number -1 into Go struct field "
                    "JSApiConsumerResetRequest.seq of type uint64"),
    (b'{"seq":"x"}', "invalid JSON: json: cannot unmarshal string into Go struct field "
                     "JSApiConsumerResetRequest.seq of type uint64"),
    (b"nope", "invalid JSON: invalid character 'o' in literal null (expecting 'u')"),
    (b'{"seq":1', "invalid JSON: unexpected end of JSON input"),
    (b'{"seq":1} x', "invalid JSON: invalid character 'x' after top-level value"),
    (b"  ", "invalid JSON: unexpected end of JSON input"),
])
def test_reset_bad_json(server, body, err):
    async def main(nc):
        if "error" in await api(nc, "STREAM.INFO.RS6"):
            await _setup(nc, "RS6", 3)
        r = await api(nc, "CONSUMER.RESET.RS6.c", body)
        assert r["error"] == {"code": 400, "err_code": 10025, "description": err}
        assert r["type"] == "io.nats.jetstream.api.v1.consumer_reset_response"
    run(main, server.url)


def test_reset_of_missing_consumer_gets_no_reply(server):
    async def main(nc):
        await add_stream(nc, "RS7", ["rs7.>"])
        for subject in ("$JS.API.CONSUMER.RESET.RS7.nope", "$JS.API.CONSUMER.RESET.NOPE.nope"):
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, b"", timeout=1.0)
    run(main, server.url)


def test_reset_serves_a_waiting_pull_request(server):
    async def main(nc):
        await _setup(nc, "RS8", 3)
        await _fetch(nc, "RS8", 3)  # everything delivered, nothing acked
        sub = await nc.jetstream().pull_subscribe_bind("c", "RS8")
        waiting = asyncio.ensure_future(sub.fetch(2, timeout=WAIT_S))
        info = await nc.jetstream().consumer_info("RS8", "c")
        while info.num_waiting == 0:
            await asyncio.sleep(0.01)
            info = await nc.jetstream().consumer_info("RS8", "c")
        await nc.jetstream().reset_consumer("RS8", "c", seq=2)
        msgs = await waiting
        assert [(m.metadata.sequence.stream, m.metadata.sequence.consumer) for m in msgs] == [(2, 1), (3, 2)]
    run(main, server.url)


def test_reset_forward_on_interest_stream_releases_skipped_messages(server):
    async def main(nc):
        await add_stream(nc, "RS9", ["rs9.>"], retention="interest")
        js = nc.jetstream()
        await js.add_consumer("RS9", durable_name="c", ack_policy="explicit")
        await publish(nc, "rs9.a", b"x", 5)
        r = await js.reset_consumer("RS9", "c", seq=4)
        assert r.reset_seq == 4
        info = await js.stream_info("RS9")
        assert (info.state.messages, info.state.first_seq) == (2, 4)
    run(main, server.url)
