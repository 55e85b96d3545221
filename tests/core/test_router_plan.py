"""The router's per-subject delivery plan, kept on the cached Match from a subject's second
message on (ClientConn._plain_targets): what changes after the plan was made must still
decide every later delivery as it would without a plan."""

from __future__ import annotations

from broker.config import Options
from broker.server import Server
from tests.core.test_runs import connect, feed, make_conn

PLAIN = b'{"verbose":false,"pedantic":false,"headers":true}'
NO_ECHO = b'{"verbose":false,"pedantic":false,"headers":true,"echo":false}'


def world(pub_opts: bytes = PLAIN):
    server = Server(Options(port=0))
    pub, a, b = (make_conn(server, cid, True) for cid in (1, 2, 3))
    connect(pub, pub_opts)
    connect(a, PLAIN)
    connect(b, PLAIN)
    return server, pub, a, b


def pub_frames(subject: bytes, payloads: list[bytes]) -> bytes:
    # each PUB its own read, with a reply each, so no run forms and every one takes the plan
    return [b"PUB %b _INBOX.%d %d\r\n%b\r\n" % (subject, i, len(p), p) for i, p in enumerate(payloads)]


def test_the_plan_is_kept_only_from_the_second_message_on():
    server, pub, a, _ = world()
    feed(a, [b"SUB foo 1\r\n"])
    feed(pub, pub_frames(b"foo", [b"x"]))  # not cached yet: route_msg delivers and caches it
    m = server._match_cache[b"foo"]
    assert m.plan is None
    feed(pub, pub_frames(b"foo", [b"y"]))
    assert m.plan is True  # marked, not kept: a subject published to once keeps nothing
    feed(pub, pub_frames(b"foo", [b"z"]))
    assert isinstance(m.plan, tuple) and m.plan[0] == b"foo"
    assert bytes(a.out) == b"".join(b"MSG foo 1 _INBOX.0 1\r\n%b\r\n" % p for p in (b"x", b"y", b"z"))


def test_a_subscription_made_after_the_plan_gets_the_next_message():
    server, pub, a, b = world()
    feed(a, [b"SUB foo 1\r\n"])
    feed(pub, pub_frames(b"foo", [b"1", b"2", b"3"]))
    feed(b, [b"SUB foo 5\r\nSUB f* 6\r\n"])
    b.out.clear()
    feed(pub, pub_frames(b"foo", [b"4"]))
    assert bytes(b.out) == b"MSG foo 5 _INBOX.0 1\r\n4\r\n"
    assert bytes(a.out).count(b"MSG foo 1 ") == 4


def test_an_auto_unsubscribe_set_after_the_plan_still_counts():
    # pub's own subscription is in the plan its publishes make, but echo off keeps those
    # messages from it, so it has had none when its UNSUB with a limit comes
    server, pub, a, _ = world(pub_opts=NO_ECHO)
    feed(pub, [b"SUB foo 9\r\n"])
    feed(pub, pub_frames(b"foo", [b"1", b"2", b"3"]))
    assert isinstance(server._match_cache[b"foo"].plan, tuple)
    feed(pub, [b"UNSUB 9 2\r\n"])  # two more messages, then the subscription is gone
    feed(a, pub_frames(b"foo", [b"4", b"5", b"6"]))
    assert bytes(pub.out) == b"MSG foo 9 _INBOX.0 1\r\n4\r\nMSG foo 9 _INBOX.1 1\r\n5\r\n"
    assert b"9" not in pub.subs and server.sublist.count == 0


def test_a_plan_made_for_one_publisher_respects_another_ones_echo_off():
    server, pub, a, _ = world(pub_opts=NO_ECHO)
    feed(pub, [b"SUB foo 9\r\n"])
    feed(a, [b"SUB foo 1\r\n"])
    feed(a, pub_frames(b"foo", [b"1", b"2"]))  # a's publishes make the plan, pub's sub in it
    assert bytes(pub.out).count(b"MSG foo 9 ") == 2
    pub.out.clear()
    a.out.clear()
    feed(pub, pub_frames(b"foo", [b"3", b"4"]))  # echo off: pub gets its own messages never
    assert bytes(pub.out) == b""
    assert bytes(a.out).count(b"MSG foo 1 ") == 2


def test_subjects_sharing_a_prefix_cached_match_get_their_own_prefix():
    # `$JS.ACK.>`-like interest: the match for every longer subject is one prefix-cached
    # Match, shared by subjects that differ; each delivery must name its own subject
    server, pub, a, _ = world()
    feed(a, [b"SUB ack.> 1\r\n"])
    frames = [b"PUB ack.s.c.%d 1\r\nx\r\n" % (i % 3) for i in range(9)]
    feed(pub, frames)
    lines = [ln for ln in bytes(a.out).split(b"\r\n") if ln.startswith(b"MSG")]
    assert lines == [b"MSG ack.s.c.%d 1 1" % (i % 3) for i in range(9)]
