"""Differential test: the same random script of publishes, pulls and acks against our broker
and nats-server must produce identical deliveries (ack-subject metadata) and consumer infos.

Each seed is a script of operations without timing (ack_wait is long, NAKs have no delay),
so both servers must agree exactly. A failing seed is printed for replay."""

from __future__ import annotations

import asyncio
import json
import random

import nats
import pytest

from tests.conftest import our_server, reference
from tests.jetstream.consumer_fixtures import Inbox, add_consumer, add_stream, api, status

SEEDS = list(range(1, 41))
CONFIGS = [
    {"ack_policy": "explicit"},
    {"ack_policy": "all", "filter_subject": "d.a"},
    {"ack_policy": "explicit", "filter_subjects": ["d.a", "d.c"], "max_ack_pending": 4},
    {"ack_policy": "none", "deliver_policy": "last_per_subject", "filter_subject": "d.>"},
    {"ack_policy": "explicit", "max_deliver": 2},
    {"ack_policy": "explicit", "deliver_policy": "by_start_sequence", "opt_start_seq": 3},
    {"ack_policy": "all", "max_ack_pending": 3, "deliver_policy": "last"},
    {"ack_policy": "explicit", "filter_subject": "d.b", "max_ack_pending": 2, "max_deliver": 3},
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    ours = our_server(tmp_path_factory.mktemp("ours")).start()
    ref = reference(tmp_path_factory.mktemp("ref")).start()
    yield ours, ref
    ours.stop()
    ref.stop()


def script(seed: int) -> list[tuple]:
    rnd = random.Random(seed)
    ops: list[tuple] = [("pub", rnd.choice("abc")) for _ in range(4)]
    for _ in range(40):
        kind = rnd.choices(["pub", "pull", "ack", "nak", "term", "wpi"], [4, 3, 3, 1, 1, 1])[0]
        ops.append((kind, rnd.choice("abc") if kind == "pub" else rnd.randint(1, 4)))
    return ops


async def play(url: str, seed: int, cfg: dict) -> list:
    nc = await nats.connect(url)
    stream = f"D{seed}"
    trace: list = []
    try:
        await add_stream(nc, stream, [f"{stream.lower()}.>"])
        js = nc.jetstream()
        cfg = json.loads(json.dumps(cfg).replace('"d.', f'"{stream.lower()}.'))
        delivered: list = []  # (reply) of messages handed to us, not yet acked by the script
        created = False
        inbox = await Inbox(nc, f"in.{stream}").start()
        for kind, arg in script(seed):
            if kind == "pub":
                await js.publish(f"{stream.lower()}.{arg}", b"v")
            elif not created:
                r = await add_consumer(nc, stream, dict(cfg, durable_name="c", name="c", ack_wait=60 * 10**9), "c")
                trace.append(("create", r.get("error"), r.get("num_pending")))
                created = True
            if kind == "pull" and created:
                start = len(inbox.msgs)
                await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.c",
                                 json.dumps({"batch": arg, "no_wait": True}).encode(), reply=inbox.subject)
                try:
                    await inbox.wait_for(lambda m: any(status(x) is not None for x in inbox.msgs[start:])
                                         or len(inbox.msgs) - start >= arg, timeout=1.0)
                except AssertionError:
                    pass  # no answer at all (recorded as such: both servers must agree)
                got = inbox.msgs[start:]
                trace.append(("pull", [m.reply.split(".", 4)[4] if m.reply else status(m) for m in got]))
                delivered += [m.reply for m in got if m.reply]
            elif kind in ("ack", "nak", "term", "wpi") and delivered:
                reply = delivered.pop((arg - 1) % len(delivered))
                body = {"ack": b"+ACK", "nak": b"-NAK", "term": b"+TERM", "wpi": b"+WPI"}[kind]
                try:
                    await nc.request(reply, body, timeout=5)
                except nats.errors.NoRespondersError:
                    trace.append(("no responders", kind))
                if kind in ("nak", "wpi"):
                    delivered.append(reply)
                # an ack can hand a held message to a waiting request: let that delivery land
                # before the next step, on both servers
                await asyncio.sleep(0.015)
            if created:
                i = await api(nc, f"CONSUMER.INFO.{stream}.c")
                trace.append(("info", kind, i["delivered"]["consumer_seq"], i["delivered"]["stream_seq"],
                              i["ack_floor"]["consumer_seq"], i["ack_floor"]["stream_seq"], i["num_ack_pending"],
                              i["num_redelivered"],
                              # nats-server counts a just-stored message a moment later: not compared
                              None if kind == "pub" else i["num_pending"]))
    finally:
        await nc.close()
    return trace


def _strip_ts(trace: list) -> list:
    out = []
    for item in trace:
        if item[0] == "pull":
            item = ("pull", [x if not isinstance(x, str) else ".".join(
                t for i, t in enumerate(x.split(".")) if i != 3) for x in item[1]])
        out.append(item)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_same_script_same_outcome(servers, seed):
    ours, ref = servers
    cfg = CONFIGS[seed % len(CONFIGS)]
    got = asyncio.run(play(ours.url, seed, cfg))
    want = asyncio.run(play(ref.url, seed, cfg))
    got, want = _strip_ts(got), _strip_ts(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"seed {seed} cfg {cfg} step {i}: ours {g} != nats-server {w}"
    assert len(got) == len(want)
