"""Durability: SIGKILL the server mid-publish; every acknowledged message must survive.

Default `sync_interval` is `always`, so a PubAck is only sent after the batch holding
the message was fsynced. After a restart, each acknowledged (seq, payload) pair must be
readable at that sequence, and no payload may be stored twice.
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from tests.conftest import our_server

WORKERS = 64
KILL_AFTER_ACKS = 1500


async def _publish_until_killed(srv) -> dict[int, bytes]:
    nc = await nats.connect(srv.url, allow_reconnect=False, max_reconnect_attempts=0)
    js = nc.jetstream()
    await js.add_stream(name="DUR", subjects=["dur.*"])
    acked: dict[int, bytes] = {}
    killed = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not killed.is_set():
            payload = f"w{w}-{i}".encode()
            i += 1
            try:
                msg = await nc.request(f"dur.{w % 8}", payload, timeout=5)
            except Exception:
                return
            ack = json.loads(msg.data)
            if "seq" in ack and "error" not in ack:
                assert ack["seq"] not in acked
                acked[ack["seq"]] = payload
            if len(acked) >= KILL_AFTER_ACKS and not killed.is_set():
                killed.set()
                srv.kill()  # SIGKILL while the other workers still have publishes in flight

    await asyncio.gather(*(worker(w) for w in range(WORKERS)))
    try:
        await nc.close()
    except Exception:
        pass
    return acked


async def _read_back(url: str) -> tuple[dict, dict[int, bytes]]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("DUR")
        stored: dict[int, bytes] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("DUR", seq)
            stored[seq] = msg.data
        return {"messages": info.state.messages, "last_seq": info.state.last_seq}, stored
    finally:
        await nc.close()


@pytest.mark.timeout(180)
def test_sigkill_while_publishing_loses_no_acked_message(tmp_path):
    srv = our_server(tmp_path)
    srv.start()
    try:
        acked = asyncio.run(_publish_until_killed(srv))
        assert len(acked) >= KILL_AFTER_ACKS
        srv.start()
        state, stored = asyncio.run(_read_back(srv.url))
    finally:
        srv.stop()
    for seq, payload in acked.items():
        assert stored.get(seq) == payload, f"acked seq {seq} lost or changed"
    payloads = list(stored.values())
    assert len(payloads) == len(set(payloads)), "a payload was stored twice"
    assert state["messages"] == len(stored)
