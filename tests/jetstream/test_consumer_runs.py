"""Run delivery (a stretch of first deliveries as one entry) against the per-message path.

The state machine takes its run path when nothing needs a per-message decision. A store
whose get_run returns nothing forces the per-message path for the same history, so both
consumers must produce the same frames (after expand) and the same state, step by step,
including push flow control with messages large enough to cross its window."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from broker.jetstream.consumer import Consumer, PullRequest, Run, expand
from broker.jetstream.consumerconfig import ConsumerConfig, normalize
from broker.jetstream.store import MemoryStore

S = 1_000_000_000
T0 = 1_700_000_000 * S


class NoRuns:
    """The same store, but every get_run comes back empty: per-message delivery only."""

    def __init__(self, store) -> None:
        self._s = store

    def get_run(self, start_seq, max_n):
        return []

    def __getattr__(self, name):
        return getattr(self._s, name)


def pair(store, name: str, kw: dict) -> tuple[Consumer, Consumer]:
    """The same consumer twice: over the store (runs) and over NoRuns (per message)."""
    cs = []
    for st_ in (store, NoRuns(store)):
        c = Consumer("ST", name, normalize(ConsumerConfig(**kw), None), st_, T0)
        c.start(T0)
        cs.append(c)
    return cs[0], cs[1]


def state(c: Consumer) -> tuple:
    return (c.sseq, c.dseq, c.dsseq, c.adflr, c.asflr, c.npending, sorted(c.pending.items()),
            c.pbytes, bool(c.fc_reply), c.low)


def frames(c: Consumer) -> list:
    out, c.out = expand(c.out), []
    return [(o.to, o.subject, o.reply if not o.reply.startswith("$JS.FC.") else "FC", o.hdr, o.payload)
            for o in out]


@settings(max_examples=120, deadline=None)
@example(sizes=[300_000] * 20, ack="none", max_ack=5, flow=True, limits=[50] * 5, acks=[0] * 30)
@example(sizes=[250_000] * 30, ack="explicit", max_ack=12, flow=True, limits=[9] * 30, acks=[2] * 30)
@given(sizes=st.lists(st.one_of(st.integers(0, 100), st.integers(150_000, 400_000)), min_size=1, max_size=60),
       ack=st.sampled_from(["none", "explicit", "all"]),
       max_ack=st.integers(1, 40),
       flow=st.booleans(),
       limits=st.lists(st.integers(1, 50), min_size=1, max_size=30),
       acks=st.lists(st.integers(0, 5), min_size=30, max_size=30))
def test_push_runs_match_per_message_delivery(sizes, ack, max_ack, flow, limits, acks):
    store = MemoryStore()
    for i, n in enumerate(sizes):
        store.append(f"a.{i % 3}", None, b"x" * n, T0 + i)
    kw = {"deliver_subject": "dl", "ack_policy": ack}
    if ack != "none":
        kw["max_ack_pending"] = max_ack
    if flow:
        kw.update(flow_control=True, idle_heartbeat=S)
    fast, slow = pair(store, "C", kw)
    cs = [fast, slow]
    saw_run = False
    for step, (limit, n_acks) in enumerate(zip(limits, acks)):
        now = T0 + step * S // 10
        got = [c.deliver_push(now, True, limit) for c in cs]
        saw_run = saw_run or any(type(o) is Run for o in fast.out)
        assert frames(fast) == frames(slow) and got[0] == got[1]
        assert state(fast) == state(slow)
        if fast.fc_reply:  # the client answers flow control
            for c in cs:
                assert c.flow_control_reply(c.fc_reply)
        for sseq in sorted(fast.pending)[:n_acks]:
            for c in cs:
                c.ack(sseq, now, c.pending[sseq][0])
        assert state(fast) == state(slow)
    if len(sizes) > 1 and limits[0] > 1 and (ack == "none" or max_ack > 1):
        assert saw_run  # the run path was really exercised


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 400), ack=st.sampled_from(["none", "explicit"]),
       batches=st.lists(st.integers(1, 150), min_size=1, max_size=8))
def test_pull_runs_match_per_message_delivery(n, ack, batches):
    store = MemoryStore()
    for i in range(n):
        store.append("b.x", None, b"m%d" % i, T0 + i // 7)
    kw = {"durable_name": "P", "ack_policy": ack}
    fast, slow = pair(store, "P", kw)
    cs = [fast, slow]
    for i, b in enumerate(batches):
        for c in cs:
            c.add_request(PullRequest(f"in.{i}", b, 0, 0, True, 0, T0), T0)
        assert frames(fast) == frames(slow)
        assert state(fast) == state(slow)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 300), batches=st.lists(st.integers(1, 120), min_size=1, max_size=5),
       acks=st.lists(st.integers(0, 299), max_size=60), max_deliver=st.sampled_from([-1, 1, 2, 3]),
       rounds=st.integers(1, 3))
def test_ack_wait_expiry_after_runs_matches_per_message_delivery(n, batches, acks, max_deliver, rounds):
    """Runs keep one ack-wait entry per stretch: expiry must redeliver (or drop at
    max_deliver) exactly the messages the per-message path does, in the same order."""
    store = MemoryStore()
    for i in range(n):
        store.append("c.x", None, b"m%d" % i, T0 + i // 5)
    kw = {"durable_name": "E", "ack_policy": "explicit", "ack_wait": 10 * S, "max_deliver": max_deliver}
    fast, slow = pair(store, "E", kw)
    cs = [fast, slow]
    now = T0
    for r in range(rounds):
        for i, b in enumerate(batches):
            for c in cs:
                c.add_request(PullRequest(f"in.{r}.{i}", b, 0, 0, True, 0, now), now)
            assert frames(fast) == frames(slow)
        for a in acks:
            seq = a % n + 1
            for c in cs:
                if seq in c.pending:
                    c.ack(seq, now, c.pending[seq][0])
        assert state(fast) == state(slow)
        now += 11 * S  # every ack wait runs out
        for c in cs:
            c.tick(now)
        assert list(fast.redeliver) == list(slow.redeliver) and state(fast) == state(slow)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 300), ack=st.sampled_from(["none", "explicit"]), max_ack=st.integers(1, 60),
       batches=st.lists(st.integers(1, 80), min_size=2, max_size=6), hb=st.booleans(),
       shared=st.booleans())
def test_requests_taking_turns_match_per_message_delivery(n, ack, max_ack, batches, hb, shared):
    """Requests queued together take turns one message each; when they share a reply
    subject whole rounds go out as one Run: same frames, same state, same requests left."""
    store = MemoryStore()
    for i in range(n):
        store.append("t.x", None, b"m%d" % i, T0 + i // 3)
    kw = {"durable_name": "T", "ack_policy": ack}
    if ack != "none":
        kw["max_ack_pending"] = max_ack
    fast, slow = pair(store, "T", kw)
    cs = [fast, slow]
    for c in cs:
        for i, b in enumerate(batches):
            reply = "in.shared" if shared else f"in.{i}"
            c.add_request(PullRequest(reply, b, 0, T0 + 60 * S, False, S if hb else 0, T0), T0, serve=False)
        c.serve_pull(T0)
    assert frames(fast) == frames(slow)
    assert state(fast) == state(slow)
    assert [(r.reply, r.batch, r.sent, r.next_hb) for r in fast.waiting] == \
        [(r.reply, r.batch, r.sent, r.next_hb) for r in slow.waiting]
