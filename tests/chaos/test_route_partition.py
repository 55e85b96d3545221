"""A network partition between two nodes, made with the toxiproxy-compatible proxy.

Every route byte between n1 and n2 crosses a proxy: each node advertises its proxy as its
cluster address (--cluster_advertise) and n2's seed route points at n1's proxy, so
disabling both proxies partitions the pair completely. After healing, interest made on
either side during the partition must be known to the other (no deaf subscriber).
"""

from __future__ import annotations

import asyncio

import nats

from tests.chaos.toxi import ToxiproxyProc
from tests.cluster.test_cluster_e2e import http_json, wait_for
from tests.conftest import free_port, our_server


def routes(proc) -> int:
    return http_json(proc, "/routez")["num_routes"]


def test_partition_and_heal_resynchronises_interest(tmp_path):
    with ToxiproxyProc(tmp_path / "toxi.log") as toxi:
        c1, c2 = free_port(), free_port()
        a1, a2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        p1 = toxi.create(upstream=f"127.0.0.1:{c1}", name="to_n1", listen=a1)
        p2 = toxi.create(upstream=f"127.0.0.1:{c2}", name="to_n2", listen=a2)
        n1 = our_server(tmp_path, "-n", "n1", "--cluster", f"nats://127.0.0.1:{c1}", "--cluster_advertise", a1,
                        "--cluster_name", "part", jetstream=False, name="n1").start()
        n2 = our_server(tmp_path, "-n", "n2", "--cluster", f"nats://127.0.0.1:{c2}", "--cluster_advertise", a2,
                        "--routes", f"nats://{a1}", "--cluster_name", "part", jetstream=False, name="n2").start()
        try:
            wait_for(lambda: routes(n1) == 1 and routes(n2) == 1, "route n1-n2")

            async def main():
                pub = await nats.connect(n1.url, allow_reconnect=False)
                sub_c = await nats.connect(n2.url, allow_reconnect=False)
                before = await sub_c.subscribe("part.before")
                await sub_c.flush()
                await wait_interest(pub, before, "part.before")

                p1.disable()
                p2.disable()
                await asyncio.to_thread(wait_for, lambda: routes(n1) == 0 and routes(n2) == 0, "partition")
                during = await sub_c.subscribe("part.during")  # interest made while cut off
                await sub_c.flush()
                await pub.publish("part.before", b"lost-in-partition")
                await pub.flush()

                p1.enable()
                p2.enable()
                await asyncio.to_thread(wait_for, lambda: routes(n1) == 1 and routes(n2) == 1, "heal")
                await wait_interest(pub, during, "part.during")
                await pub.publish("part.before", b"after-heal")
                await pub.flush()
                got = await before.next_msg(timeout=10)
                while got.data == b"lost-in-partition":  # only if it slipped through before the cut
                    got = await before.next_msg(timeout=10)
                assert got.data == b"after-heal"
                await pub.close()
                await sub_c.close()

            asyncio.run(asyncio.wait_for(main(), 90))
        finally:
            n1.stop()
            n2.stop()


async def wait_interest(pub, sub, subject: str) -> None:
    """Publish probes until one arrives: the remote node then knows the interest."""
    for _ in range(200):
        await pub.publish(subject, b"probe")
        await pub.flush()
        try:
            msg = await sub.next_msg(timeout=0.1)
        except nats.errors.TimeoutError:
            continue
        assert msg.data == b"probe"
        while True:  # drain the other probes
            try:
                await sub.next_msg(timeout=0.2)
            except nats.errors.TimeoutError:
                return
    raise AssertionError(f"interest in {subject} never reached the publisher's node")
