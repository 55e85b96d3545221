"""Changing a stream's replica count in place, 1 -> 3 -> 1, on nats-server and on ours.

Growing: every node ends up holding every message (each node's own /jsz), the stream keeps
taking publishes, and a durable consumer keeps its position (acknowledged messages are not
delivered again, the next fetch continues where it was). Shrinking: one node keeps the whole
stream, the others drop theirs, and the consumer's position survives again.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.jscluster.harness import (JSCluster, api, api_retry, kind_params, stream_config,
                                     stream_state_on, wait_for)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=kind_params())
def rc(request, tmp_path_factory):
    with JSCluster(request.param, tmp_path_factory.mktemp(f"rc-{request.param}")) as cl:
        yield cl


def holders(cl: JSCluster, stream: str, messages: int) -> list[str]:
    return [n for n in cl.names() if (stream_state_on(cl, n, stream) or {}).get("messages") == messages]


def test_replicas_one_to_three_and_back_keeps_messages_and_consumer_positions(rc: JSCluster):
    cl = rc

    async def fetch_ack(js, sub, n: int) -> list[int]:
        msgs = await sub.fetch(n, timeout=5)
        for m in msgs:
            await m.ack_sync()
        return [m.metadata.sequence.stream for m in msgs]

    async def main():
        from nats.js.api import ConsumerConfig

        nc = await cl.connect("n1")
        js = nc.jetstream()
        try:
            r = await api_retry(nc, "$JS.API.STREAM.CREATE.GROW", stream_config("GROW", ["grow.>"]))
            assert "error" not in r, r
            for i in range(100):
                await js.publish("grow.a", b"%d" % i)
            await js.add_consumer("GROW", ConsumerConfig(durable_name="d", ack_policy="explicit"))
            sub = await js.pull_subscribe_bind("d", stream="GROW")
            assert await fetch_ack(js, sub, 30) == list(range(1, 31))

            up = await api(nc, "$JS.API.STREAM.UPDATE.GROW", stream_config("GROW", ["grow.>"], num_replicas=3))
            assert "error" not in up, up
            assert up["config"]["num_replicas"] == 3
            await asyncio.to_thread(wait_for, lambda: len(holders(cl, "GROW", 100)) == 3, "every node holds 100")
            for i in range(100, 150):
                await js.publish("grow.a", b"%d" % i)
            await asyncio.to_thread(wait_for, lambda: len(holders(cl, "GROW", 150)) == 3, "every node holds 150")
            info = await js.stream_info("GROW")
            assert info.config.num_replicas == 3 and info.state.messages == 150
            assert len(info.cluster.replicas or []) == 2
            assert await fetch_ack(js, sub, 10) == list(range(31, 41))  # the position moved with it

            down = await api(nc, "$JS.API.STREAM.UPDATE.GROW", stream_config("GROW", ["grow.>"], num_replicas=1))
            assert "error" not in down, down
            await asyncio.to_thread(wait_for, lambda: len(holders(cl, "GROW", 150)) == 1
                                    and all(stream_state_on(cl, n, "GROW") is None
                                            for n in cl.names() if n not in holders(cl, "GROW", 150)),
                                    "one node holds the stream")
            info = await js.stream_info("GROW")
            assert info.config.num_replicas == 1 and info.state.messages == 150
            assert not info.cluster.replicas
            ci = await js.consumer_info("GROW", "d")
            assert ci.ack_floor.stream_seq == 40 and ci.num_pending == 110
            assert await fetch_ack(js, sub, 5) == list(range(41, 46))
            await js.publish("grow.a", b"after")
            assert (await js.stream_info("GROW")).state.messages == 151
        finally:
            await nc.close()

    asyncio.run(main())
