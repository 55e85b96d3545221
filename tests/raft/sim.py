"""Deterministic simulation of a Raft cluster: every choice comes from one seed.

N nodes run the real core and the real Storage (on SimDisk) in one process, with the same
persist -> send -> apply -> advance cycle as the trio driver (`raft.node.process_ready` parts).
A discrete-event loop delivers messages through a network that drops, duplicates, delays
(hence reorders) and partitions them; nodes crash (losing unsynced writes, sometimes in the
middle of a save, sometimes all at once), pause (frozen, inbox waiting), run on slightly skewed
clocks, restart from disk, get a WAL or snapshot bit flipped while down,
change membership and transfer leadership. Checked on every run:

  election safety        at most one leader per term (paper 5.2)
  log matching           an (index, term) names one entry everywhere (5.3)
  leader completeness    a new leader holds every committed entry (5.4)
  state machine safety   every node applies the same entry at each index, in order (5.4.3)
  durability             a restarted node has every write it fsynced; term never goes back
  no loss                every committed entry is applied by every final voter and learner
  liveness               after the faults heal, a leader commits a new entry on every member

Replay one seed with: RAFT_SIM_SEED=<seed> python -m pytest tests/raft/test_sim.py -q
or: python -m tests.raft.sim <seed> [--trace]
"""

from __future__ import annotations

import heapq
import random
import sys
import zlib

from raft.core import LEADER, NotLeader, ProposalRejected, RaftConfig, RaftCore
from raft.messages import NORMAL, AnyMessage, ConfChange, ConfState, Entry, decode_message, encode
from raft.node import deliver_ready, send_leader_messages_early
from raft.storage import SNAPSHOT, WAL, Storage, StorageCorruption, scan_wal
from tests.raft.simdisk import SimCrash, SimDisk

NODE_IDS = (1, 2, 3, 4, 5)
tick_ms = 10
fault_phase_ms = 2000
heal_phase_ms = 4000  # after the faults stop, the cluster must converge within this


class SimFailure(AssertionError):
    pass


class HashMachine:
    """The replicated state: a CRC chain over applied commands."""

    def __init__(self) -> None:
        self.h = 0
        self.count = 0

    def apply(self, entry: Entry) -> int:
        self.h = zlib.crc32(entry.data, self.h)
        self.count += 1
        return self.count

    def snapshot(self) -> bytes:
        return b"%d:%d" % (self.h, self.count)

    def restore(self, data: bytes) -> None:
        self.h, self.count = (int(x) for x in data.split(b":")) if data else (0, 0)


class SimNode:
    def __init__(self, node_id: int) -> None:
        self.id = node_id
        self.disk = SimDisk()
        self.up = False
        self.core: RaftCore | None = None
        self.storage: Storage | None = None
        self.sm = HashMachine()
        self.applied = 0
        self.commit_seen = 0
        self.corrupted = False  # a bit was flipped while down: the next open must refuse
        self.crash_stable: list[tuple[int, int]] = []
        self.crash_term = 0
        self.crash_vote = 0
        self.led_term = 0
        self.tick_ms = tick_ms  # this node's clock: skewed a little per node
        self.paused_until = 0  # a frozen process (SIGSTOP, GC, VM pause): no ticks, inbox waits
        self.initial_conf = ConfState(())  # the bootstrap configuration, used while the disk is empty


