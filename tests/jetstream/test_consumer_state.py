"""The pure consumer state machine (broker/jetstream/consumer.py), driven with explicit clocks."""

from __future__ import annotations

import pytest

from broker import headers as hdrs
from broker.jetstream.consumer import Consumer, PullRequest, expand
from broker.jetstream.consumerconfig import ConsumerConfig, normalize, parse_duration_ns
from broker.jetstream.errors import JSError
from broker.jetstream.store import MemoryStore

S = 1_000_000_000
T0 = 1_700_000_000 * S


def make(store, now=T0, **kw) -> Consumer:
    kw.setdefault("ack_policy", "explicit")
    cfg = normalize(ConsumerConfig(**kw), None)
    c = Consumer("ST", kw.get("durable_name") or kw.get("name") or "C", cfg, store, now)
    c.start(now)
    return c


def fill(store, n, subject="a.x", ts0=T0 - 100 * S):
    for i in range(n):
        store.append(subject if isinstance(subject, str) else subject[i % len(subject)], None,
                     b"m%d" % i, ts0 + i * S)


def pull(c, now, batch=10, expires=0, no_wait=False, hb=0, max_bytes=0, reply="in"):
    c.add_request(PullRequest(reply, batch, max_bytes, now + expires if expires else 0, no_wait, hb, now), now)
    out, c.out = expand(c.out), []
    return out


def ack_tokens(reply: str) -> list[str]:
    t = reply.split(".")
    assert t[:4] == ["$JS", "ACK", "ST", t[3]] and len(t) == 9
    return t


def test_defaults_match_nats_server():
    c = normalize(ConsumerConfig(ack_policy="explicit"), None)
    assert (c.deliver_policy, c.ack_wait, c.max_deliver, c.max_waiting, c.max_ack_pending) == \
        ("all", 30 * S, -1, 512, 1000)
    assert c.inactive_threshold == 5 * S and c.replay_policy == "instant" and c.num_replicas == 0
    d = normalize(ConsumerConfig(durable_name="d", ack_policy="none", deliver_subject="x"), None)
    assert d.max_waiting == 0 and d.ack_wait == 0 and d.max_ack_pending == 0 and d.inactive_threshold == 0


@pytest.mark.parametrize("kw,code,text", [
    ({"deliver_subject": "a", "max_waiting": 5}, 10080, "consumer in push mode can not set max waiting"),
    ({"deliver_subject": "a", "flow_control": True}, 10108, "consumer with flow control also needs heartbeats"),
    ({"deliver_policy": "by_start_sequence"}, 10094,
     "consumer delivery policy is deliver by start sequence, but optional start sequence is not set"),
    ({"opt_start_seq": 3}, 10094, "consumer delivery policy is deliver all, but optional start sequence is also set"),
    ({"deliver_policy": "last_per_subject"}, 10094,
     "consumer delivery policy is deliver last per subject, but optional filter subject is not set"),
    ({"filter_subjects": ["a.1", "a.>"]}, 10138, "consumer subject filters cannot overlap"),
])
def test_invalid_configs(kw, code, text):
    with pytest.raises(JSError) as ei:
        normalize(ConsumerConfig(**kw), None)
    assert ei.value.err_code == code and ei.value.description == text


def test_pull_batch_ack_subject_and_exact_pending():
    st = MemoryStore()
    fill(st, 5)
    c = make(st)
    assert c.npending == 5
    out = pull(c, T0, batch=3)
    assert [o.subject for o in out] == ["a.x"] * 3
    toks = [ack_tokens(o.reply) for o in out]
    assert [(t[4], t[5], t[6], t[8]) for t in toks] == [("1", "1", "1", "4"), ("1", "2", "2", "3"),
                                                         ("1", "3", "3", "2")]
    assert toks[0][7] == str(T0 - 100 * S)
    assert len(c.pending) == 3 and c.npending == 2


def test_no_wait_404_and_partial_batch_ends_with_404():
    st = MemoryStore()
    c = make(st)
    out = pull(c, T0, no_wait=True)
    assert len(out) == 1 and hdrs.parse(out[0].hdr)[:2] == ("404", "No Messages")
    fill(st, 2)
    for s in (1, 2):
        c.on_stored(s, "a.x")
    out = pull(c, T0, batch=10, no_wait=True, expires=5 * S)
    assert [o.subject for o in out[:2]] == ["a.x", "a.x"]
    assert hdrs.parse(out[2].hdr)[:2] == ("404", "No Messages") and not c.waiting


