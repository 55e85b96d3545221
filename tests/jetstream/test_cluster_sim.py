"""Seeded simulation of three RaftHost nodes running the meta group (real MetaState) and two
more groups over one shared transport, with partitions (one-way too), loss, duplication,
delay, route flaps reported as peer_down/peer_up, leader step-downs, crashes and power losses
on a disk that forgets what was not fsynced. See tests/jetstream/clustersim.py for the model
and the invariants.

A failure names its seed; replay it with
    CLUSTER_SIM_SEED=<seed> python -m pytest tests/jetstream/test_cluster_sim.py -q -k replay
or  python -m tests.jetstream.clustersim <seed> --trace
More seeds: RUN_SLOW=1 (tests/conftest.py skips `slow` tests otherwise).
"""

from __future__ import annotations

import os

import pytest

from broker.jetstream.cluster import meta as m
from tests.jetstream import clustersim as cs
from tests.raft.simdisk import SimDisk

DEFAULT_SEEDS = range(0, 100)
SLOW_SEEDS = range(1000, 2000)
SLOW_CHUNK = 50

# Reported bugs the simulation finds, not fixed yet, by the text of their violation (none
# now: the restore of a node that was away while its streams were moved, made anew or
# updated was fixed, and the seeds that found it run again).
KNOWN_ISSUES: dict[str, str] = {}
# Default seeds that fail today only for known issues: left out of the default run.
KNOWN_FAILING: tuple[int, ...] = ()
# Seeds that found the restore bugs (a stream moved elsewhere got no remove; a hosted stream
# updated or made anew while away kept its old local copy): kept as regressions.
RESTORE_REGRESSIONS = (1, 7, 12, 19, 21, 23, 38, 39, 40, 41, 46, 48, 55, 67, 69, 95, 96)


def _failure(sim: cs.Sim) -> str:
    return (f"seed {sim.seed} failed ({cs.replay_hint(sim.seed)}):\n  " + "\n  ".join(sim.violations)
            + f"\nsummary: {sim.summary()}")


def _unknown(violations: list[str]) -> list[str]:
    return [v for v in violations if not any(sig in v for sig in KNOWN_ISSUES)]


@pytest.mark.parametrize("seed", [s for s in DEFAULT_SEEDS if s not in KNOWN_FAILING])
def test_cluster_sim_seed(seed):
    sim = cs.run(seed)
    assert not sim.violations, _failure(sim)
    assert sim.acked, f"seed {seed}: nothing was acknowledged, the run checked nothing"


@pytest.mark.parametrize("seed", RESTORE_REGRESSIONS)
def test_restore_regression_seeds_pass(seed):
    assert seed in DEFAULT_SEEDS  # also in test_cluster_sim_seed: named here as the bug's finders
    sim = cs.run(seed)
    assert not sim.violations, _failure(sim)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SLOW_SEEDS.start, SLOW_SEEDS.stop, SLOW_CHUNK))
def test_cluster_sim_seed_sweep(chunk):
    """Fails on any violation but those of KNOWN_ISSUES (empty it once they are fixed)."""
    failures = []
    for seed in range(chunk, min(chunk + SLOW_CHUNK, SLOW_SEEDS.stop)):
        sim = cs.run(seed)
        if _unknown(sim.violations):
            failures.append(_failure(sim))
    assert not failures, f"{len(failures)} failing seeds:\n" + "\n".join(failures)


def test_replay_one_seed():
    seed = os.environ.get("CLUSTER_SIM_SEED")
    if seed is None:
        pytest.skip("set CLUSTER_SIM_SEED=<seed> to replay one seed")
    sim = cs.run(int(seed), trace=True)
    assert not sim.violations, _failure(sim)


def test_a_seed_replays_exactly():
    first, again, other = cs.run(7), cs.run(7), cs.run(8)
    assert first.digest() == again.digest()
    assert first.summary() == again.summary()
    assert first.events == again.events
    assert other.digest() != first.digest()


def test_the_runs_exercise_the_faults_and_the_groups():
    sims = [cs.run(s) for s in (102, 104, 105)]
    total = {k: sum(s.summary()[k] for s in sims) for k in ("crashes", "power_losses", "installed_snapshots")}
    total["meta_snapshots"] = sum(s.summary()["snapshots"][cs.META] for s in sims)
    assert all(v > 0 for v in total.values()), total
    for sim in sims:
        assert not sim.violations, _failure(sim)
        assert {g for g, *_ in sim.acked} == set(cs.GROUPS)  # every group had proposals acknowledged
        assert sim.net.dropped > 0
        assert any(sim.nodes[n].machines[cs.META].actions for n in cs.NAMES)


def _first_failure(seeds) -> cs.Sim | None:
    for seed in seeds:
        sim = cs.run(seed)
        if _unknown(sim.violations):
            return sim
    return None


def test_simulator_catches_a_disk_that_acknowledges_without_fsync(monkeypatch):
    monkeypatch.setattr(SimDisk, "sync", lambda self, name: None)  # data never becomes durable
    sim = _first_failure(range(100, 110))
    assert sim is not None, "fsyncs that do nothing went unnoticed"


def test_simulator_catches_a_meta_state_machine_that_differs_between_nodes(monkeypatch):
    real_apply = m.MetaState.apply

    def apply(self, data):
        if self.me == "n3" and isinstance(m._op_decoder.decode(data), m.RemoveStream):
            return []  # n3 ignores removals
        return real_apply(self, data)

    monkeypatch.setattr(m.MetaState, "apply", apply)
    sim = _first_failure(range(100, 105))
    assert sim is not None and any("n3/meta: final state differs" in v for v in sim.violations), \
        sim and sim.violations


def test_simulator_catches_restore_actions_that_disagree_with_the_state(monkeypatch):
    real_restore = m.MetaState.restore

    def restore(self, data):
        real_restore(self, data)
        return []  # never says what to create or remove

    monkeypatch.setattr(m.MetaState, "restore", restore)
    sim = _first_failure(range(100, 110))
    assert sim is not None and any("told to host" in v for v in sim.violations), sim and sim.violations