class Simulation:
    def __init__(self, seed: int, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.trace_on = trace
        r = self.rng
        self.n_initial = r.choice((1, 3, 3, 5))
        self.drop_p = r.choice((0.0, 0.02, 0.1, 0.2))
        self.dup_p = r.choice((0.0, 0.02, 0.1))
        self.delay_max_ms = r.choice((2, 10, 40))
        self.fault_every_ms = r.choice((60, 150, 400))
        self.membership = r.random() < 0.5
        # A removed server that never heard of its removal keeps campaigning; only the leader
        # lease (check-quorum) stops it from deposing leaders (dissertation 4.2.3).
        check_quorum = self.membership or r.random() < 0.8
        self.snapshot_every = r.choice((8, 30, 1000))
        self.propose_every_ms = r.choice((5, 15, 40))
        self.cfg = dict(election_ticks=10, heartbeat_ticks=1, pre_vote=r.random() < 0.8,
                        check_quorum=check_quorum, append_entries_max=r.choice((1, 8, 64)))
        self.nodes = {i: SimNode(i) for i in NODE_IDS}
        self.blocked: set[tuple[int, int]] = set()
        self.events: list = []
        self.seq = 0
        self.now = 0
        self.leaders: dict[int, int] = {}
        self.committed: dict[int, int] = {}  # index -> term, from every node's commit index
        self.committed_by: dict[int, int] = {}  # index -> term of the first node seen committing it
        self.applied_by_index: dict[int, tuple[int, int, bytes]] = {}
        self.sm_hash = {0: 0}  # index -> HashMachine.h after applying up to index
        self.log_terms: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.stats = dict(messages=0, crashes=0, elections=0, snapshots_sent=0, corruptions=0,
                          conf_changes=0, transfers=0)
        self.faults_on = True
        self.lossy: SimNode | None = None  # the one node that may have lost data to corruption
        self.net_lossy = True
        initial = ConfState(NODE_IDS[: self.n_initial])
        for node in self.nodes.values():
            if node.id <= self.n_initial:
                node.initial_conf = initial
            self._start(node)
            node.tick_ms = tick_ms + r.choice((-1, 0, 0, 1))
            self._schedule(r.randrange(tick_ms), "tick", node.id)

    # -- plumbing -------------------------------------------------------------------------------
    def fail(self, what: str) -> None:
        raise SimFailure(f"seed {self.seed} at t={self.now}ms: {what}")

    def trace(self, what: str) -> None:
        if self.trace_on:
            print(f"{self.now:6d} {what}")

    def _schedule(self, delay_ms: int, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + delay_ms, self.seq, kind, payload))

    def _start(self, node: SimNode, repair: bool = False) -> None:
        try:
            node.storage = Storage.open(node.disk, node.initial_conf, repair=repair)
        except StorageCorruption as exc:
            if not node.corrupted:
                self.fail(f"node {node.id} refused to open an uncorrupted disk: {exc}")
            self.trace(f"n{node.id} refuses to open: {exc}; repairing")
            node.corrupted = False
            return self._start(node, repair=True)
        if node.corrupted:
            # The flip landed in bytes that decode the same (it cannot: every record is
            # checksummed) or in a spot classified as a torn tail; both would be silent loss.
            self.fail(f"node {node.id} opened a corrupted WAL without noticing")
        hs, snap, entries = node.storage.initial_state()
        if hs.term < node.crash_term or (hs.term == node.crash_term and node.crash_vote and hs.vote != node.crash_vote):
            self.fail(f"node {node.id} hard state went back: {hs} after term {node.crash_term} vote {node.crash_vote}")
        durable = {i: t for i, t in node.crash_stable}
        on_disk = {e.index: e.term for e in entries}
        for i, t in durable.items():
            if i > snap.index and not hs.quarantined and on_disk.get(i) != t:
                self.fail(f"node {node.id} lost fsynced entry {i} (term {t}); disk has {on_disk.get(i)}")
        cfg = RaftConfig(node_id=node.id, **self.cfg)
        node.core = RaftCore(cfg, random.Random(self.rng.random()), hs, snap, entries)
        node.sm = HashMachine()
        node.sm.restore(snap.data)
        node.applied = snap.index
        node.commit_seen = snap.index
        if snap.index and self.sm_hash.get(snap.index) != node.sm.h:
            self.fail(f"node {node.id} snapshot at {snap.index} does not match the applied history")
        node.up = True

    def _crash(self, node: SimNode, torn: bool) -> None:
        core = node.core
        node.crash_stable = [(e.index, e.term) for e in core.log.entries if e.index <= core.log.stable]
        node.crash_term = core.persisted_hard_state.term
        node.crash_vote = core.persisted_hard_state.vote
        node.disk.crash(self.rng, torn=torn)
        node.up = False
        node.core = None
        self.stats["crashes"] += 1
        self.trace(f"n{node.id} crashes (torn={torn})")

    # -- the cycle ---------------------------------------------------------------------------------
    def process(self, node: SimNode) -> None:
        core = node.core
        while node.up and core.has_ready():
            rd = core.ready()
            for e in rd.entries:
                seen = self.log_terms.setdefault((e.index, e.term), (e.kind, e.data))
                if seen != (e.kind, e.data):
                    self.fail(f"log matching: two different entries at index {e.index} term {e.term}")
            send_leader_messages_early(rd, self.send)
            try:
                node.storage.save(rd.hard_state, rd.snapshot, rd.entries)
            except SimCrash:
                self._crash(node, torn=True)
                return
            deliver_ready(core, rd, lambda m: self.send(m), node.sm, lambda e, r: self._on_apply(node, e))
            if rd.snapshot is not None:
                node.applied = rd.snapshot.index
                if self.sm_hash.get(rd.snapshot.index) != node.sm.h:
                    self.fail(f"node {node.id} installed a snapshot at {rd.snapshot.index} that differs")
            if core.log.commit < node.commit_seen:
                self.fail(f"node {node.id} commit went back {node.commit_seen} -> {core.log.commit}")
            for i in range(max(node.commit_seen, core.log.snapshot.index) + 1, core.log.commit + 1):
                t = core.log.term(i)
                self.committed_by.setdefault(i, core.term)  # >= the term of the leader that committed it
                if self.committed.setdefault(i, t) != t:
                    self.fail(f"committed entry {i} changed term {self.committed[i]} -> {t} on node {node.id}")
            node.commit_seen = core.log.commit
            if core.log.applied - core.log.snapshot.index >= self.snapshot_every:
                snap = core.compact(core.log.applied, node.sm.snapshot())
                try:
                    node.storage.compact(snap)
                except SimCrash:
                    self._crash(node, torn=False)
                    return
        if node.up and core.state == LEADER:
            if self.leaders.setdefault(core.term, node.id) != node.id:
                self.fail(f"two leaders in term {core.term}: {self.leaders[core.term]} and {node.id}")
            if node.led_term != core.term:
                node.led_term = core.term
                self.stats["elections"] += 1
                self.trace(f"n{node.id} leads term {core.term} voters {core.voters} learners {core.learners}")
                for i, t in self.committed.items():
                    # Paper 5.4: leaders of *later* terms hold every committed entry. A delayed
                    # election can still crown a leader of an older term that lacks it.
                    if self.committed_by[i] < core.term and i > core.log.snapshot.index and core.log.term(i) != t:
                        self.fail(f"leader completeness: leader {node.id} term {core.term} lacks committed {i}")

    def _on_apply(self, node: SimNode, e: Entry) -> None:
        if e.index != node.applied + 1:
            self.fail(f"node {node.id} applied {e.index} after {node.applied}")
        node.applied = e.index
        key = (e.term, e.kind, e.data)
        if self.applied_by_index.setdefault(e.index, key) != key:
            self.fail(f"state machine safety: node {node.id} applied a different entry at {e.index}")
        h = node.sm.h
        if self.sm_hash.setdefault(e.index, h) != h:
            self.fail(f"node {node.id} state after {e.index} differs from the others")

    def send(self, m: AnyMessage) -> None:
        self.stats["messages"] += 1
        if type(m).__name__ == "InstallSnapshot":
            self.stats["snapshots_sent"] += 1
        if (m.src, m.dst) in self.blocked:
            return
        if self.net_lossy and self.rng.random() < self.drop_p:
            return
        data = encode(m)
        copies = 2 if self.net_lossy and self.rng.random() < self.dup_p else 1
        for _ in range(copies):
            self._schedule(1 + self.rng.randrange(self.delay_max_ms), "msg", data)

    # -- faults and clients -------------------------------------------------------------------------
    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.up_nodes():
            if n.core.state == LEADER and (best is None or n.core.term > best.core.term):
                best = n
        return best

    def propose(self) -> None:
        node = self.leader()
        if node is None:
            return
        try:
            node.core.propose(b"v%d" % self.seq)
        except (NotLeader, ProposalRejected):
            return
        self.process(node)

    def fault(self) -> None:
        r = self.rng
        roll = r.random()
        ups = self.up_nodes()
        downs = [n for n in self.nodes.values() if not n.up]
        if roll < 0.25:
            ids = list(NODE_IDS)
            r.shuffle(ids)
            k = r.randrange(1, len(ids))
            a, b = set(ids[:k]), set(ids[k:])
            self.blocked = {(x, y) for x in a for y in b}
            if r.random() < 0.7:
                self.blocked |= {(y, x) for x in a for y in b}
            self.trace(f"partition {sorted(a)} | {sorted(b)}")
        elif roll < 0.4:
            self.blocked = set()
            self.trace("heal")
        elif roll < 0.6 and ups:
            node = r.choice(ups)
            if r.random() < 0.5:
                node.disk.arm_crash()  # dies inside its next fsync
            else:
                self._crash(node, torn=False)
            self._schedule(r.randrange(50, 400), "restart", node.id)
        elif roll < 0.65 and ups:
            for node in ups:
                self._crash(node, torn=True)  # power loss everywhere
                self._schedule(r.randrange(50, 400), "restart", node.id)
        elif roll < 0.73 and downs:
            self.corrupt(r.choice(downs))
        elif roll < 0.78 and ups:
            node = r.choice(ups)
            node.paused_until = self.now + r.randrange(50, 600)
            self.trace(f"n{node.id} paused until {node.paused_until}")
        elif roll < 0.88 and self.membership:
            self.change_membership()
        elif roll < 0.93:
            leader = self.leader()
            if leader is not None:
                target = r.choice(NODE_IDS)
                try:
                    leader.core.transfer_leadership(target)
                    self.stats["transfers"] += 1
                except (NotLeader, ProposalRejected):
                    pass
                self.process(leader)

    def corrupt(self, node: SimNode) -> None:
        """Flip one bit in a record that is not the last (damage to the last record cannot be told
        from a torn write; see storage.py). Only one node at a time may lose data."""
        leader = self.leader()
        if leader is None or len(leader.core.voters) < 3 or leader.core.log.conf_index > leader.core.log.commit:
            return  # repair needs healthy peers that hold a majority of a settled configuration
        if self.lossy is not None:
            if not (self.lossy.up and not self.lossy.core.quarantined):
                return
            self.lossy = None
        if node.disk.read(SNAPSHOT) and self.rng.random() < 0.2:
            node.disk.flip_bit(SNAPSHOT, self.rng)
            node.corrupted = True
            self.lossy = node
            self.stats["corruptions"] += 1
            self.trace(f"n{node.id} snapshot bit flip")
            return
        data = node.disk.read(WAL)
        if not data:
            return
        offsets = scan_wal(data).offsets
        if len(offsets) < 3:
            return
        k = self.rng.randrange(len(offsets) - 2)
        node.disk.flip_bit(WAL, self.rng, offsets[k], offsets[k + 1])
        node.corrupted = True
        self.lossy = node
        self.stats["corruptions"] += 1
        self.trace(f"n{node.id} WAL bit flip in record {k}")

    def change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        core, r = leader.core, self.rng
        voters, learners = core.voters, core.learners
        outside = [i for i in NODE_IDS if i not in voters and i not in learners]
        caught_up = [i for i in learners if i in core.progress and core.progress[i].match >= core.log.commit]
        if caught_up and r.random() < 0.7:
            change = ConfChange(ConfChange.ADD, r.choice(caught_up))  # promote a learner
        elif outside and (len(voters) < 3 or r.random() < 0.5):
            op = ConfChange.ADD_LEARNER if r.random() < 0.7 else ConfChange.ADD
            change = ConfChange(op, r.choice(outside))
        elif learners and r.random() < 0.3:
            change = ConfChange(ConfChange.REMOVE, r.choice(learners))
        elif self.lossy is not None and len(voters) <= 3:
            return  # shrinking while a replica repairs would leave no majority without it
        else:
            change = ConfChange(ConfChange.REMOVE, r.choice(voters))
        try:
            leader.core.propose_conf_change(change)
            self.stats["conf_changes"] += 1
            self.trace(f"n{leader.id} proposes {change}")
        except (NotLeader, ProposalRejected):
            return
        self.process(leader)

    # -- main loop ----------------------------------------------------------------------------------
    def step_event(self) -> None:
        t, _, kind, payload = heapq.heappop(self.events)
        self.now = t
        if kind == "msg":
            m = decode_message(payload)
            node = self.nodes[m.dst]
            if node.paused_until > self.now:
                self._schedule(node.paused_until - self.now, "msg", payload)  # waits in the socket
            elif node.up and (m.src, m.dst) not in self.blocked:
                node.core.step(m)
                self.process(node)
        elif kind == "tick":
            node = self.nodes[payload]
            if node.up and node.paused_until <= self.now:
                node.core.tick()
                self.process(node)
            self._schedule(node.tick_ms, "tick", payload)
        elif kind == "restart":
            node = self.nodes[payload]
            if not node.up:
                self._start(node)
                self.trace(f"n{node.id} restarts term {node.core.term} log {node.core.log.last_index}")
                self.process(node)
        elif kind == "propose":
            if self.faults_on or self.rng.random() < 0.3:
                self.propose()
            self._schedule(self.propose_every_ms, "propose", None)
        elif kind == "fault":
            if self.faults_on:
                self.fault()
                self._schedule(self.rng.randrange(1, 2 * self.fault_every_ms), "fault", None)
        else:
            raise AssertionError(kind)

    def run(self) -> dict:
        self._schedule(self.propose_every_ms, "propose", None)
        self._schedule(self.fault_every_ms, "fault", None)
        while self.events and self.events[0][0] < fault_phase_ms:
            self.step_event()
        self.faults_on = False
        self.net_lossy = False
        self.blocked = set()
        for node in self.nodes.values():
            node.disk.armed = False
            node.paused_until = min(node.paused_until, self.now)
            if not node.up:
                self._schedule(0, "restart", node.id)
        self.trace("faults stop: healing")
        deadline = fault_phase_ms + heal_phase_ms
        marker = None
        while self.now < deadline:
            for _ in range(200):
                self.step_event()
            leader = self.leader()
            if leader is None:
                continue
            if marker is None or marker[1] != leader.core.term:
                try:
                    marker = (leader.core.propose(b"final"), leader.core.term)
                except (NotLeader, ProposalRejected):
                    continue
                self.process(leader)
            members = leader.core.voters + leader.core.learners
            if all(self.nodes[v].up and self.nodes[v].applied >= marker[0] for v in members) and \
                    self.applied_by_index.get(marker[0], (0,))[0] == marker[1]:
                return self.final_checks(leader, marker[0])
        self.fail(f"liveness: no convergence {heal_phase_ms}ms after the faults stopped "
                  f"(leader={self.leader() and self.leader().id}, "
                  f"states={[(n.id, n.up and n.core.state, n.up and n.core.term, n.applied) for n in self.nodes.values()]})")

    def final_checks(self, leader: SimNode, marker: int) -> dict:
        for i, t in self.committed.items():
            if i <= marker and self.applied_by_index.get(i, (None,))[0] != t:
                self.fail(f"committed entry {i} (term {t}) was never applied")
        hashes = {self.nodes[v].sm.h for v in leader.core.voters if self.nodes[v].applied == marker}
        if len(hashes) > 1:
            self.fail(f"voters diverged at {marker}: {hashes}")
        ups = [n for n in self.nodes.values() if n.up]
        for a in ups:  # log matching over every pair of logs: same (index, term) means same prefix
            for b in ups:
                if a.id < b.id:
                    self._check_log_matching(a.core, b.core)
        self.stats.update(seed=self.seed, applied=marker, terms=max(self.leaders) if self.leaders else 0)
        return self.stats

    def _check_log_matching(self, a: RaftCore, b: RaftCore) -> None:
        lo = max(a.log.first_index, b.log.first_index)
        hi = min(a.log.last_index, b.log.last_index)
        matched = False
        for i in range(hi, lo - 1, -1):
            same = a.log.term(i) == b.log.term(i)
            if matched and not same:
                self.fail(f"log matching: nodes {a.id} and {b.id} agree at an index above {i} but not at {i}")
            matched = matched or same
            if matched and a.log.entry(i) != b.log.entry(i):
                self.fail(f"log matching: nodes {a.id} and {b.id} differ at {i}")


def run_seed(seed: int, trace: bool = False) -> dict:
    return Simulation(seed, trace).run()


def main(argv: list[str]) -> None:
    seed = int(argv[0])
    stats = run_seed(seed, trace="--trace" in argv)
    print(stats)


if __name__ == "__main__":
    main(sys.argv[1:])
