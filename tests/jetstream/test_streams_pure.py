"""The pure stream state machine (broker/jetstream/stream.py) driven with explicit clocks."""

from __future__ import annotations

import pytest

from broker import headers
from broker.jetstream import api, errors
from broker.jetstream import streamconfig as sc
from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore
from broker.jetstream.stream import Stream, parse_go_duration, parse_ttl

S = 1_000_000_000
T0 = 1_700_000_000 * S


def make(store=None, **cfg) -> Stream:
    cfg.setdefault("subjects", ["s.>"])
    config = sc.normalize(api.StreamConfig(name="S", **cfg))
    return Stream(config, store if store is not None else MemoryStore(), T0)


def h(**kv) -> bytes:
    return headers.build({k.replace("_", "-"): v for k, v in kv.items()})


def snapshot(st: Stream):
    return (st.store.state(), st.last_msg_id, dict(st._dedupe))


def test_pub_ack_bytes_match_nats_server():
    st = make()
    assert st.process("s.a", None, b"x", T0) == (1, False)
    assert st.pub_ack(1) == b'{"stream":"S","seq":1}'
    assert st.pub_ack(1, True) == b'{"stream":"S","seq":1,"duplicate": true}'


def test_duplicate_window():
    st = make(duplicate_window=2 * S)
    assert st.process("s.a", h(Nats_Msg_Id="m"), b"1", T0) == (1, False)
    assert st.process("s.a", h(Nats_Msg_Id="m"), b"2", T0 + S) == (1, True)
    st.expire(T0 + 3 * S)
    assert st.process("s.a", h(Nats_Msg_Id="m"), b"3", T0 + 3 * S) == (2, False)
    assert st.store.state().messages == 2


def test_max_age_expiry_uses_the_given_clock():
    st = make(max_age=10 * S)
    for i in range(3):
        st.process("s.a", None, b"x", T0 + i * S)
    assert st.next_expiry_ns() == T0 + 10 * S
    assert st.expire(T0 + 10 * S) == 1
    assert st.expire(T0 + 20 * S) == 2
    state = st.state()
    assert (state.messages, state.first_seq, state.last_seq, state.first_ts) == (0, 4, 3, api.ZERO_TIME)


def test_message_ttl():
    st = make(allow_msg_ttl=True)
    st.process("s.a", h(Nats_TTL="2s"), b"x", T0)
    st.process("s.b", h(Nats_TTL="never"), b"x", T0)
    st.process("s.c", h(Nats_TTL="5"), b"x", T0)
    assert st.expire(T0 + 2 * S) == 1
    assert st.expire(T0 + 5 * S) == 1
    assert st.store.state().messages == 1
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", h(Nats_TTL="bogus"), b"x", T0)
    assert e.value.err_code == 10165
    with pytest.raises(errors.JSError) as e:
        make().process("s.a", h(Nats_TTL="1m"), b"x", T0)
    assert (e.value.err_code, e.value.description) == (10166, "per-message TTL is disabled")


def test_discard_new_limits_reject_and_change_nothing():
    st = make(discard="new", max_msgs=2)
    st.process("s.a", None, b"x", T0)
    st.process("s.a", None, b"x", T0)
    before = snapshot(st)
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", None, b"x", T0)
    assert (e.value.code, e.value.err_code, e.value.description) == (503, 10077, "maximum messages exceeded")
    assert snapshot(st) == before
    st = make(discard="new", max_bytes=70, storage="memory")
    st.process("s.a", None, b"x" * 40, T0)  # 3 + 40 + 16 = 59 bytes in a memory store; the next is 20
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", None, b"x", T0)
    assert e.value.description == "maximum bytes exceeded"


def test_discard_old_limits_and_per_subject():
    st = make(max_msgs=3, max_msgs_per_subject=2)
    for subject in ("s.a", "s.a", "s.a", "s.b", "s.c"):
        st.process(subject, None, b"x", T0)
    assert st.store.subjects() == {"s.a": 1, "s.b": 1, "s.c": 1}
    assert st.store.state().first_seq == 3


def test_purge_variants():
    st = make()
    for subject in ("s.a", "s.a", "s.b", "s.a", "s.b"):
        st.process(subject, None, b"x", T0)
    assert st.purge("s.a", keep=1) == 2
    assert st.purge(seq=5) == 2  # removes 3 (s.b) and 4 (s.a); 5 stays
    assert st.store.subjects() == {"s.b": 1}
    with pytest.raises(errors.JSError) as e:
        st.purge(seq=2, keep=1)
    assert e.value.err_code == 10003
    assert st.purge() == 1
    assert st.purge(seq=100) == 0
    assert st.process("s.a", None, b"x", T0) == (100, False)


def test_rollup():
    st = make(allow_rollup_hdrs=True)
    for subject in ("s.a", "s.a", "s.b"):
        st.process(subject, None, b"x", T0)
    st.process("s.a", h(Nats_Rollup="sub"), b"r", T0)
    assert st.store.subjects() == {"s.a": 1, "s.b": 1}
    st.process("s.c", h(Nats_Rollup="all"), b"r", T0)
    assert st.store.subjects() == {"s.c": 1}
    with pytest.raises(errors.JSError) as e:
        make().process("s.a", h(Nats_Rollup="sub"), b"x", T0)
    assert (e.value.err_code, e.value.description) == (10111, "rollup not permitted")
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", h(Nats_Rollup="nope"), b"x", T0)
    assert e.value.description == 'rollup value invalid: "nope"'


