"""CONSUMER.CREATE / DURABLE.CREATE / INFO / DELETE / NAMES / LIST: shapes, defaults, errors.

Every test runs against our broker and the real nats-server (see consumer_fixtures)."""

from __future__ import annotations

import re

import pytest

from tests.jetstream.consumer_fixtures import add_consumer, add_stream, api, publish, run, server_fixture

server = server_fixture()

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
META = {"_nats.level": "5", "_nats.req.level": "0", "_nats.ver": "2.15.1"}


def test_named_durable_create_defaults(server):
    async def main(nc):
        await add_stream(nc, "CA1", ["ca1.>"])
        await publish(nc, "ca1.x", b"hi", 3)
        r = await add_consumer(nc, "CA1", {"durable_name": "d1", "name": "d1", "ack_policy": "explicit"}, "d1")
        assert r["type"] == "io.nats.jetstream.api.v1.consumer_create_response"
        assert list(r) == ["type", "stream_name", "name", "created", "config", "delivered", "ack_floor",
                           "num_ack_pending", "num_redelivered", "num_waiting", "num_pending", "ts"]
        assert RFC3339.match(r["created"]) and RFC3339.match(r["ts"])
        assert r["config"] == {"durable_name": "d1", "name": "d1", "deliver_policy": "all",
                               "ack_policy": "explicit", "ack_wait": 30_000_000_000, "max_deliver": -1,
                               "replay_policy": "instant", "max_waiting": 512, "max_ack_pending": 1000,
                               "num_replicas": 0, "metadata": META}
        assert r["delivered"] == {"consumer_seq": 0, "stream_seq": 0}
        assert r["ack_floor"] == {"consumer_seq": 0, "stream_seq": 0}
        assert (r["num_ack_pending"], r["num_redelivered"], r["num_waiting"], r["num_pending"]) == (0, 0, 0, 3)
        info = await api(nc, "CONSUMER.INFO.CA1.d1")
        assert info["type"] == "io.nats.jetstream.api.v1.consumer_info_response"
        assert info["config"] == r["config"] and info["created"] == r["created"]
    run(main, server.url)


def test_ephemeral_push_and_pull_defaults(server):
    async def main(nc):
        await add_stream(nc, "CA2", ["ca2.>"])
        push = await add_consumer(nc, "CA2", {"deliver_subject": "x.y", "ack_policy": "explicit"})
        assert len(push["name"]) == 8
        cfg = push["config"]
        assert cfg["inactive_threshold"] == 5_000_000_000 and "max_waiting" not in cfg
        assert cfg["deliver_subject"] == "x.y" and "durable_name" not in cfg
        pull = await add_consumer(nc, "CA2", {"ack_policy": "none", "filter_subject": "ca2.a"})
        assert pull["config"] == {"deliver_policy": "all", "ack_policy": "none",
                                  "max_deliver": -1, "filter_subject": "ca2.a", "replay_policy": "instant",
                                  "max_waiting": 512, "inactive_threshold": 5_000_000_000, "num_replicas": 0,
                                  "metadata": META}
        bo = await add_consumer(nc, "CA2", {"name": "bo", "ack_policy": "explicit", "max_deliver": 3,
                                            "backoff": [1_000_000_000, 2_000_000_000]}, "bo")
        assert bo["config"]["ack_wait"] == 1_000_000_000 and bo["config"]["backoff"] == [10**9, 2 * 10**9]
    run(main, server.url)


def test_durable_create_legacy_subject(server):
    async def main(nc):
        await add_stream(nc, "CA3", ["ca3.>"])
        await publish(nc, "ca3.1", b"a")
        await publish(nc, "ca3.2", b"b")
        r = await api(nc, "CONSUMER.DURABLE.CREATE.CA3.d2",
                      {"stream_name": "CA3", "config": {"durable_name": "d2", "ack_policy": "none",
                                                        "filter_subjects": ["ca3.1", "ca3.2"]}})
        assert r["name"] == "d2" and r["config"]["filter_subjects"] == ["ca3.1", "ca3.2"]
        assert r["num_pending"] == 2 and "max_ack_pending" not in r["config"]
        again = await api(nc, "CONSUMER.DURABLE.CREATE.CA3.d2",
                          {"stream_name": "CA3", "config": {"durable_name": "d2", "ack_policy": "none",
                                                            "filter_subjects": ["ca3.1", "ca3.2"]}})
        assert again["created"] == r["created"]
    run(main, server.url)


