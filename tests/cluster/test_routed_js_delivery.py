"""A JetStream delivery that crosses a route shows the stored subject on the far node.

nats-server sends such a delivery over the route as RMSG <deliver subject> with the reply
`<ack reply>@<stored subject>`; the receiving node shows its client the stored subject and
the plain ack reply (nats-server's client.go remaps a `$JS.ACK.` reply holding `@` the same
way). n1 holds the stream and a push consumer; a client of n2 subscribes the deliver subject.
"""

from __future__ import annotations

import asyncio
import json

import nats

from tests.cluster.test_cluster_e2e import http_json, wait_for
from tests.conftest import free_port, our_server


def _pair(tmp_path, make):
    c1, c2 = free_port(), free_port()
    # nats-server refuses a JetStream cluster without configured routes: n1 routes to n2 too
    n1 = make(tmp_path, "--cluster", f"nats://127.0.0.1:{c1}", "--routes", f"nats://127.0.0.1:{c2}",
              "--cluster_name", "t", "-n", "n1",
              jetstream=True, name="n1")
    n2 = make(tmp_path, "--cluster", f"nats://127.0.0.1:{c2}", "--routes", f"nats://127.0.0.1:{c1}",
              "--cluster_name", "t", "-n", "n2", jetstream=False, name="n2")
    return n1.start(), n2.start()


def test_push_delivery_across_route_keeps_stored_subject(tmp_path):
    n1, n2 = _pair(tmp_path, our_server)
    try:
        wait_for(lambda: http_json(n1, "/routez")["num_routes"] >= 1 and http_json(n2, "/routez")["num_routes"] >= 1,
                 "route up")
        # n1 is the only JetStream server of the cluster: it forms the meta group alone
        wait_for(lambda: http_json(n1, "/jsz")["meta_cluster"].get("leader") == "n1", "meta leader")

        async def main():
            a = await nats.connect(n1.url)
            b = await nats.connect(n2.url)
            try:
                js = a.jetstream()
                await js.add_stream(name="S", subjects=["orders.>"])
                got: asyncio.Queue = asyncio.Queue()

                async def cb(msg):
                    await got.put(msg)

                await b.subscribe("dlv.x", cb=cb)
                await b.flush()

                async def interest_seen():
                    for _ in range(200):
                        subs = http_json(n1, "/subsz?subs=1").get("subscriptions_list", [])
                        if any(s.get("subject") == "dlv.x" for s in subs):
                            return
                        await asyncio.sleep(0.05)

                await interest_seen()
                await js.add_consumer("S", durable_name="D", deliver_subject="dlv.x", ack_policy="explicit")
                await js.publish("orders.a", b"one")
                await js.publish("orders.b.c", b"two")
                first = await asyncio.wait_for(got.get(), 10)
                second = await asyncio.wait_for(got.get(), 10)
                return [(m.subject, m.reply, m.data) for m in (first, second)]
            finally:
                await a.close()
                await b.close()

        seen = asyncio.run(main())
        assert [s for s, _, _ in seen] == ["orders.a", "orders.b.c"]
        assert [d for _, _, d in seen] == [b"one", b"two"]
        for _, reply, _ in seen:
            assert reply.startswith("$JS.ACK.S.D.") and "@" not in reply
    finally:
        n2.stop()
        n1.stop()