def test_expiry_408_with_pending_headers_and_heartbeats():
    st = MemoryStore()
    c = make(st)
    pull(c, T0, batch=5, expires=3 * S, hb=1 * S)
    c.tick(T0 + S + 1)
    status, desc, items = hdrs.parse(c.out.pop().hdr)
    assert (status, desc) == ("100", "Idle Heartbeat")
    assert dict(items) == {"Nats-Last-Consumer": "0", "Nats-Last-Stream": "0"}
    c.tick(T0 + 3 * S)
    status, desc, items = hdrs.parse(c.out[-1].hdr)
    assert (status, desc) == ("408", "Request Timeout")
    assert dict(items) == {"Nats-Pending-Messages": "5", "Nats-Pending-Bytes": "0"}


def test_max_waiting_and_max_bytes():
    st = MemoryStore()
    c = make(st, max_waiting=1)
    assert pull(c, T0, expires=10 * S) == []
    out = pull(c, T0, expires=10 * S, reply="in2")
    assert hdrs.parse(out[0].hdr)[:2] == ("409", "Exceeded MaxWaiting")
    c2 = make(MemoryStore())
    fill(c2.store, 1)
    c2.recount()
    out = pull(c2, T0, max_bytes=3, expires=S)
    status, desc, items = hdrs.parse(out[0].hdr)
    assert (status, desc) == ("409", "Message Size Exceeds MaxBytes")
    assert dict(items)["Nats-Pending-Bytes"] == "3"


def test_ack_explicit_moves_floor_and_nak_redelivers():
    st = MemoryStore()
    fill(st, 3)
    c = make(st)
    pull(c, T0, batch=3)
    c.ack(2, T0)
    assert (c.adflr, c.asflr) == (0, 0)
    c.ack(1, T0)
    assert (c.adflr, c.asflr) == (2, 2)
    c.nak(3, 0, T0)
    out = pull(c, T0, batch=1)
    t = ack_tokens(out[0].reply)
    assert (t[4], t[5], t[6]) == ("2", "3", "4")
    assert c.num_redelivered() == 1
    c.ack(3, T0)
    assert (c.adflr, c.asflr, len(c.pending)) == (4, 3, 0)


def test_ack_all_and_term():
    st = MemoryStore()
    fill(st, 4)
    c = make(st, ack_policy="all")
    pull(c, T0, batch=4)
    assert c.ack(3, T0) == [1, 2, 3]
    assert list(c.pending) == [4]
    assert c.term(4, T0) == [4] and not c.pending


@pytest.mark.parametrize("policy", ["explicit", "all"])
def test_ack_above_the_delivery_pointer_changes_nothing(policy):
    """An ack for a stored message this state has not delivered (a reply subject held across
    a crash that lost the lazily written delivered state) is ignored, floors included, as by
    nats-server's processAckMsg; `delivered` tells the runtime not to confirm it."""
    st = MemoryStore()
    fill(st, 4)
    c = make(st, ack_policy=policy)
    pull(c, T0, batch=2)
    assert c.delivered(2) and not c.delivered(3)
    assert c.ack(3, T0, 3) == [] and c.term(4, T0, 4) == []
    assert (c.adflr, c.asflr, sorted(c.pending)) == (0, 0, [1, 2])
    out = pull(c, T0, batch=2)
    assert [ack_tokens(o.reply)[5] for o in out] == ["3", "4"]
    assert c.ack(4, T0) == ([1, 2, 3, 4] if policy == "all" else [4])


def test_ack_wait_redelivery_max_deliver_and_backoff():
    st = MemoryStore()
    fill(st, 1)
    c = make(st, ack_wait=2 * S, max_deliver=2)
    pull(c, T0, batch=1)
    c.tick(T0 + 2 * S)
    out = pull(c, T0 + 2 * S, batch=1)
    assert ack_tokens(out[0].reply)[4] == "2"
    c.tick(T0 + 5 * S)
    assert not c.pending and not pull(c, T0 + 5 * S, no_wait=True)[0].reply
    b = make(MemoryStore(), backoff=[S, 3 * S], max_deliver=3)
    assert b.cfg.ack_wait == S
    fill(b.store, 1)
    b.recount()
    pull(b, T0, batch=1)
    b.tick(T0 + S)
    pull(b, T0 + S, batch=1)
    b.tick(T0 + 2 * S)
    assert not b.redeliver  # second wait is 3s
    b.tick(T0 + 4 * S)
    assert list(b.redeliver) == [1]