def test_expected_headers():
    st = make()
    st.process("s.a", h(Nats_Msg_Id="first"), b"x", T0)
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", h(Nats_Expected_Stream="OTHER"), b"x", T0)
    assert e.value.err_code == 10060
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", h(Nats_Expected_Last_Sequence="5"), b"x", T0)
    assert e.value.description == "wrong last sequence: 1"
    with pytest.raises(errors.JSError) as e:
        st.process("s.b", h(Nats_Expected_Last_Subject_Sequence="1"), b"x", T0)
    assert e.value.description == "wrong last sequence: 0"
    with pytest.raises(errors.JSError) as e:
        st.process("s.b", h(Nats_Expected_Last_Msg_Id="zzz"), b"x", T0)
    assert e.value.description == "wrong last msg ID: first"
    assert st.process("s.b", h(Nats_Expected_Last_Subject_Sequence="1",
                                Nats_Expected_Last_Subject_Sequence_Subject="s.a"), b"x", T0) == (2, False)
    assert st.process("s.b", h(Nats_Expected_Last_Sequence="2"), b"x", T0) == (3, False)


def test_max_msg_size_and_sealed():
    st = make(max_msg_size=10)
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", None, b"x" * 11, T0)
    assert e.value.err_code == 10054
    cfg = sc.normalize(api.StreamConfig(name="S", subjects=["s.>"], sealed=True))
    sc.apply_seal(cfg)
    st.update(cfg, T0)
    with pytest.raises(errors.JSError) as e:
        st.process("s.a", None, b"x", T0)
    assert e.value.err_code == 10109
    with pytest.raises(errors.JSError):
        st.purge()
    with pytest.raises(errors.JSError):
        st.delete_msg(1)


def test_update_applies_limits_at_once():
    st = make()
    for i in range(10):
        st.process("s.a", None, b"x", T0 + i)
    st.update(sc.normalize(api.StreamConfig(name="S", subjects=["s.>"], max_msgs=4)), T0 + 10)
    assert (st.store.state().messages, st.store.state().first_seq) == (4, 7)


def test_delete_msg_errors():
    st = make()
    for _ in range(3):
        st.process("s.a", None, b"x", T0)
    st.delete_msg(2)
    with pytest.raises(errors.JSError) as e:
        st.delete_msg(2)
    assert (e.value.code, e.value.err_code, e.value.description) == (400, 10043, "sequence 2 not found")
    with pytest.raises(errors.JSError) as e:
        st.delete_msg(9)
    assert e.value.description == "stream store EOF"
    denied = make(deny_delete=True)
    denied.process("s.a", None, b"x", T0)
    with pytest.raises(errors.JSError) as e:
        denied.delete_msg(1)
    assert e.value.description == "message delete not permitted"


def test_duplicate_window_and_ttls_survive_a_reopen(tmp_path):
    cfg_kw = dict(allow_msg_ttl=True)
    st = make(FileStore(str(tmp_path / "m")), **cfg_kw)
    st.process("s.a", h(Nats_Msg_Id="id-1"), b"x", T0)
    st.process("s.b", h(Nats_TTL="3s"), b"x", T0 + 1)
    st.store.sync()
    st.store.close()
    again = make(FileStore(str(tmp_path / "m")), **cfg_kw)
    assert again.process("s.a", h(Nats_Msg_Id="id-1"), b"x", T0 + S) == (1, True)
    assert again.expire(T0 + 4 * S) == 1
    again.store.close()


@pytest.mark.parametrize("cfg, text", [
    (dict(name="a.b"), "stream name is required and can not contain '.', '*', '>', '\\', '/'"),
    (dict(name="S", subjects=["a..b"]), "invalid subject"),
    (dict(name="S", subjects=["a.*", "a.b"]), 'subject "a.*" overlaps with "a.b"'),
    (dict(name="S", subjects=[">"]), "capturing all subjects requires no-ack to be true"),
    (dict(name="S", max_age=-1), "max age can not be negative"),
    (dict(name="S", max_age=S, duplicate_window=2 * S), "duplicates window can not be larger then max age"),
    (dict(name="S", deny_purge=True, allow_rollup_hdrs=True), "roll-ups require the purge permission"),
    (dict(name="S", discard_new_per_subject=True), "discard new per subject requires discard new policy to be set"),
])
def test_invalid_configs(cfg, text):
    with pytest.raises(errors.JSError) as e:
        sc.normalize(api.StreamConfig(**cfg))
    assert (e.value.code, e.value.err_code, e.value.description) == (500, 10052, text)


def test_defaults_and_durations():
    cfg = sc.normalize(api.StreamConfig(name="S", max_age=30 * S))
    assert cfg.subjects == ["S"]
    assert (cfg.max_msgs, cfg.max_bytes, cfg.num_replicas, cfg.duplicate_window) == (-1, -1, 1, 30 * S)
    assert parse_go_duration("1m30s") == 90 * S
    assert parse_go_duration("1.5s") == 1_500_000_000
    assert parse_go_duration("abc") is None
    assert parse_ttl("never") == -1
    assert parse_ttl("90") == 90
