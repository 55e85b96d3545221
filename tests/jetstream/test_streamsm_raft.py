"""StreamSM driven by real Raft cores (tests/raft/cluster.py: lock-step, no disk): leaders
change under partitions, a deposed leader's uncommitted batch is overwritten, logs are
compacted by snapshots and a cut-off follower gets InstallSnapshot, then catches up from the
leader in chunks. Each node follows the wiring's rules: propose a PubBatch only with the whole
log applied, a publisher is acked only when its own entry applies at the index and term it was
proposed at, a catching-up node neither proposes nor serves.

Checked: every entry's outcome on every node equals the reference's (the committed log applied
in order once); at the end all nodes hold the same state as the reference; every acked message
is there (unless the reference removed it too). Seeded; a failure names its seed."""

from __future__ import annotations

import random

import pytest

from broker.jetstream.api import StreamConfig
from broker.jetstream.cluster.streamsm import (ConsumerDelete, ConsumerUpsert, Copies, DeleteMsg, Expire, Purge,
                                               StreamSM, UpdateConfig, encode_op)
from broker.jetstream.store import MemoryStore
from broker.jetstream.streamconfig import normalize
from raft.core import RaftCore
from raft.messages import NORMAL
from tests.jetstream.test_streamsm_sim import CrashStore
from tests.raft.cluster import Cluster

S = 1_000_000_000
T0 = 1_700_000_000 * S