def test_nak_with_delay_and_progress():
    st = MemoryStore()
    fill(st, 1)
    c = make(st, ack_wait=2 * S)
    pull(c, T0, batch=1)
    c.nak(1, 5 * S, T0)
    assert pull(c, T0 + 4 * S, batch=1, no_wait=True)[0].reply == ""
    assert pull(c, T0 + 5 * S, batch=1)[0].subject == "a.x"
    c.progress(1, T0 + 6 * S)
    c.tick(T0 + 7 * S + 1)
    assert not c.redeliver  # in-progress pushed the deadline to T0+8s
    c.tick(T0 + 8 * S)
    assert list(c.redeliver) == [1]


def test_max_ack_pending_limits_deliveries():
    st = MemoryStore()
    fill(st, 3)
    c = make(st, max_ack_pending=2)
    out = pull(c, T0, batch=3, expires=S)
    assert len(out) == 2
    c.ack(1, T0)
    c.serve_pull(T0)
    assert len(c.out) == 1


@pytest.mark.parametrize("policy,extra,first", [
    ("all", {}, 1), ("last", {}, 6), ("new", {}, None),
    ("by_start_sequence", {"opt_start_seq": 4}, 4),
])
def test_deliver_policies(policy, extra, first):
    st = MemoryStore()
    fill(st, 6)
    c = make(st, deliver_policy=policy, **extra)
    out = pull(c, T0, batch=1, no_wait=True)
    if first is None:
        assert out[0].reply == ""
    else:
        assert int(ack_tokens(out[0].reply)[5]) == first


def test_by_start_time_and_last_per_subject():
    st = MemoryStore()
    fill(st, 6, subject=["k.a", "k.b", "k.c"])
    c = Consumer("ST", "C", normalize(ConsumerConfig(ack_policy="none", deliver_policy="by_start_time",
                                                     opt_start_time="2023-11-14T22:12:23Z"), None), st, T0)
    c.start(T0, T0 - 97 * S)
    assert c.sseq == 4 and c.npending == 3
    lps = make(st, deliver_policy="last_per_subject", filter_subject="k.>", ack_policy="none")
    out = pull(lps, T0, batch=10, no_wait=True)
    got = [(o.subject, ack_tokens(o.reply)[5], ack_tokens(o.reply)[8]) for o in out if o.reply]
    assert got == [("k.a", "4", "2"), ("k.b", "5", "1"), ("k.c", "6", "0")]
    st.append("k.a", None, b"new", T0)
    lps.on_stored(7, "k.a")
    assert lps.npending == 1


def test_filters_and_headers_only():
    st = MemoryStore()
    st.append("a.1", hdrs.build([("X", "y")]), b"abc", T0)
    st.append("b.1", None, b"defg", T0)
    st.append("c.1", None, b"zz", T0)
    c = make(st, filter_subjects=["a.*", "b.*"], headers_only=True)
    assert c.npending == 2
    out = pull(c, T0, batch=5, no_wait=True)
    assert [o.subject for o in out if o.reply] == ["a.1", "b.1"]
    assert hdrs.to_dict(out[0].hdr) == {"X": "y", "Nats-Msg-Size": "3"} and out[0].payload == b""
    assert hdrs.to_dict(out[1].hdr) == {"Nats-Msg-Size": "4"}


def test_push_flow_control_and_heartbeat():
    st = MemoryStore()
    big = b"x" * (1024 * 1024)
    for i in range(4):
        st.append("a.x", None, big, T0)
    c = make(st, deliver_subject="dl", flow_control=True, idle_heartbeat=S, ack_policy="none")
    while c.deliver_push(T0, True) == 1:
        pass
    fcs = [o for o in expand(c.out) if o.reply.startswith("$JS.FC.")]
    assert len(fcs) == 1 and hdrs.parse(fcs[0].hdr)[:2] == ("100", "FlowControl Request")
    c.out.clear()
    c.heartbeat("dl")
    assert hdrs.to_dict(c.out[-1].hdr)["Nats-Consumer-Stalled"] == fcs[0].reply
    assert c.flow_control_reply(fcs[0].reply) and c.fc_reply == ""


