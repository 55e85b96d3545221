"""The mutation harness itself (tests/raft/mutate.py): every mutation still applies to the current
raft/ source, a stale snippet is an error, and the real files are never touched. The mutation run
proper (simulator against each mutation) is test_sim.py's RUN_SLOW test."""

from __future__ import annotations

import hashlib

import pytest

from tests.raft import mutate


def tree_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(mutate.RAFT.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_every_mutation_applies_exactly_once_to_a_copy(tmp_path):
    before = tree_digest()
    names = [m.name for m in mutate.MUTATIONS]
    assert len(names) == len(set(names))
    for m in mutate.MUTATIONS:
        dest = mutate.apply(m, tmp_path / m.name)
        changed = [p.name for p in dest.glob("*.py") if p.read_text() != (mutate.RAFT / p.name).read_text()]
        assert changed, m.name  # the copy really differs from raft/
        for files, _old, new in m.edits:
            assert any(new in (dest / f).read_text() for f in files.split("|") if (dest / f).exists()), m.name
    assert tree_digest() == before  # raft/ itself is untouched


def test_a_snippet_that_is_gone_fails_loudly(tmp_path):
    stale = mutate.Mutation("stale", "refers to code that no longer exists",
                            [("core.py", "this text is not in core.py", "x")])
    with pytest.raises(mutate.MutationError, match="found 0 times"):
        mutate.apply(stale, tmp_path)


def test_an_ambiguous_snippet_fails_loudly(tmp_path):
    ambiguous = mutate.Mutation("ambiguous", "matches in several places", [("core.py", "self.term", "0")])
    with pytest.raises(mutate.MutationError, match="expected once"):
        mutate.apply(ambiguous, tmp_path)


def test_the_required_classic_bugs_are_on_the_list():
    names = {m.name for m in mutate.MUTATIONS}
    assert {"figure8_commit_old_term", "vote_without_up_to_date_check", "vote_not_persisted",
            "vote_sent_before_fsync", "append_ack_before_fsync", "truncate_at_match",
            "follower_commit_is_leader_commit", "pre_vote_raises_term", "check_quorum_never_steps_down",
            "snapshot_index_off_by_one", "membership_at_commit", "transfer_without_catch_up"} <= names


def test_one_mutation_end_to_end_is_caught_and_replayable():
    """A worker really runs the simulator against the mutated copy, and its failing seed fails
    again on its own (the report's seed reproduces)."""
    m = mutate.by_name("pre_vote_raises_term")
    first = mutate.run_mutation(m, seeds=20, base=0)
    assert first["caught"] and first["how"] == "invariant", first
    again = mutate.run_mutation(m, seeds=1, base=first["seed"])
    assert again["caught"] and again["message"] == first["message"]
