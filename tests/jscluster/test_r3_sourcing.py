"""A replicated mirror and a replicated source of a replicated stream, nats-server and ours.

Every replica of the mirror and of the sourcing stream (each node's own /jsz) ends up with
exactly the origin's messages, also after both copies' leaders stepped down in the middle:
the new leaders carry on copying from where the old ones stopped, with no copy lost or
stored twice (the mirror keeps the origin's sequences).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.jscluster.harness import JSCluster, api, api_retry, kind_params, stream_state_on, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", params=kind_params())
def sc3(request, tmp_path_factory):
    with JSCluster(request.param, tmp_path_factory.mktemp(f"src-{request.param}")) as cl:
        yield cl


def test_replicated_mirror_and_source_follow_a_replicated_origin_across_stepdowns(sc3: JSCluster):
    cl = sc3

    def everywhere(stream: str, messages: int, last_seq: int) -> bool:
        for n in cl.names():
            st = stream_state_on(cl, n, stream) or {}
            if st.get("messages") != messages or st.get("last_seq") != last_seq:
                return False
        return True

    async def publish(js, start: int, stop: int) -> None:
        for i in range(start, stop):
            for _ in range(50):
                try:
                    await js.publish("org.a", b"%d" % i, headers={"Nats-Msg-Id": f"m{i}"})
                    break
                except Exception:  # an election right after a stepdown: retry, deduplicated
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"publish {i} never acknowledged")

    async def main():
        nc = await cl.connect("n1")
        js = nc.jetstream()
        try:
            for name, body in (("ORG", {"name": "ORG", "subjects": ["org.>"], "num_replicas": 3}),
                               ("MIR", {"name": "MIR", "mirror": {"name": "ORG"}, "num_replicas": 3}),
                               ("SRC", {"name": "SRC", "sources": [{"name": "ORG"}], "num_replicas": 3})):
                r = await api_retry(nc, f"$JS.API.STREAM.CREATE.{name}", json.dumps(body).encode())
                assert "error" not in r, r
            await publish(js, 0, 200)
            await asyncio.to_thread(wait_for, lambda: everywhere("MIR", 200, 200) and everywhere("SRC", 200, 200),
                                    "every replica of both copies holds 200", 60)
            for name in ("MIR", "SRC"):
                r = await api_retry(nc, f"$JS.API.STREAM.LEADER.STEPDOWN.{name}")
                assert r.get("success") is True, r
            await publish(js, 200, 300)
            await asyncio.to_thread(wait_for, lambda: everywhere("MIR", 300, 300) and everywhere("SRC", 300, 300),
                                    "every replica of both copies holds 300", 60)
            mirror = await api_retry(nc, "$JS.API.STREAM.INFO.MIR")
            assert mirror["state"]["first_seq"] == 1 and mirror["mirror"]["name"] == "ORG"
            source = await api_retry(nc, "$JS.API.STREAM.INFO.SRC")
            assert [s["name"] for s in source["sources"]] == ["ORG"]
            seen = set()
            for seq in (1, 150, 200, 201, 300):  # the copies carry the origin's payloads, in order
                got = await api(nc, "$JS.API.STREAM.MSG.GET.SRC", json.dumps({"seq": seq}).encode())
                seen.add(got["message"]["data"])
            assert len(seen) == 5
        finally:
            await nc.close()

    asyncio.run(main())
