"""Seed sweep of the deterministic simulator (tests/raft/sim.py).

Default: 1,000 seeds in chunks of 100. Environment:
  RAFT_SIM_SEEDS=N      run N seeds instead (e.g. 20000 for a long soak)
  RAFT_SIM_BASE=B       start at seed B
  RAFT_SIM_SEED=S       replay exactly seed S (prints its trace on failure)
  RUN_SLOW=1            also run every mutation of tests/raft/mutate.py against the simulator
"""

from __future__ import annotations

import os

import pytest

from raft import core as core_mod
from tests.raft import sim
from tests.raft.sim import SimFailure, run_seed

CHUNK = 100
TOTAL = int(os.environ.get("RAFT_SIM_SEEDS", "1000"))
BASE = int(os.environ.get("RAFT_SIM_BASE", "0"))
ONE = os.environ.get("RAFT_SIM_SEED")


def replay_hint(seed: int) -> str:
    return (f"\nreplay: RAFT_SIM_SEED={seed} python -m pytest tests/raft/test_sim.py -q"
            f"\n    or: python -m tests.raft.sim {seed} --trace")


def run_checked(seed: int) -> dict:
    try:
        return run_seed(seed)
    except SimFailure as exc:
        message = f"simulation failed: {exc}"
    except AssertionError as exc:  # an assertion inside raft/ itself
        message = f"seed {seed}: internal assertion {exc!r}"
    pytest.fail(message + replay_hint(seed), pytrace=False)


if ONE is not None:
    def test_replay_one_seed():
        seed = int(ONE)
        try:
            run_seed(seed)
        except AssertionError:
            run_seed(seed, trace=True)  # fails again, printing the event trace before the error
else:
    @pytest.mark.parametrize("chunk", range(BASE, BASE + TOTAL, CHUNK))
    def test_seed_sweep(chunk):
        totals = {"crashes": 0, "elections": 0, "snapshots_sent": 0, "conf_changes": 0, "applied": 0}
        for seed in range(chunk, min(chunk + CHUNK, BASE + TOTAL)):
            stats = run_checked(seed)
            for k in totals:
                totals[k] += stats[k]
        # The faults really happened: a sweep that injects nothing would prove nothing.
        assert all(v > 0 for v in totals.values()), totals


def test_regression_seed_5551_quarantine_ended_by_a_stale_append():
    """Found by the simulator: a quarantined node ended its quarantine on an append its leader
    sent before the node crashed (delivered after its restart), older than entries it had
    acknowledged and lost, and then voted a leader lacking a committed entry into office. Now
    only an append sent knowing the node is quarantined (`heals`) can end it."""
    run_seed(5551)


def test_a_seed_replays_exactly():
    a = run_seed(12345)
    b = run_seed(12345)
    assert a == b and a["applied"] > 0


def test_simulator_catches_a_leader_that_commits_without_a_majority(monkeypatch):
    """Mutation check: a leader that counts only itself must be caught (section 5.3)."""

    def eager_commit(self):
        if self.log.term(self.log.stable) == self.term:
            self.log.commit_to(self.log.stable)

    monkeypatch.setattr(core_mod.RaftCore, "_maybe_commit", eager_commit)
    assert _first_failure(range(300)) is not None


def test_simulator_catches_acknowledging_before_fsync(monkeypatch):
    """Mutation check: a disk whose fsync does nothing must be caught (lost fsynced writes,
    lost committed entries or divergence)."""
    from tests.raft.simdisk import SimDisk

    def no_sync(self, name):
        self._boom()

    monkeypatch.setattr(SimDisk, "sync", no_sync)
    assert _first_failure(range(300)) is not None


def test_simulator_catches_double_voting(monkeypatch):
    orig = core_mod.RaftCore._handle_vote_request

    def forgetful(self, m):
        self.vote = 0
        self.lead = 0
        orig(self, m)

    monkeypatch.setattr(core_mod.RaftCore, "_handle_vote_request", forgetful)
    assert _first_failure(range(300)) is not None


def _first_failure(seeds) -> int | None:
    for seed in seeds:
        try:
            run_seed(seed)
        except AssertionError:
            return seed
    return None


def test_fault_phase_bounds_are_named_in_milliseconds():
    assert sim.fault_phase_ms > 0 and sim.heal_phase_ms > 0 and sim.tick_ms > 0


def test_simulator_catches_acknowledgements_sent_before_the_fsync(monkeypatch):
    """Mutation check: if votes and append acknowledgements left before the fsync (all messages
    sent early), crashes that lose unsynced writes must break an invariant."""

    def everything_early(rd, send):
        for m in rd.messages:
            send(m)
        rd.messages = []

    monkeypatch.setattr(sim, "send_leader_messages_early", everything_early)
    assert _first_failure(range(1000)) is not None


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="mutation run: set RUN_SLOW=1")
def test_every_mutation_is_caught_by_the_simulator_alone():
    """The simulator's strength, measured: every classic Raft bug in tests/raft/mutate.py, applied
    to a copy of raft/, must make the seed sweep fail within the default seed count."""
    from tests.raft import mutate

    reports = mutate.run_all(mutate.MUTATIONS, seeds=TOTAL, base=BASE, jobs=2, out=print)
    survivors = [r["name"] for r in reports if not r["caught"]]
    assert not survivors, f"mutations the simulator did not catch in {TOTAL} seeds: {survivors}"
