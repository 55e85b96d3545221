"""Property test: a file-backed stream behaves like a memory-backed one, and closing and
reopening the file store at any point (a restart) loses nothing that is stored."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import headers
from broker.jetstream import api, errors
from broker.jetstream import streamconfig as sc
from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore
from broker.jetstream.stream import Stream

S = 1_000_000_000
T0 = 1_700_000_000 * S

subjects = st.sampled_from(["o.a", "o.b", "o.c"])
ops = st.one_of(
    st.tuples(st.just("pub"), subjects, st.binary(max_size=20), st.sampled_from(["", "id1", "id2", "id3"]),
              st.sampled_from(["", "sub", "all"])),
    st.tuples(st.just("delete"), st.integers(1, 30)),
    st.tuples(st.just("purge"), st.sampled_from(["", "o.a", "o.b"]), st.integers(0, 30), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.integers(0, 5)),
    st.tuples(st.just("reopen"),),
)
configs = st.fixed_dictionaries({
    "max_msgs": st.sampled_from([0, 5, 12]),
    "max_msgs_per_subject": st.sampled_from([0, 2, 4]),
    "max_age": st.sampled_from([0, 3 * S]),
    "discard": st.sampled_from(["old", "new"]),
})


def _apply(stream: Stream, op, now: int):
    kind = op[0]
    try:
        if kind == "pub":
            _, subject, data, msg_id, rollup = op
            hdr = headers.build({k: v for k, v in (("Nats-Msg-Id", msg_id), ("Nats-Rollup", rollup)) if v}) \
                if (msg_id or rollup) else None
            return stream.process(subject, hdr, data, now)
        if kind == "delete":
            return stream.delete_msg(op[1])
        if kind == "purge":
            return stream.purge(op[1], op[2], 0 if op[2] else op[3])
    except errors.JSError as e:
        return (e.err_code, e.description)
    return None


def _view(stream: Stream):
    state = stream.store.state()
    msgs = []
    seq = state.first_seq
    while (m := stream.store.next_msg(seq)) is not None:
        msgs.append((m.seq, m.subject, m.hdr, m.data, m.ts))
        seq = m.seq + 1
    return (state.messages, state.first_seq, state.last_seq, state.num_deleted, msgs, stream.last_msg_id)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs, script=st.lists(ops, max_size=40))
def test_file_stream_matches_memory_stream_across_reopens(tmp_path_factory, cfg, script):
    directory = str(tmp_path_factory.mktemp("fs"))

    def config(storage):
        return sc.normalize(api.StreamConfig(name="O", subjects=["o.*"], allow_rollup_hdrs=True,
                                             storage=storage, duplicate_window=2 * S if cfg["max_age"] else 0,
                                             **cfg))

    mem = Stream(config("memory"), MemoryStore(), T0)
    disk = Stream(config("file"), FileStore(directory), T0)
    now = T0
    try:
        for op in script:
            if op[0] == "tick":
                now += op[1] * S
                assert mem.expire(now) == disk.expire(now)
            elif op[0] == "reopen":
                disk.store.sync()
                disk.store.close()
                disk = Stream(config("file"), FileStore(directory), T0)
                disk.expire(now)
                # A restart rebuilds the duplicate window from stored messages only (as
                # nats-server does), so the model restarts its in-memory indexes too.
                mem = Stream(config("memory"), mem.store, T0)
                mem.expire(now)
            else:
                assert _apply(mem, op, now) == _apply(disk, op, now), op
            assert _view(mem) == _view(disk)
    finally:
        disk.store.close()
