"""Differential test: how `$JS.API` requests with unknown or mistyped JSON fields are answered.

nats-server decodes most API requests strictly (unknown fields are a 400/10025
`invalid JSON: json: unknown field "x"`, nested ones too, keys match case-insensitively)
and a few leniently (MSG.NEXT, CONSUMER.RESET, DIRECT.GET). Each request below goes to
our broker and to nats-server with the same stream/consumer state; code, err_code and
description (or, for DIRECT.GET/MSG.NEXT, the status reply) must be identical, and the
expected answers are also written out so the test says what nats-server does."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from tests.conftest import our_server, reference
from tests.jetstream.consumer_fixtures import WAIT_S

UNKNOWN = (400, 10025, 'invalid JSON: json: unknown field "bogus"')

CASES = [
    ("STREAM.MSG.GET.SJ", {"subject": "x"}, (400, 10025, 'invalid JSON: json: unknown field "subject"')),
    ("STREAM.MSG.GET.SJ", {"seq": 1, "bogus": 1}, UNKNOWN),
    ("STREAM.MSG.GET.SJ", {"Seq": 1}, "ok"),
    ("STREAM.MSG.GET.SJ", {"seq": 1, "no_hdr": True}, "ok"),
    ("STREAM.MSG.GET.SJ", {"seq": 1, "batch": 2}, (400, 10003, "bad request")),
    ("STREAM.MSG.GET.NOPE", {"seq": 1, "bogus": 1}, UNKNOWN),
    ("STREAM.MSG.GET.SJ", {"seq": "x"}, (400, 10025, "invalid JSON: json: cannot unmarshal string into Go struct "
                                                     "field JSApiMsgGetRequest.seq of type uint64")),
    ("STREAM.MSG.GET.SJ", {"seq": -1}, (400, 10025, "invalid JSON: json: cannot unmarshal number -1 into Go struct "
                                                    "field JSApiMsgGetRequest.seq of type uint64")),
    ("STREAM.MSG.GET.SJ", {"seq": "x", "bogus": 1}, (400, 10025, "invalid JSON: json: cannot unmarshal string into "
                                                                 "Go struct field JSApiMsgGetRequest.seq of type "
                                                                 "uint64")),
    ("STREAM.MSG.GET.SJ", {"bogus": 1, "seq": "x"}, UNKNOWN),
    ("STREAM.MSG.GET.SJ", b'{"seq":1}{"bogus":2}', (400, 10025, 'invalid JSON: json: unknown field "bogus"')),
    ("STREAM.MSG.GET.SJ", b'{"seq":1} x', (400, 10025, "invalid JSON: invalid character 'x' looking for beginning "
                                                       "of value at offset 11")),
    ("STREAM.MSG.GET.SJ", {"seq": 1, "last_by_subj": None}, "ok"),
    ("STREAM.MSG.DELETE.SJ", {"seq": 3, "bogus": 1}, UNKNOWN),
    ("STREAM.PURGE.SJ", {"bogus": 1}, UNKNOWN),
    ("STREAM.PURGE.SJ", {"keep": "1"}, (400, 10025, "invalid JSON: json: cannot unmarshal string into Go struct "
                                                    "field JSApiStreamPurgeRequest.keep of type uint64")),
    ("STREAM.NAMES", {"bogus": 1}, UNKNOWN),
    ("STREAM.NAMES", {"subject": "sj.>", "Offset": 0}, "ok"),
    ("STREAM.LIST", {"bogus": 1}, UNKNOWN),
    ("STREAM.INFO.SJ", {"bogus": 1}, UNKNOWN),
    ("CONSUMER.NAMES.SJ", {"bogus": 1}, UNKNOWN),
    ("CONSUMER.NAMES.SJ", {"offset": 0}, "ok"),
    ("CONSUMER.LIST.SJ", {"bogus": 1}, UNKNOWN),
    ("CONSUMER.CREATE.SJ.D", {"stream_name": "SJ", "bogus": 1, "config": {"name": "D"}}, UNKNOWN),
    ("CONSUMER.CREATE.SJ.D", {"stream_name": "SJ", "config": {"name": "D", "bogus": 2}},
     (400, 10025, 'invalid JSON: json: unknown field "bogus"')),
    ("CONSUMER.CREATE.SJ.D", {"stream_name": "SJ", "config": {"name": "D", "Ack_Policy": "explicit"}}, "ok"),
    ("CONSUMER.PAUSE.SJ.C", {"bogus": 1}, UNKNOWN),
    ("STREAM.CREATE.SJ2", {"name": "SJ2", "bogus": 1}, UNKNOWN),
    ("STREAM.CREATE.SJ2", {"name": "SJ2", "subjects": ["sj2"], "placement": {"bogus": 1}}, UNKNOWN),
    ("STREAM.CREATE.SJ2", {"name": "SJ2", "subjects": ["sj2"], "republish": {"src": ">", "dest": "rp.>",
                                                                             "bogus": 1}}, UNKNOWN),
    ("STREAM.UPDATE.SJ", {"name": "SJ", "bogus": 1}, UNKNOWN),
    # decoded leniently by nats-server: unknown fields ignored
    ("CONSUMER.RESET.SJ.C", {"bogus": 1}, "ok"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    ours = our_server(tmp_path_factory.mktemp("ours")).start()
    ref = reference(tmp_path_factory.mktemp("ref")).start()
    yield ours, ref
    ours.stop()
    ref.stop()


async def _setup(nc) -> None:
    for subject, body in (("STREAM.CREATE.SJ", {"name": "SJ", "subjects": ["sj.>"], "allow_direct": True}),
                          ("CONSUMER.CREATE.SJ.C", {"stream_name": "SJ", "config": {
                              "durable_name": "C", "name": "C", "ack_policy": "explicit"}})):
        r = json.loads((await nc.request("$JS.API." + subject, json.dumps(body).encode(), timeout=WAIT_S)).data)
        assert "error" not in r, r
    js = nc.jetstream()
    for _ in range(5):
        await js.publish("sj.a", b"x")


async def _answer(nc, subject: str, body) -> object:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = json.loads((await nc.request("$JS.API." + subject, payload, timeout=WAIT_S)).data)
    if "error" in r:
        e = r["error"]
        return e["code"], e["err_code"], e["description"]
    return "ok"


def _play(url: str):
    async def main():
        nc = await nats.connect(url)
        try:
            await _setup(nc)
            answers = [await _answer(nc, s, b) for s, b, _ in CASES]
            # DIRECT.GET (lenient json.Unmarshal; problems are 408 status replies)
            direct = []
            for body in (b'{"seq":2,"bogus":1}', b'{"bogus":1}', b'{"seq":"x"}', b"{nope", b"[1]",
                         b'{"seq":1}{"seq":2}', b" "):
                m = await nc.request("$JS.API.DIRECT.GET.SJ", body, timeout=WAIT_S)
                direct.append((m.headers or {}).get("Status") and (m.headers["Status"],
                                                                   m.headers.get("Description")) or
                              (m.headers.get("Nats-Sequence"), m.data))
            # MSG.NEXT ignores unknown fields
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish("$JS.API.CONSUMER.MSG.NEXT.SJ.C", b'{"batch":1,"bogus":1,"no_wait":true}', reply=inbox)
            m = await sub.next_msg(WAIT_S)
            nxt = (m.subject != inbox, m.data, (m.headers or {}).get("Status"))
            return answers, direct, nxt
        finally:
            await nc.close()
    return asyncio.run(asyncio.wait_for(main(), 60))


def test_strict_and_lenient_requests_match_nats_server(servers):
    ours, ref = servers
    got_ours, got_ref = _play(ours.url), _play(ref.url)
    for (subject, body, want), a, b in zip(CASES, got_ours[0], got_ref[0]):
        assert b == want, (subject, body, b)  # what nats-server does
        assert a == b, (subject, body, a, b)
    assert got_ours[1] == got_ref[1]
    assert got_ref[1] == [("2", b"x"), ("408", "Empty Request"), ("408", "Malformed Request"),
                          ("408", "Malformed Request"), ("408", "Malformed Request"),
                          ("408", "Malformed Request"), ("408", "Malformed Request")]
    assert got_ours[2] == got_ref[2] == (True, b"x", None)
