"""nats-py's JetStream manager API, run against nats-server and ours: same observable results."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from tests.conftest import our_server, reference


async def _tour(url: str) -> list:
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list = []

    async def attempt(label, coro):
        try:
            out.append((label, await coro))
        except (APIError, NoStreamResponseError) as e:
            out.append((label, type(e).__name__, getattr(e, "err_code", None), getattr(e, "description", None)))

    try:
        si = await js.add_stream(name="T1", subjects=["t1.>"], storage=StorageType.MEMORY,
                                 max_msgs=100, max_bytes=10_000, max_age=60, discard=DiscardPolicy.NEW,
                                 duplicate_window=30, metadata={"team": "a"}, description="tour")
        cfg = si.config
        out.append(("config", cfg.max_msgs, cfg.max_bytes, cfg.max_age, cfg.duplicate_window, cfg.discard,
                    cfg.description, cfg.metadata.get("team"), cfg.num_replicas, cfg.storage))
        for i in range(6):
            ack = await js.publish(f"t1.{i % 3}", f"m{i}".encode(), headers={"Nats-Msg-Id": f"id{i % 4}"})
            out.append(("ack", ack.stream, ack.seq, ack.duplicate))
        await attempt("expected stream", js.publish("t1.0", b"x", stream="OTHER"))
        await attempt("no stream", js.publish("nowhere", b"x"))
        out.append(("get", (await js.get_msg("T1", 2)).data))
        out.append(("last", (await js.get_last_msg("T1", "t1.0")).seq))
        out.append(("next", (await js.get_msg("T1", seq=1, subject="t1.1", next=True)).seq))
        await attempt("get missing", js.get_msg("T1", 99))
        out.append(("delete_msg", await js.delete_msg("T1", 2)))
        await attempt("delete_msg again", js.delete_msg("T1", 2))
        info = await js.stream_info("T1", subjects_filter="t1.*")
        out.append(("info", info.state.messages, info.state.bytes, info.state.first_seq, info.state.last_seq,
                    info.state.num_deleted, sorted(info.state.subjects.items())))
        await js.purge_stream("T1", subject="t1.0", keep=1)
        out.append(("after purge", (await js.stream_info("T1")).state.messages))
        await js.purge_stream("T1", seq=4)
        out.append(("after purge seq", (await js.stream_info("T1")).state.first_seq))
        await js.add_stream(name="T2", subjects=["t2"])
        out.append(("names", await js.find_stream_name_by_subject("t2")))
        out.append(("list", [s.config.name for s in await js.streams_info()]))
        out.append(("iter", [s.config.name for s in await js.streams_info_iterator()]))
        await attempt("overlap", js.add_stream(name="T3", subjects=["t1.x"]))
        await attempt("bad update", js.update_stream(StreamConfig(name="T2", subjects=["t2"],
                                                                  storage=StorageType.MEMORY)))
        upd = await js.update_stream(StreamConfig(name="T2", subjects=["t2", "t2b"], max_msgs_per_subject=5))
        out.append(("update", upd.config.subjects, upd.config.max_msgs_per_subject))
        acct = await js.account_info()
        out.append(("account", acct.streams, acct.memory, acct.storage, acct.limits.max_streams))
        out.append(("delete", await js.delete_stream("T2")))
        await attempt("delete again", js.delete_stream("T2"))
        await attempt("info gone", js.stream_info("T2"))
    finally:
        await nc.close()
    return out


@pytest.mark.timeout(60)
def test_nats_py_manager_tour_matches_nats_server(tmp_path):
    ref = reference(tmp_path).start()
    try:
        want = asyncio.run(_tour(ref.url))
    finally:
        ref.stop()
    ours = our_server(tmp_path).start()
    try:
        got = asyncio.run(_tour(ours.url))
    finally:
        ours.stop()
    assert got == want
    assert ("get missing", "NotFoundError", 10037, "no message found") in got