class StreamCluster(Cluster):
    def __init__(self, seed: int) -> None:
        super().__init__(3, seed, election_ticks=6)
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = normalize(StreamConfig(name="R", subjects=["r.>"], storage="memory", num_replicas=3,
                                             max_msgs_per_subject=self.rng.choice([-1, 4]),
                                             max_msgs=self.rng.choice([-1, 30]), duplicate_window=3 * S),
                                clustered=True)
        self.hold = self.rng.random() < 0.7
        self.sms = {i: StreamSM(self.config, CrashStore(self.hold), T0) for i in self.nodes}
        for sm in self.sms.values():
            sm.ensure_started()
        self.ref = StreamSM(self.config, MemoryStore(), T0)
        self.ref.ensure_started()
        self.ref_last = 0
        self.ref_results: dict[int, object] = {}
        self.pending: dict[tuple[int, int], tuple[int, int]] = {}  # (node, index) -> (term, msgs)
        self.acked: list[tuple[int, int]] = []  # (seq, index) acknowledged to a publisher
        self.snap_every = self.rng.choice([5, 12, 40])
        self.clock = T0
        self.stats = {"installs": 0, "chunks": 0, "dropped_proposals": 0, "leaders": set(), "restarts": 0}

    def fail(self, what: str) -> None:
        pytest.fail(f"seed {self.seed}: {what}")

    def process(self, node_id: int) -> None:
        core, sm = self.nodes[node_id], self.sms[node_id]
        while core.has_ready():
            rd = core.ready()
            self.inflight.extend(rd.messages)
            if rd.snapshot is not None:
                self.stats["installs"] += 1
                sm.restore(rd.snapshot.data)
            for e in rd.committed:
                self.feed_ref(e)
                if e.kind != NORMAL:
                    continue
                held = sm.catching_up or e.index <= sm.applied_index
                try:
                    result = sm.apply(e)
                except AssertionError as exc:
                    self.fail(f"node {node_id} stopped at {e.index}: {exc}")
                if not held and result != self.ref_results[e.index]:
                    self.fail(f"node {node_id} index {e.index}: {result!r} != {self.ref_results[e.index]!r}")
                proposal = self.pending.pop((node_id, e.index), None)
                if proposal is not None:
                    if proposal[0] == e.term:
                        for x in result if isinstance(result, list) else []:
                            if isinstance(x, tuple) and not x[1]:
                                self.acked.append((x[0], e.index))
                    else:
                        self.stats["dropped_proposals"] += 1
            core.advance(rd)
            if core.log.applied - core.log.snapshot.index >= self.snap_every:
                core.compact(core.log.applied, sm.snapshot())

    def feed_ref(self, e) -> None:
        if e.index <= self.ref_last:
            return
        assert e.index == self.ref_last + 1, (e.index, self.ref_last)
        self.ref_last = e.index
        if e.kind == NORMAL:
            self.ref_results[e.index] = self.ref.apply(e)

    def leader_node(self) -> int | None:
        core = self.leader()
        if core is None or self.sms[core.id].catching_up:
            return None
        # A node cut off from the others may still think it leads: only a leader that can
        # reach a majority gets anything committed, but proposing on a stale one is allowed.
        return core.id

    def propose(self) -> None:
        lid = self.leader_node()
        if lid is None:
            return
        core, sm = self.nodes[lid], self.sms[lid]
        self.stats["leaders"].add((lid, core.term))
        self.clock += self.rng.randrange(S // 2)
        r = self.rng.random()
        if r < 0.75:
            if core.log.applied != core.log.last_index:
                return  # one batch in flight: wait until everything before it applied here
            msgs = []
            for _ in range(self.rng.randrange(1, 5)):
                h = None
                if self.rng.random() < 0.3:
                    h = f"NATS/1.0\r\nNats-Msg-Id: x{self.rng.randrange(15)}\r\n\r\n".encode()
                msgs.append((f"r.{self.rng.randrange(5)}", h, self.rng.randbytes(self.rng.randrange(20))))
            op = sm.pub_batch(msgs, self.clock)
            if sm.consumers and self.rng.random() < 0.4:  # consumer states ride along
                op.consumers = [(name, v[0], self.rng.randbytes(8)) for name, v in sorted(sm.consumers.items())
                                if self.rng.random() < 0.7]
        elif r < 0.78:  # replicated consumers made, remade (another created) and reconfigured
            op = ConsumerUpsert(f"c{self.rng.randrange(3)}", self.rng.randrange(1, 3), self.rng.randbytes(6))
        elif r < 0.80:  # copies from a mirror link (at origin sequences, maybe already here) and a source
            last = sm.store.state().last_seq
            op = Copies(self.clock, [("mirror", f"r.{self.rng.randrange(5)}", None, self.rng.randbytes(5),
                                      max(1, last + self.rng.randrange(-2, 3)), self.clock - 1),
                                     ("source", f"r.{self.rng.randrange(5)}", None, self.rng.randbytes(5), 0, 0)])
        elif r < 0.82 and sm.consumers:
            name = self.rng.choice(sorted(sm.consumers))
            op = ConsumerDelete(name, sm.consumers[name][0] if self.rng.random() < 0.8 else 99)
        elif r < 0.85:
            op = Expire(self.clock)
        elif r < 0.95:
            st = sm.store.state()
            op = DeleteMsg(self.rng.randrange(max(1, st.first_seq), st.last_seq + 2))
        else:
            op = Purge(f"r.{self.rng.randrange(5)}", 0, 1)
        index = core.propose(encode_op(op))
        self.pending[(lid, index)] = (core.term, 0)
        self.process(lid)

    def serve_catchups(self) -> None:
        core = self.leader()
        if core is not None and self.sms[core.id].catching_up:
            # A catching-up replica must not lead: hand leadership to one that is whole.
            whole = [i for i, sm in self.sms.items() if not sm.catching_up and i != core.id]
            if whole and not core.transferee:
                core.transfer_leadership(self.rng.choice(whole))
                self.deliver_all()
        lid = self.leader_node()
        for i, sm in self.sms.items():
            if sm.catching_up and lid is not None and i != lid and (i, lid) not in self.cut:
                self.stats["chunks"] += 1
                try:
                    sm.apply_catchup(self.sms[lid].catchup_chunk(sm.need.from_seq, self.rng.randrange(1, 15)))
                except AssertionError as exc:
                    self.fail(f"node {i} catch-up: {exc}")
                self.process(i)

    def restart(self, i: int) -> None:
        """Crash node i (its Raft state is what it persisted: everything, in lock-step; its
        store loses unsynced writes) and start it again as RaftHost.add_group would."""
        core, sm = self.nodes[i], self.sms[i]
        self.process(i)
        persisted = list(core.log.entries[: core.log.stable - core.log.snapshot.index])
        self.nodes[i] = RaftCore(core.cfg, random.Random(self.rng.random()), core.persisted_hard_state,
                                 core.log.snapshot, persisted)
        store = sm.store.crash(self.rng, self.rng.choice(["prefix", "subset", "none"]))
        self.sms[i] = sm = StreamSM(self.config, store, T0)
        if core.log.snapshot.index:
            sm.restore(core.log.snapshot.data)
        else:
            sm.ensure_started()
        self.stats["restarts"] += 1
        self.process(i)

    def step(self) -> None:
        x = self.rng.random()
        if x < 0.03:
            i = self.rng.choice(list(self.nodes))
            if not any(sm.catching_up for j, sm in self.sms.items() if j != i):
                self.restart(i)
            return
        if x < 0.55:
            self.propose()
            self.deliver_all()
        elif x < 0.8:
            self.tick(self.rng.randrange(1, 4))
        elif x < 0.85:
            self.isolate(self.rng.choice(list(self.nodes)))
            self.tick(1)
        elif x < 0.92:
            self.heal()
            self.tick(1)
        else:
            self.serve_catchups()

    def settle(self) -> None:
        self.heal()
        for _ in range(2000):
            self.tick(1)
            self.serve_catchups()
            core = self.leader()
            if core is None or any(sm.catching_up for sm in self.sms.values()):
                continue
            if core.log.applied == core.log.last_index and all(
                    c.log.applied == core.log.last_index for c in self.nodes.values()):
                break
        else:
            self.fail("never settled")
        # A last entry of the final term commits everything before it everywhere.
        lid = self.leader().id
        self.nodes[lid].propose(encode_op(Expire(self.clock)))
        for _ in range(50):
            self.tick(1)
            self.serve_catchups()
        last = self.nodes[lid].log.last_index
        for i, core in self.nodes.items():
            if core.log.applied != last or self.sms[i].applied_index != last:
                self.fail(f"node {i} applied {core.log.applied}/{self.sms[i].applied_index} of {last}")

    def check(self) -> None:
        want = self.ref.fingerprint()
        for i, sm in self.sms.items():
            if sm.fingerprint() != want:
                self.fail(f"node {i} differs from the reference: {sm.store.state()} vs {self.ref.store.state()}")
        for seq, index in self.acked:
            m = self.ref.store.get(seq)
            assert m is None or all(sm.store.get(seq) == m for sm in self.sms.values())


def run(seed: int, steps: int = 300) -> dict:
    c = StreamCluster(seed)
    c.elect(1)
    c.nodes[1].propose(encode_op(UpdateConfig(c.config, T0)))
    c.deliver_all()
    for _ in range(steps):
        c.step()
    c.settle()
    c.check()
    c.stats["consumers"] = len(c.ref.consumers)  # replicated consumers left at the end (compared above)
    return c.stats


@pytest.mark.parametrize("seed", range(30))
def test_stream_over_raft(seed):
    run(seed)


def test_stream_over_raft_exercises_leader_changes_and_installs():
    total = {"installs": 0, "chunks": 0, "dropped_proposals": 0, "leaders": 0, "restarts": 0, "consumers": 0}
    for seed in range(30):
        stats = run(seed)
        for k in total:
            total[k] += len(stats[k]) if k == "leaders" else stats[k]
    assert total["installs"] > 0 and total["chunks"] > 0 and total["leaders"] > 30 and total["restarts"] > 0, total
    assert total["consumers"] > 0, total


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(30, 330))
def test_stream_over_raft_many(seed):
    run(seed, steps=800)
