"""RaftLog under random operations (hypothesis): its cursors and invariants hold."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.log import RaftLog
from raft.messages import CONF, NORMAL, ConfState, Entry, Snapshot, encode

ops = st.lists(
    st.tuples(st.sampled_from(["append", "commit", "apply", "compact"]), st.integers(0, 30), st.integers(0, 3),
              st.booleans()),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_log_invariants_under_random_operations(script):
    log = RaftLog(Snapshot(0, 0, ConfState((1, 2, 3))), [])
    term = 1
    for op, n, dt, conf in script:
        before_commit, before_applied = log.commit, log.applied
        if op == "append":
            term += 1 + dt  # a new leader each time: a given (index, term) names one entry
            # a leader's entries start somewhere after our commit and at most one past our end
            start = log.commit + 1 + (n % (log.last_index - log.commit + 1))
            kind = CONF if conf else NORMAL
            data = encode(ConfState((1, 2, 3, start))) if conf else b"%d" % n
            prev_term = log.term(start - 1)
            if prev_term is None or prev_term > term:
                continue
            entries = (Entry(term, start, kind, data), Entry(term, start + 1))
            assert log.maybe_append(start - 1, prev_term, 0, entries) == start + 1
            assert log.entry(start).data == data and log.last_index >= start + 1
        elif op == "commit":
            log.commit_to(min(log.last_index, log.commit + n))
        elif op == "apply":
            log.applied_to(min(log.commit, log.applied + n))
        elif op == "compact" and log.applied > log.snapshot.index:
            i = log.applied
            log.compact(Snapshot(i, log.term(i), log.conf_at(i), b""))
        # invariants
        assert log.commit >= before_commit and log.applied >= before_applied
        assert log.snapshot.index <= log.applied <= log.commit <= log.last_index
        assert log.stable <= log.last_index
        indexes = [e.index for e in log.entries]
        assert indexes == list(range(log.first_index, log.last_index + 1))
        terms = [log.snapshot.term] + [e.term for e in log.entries]
        assert terms == sorted(terms)
        confs = [e for e in log.entries if e.kind == CONF]
        assert [i for i, _ in log.confs] == [e.index for e in confs]
        assert log.conf == (log.confs[-1][1] if confs else log.snapshot.conf)