BAD = [
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_subject": "a.b", "max_waiting": 5},
     (400, 10080, "consumer in push mode can not set max waiting")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_subject": "a.b", "flow_control": True},
     (400, 10108, "consumer with flow control also needs heartbeats")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_policy": "by_start_sequence"},
     (400, 10094, "consumer delivery policy is deliver by start sequence, but optional start sequence is not set")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_policy": "all", "opt_start_seq": 3},
     (400, 10094, "consumer delivery policy is deliver all, but optional start sequence is also set")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_policy": "by_start_time"},
     (400, 10094, "consumer delivery policy is deliver by start time, but optional start time is not set")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "opt_start_time": "2020-01-01T00:00:00Z"},
     (400, 10094, "consumer delivery policy is deliver all, but optional start time is also set")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "deliver_policy": "last_per_subject"},
     (400, 10094, "consumer delivery policy is deliver last per subject, but optional filter subject is not set")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "filter_subjects": ["ca4.1", "ca4.>"]},
     (400, 10138, "consumer subject filters cannot overlap")),
    ("CONSUMER.CREATE.CA4.d3.ca4.9", {"name": "d3", "filter_subject": "ca4.1"},
     (400, 10131, "Consumer create request did not match filtered subject from create subject")),
    ("CONSUMER.CREATE.CA4.d3", {"name": "d3", "durable_name": "zz"},
     (400, 10017, "consumer name in subject does not match durable name in request")),
    ("CONSUMER.CREATE.CA4", {"durable_name": "d4"},
     (400, 10020, "consumer expected to be ephemeral but a durable name was set in request")),
    ("CONSUMER.DURABLE.CREATE.CA4.d4", {"durable_name": "d5"},
     (400, 10017, "consumer name in subject does not match durable name in request")),
    ("CONSUMER.CREATE.NOPE.d1", {"name": "d1"}, (404, 10059, "stream not found")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "flow_control": True},
     (400, 10089, "consumer flow control requires a push based consumer")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "idle_heartbeat": 10**9},
     (400, 10088, "consumer idle heartbeat requires a push based consumer")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subject": "ca4.x", "filter_subjects": ["ca4.y"]},
     (400, 10136, "consumer cannot have both FilterSubject and FilterSubjects specified")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subject": "a..b"}, (500, 10052, "invalid subject")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subjects": ["ca4.a", ""]},
     (400, 10139, "consumer filter in FilterSubjects cannot be empty")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subjects": [""]},
     (400, 10139, "consumer filter in FilterSubjects cannot be empty")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subjects": ["a..b", ""]},
     (400, 10139, "consumer filter in FilterSubjects cannot be empty")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subject": "", "filter_subjects": ["", "ca4.a"]},
     (400, 10139, "consumer filter in FilterSubjects cannot be empty")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "filter_subjects": ["ca4.a", "a..b"]}, (500, 10052, "invalid subject")),
    ("CONSUMER.CREATE.CA4", {"name": "x.y"}, (500, 10052, "consumer name can not contain '.', '*', '>', '\\', '/'")),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "ack_policy": "bogus"},
     (400, 10025, 'invalid JSON: can not unmarshal "\\"bogus\\""')),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "deliver_policy": "by_start_time", "opt_start_time": "garbage"},
     (400, 10025, 'invalid JSON: parsing time "garbage" as "2006-01-02T15:04:05Z07:00": '
                  'cannot parse "garbage" as "2006"')),
    ("CONSUMER.CREATE.CA4.q", {"name": "q", "ack_wait": "x"},
     (400, 10025, "invalid JSON: json: cannot unmarshal string into Go struct field "
                  "CreateConsumerRequest.config.ack_wait of type time.Duration")),
]


@pytest.mark.parametrize("subject,cfg,err", BAD, ids=[f"{e[2][1]}-{i}" for i, e in enumerate(BAD)])
def test_invalid_create_changes_nothing(server, subject, cfg, err):
    async def main(nc):
        r = await api(nc, "STREAM.INFO.CA4")
        if "error" in r:
            await add_stream(nc, "CA4", ["ca4.>"])
        before = await api(nc, "CONSUMER.NAMES.CA4")
        toks = subject.split(".")
        stream = toks[toks.index("CREATE") + 1]
        r = await api(nc, subject, {"stream_name": stream, "config": cfg})
        assert r["type"] == "io.nats.jetstream.api.v1.consumer_create_response"
        assert r["error"] == {"code": err[0], "err_code": err[1], "description": err[2]}
        after = await api(nc, "CONSUMER.NAMES.CA4")
        assert after["consumers"] == before["consumers"]
    run(main, server.url)


