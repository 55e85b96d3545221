"""The seed article's "Limits-based Stream" example, ported from nats.go to nats-py.

The article prints the stream state after each step; these are its numbers. The same
script runs against our server and, as a check on the expectations, against nats-server.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from tests.conftest import our_server, reference

ZERO_TIME = "0001-01-01T00:00:00Z"


async def _limits_example(url: str) -> list[dict]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        cfg = StreamConfig(name="EVENTS", subjects=["events.>"], storage=StorageType.FILE)
        await js.add_stream(cfg)
        for subject in ("page_loaded", "mouse_clicked", "mouse_clicked", "page_loaded",
                        "mouse_clicked", "input_focused"):
            await js.publish(f"events.{subject}", b"")
        futures = [await js.publish_async(f"events.{subject}", b"")
                   for subject in ("input_changed", "input_blurred", "key_pressed",
                                   "input_focused", "input_changed", "input_blurred")]
        await asyncio.wait_for(js.publish_async_completed(), timeout=10)
        assert all(f.done() and f.result().seq > 0 for f in futures)

        states = []

        async def snapshot():
            info = await js.stream_info("EVENTS")
            st = info.state
            states.append({"messages": st.messages, "bytes": st.bytes, "first_seq": st.first_seq,
                           "last_seq": st.last_seq, "consumer_count": st.consumer_count,
                           "raw_first_ts": await _raw_first_ts(nc)})

        await snapshot()
        cfg.max_msgs = 10
        await js.update_stream(cfg)
        await snapshot()
        cfg.max_bytes = 300
        await js.update_stream(cfg)
        await snapshot()
        cfg.max_age = 1.0  # nats-py takes seconds and sends nanoseconds
        await js.update_stream(cfg)
        await snapshot()
        await asyncio.sleep(1.0)
        # The article's Go program sleeps exactly one second; expiry is due by then.
        # Poll briefly so a loaded test machine cannot make this flaky.
        for _ in range(50):
            info = await js.stream_info("EVENTS")
            if info.state.messages == 0:
                break
            await asyncio.sleep(0.1)
        await snapshot()
        return states
    finally:
        await nc.close()


async def _raw_first_ts(nc) -> str:
    import json
    msg = await nc.request("$JS.API.STREAM.INFO.EVENTS", b"", timeout=5)
    return json.loads(msg.data)["state"]["first_ts"]


def _check(states: list[dict]) -> None:
    expected = [
        (12, 594, 1, 12),
        (10, 496, 3, 12),
        (6, 298, 7, 12),
        (6, 298, 7, 12),
        (0, 0, 13, 12),
    ]
    got = [(s["messages"], s["bytes"], s["first_seq"], s["last_seq"]) for s in states]
    assert got == expected
    assert all(s["consumer_count"] == 0 for s in states)
    assert all(s["raw_first_ts"] != ZERO_TIME for s in states[:4])
    assert states[4]["raw_first_ts"] == ZERO_TIME


def test_seed_limits_based_stream(tmp_path):
    srv = our_server(tmp_path).start()
    try:
        _check(asyncio.run(_limits_example(srv.url)))
    finally:
        srv.stop()


def test_seed_limits_based_stream_reference(tmp_path):
    """The same numbers from the real nats-server 2.15 (validates the expectations)."""
    srv = reference(tmp_path).start()
    try:
        _check(asyncio.run(_limits_example(srv.url)))
    finally:
        srv.stop()
