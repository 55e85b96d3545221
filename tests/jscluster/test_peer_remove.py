"""`$JS.API.STREAM.PEER.REMOVE` on a four-node cluster, nats-server and ours.

A replica of an R3 stream is removed: the free fourth server takes its place, ends up holding
every message (each node's own /jsz), reports current, and the removed server drops its copy;
the stream keeps taking publishes. A peer that is not a member, and a request without a peer,
get nats-server's errors.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.jscluster.harness import (JSCluster, api, api_retry, kind_params, stream_config,
                                     stream_state_on, wait_for)

pytestmark = pytest.mark.timeout(300)

NAMES4 = ("n1", "n2", "n3", "n4")


@pytest.fixture(scope="module", params=kind_params())
def c4(request, tmp_path_factory):
    with JSCluster(request.param, tmp_path_factory.mktemp(f"pr-{request.param}"), names=NAMES4) as cl:
        yield cl


def test_peer_remove_replaces_the_peer_with_the_free_server(c4: JSCluster):
    cl = c4

    async def main():
        nc = await cl.connect("n1")
        js = nc.jetstream()
        try:
            r = await api_retry(nc, "$JS.API.STREAM.CREATE.PR", stream_config("PR", ["pr.>"], num_replicas=3))
            assert "error" not in r, r
            for i in range(100):
                await js.publish("pr.a", b"%d" % i)
            info = await api(nc, "$JS.API.STREAM.INFO.PR")
            peers = {info["cluster"]["leader"]} | {p["name"] for p in info["cluster"]["replicas"]}
            assert len(peers) == 3
            free = (set(NAMES4) - peers).pop()
            victim = sorted(peers - {info["cluster"]["leader"]})[0]

            bad = await api(nc, "$JS.API.STREAM.PEER.REMOVE.PR", b'{"peer":"nosuch"}')
            assert bad["error"] == {"code": 400, "err_code": 10040, "description": "peer not a member"}, bad
            empty = await api(nc, "$JS.API.STREAM.PEER.REMOVE.PR", b"{}")
            assert empty["error"] == {"code": 400, "err_code": 10003, "description": "bad request"}, empty

            ok = await api(nc, "$JS.API.STREAM.PEER.REMOVE.PR", b'{"peer":"%s"}' % victim.encode())
            assert ok == {"type": "io.nats.jetstream.api.v1.stream_remove_peer_response", "success": True}, ok

            def replaced() -> bool:
                i = asyncio.run_coroutine_threadsafe(api(nc, "$JS.API.STREAM.INFO.PR"), loop).result(10)
                names = {i["cluster"].get("leader")} | {p["name"] for p in i["cluster"].get("replicas", [])}
                return names == (peers - {victim}) | {free} and all(p["current"] for p in i["cluster"]["replicas"])

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(wait_for, replaced, f"{free} replaces {victim}", 60)
            await asyncio.to_thread(wait_for, lambda: (stream_state_on(cl, free, "PR") or {}).get("messages") == 100,
                                    f"{free} holds the 100 messages", 60)
            await asyncio.to_thread(wait_for, lambda: stream_state_on(cl, victim, "PR") is None,
                                    f"{victim} dropped its copy", 60)
            for i in range(100, 150):
                await js.publish("pr.a", b"%d" % i)
            for n in (peers - {victim}) | {free}:
                await asyncio.to_thread(wait_for, lambda n=n: (stream_state_on(cl, n, "PR") or {}).get("messages")
                                        == 150, f"{n} holds 150")
        finally:
            await nc.close()

    asyncio.run(main())