def test_mismatched_stream_and_bad_json(server):
    async def main(nc):
        await add_stream(nc, "CA5", ["ca5.>"])
        r = await api(nc, "CONSUMER.CREATE.CA5.d1", {"stream_name": "T", "config": {"name": "d1"}})
        assert r["error"] == {"code": 400, "err_code": 10056,
                              "description": "stream name in subject does not match request"}
        r = await api(nc, "CONSUMER.CREATE.CA5.d1", b"{bad")
        assert r["error"] == {"code": 400, "err_code": 10025, "description":
                              "invalid JSON: invalid character 'b' looking for beginning of object key string at offset 2"}
        r = await api(nc, "CONSUMER.CREATE.CA5.d1", b'{"stream_name":"CA5","config":{"name":"q"}')
        assert r["error"]["description"] == "invalid JSON: unexpected EOF"
        r = await api(nc, "CONSUMER.CREATE.CA5", b"")
        assert r["error"]["err_code"] == 10056
        r = await api(nc, "CONSUMER.NAMES.CA5", b"{bad")
        assert (r["error"]["err_code"], r["total"], r["consumers"]) == (10025, 0, [])
        r = await api(nc, "CONSUMER.LEADER.STEPDOWN.CA5.x")
        assert r["error"]["err_code"] in (10010, 10014)
        assert (await api(nc, "CONSUMER.NAMES.CA5"))["consumers"] == []
    run(main, server.url)


def test_update_rules(server):
    async def main(nc):
        await add_stream(nc, "CA6", ["ca6.>"])
        base = {"durable_name": "d", "name": "d", "ack_policy": "explicit"}
        await add_consumer(nc, "CA6", base, "d")
        r = await add_consumer(nc, "CA6", dict(base, ack_policy="none"), "d")
        assert r["error"] == {"code": 500, "err_code": 10012, "description": "ack policy can not be updated"}
        r = await add_consumer(nc, "CA6", dict(base, max_ack_pending=7, description="new"), "d")
        assert r["config"]["max_ack_pending"] == 7 and r["config"]["description"] == "new"
        r = await api(nc, "CONSUMER.INFO.CA6.d")
        assert r["config"]["max_ack_pending"] == 7
    run(main, server.url)


def test_info_delete_names_list_errors(server):
    async def main(nc):
        await add_stream(nc, "CA7", ["ca7.>"])
        for n in ("b", "a", "c"):
            await add_consumer(nc, "CA7", {"durable_name": n, "name": n, "ack_policy": "explicit"}, n)
        names = await api(nc, "CONSUMER.NAMES.CA7")
        assert names["type"] == "io.nats.jetstream.api.v1.consumer_names_response"
        assert (names["total"], names["offset"], names["limit"], names["consumers"]) == (3, 0, 1024, ["a", "b", "c"])
        lst = await api(nc, "CONSUMER.LIST.CA7")
        assert (lst["total"], lst["limit"]) == (3, 256)
        assert [c["name"] for c in lst["consumers"]] == ["a", "b", "c"]
        assert lst["consumers"][0]["config"]["metadata"] == {"_nats.req.level": "0"}
        assert (await api(nc, "CONSUMER.DELETE.CA7.b")) == {
            "type": "io.nats.jetstream.api.v1.consumer_delete_response", "success": True}
        gone = {"code": 404, "err_code": 10014, "description": "consumer not found"}
        assert (await api(nc, "CONSUMER.DELETE.CA7.b"))["error"] == gone
        assert (await api(nc, "CONSUMER.INFO.CA7.b"))["error"] == gone
        assert (await api(nc, "CONSUMER.INFO.NOPE.b"))["error"]["err_code"] == 10059
        assert (await api(nc, "CONSUMER.NAMES.CA7"))["consumers"] == ["a", "c"]
    run(main, server.url)


def test_nats_py_consumer_management(server):
    async def main(nc):
        js = nc.jetstream()
        await js.add_stream(name="CA8", subjects=["ca8.>"])
        await js.publish("ca8.a", b"1")
        ci = await js.add_consumer("CA8", durable_name="dd", ack_policy="explicit", filter_subject="ca8.a")
        assert ci.name == "dd" and ci.num_pending == 1 and ci.config.filter_subject == "ca8.a"
        infos = await js.consumers_info("CA8")
        assert [c.name for c in infos] == ["dd"]
        assert await js.delete_consumer("CA8", "dd")
        from nats.js.errors import NotFoundError
        with pytest.raises(NotFoundError):
            await js.consumer_info("CA8", "dd")
    run(main, server.url)