def test_state_roundtrip_and_purge():
    st = MemoryStore()
    fill(st, 4)
    c = make(st, durable_name="D")
    pull(c, T0, batch=3)
    c.ack(1, T0)
    snap = c.state_dict()
    d = Consumer("ST", "D", c.cfg, st, T0)
    d.load_state(snap, T0 + S)
    assert (d.dseq, d.adflr, sorted(d.pending), d.npending) == (3, 1, [2, 3], 1)
    d.tick(T0 + 40 * S)
    assert sorted(d.redeliver) == [2, 3]
    st.purge()
    d.purged()
    assert not d.pending and d.npending == 0


def test_parse_duration():
    assert parse_duration_ns("1m30s") == 90 * S and parse_duration_ns("250ms") == S // 4
    with pytest.raises(ValueError):
        parse_duration_ns("5x")


def test_pure_modules_do_not_import_trio():
    import subprocess
    import sys
    code = ("import sys, broker.jetstream.consumer, broker.jetstream.consumerconfig, broker.jetstream.consumer_api; "
            "assert 'trio' not in sys.modules, 'trio imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st_  # noqa: E402

OPS = st_.lists(st_.tuples(st_.sampled_from(["pub", "pull", "ack", "nak", "term", "wpi", "tick", "purge"]),
                           st_.integers(0, 40)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(OPS, st_.sampled_from(["explicit", "all", "none"]), st_.sampled_from([None, "a.*", "a.1"]))
def test_random_operations_keep_invariants(ops, ack_policy, filt):
    st = MemoryStore()
    kw = {"ack_policy": ack_policy, "ack_wait": 3 * S, "max_deliver": 3}
    if filt:
        kw["filter_subject"] = filt
    c = make(st, **kw)
    now = T0
    for op, n in ops:
        now += S
        if op == "pub":
            seq = st.append(f"a.{n % 3}", None, b"x", now)
            c.on_stored(seq, f"a.{n % 3}")
        elif op == "pull":
            pull(c, now, batch=n % 5 + 1, no_wait=True)
        elif op in ("ack", "nak", "term", "wpi") and c.pending:
            s = sorted(c.pending)[n % len(c.pending)]
            {"ack": lambda: c.ack(s, now), "nak": lambda: c.nak(s, 0, now), "term": lambda: c.term(s, now),
             "wpi": lambda: c.progress(s, now)}[op]()
        elif op == "tick":
            c.tick(now)
        elif op == "purge" and n % 4 == 0:
            st.purge()
            c.purged()
        c.out.clear()
        assert c.low == (min(c.pending) if c.pending else 0)
        want = c.npending
        c.recount()
        assert c.npending == want
        assert c.asflr <= c.dsseq and c.adflr <= c.dseq
        assert all(s >= c.asflr + 1 for s in c.pending)
        if ack_policy == "none":
            assert not c.pending


def test_ack_wait_heap_stays_bounded():
    st = MemoryStore()
    c = make(st)
    for i in range(5000):
        seq = st.append("a.x", None, b"x", T0)
        c.on_stored(seq, "a.x")
        pull(c, T0, batch=1)
        c.ack(seq, T0)
    assert len(c.deadlines) <= 1024 + 2
    assert not c.pending


def test_rate_limit_spaces_push_deliveries():
    st = MemoryStore()
    for _ in range(3):
        st.append("a.x", None, b"x" * 1000, T0)
    c = make(st, deliver_subject="dl", ack_policy="none", rate_limit_bps=8000)  # 1000 bytes/s
    wake = c.deliver_push(T0, True)
    assert len(c.out) == 1 and wake > T0  # the first fits the bucket, the next must wait
    c.out.clear()
    assert c.deliver_push(wake - S // 10, True) > 0 and not c.out
    c.deliver_push(wake, True)
    assert len(c.out) == 1


def test_limit_evictions_keep_num_pending_exact():
    st = MemoryStore()
    fill(st, 5)
    c = make(st)
    pull(c, T0, batch=1)
    assert c.npending == 4
    st.remove(3)  # e.g. discard old / per-subject history removed an undelivered message
    seq = st.append("a.x", None, b"new", T0)
    c.on_stored(seq, "a.x")
    assert c.npending == 4  # 2, 4, 5 and the new one
    out = pull(c, T0, batch=10, no_wait=True)
    assert [int(ack_tokens(o.reply)[8]) for o in out if o.reply] == [3, 2, 1, 0]
