"""Priority groups (ADR-42, nats-server 2.11+): consumer config validation, the pull-request
fields `group` / `priority` / `min_pending` / `min_ack_pending` / `id`, and the order in which
`prioritized` and `overflow` consumers hand messages to waiting requests.

nats-py 2.16 has no API for these fields, so requests are raw JSON. Every test runs against
our broker and the real nats-server (see consumer_fixtures), except the one about
`pinned_client`, which this broker refuses instead of serving it wrongly."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.jetstream.consumer_fixtures import WAIT_S, add_stream, api, publish, run, server_fixture

server = server_fixture()
ours_only = server_fixture(("ours",))

E = 60 * 10**9  # request expiry: far beyond any test
FAR = "2099-01-01T00:00:00Z"
GROUP_NAME_ERR = (400, 10162, "Valid priority group name must match A-Z, a-z, 0-9, -_/=)+ and may not exceed "
                              "16 characters")

BAD = [
    ({"priority_policy": "prioritized"},
     (400, 10159, "Setting PriorityPolicy requires at least one PriorityGroup to be set")),
    ({"priority_policy": "overflow", "priority_groups": []},
     (400, 10159, "Setting PriorityPolicy requires at least one PriorityGroup to be set")),
    ({"priority_policy": "prioritized", "priority_groups": ["A", ""]},
     (400, 10161, "Group name cannot be an empty string")),
    ({"priority_policy": "prioritized", "priority_groups": ["a.b"]}, GROUP_NAME_ERR),
    ({"priority_policy": "overflow", "priority_groups": ["x" * 17]}, GROUP_NAME_ERR),
    ({"priority_policy": "none", "priority_groups": ["A"]},
     (400, 10196, "consumer can not have priority groups when policy is none")),
    ({"priority_groups": ["A"]}, (400, 10196, "consumer can not have priority groups when policy is none")),
    ({"priority_timeout": 5}, (400, 10197, "PinnedTTL cannot be set when PriorityPolicy is none")),
    ({"priority_policy": "bogus", "priority_groups": ["A"]},
     (400, 10025, 'invalid JSON: unknown priority policy: "bogus"')),
    ({"priority_policy": "prioritized", "priority_groups": ["A"], "deliver_subject": "pq.dd"},
     (400, 10178, "priority groups can not be used with push consumers")),
]


@pytest.mark.parametrize("cfg,err", BAD, ids=[f"{e[1]}-{i}" for i, (_, e) in enumerate(BAD)])
def test_invalid_priority_config(server, cfg, err):
    async def main(nc):
        if "error" in await api(nc, "STREAM.INFO.PQ1"):
            await add_stream(nc, "PQ1", ["pq1.>"])
        r = await api(nc, "CONSUMER.CREATE.PQ1.x", {"stream_name": "PQ1", "config": dict(cfg, name="x")})
        assert r["error"] == {"code": err[0], "err_code": err[1], "description": err[2]}
    run(main, server.url)


def test_priority_config_echo_and_info(server):
    async def main(nc):
        await add_stream(nc, "PQ2", ["pq2.>"])
        r = await api(nc, "CONSUMER.CREATE.PQ2.p", {"stream_name": "PQ2", "config": {
            "name": "p", "ack_policy": "explicit", "priority_policy": "prioritized",
            "priority_groups": ["A", "b-2/x=_"], "priority_timeout": -5}})
        assert "error" not in r, r
        cfg = r["config"]
        assert (cfg["priority_groups"], cfg["priority_policy"]) == (["A", "b-2/x=_"], "prioritized")
        assert "priority_timeout" not in cfg
        assert cfg["metadata"]["_nats.req.level"] == "1"
        assert r["priority_groups"] == [{"group": "A", "pinned_ts": "0001-01-01T00:00:00Z"}]
        assert list(r)[-2:] == ["ts", "priority_groups"]
        r = await api(nc, "CONSUMER.CREATE.PQ2.o", {"stream_name": "PQ2", "config": {
            "name": "o", "priority_policy": "overflow", "priority_groups": ["G"], "priority_timeout": 7}})
        assert (r["config"]["priority_policy"], r["config"]["priority_timeout"]) == ("overflow", 7)
        r = await api(nc, "CONSUMER.CREATE.PQ2.n", {"stream_name": "PQ2", "config": {
            "name": "n", "priority_policy": "none", "priority_groups": []}})
        assert "error" not in r, r
        assert not {"priority_policy", "priority_groups", "priority_timeout"} & set(r["config"])
        assert "priority_groups" not in r and r["config"]["metadata"]["_nats.req.level"] == "0"
    run(main, server.url)


PULL_BAD = [
    ("P", {"batch": 1}, "Bad Request - Priority Group missing"),
    ("P", {"batch": 1, "group": "Z"}, "Bad Request - Invalid Priority Group"),
    ("P", {"group": "A", "priority": 10}, "Bad Request - Priority must be between 0 and 9"),
    ("P", {"group": "A", "priority": -1}, "Bad Request - Priority must be between 0 and 9"),
    ("P", {"group": "A", "min_pending": 1}, "Bad Request - Not a Overflow Priority consumer"),
    ("P", {"group": "A", "id": "x"}, "Bad Request - Not a Pinned Client Priority consumer"),
    ("O", {"min_pending": 1}, "Bad Request - Priority Group missing"),
    ("O", {"group": "A", "id": "x"}, "Bad Request - Not a Pinned Client Priority consumer"),
    ("O", {"group": "A", "priority": 12}, "Bad Request - Priority must be between 0 and 9"),
    ("N", {"group": "A", "min_ack_pending": 2}, "Bad Request - Not a Overflow Priority consumer"),
    ("N", {"priority": 12}, "Bad Request - Priority must be between 0 and 9"),
]


async def _priority_consumers(nc, stream: str, paused: bool = False) -> None:
    await add_stream(nc, stream, [stream.lower()])
    for name, policy in (("P", "prioritized"), ("O", "overflow"), ("N", None)):
        cfg = {"name": name, "durable_name": name, "ack_policy": "explicit"}
        if policy:
            cfg.update(priority_policy=policy, priority_groups=["A", "B"])
        if paused:
            cfg["pause_until"] = FAR
        r = await api(nc, f"CONSUMER.CREATE.{stream}.{name}", {"stream_name": stream, "config": cfg})
        assert "error" not in r, r


@pytest.mark.parametrize("consumer,body,text", PULL_BAD, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(PULL_BAD)])
def test_invalid_pull_request_fields(server, consumer, body, text):
    async def main(nc):
        if "error" in await api(nc, "STREAM.INFO.PQ3"):
            await _priority_consumers(nc, "PQ3")
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.PQ3.{consumer}", json.dumps(body).encode(), reply=inbox)
        m = await sub.next_msg(WAIT_S)
        assert (m.headers["Status"], m.headers["Description"]) == ("400", text)
        assert m.data == b""
    run(main, server.url)


async def _deliveries(nc, stream: str, consumer: str, requests: list[tuple[str, object]], n_msgs: int,
                      trigger: dict | bytes) -> dict:
    """Queue `requests` on a paused consumer, resume it and map each stream seq to the request
    (tag) it went to. nats-server 2.15 does not look at waiting requests when a consumer is
    resumed (we do), only when a message or a request comes in: the `trigger` request, which
    never gets a message, makes it start; it arrives after we have served everyone already."""
    got: dict[int, str] = {}
    done = asyncio.Event()
    for tag, body in requests + [("trigger", None)]:
        async def cb(m, tag=tag):
            if not (m.headers or {}).get("Status"):
                got[m.metadata.sequence.stream] = tag
                if len(got) >= n_msgs:
                    done.set()
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=cb)
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", payload, reply=inbox)
    while (await api(nc, f"CONSUMER.INFO.{stream}.{consumer}"))["num_waiting"] < len(requests):
        await asyncio.sleep(0.01)
    r = await api(nc, f"CONSUMER.PAUSE.{stream}.{consumer}", {"pause_until": "1970-01-01T00:00:00Z"})
    assert r["paused"] is False
    payload = trigger if isinstance(trigger, bytes) else json.dumps(trigger).encode()
    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", payload,
                     reply=inbox)  # the last inbox is the trigger's
    await asyncio.wait_for(done.wait(), WAIT_S)
    return got


def test_prioritized_serves_lower_priority_numbers_first(server):
    async def main(nc):
        await _priority_consumers(nc, "PQ4", paused=True)
        await publish(nc, "pq4", b"m", 8)
        got = await _deliveries(nc, "PQ4", "P", [
            ("r1", {"group": "A", "priority": 5, "batch": 2, "expires": E}),
            ("r2", {"group": "A", "priority": 1, "batch": 2, "expires": E}),
            ("r3", {"group": "B", "priority": 5, "batch": 1, "expires": E}),
            ("r4", b""),  # no JSON body: no priority, served after everyone else
            ("r5", {"group": "A", "batch": 1, "expires": E}),  # priority 0
            ("r6", {"group": "A", "priority": 1, "batch": 1, "expires": E}),
        ], 8, b"")  # behind r4: no priority either, and later
        # one message at a time to the front request, which then goes behind its own level
        assert [got[s] for s in range(1, 9)] == ["r5", "r2", "r6", "r2", "r1", "r3", "r1", "r4"]
        info = await api(nc, "CONSUMER.INFO.PQ4.P")
        assert (info["num_waiting"], info["num_ack_pending"]) == (1, 8)
    run(main, server.url)


def test_overflow_serves_requests_whose_threshold_is_met(server):
    async def main(nc):
        await _priority_consumers(nc, "PQ5", paused=True)
        await publish(nc, "pq5", b"m", 9)
        got = await _deliveries(nc, "PQ5", "O", [
            ("o1", {"group": "A", "min_pending": 20, "batch": 3, "expires": E}),  # never: only 9 pending
            ("o2", {"group": "A", "min_pending": 5, "batch": 3, "expires": E}),  # while >= 5 are pending
            ("o3", {"group": "B", "min_ack_pending": 2, "batch": 10, "expires": E}),  # once 2 await acks
            ("o4", {"group": "A", "batch": 1, "expires": E}),  # no threshold
        ], 9, {"group": "A", "min_pending": 100, "batch": 1, "expires": E})
        assert [got[s] for s in range(1, 10)] == ["o2", "o4", "o2", "o3", "o2", "o3", "o3", "o3", "o3"]
        info = await api(nc, "CONSUMER.INFO.PQ5.O")
        assert (info["num_waiting"], info["num_pending"], info["num_ack_pending"]) == (3, 0, 9)
    run(main, server.url)


def test_none_policy_accepts_group_and_priority_fields(server):
    async def main(nc):
        await _priority_consumers(nc, "PQ6")
        await publish(nc, "pq6", b"m", 2)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.PQ6.N", json.dumps(
            {"batch": 2, "group": "whatever", "priority": 3, "no_wait": True}).encode(), reply=inbox)
        msgs = [await sub.next_msg(WAIT_S) for _ in range(2)]
        assert [m.metadata.sequence.stream for m in msgs] == [1, 2]
    run(main, server.url)


def test_pinned_client_is_refused(ours_only):
    """Pinning (pin ids, Nats-Pin-Id, 423 replies, CONSUMER.UNPIN) is not implemented: creating
    such a consumer fails with a clear error instead of silently behaving like another policy."""
    async def main(nc):
        await add_stream(nc, "PQ7", ["pq7.>"])
        r = await api(nc, "CONSUMER.CREATE.PQ7.x", {"stream_name": "PQ7", "config": {
            "name": "x", "priority_policy": "pinned_client", "priority_groups": ["A"]}})
        assert r["error"] == {"code": 500, "err_code": 10052,
                              "description": "priority policy pinned_client is not supported by this server"}
        assert (await api(nc, "CONSUMER.NAMES.PQ7"))["consumers"] == []
        # its config errors still come first, as nats-server reports them
        r = await api(nc, "CONSUMER.CREATE.PQ7.x", {"stream_name": "PQ7", "config": {
            "name": "x", "priority_policy": "pinned_client"}})
        assert r["error"]["err_code"] == 10159
    run(main, ours_only.url)


def test_ack_next_runs_the_same_checks(server):
    """`+NXT` on an ack subject is a pull request too: same priority checks, same statuses."""
    async def main(nc):
        await _priority_consumers(nc, "PQ8")
        await publish(nc, "pq8", b"m", 3)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.PQ8.P", b'{"batch":1,"group":"A"}', reply=inbox)
        first = await sub.next_msg(WAIT_S)
        assert first.metadata.sequence.stream == 1
        await nc.publish(first.reply, b'+NXT {"batch":1,"group":"Z"}', reply=inbox)
        m = await sub.next_msg(WAIT_S)
        assert (m.headers["Status"], m.headers["Description"]) == ("400", "Bad Request - Invalid Priority Group")
        await nc.publish(first.reply, b'+NXT {"batch":1,"group":"B","priority":3}', reply=inbox)
        m = await sub.next_msg(WAIT_S)
        assert m.metadata.sequence.stream == 2 and not m.headers
    run(main, server.url)


def test_prioritized_requests_sent_together_go_by_priority(server):
    """Pull requests that arrive together (one client write) are all waiting before any is
    served, as nats-server queues them and lets its delivery loop pick: the better priority
    gets the messages even though it came second. (nats.py's own priority-group suite relies
    on it: two `messages()` iterators started back to back.)"""
    async def main(nc):
        await _priority_consumers(nc, "PQ9")
        await publish(nc, "pq9", b"m", 4)
        got: dict[int, str] = {}
        done = asyncio.Event()
        inboxes = {}
        for tag in ("low", "high"):
            async def cb(m, tag=tag):
                if not (m.headers or {}).get("Status"):
                    got[m.metadata.sequence.stream] = tag
                    if len(got) >= 4:
                        done.set()
            inboxes[tag] = nc.new_inbox()
            await nc.subscribe(inboxes[tag], cb=cb)
        await nc.flush()
        # no flush between the two: nats-py sends them in one write
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.PQ9.P", json.dumps(
            {"group": "A", "priority": 1, "batch": 4, "expires": E}).encode(), reply=inboxes["low"])
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.PQ9.P", json.dumps(
            {"group": "A", "priority": 0, "batch": 4, "expires": E}).encode(), reply=inboxes["high"])
        await asyncio.wait_for(done.wait(), WAIT_S)
        assert [got[s] for s in range(1, 5)] == ["high"] * 4
        info = await api(nc, "CONSUMER.INFO.PQ9.P")
        assert (info["num_waiting"], info["num_ack_pending"]) == (1, 4)  # the low one still waits
    run(main, server.url)