def test_opt_start_time_echoed_as_sent(server):
    async def main(nc):
        await add_stream(nc, "CA9", ["ca9.>"])
        for t in ("2026-11-26T01:00:00.123456+01:00", "2026-11-26T01:00:00Z"):
            r = await add_consumer(nc, "CA9", {"deliver_policy": "by_start_time", "opt_start_time": t})
            assert r["config"]["opt_start_time"] == t
    run(main, server.url)



def test_create_actions_and_immutable_fields(server):
    async def main(nc):
        await add_stream(nc, "CB", ["cb.>"])
        base = {"name": "c", "durable_name": "c", "ack_policy": "explicit"}

        async def create(cfg, action=None, name="c"):
            body = {"stream_name": "CB", "config": cfg}
            if action:
                body["action"] = action
            return await api(nc, f"CONSUMER.CREATE.CB.{name}", body)
        assert "error" not in await create(base, "create")
        assert "error" not in await create(base, "create")  # same config: fine
        r = await create(dict(base, max_deliver=5), "create")
        assert r["error"] == {"code": 400, "err_code": 10148, "description": "consumer already exists"}
        r = await create({"name": "zz", "ack_policy": "explicit"}, "update", name="zz")
        assert r["error"] == {"code": 400, "err_code": 10149, "description": "consumer does not exist"}
        r = await create(dict(base, deliver_subject="foo"))
        assert r["error"]["err_code"] == 10012
        r = await create(dict(base, deliver_policy="new"))
        assert r["error"] == {"code": 500, "err_code": 10012, "description": "deliver policy can not be updated"}
        assert "error" not in await create({"name": "p", "deliver_subject": "dd", "ack_policy": "none"}, name="p")
        r = await create({"name": "p", "deliver_subject": "dd2", "ack_policy": "none"}, name="p")
        assert r["config"]["deliver_subject"] == "dd2"
    run(main, server.url)


def test_full_config_echo(server):
    async def main(nc):
        await add_stream(nc, "CC", ["cc.>"])
        full = {"durable_name": "a", "name": "a", "description": "d", "deliver_policy": "by_start_sequence",
                "opt_start_seq": 2, "ack_policy": "explicit", "ack_wait": 5 * 10**9, "max_deliver": 5,
                "backoff": [5 * 10**9, 6 * 10**9], "filter_subject": "cc.x", "replay_policy": "original",
                "sample_freq": "50%", "max_waiting": 7, "max_ack_pending": 9, "headers_only": True,
                "max_batch": 3, "max_expires": 4 * 10**9, "max_bytes": 1000, "inactive_threshold": 60 * 10**9,
                "num_replicas": 1, "mem_storage": True, "metadata": {"x": "y"}}
        r = await add_consumer(nc, "CC", full, "a")
        want = dict(full, metadata=dict(META, x="y"))
        assert r["config"] == want and list(r["config"]) == list(want)
        r = await add_consumer(nc, "CC", {"name": "r", "rate_limit_bps": 1000}, "r")
        assert r["error"] == {"code": 400, "err_code": 10086,
                              "description": "consumer in pull mode can not have rate limit set"}
        push = {"name": "b", "deliver_subject": "ds", "deliver_group": "g", "flow_control": True,
                "idle_heartbeat": 2 * 10**9, "ack_policy": "all", "filter_subjects": ["cc.a", "cc.b"],
                "headers_only": True, "rate_limit_bps": 8000, "pause_until": "2099-01-01T00:00:00Z"}
        r = await add_consumer(nc, "CC", push, "b")
        assert r["config"]["metadata"]["_nats.req.level"] == "1"
        assert r["paused"] is True and r["pause_remaining"] > 0
        assert list(r["config"]) == ["name", "deliver_policy", "ack_policy", "ack_wait", "max_deliver",
                                     "filter_subjects", "replay_policy", "rate_limit_bps", "max_ack_pending",
                                     "flow_control", "headers_only", "deliver_subject", "deliver_group",
                                     "idle_heartbeat", "inactive_threshold", "num_replicas", "metadata",
                                     "pause_until"]
    run(main, server.url)
