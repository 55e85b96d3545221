"""Deterministic simulation of a Raft cluster: every choice comes from one seed.

N nodes run the real core and the real Storage (on SimDisk) in one process, with the same
persist -> send -> apply -> advance cycle as the trio drivers (`raft.cycle`). A discrete-event
loop delivers messages through a network that drops, duplicates, delays (hence reorders) and
partitions them (symmetric splits and one-way link cuts); a few messages are held back for
hundreds of milliseconds and arrive terms later. Nodes crash (losing unsynced writes,
sometimes in the middle of a save, sometimes all at once), pause (frozen, inbox waiting), run on
slightly skewed clocks, restart from disk, get a WAL or snapshot bit flipped while down, change
membership and transfer leadership.

Besides uniform random faults, targeted schedules go after the classic bugs: a leader that
replicates to a minority and then crashes (divergent uncommitted suffixes), then Figure 8 step
by step (the next leader cut off as it wins, the one after at its first commit), leaders that
die or are cut off right after winning (elections in quick succession), a voter that dies in
the fsync of its vote while a second candidate of the same term asks it, several nodes
campaigning at once (split votes in one term), storms of long-delayed messages, transports
reporting a dead peer (RaftCore.peer_down), sometimes wrongly. Which fault
kinds a run uses, and how often, is drawn per seed (swarm testing); during the run a small
search favours the fault kinds that lately led to protocol states not seen before in this run
(term changes by cause, truncations by depth, leaders holding uncommitted older-term entries,
commits of older-term entries, snapshot installs, configuration rollbacks). All of it is driven
by the seed's generator, so a seed replays exactly.

Checked on every run:

  election safety        at most one leader per term (paper 5.2); no node grants two
                         candidates its vote in one term
  log matching           an (index, term) names one entry everywhere (5.3)
  leader completeness    a new leader holds every committed entry (5.4)
  state machine safety   every node applies the same entry at each index, in order (5.4.3)
  no uncommitted apply   an entry applied anywhere is durable on a majority of a configuration
  durability             a restarted node has every write it fsynced; term and vote never go
                         back; every proposal acknowledged to its proposer stays applied
  monotonic              commit and applied never go back within a node's life
  pre-vote               with pre-vote, a timeout never raises a term; a term only rises on a
                         message that carries it, a won pre-vote or a TimeoutNow
  check-quorum           a leader that heard from no majority for two election timeouts of
                         its own ticks has stepped down
  transfer               TimeoutNow goes only to a target holding the leader's whole log
  no loss                every committed entry is applied by every final voter and learner
  liveness               after the faults heal, a leader commits a new entry on every member

Replay one seed with: RAFT_SIM_SEED=<seed> python -m pytest tests/raft/test_sim.py -q
or: python -m tests.raft.sim <seed> [--trace]
"""

from __future__ import annotations

import collections
import heapq
import random
import sys
import zlib

from raft.core import CANDIDATE, LEADER, NotLeader, ProposalRejected, RaftConfig, RaftCore, quorum
from raft.messages import (
    CONF,
    NORMAL,
    AnyMessage,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    RequestVote,
    TimeoutNow,
    VoteResponse,
    decode_conf,
    decode_message,
    encode,
)
from raft.node import deliver_ready, send_leader_messages_early
from raft.storage import SNAPSHOT, Storage, StorageCorruption, wal_records
from tests.raft.simdisk import SimCrash, SimDisk

NODE_IDS = (1, 2, 3, 4, 5)
tick_ms = 10
fault_phase_ms = 2000
heal_phase_ms = 4000  # after the faults stop, the cluster must converge within this
segment_bytes = 2048  # small WAL segments, so runs roll, compact and truncate across them
FAULT_KINDS = ("partition", "links", "heal", "crash", "crash_leader", "power_loss", "corrupt", "pause",
               "membership", "transfer", "minority", "fragile", "campaign", "delay_storm", "vote_crash",
               "false_peer_down", "lossy_vote")


FATES = ("cut", "crash", "commit_cut", "none")  # of a leader elected while leaders are fragile


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
        self.on_disk: dict[int, int] = {}  # while down: index -> term of the entries its disk holds
        self.on_disk_snap = 0  # while down: the index of its snapshot on disk
        self.led_term = 0
        self.fragile_commit = False  # cut it off at its first commit as leader (see Simulation.process)
        self.commit_at_win = 0
        self.fragile_commit_hold = False
        self.leader_ticks = 0  # ticks since it became leader of led_term
        self.heard: dict[int, int] = {}  # voter -> leader_ticks when its last AppendResponse came in
        self.voters_seen: tuple[int, ...] = ()
        self.voters_tick = 0  # leader_ticks when the voters last changed
        self.tick_ms = tick_ms  # this node's clock: skewed a little per node
        self.restart_ms = 0  # armed to die in its next fsync: restart this long after
        self.paused_until = 0  # a frozen process (SIGSTOP, GC, VM pause): no ticks, inbox waits
        self.initial_conf = ConfState(())  # the bootstrap configuration, used while the disk is empty


class Simulation:
    def __init__(self, seed: int, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.trace_on = trace
        r = self.rng
        self.n_initial = r.choice((1, 3, 3, 5, 5))
        self.drop_p = r.choice((0.0, 0.02, 0.1, 0.2))
        self.dup_p = r.choice((0.0, 0.02, 0.1))
        self.delay_max_ms = r.choice((2, 10, 40))
        self.long_delay_p = r.choice((0.0, 0.002, 0.01, 0.03))  # held back 100-1500 ms: terms later
        self.fault_every_ms = r.choice((60, 150, 400))
        self.membership = r.random() < 0.5
        # A removed server that never heard of its removal keeps campaigning; only the leader
        # lease (check-quorum) stops it from deposing leaders (dissertation 4.2.3).
        check_quorum = self.membership or r.random() < 0.8
        self.snapshot_every = r.choice((8, 30, 1000))
        self.propose_every_ms = r.choice((5, 15, 40))
        self.cfg = dict(election_ticks=r.choice((6, 10, 10, 15)), heartbeat_ticks=r.choice((1, 1, 2)),
                        pre_vote=r.random() < 0.8,
                        check_quorum=check_quorum, append_entries_max=r.choice((1, 1, 2, 8, 64)))
        # Swarm testing: each seed uses its own mix of fault kinds, some of them not at all.
        self.fault_weight = {k: r.choice((0.0, 0.5, 1.0, 1.0, 2.0)) for k in FAULT_KINDS}
        if not self.membership:
            self.fault_weight["membership"] = 0.0
        if not any(self.fault_weight.values()):
            self.fault_weight["crash_leader"] = 1.0
        self.peer_down_p = r.choice((0.0, 0.5, 1.0))  # RaftCore.peer_down calls when a node dies
        if not self.peer_down_p:
            self.fault_weight["false_peer_down"] = 0.0
        self.fault_uses = dict.fromkeys(FAULT_KINDS, 0)
        self.fault_gain = dict.fromkeys(FAULT_KINDS, 0)
        self.last_fault: str | None = None
        self.seen: set[tuple] = set()  # protocol-state features reached in this run
        self.novel = 0  # features first reached since the last fault
        self.nodes = {i: SimNode(i) for i in NODE_IDS}
        self.blocked: set[tuple[int, int]] = set()  # directed links down by partition faults
        self.cuts: collections.Counter = collections.Counter()  # links down by a scenario, until uncut
        self.scenario_until = 0  # a scenario runs undisturbed by other faults until then
        self.drop_votes = (0, 0, 0)  # (candidate, the one voter its vote requests reach, until)
        self.vote_crash = (0, 0, 0, False, 0)  # (candidate, next candidate, voter, in fsync?, until)
        self.held: dict[int, tuple] = {}  # nodes a scenario keeps down and cut off -> their cut links
        self.events: list = []
        self.seq = 0
        self.now = 0
        self.leaders: dict[int, int] = {}
        self.votes: dict[tuple[int, int], int] = {}  # (term, voter) -> the candidate it voted for
        self.committed: dict[int, int] = {}  # index -> term, from every node's commit index
        self.committed_by: dict[int, int] = {}  # index -> term of the first node seen committing it
        self.applied_by_index: dict[int, tuple[int, int, bytes]] = {}
        self.sm_hash = {0: 0}  # index -> HashMachine.h after applying up to index
        self.log_terms: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.conf_entries: list[tuple[int, ConfState]] = []  # every configuration entry ever written
        self.conf_seen: set[tuple[int, int]] = set()
        self.proposed: dict[tuple[int, int], tuple[int, bytes]] = {}  # (leader, index) -> (term, data)
        self.acked: dict[int, tuple[int, bytes]] = {}  # index -> (term, data) applied on its proposer
        self.stats = dict(messages=0, crashes=0, elections=0, snapshots_sent=0, corruptions=0,
                          conf_changes=0, transfers=0, truncations=0, features=0)
        self.faults_on = True
        self.fragile_until = 0  # until then, new leaders are crashed or cut off soon after winning
        self.fragile_plan: list[str] = []  # what happens to each of the next leaders, in order
        self.storm_until = 0  # until then, many messages are held back for long
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

    def feature(self, f: tuple) -> None:
        if f not in self.seen:
            self.seen.add(f)
            self.novel += 1

    def _schedule(self, delay_ms: int, kind: str, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (self.now + delay_ms, self.seq, kind, payload))

    def _start(self, node: SimNode, repair: bool = False) -> None:
        try:
            node.storage = Storage.open(node.disk, node.initial_conf, repair=repair, segment_bytes=segment_bytes)
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
        self.feature(("restart", hs.quarantined, bool(snap.index), min(len(entries), 3)))

    def _crash(self, node: SimNode, torn: bool) -> None:
        core = node.core
        node.crash_stable = [(e.index, e.term) for e in core.log.entries if e.index <= core.log.stable]
        node.crash_term = core.persisted_hard_state.term
        node.crash_vote = core.persisted_hard_state.vote
        node.disk.crash(self.rng, torn=torn)
        node.restart_ms = 0
        node.on_disk = {e.index: e.term for _, _, _, e in wal_records(node.disk)}
        node.on_disk_snap = node.storage.snapshot.index
        node.up = False
        node.core = None
        self.stats["crashes"] += 1
        if self.peer_down_p:
            for other in NODE_IDS:  # its routes close: the others' transports notice (or not)
                if other != node.id and self.rng.random() < self.peer_down_p:
                    self._schedule(self.rng.randrange(0, 5), "peer_down", (other, node.id))
        self.trace(f"n{node.id} crashes (torn={torn})")

    def crash_and_restart(self, node: SimNode, restart_ms: int) -> None:
        if not node.up:
            return
        if self.rng.random() < 0.5:
            self.arm_crash(node, restart_ms)
        else:
            self._crash(node, torn=self.rng.random() < 0.3)
            self._schedule(restart_ms, "restart", node.id)

    def arm_crash(self, node: SimNode, restart_ms: int) -> None:
        """The node dies inside its next fsync, and restarts `restart_ms` after that."""
        node.disk.arm_crash()
        node.restart_ms = restart_ms

    def _crash_in_fsync(self, node: SimNode, torn: bool) -> None:
        restart_ms = node.restart_ms
        self._crash(node, torn=torn)
        if restart_ms:
            self._schedule(restart_ms, "restart", node.id)

    # -- the cycle ---------------------------------------------------------------------------------
    def process(self, node: SimNode) -> None:
        core = node.core
        while node.up and core.has_ready():
            rd = core.ready()
            for e in rd.entries:
                seen = self.log_terms.setdefault((e.index, e.term), (e.kind, e.data))
                if seen != (e.kind, e.data):
                    self.fail(f"log matching: two different entries at index {e.index} term {e.term}")
                if e.kind == CONF and seen is not None and (e.index, e.term) not in self.conf_seen:
                    self.conf_seen.add((e.index, e.term))
                    self.conf_entries.append((e.index, decode_conf(e.data)))
            if rd.entries and rd.snapshot is None and rd.entries[0].index <= node.storage.last_index:
                depth = node.storage.last_index - rd.entries[0].index + 1
                self.stats["truncations"] += 1
                self.feature(("truncate", min(depth, 4), core.state, rd.entries[0].term - core.log.term(rd.entries[0].index - 1)
                              if core.log.term(rd.entries[0].index - 1) is not None else -1))
            if rd.snapshot is not None:
                self.feature(("snapshot_install", core.state, rd.snapshot.index > node.applied + 10))
            send_leader_messages_early(rd, self.send)
            try:
                node.storage.save(rd.hard_state, rd.snapshot, rd.entries)
            except SimCrash:
                self._crash_in_fsync(node, torn=True)
                return
            deliver_ready(core, rd, lambda m: self.send(m), node.sm, lambda e, r: self._on_apply(node, e))
            if rd.snapshot is not None:
                node.applied = rd.snapshot.index
                if self.sm_hash.get(rd.snapshot.index) != node.sm.h:
                    self.fail(f"node {node.id} installed a snapshot at {rd.snapshot.index} that differs")
            if core.log.commit < node.commit_seen:
                self.fail(f"node {node.id} commit went back {node.commit_seen} -> {core.log.commit}")
            old_term_commits = 0
            for i in range(max(node.commit_seen, core.log.snapshot.index) + 1, core.log.commit + 1):
                t = core.log.term(i)
                old_term_commits += t < core.term
                self.committed_by.setdefault(i, core.term)  # >= the term of the leader that committed it
                if self.committed.setdefault(i, t) != t:
                    self.fail(f"committed entry {i} changed term {self.committed[i]} -> {t} on node {node.id}")
            if old_term_commits and core.state == LEADER:
                self.feature(("commit_older_terms", min(old_term_commits, 4)))
            node.commit_seen = core.log.commit
            if core.log.applied - core.log.snapshot.index >= self.snapshot_every:
                snap = core.compact(core.log.applied, node.sm.snapshot())
                try:
                    node.storage.compact(snap)
                except SimCrash:
                    self._crash_in_fsync(node, torn=False)
                    return
        if node.up and core.state == LEADER:
            if self.leaders.setdefault(core.term, node.id) != node.id:
                self.fail(f"two leaders in term {core.term}: {self.leaders[core.term]} and {node.id}")
            if node.led_term != core.term:
                self._new_leader(node)
            elif node.fragile_commit and core.log.commit > node.commit_at_win and self.faults_on:
                # Figure 8: cut off right after its first commit, while that commit's follow-up
                # appends (its own no-op) are still on the wire.
                node.fragile_commit = False
                if node.fragile_commit_hold:
                    self._hold(node)
                else:
                    self._cut_now(node, 100, 600)

    def _hold(self, node: SimNode) -> None:
        """Scenario step: revive the nodes held down by the previous step, then cut `node` off
        (its messages in flight are lost) and take it down until the next step revives it."""
        for nid in self.held:
            self._schedule(self.rng.randrange(5, 60), "revive", nid)
        cut = tuple((node.id, p) for p in NODE_IDS if p != node.id)
        self.cuts.update(cut)
        self.held[node.id] = cut
        self._crash(node, torn=False)
        self._schedule(1500, "revive", node.id)  # in case the scenario stalls
        self.trace(f"n{node.id} held down")

    def _cut_now(self, node: SimNode, lo_ms: int, hi_ms: int) -> None:
        """Every link out of `node` fails now (what it has in flight is lost too) for a while,
        and often the node also goes down then (restarting as a follower, not a stale leader)."""
        cut = tuple((node.id, p) for p in NODE_IDS if p != node.id)
        self.cuts.update(cut)
        self._schedule(self.rng.randrange(lo_ms, hi_ms), "uncut", cut)
        self.trace(f"n{node.id} cut off")
        if self.rng.random() < 0.6:
            self._crash(node, torn=False)
            self._schedule(self.rng.randrange(50, 500), "restart", node.id)

    def linked(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.blocked and not self.cuts[(src, dst)]

    def _new_leader(self, node: SimNode) -> None:
        core = node.core
        node.led_term = core.term
        node.leader_ticks = 0
        node.heard = {}
        node.voters_seen = core.voters
        node.voters_tick = 0
        self.stats["elections"] += 1
        self.trace(f"n{node.id} leads term {core.term} voters {core.voters} learners {core.learners}")
        for i, t in self.committed.items():
            # Paper 5.4: leaders of *later* terms hold every committed entry. A delayed
            # election can still crown a leader of an older term that lacks it.
            if self.committed_by[i] < core.term and i > core.log.snapshot.index and core.log.term(i) != t:
                self.fail(f"leader completeness: leader {node.id} term {core.term} lacks committed {i}")
        log = core.log
        older = sum(1 for i in range(log.commit + 1, log.last_index + 1) if log.term(i) < core.term)
        ups = self.up_nodes()
        last_terms = {n.core.log.last_term for n in ups}
        stale = sum(1 for n in ups if n.core.state == LEADER and n.core.term < core.term)
        self.feature(("leader", min(older, 4), min(len(last_terms), 3), min(stale, 2), core.log.last_term < core.term - 1))
        node.fragile_commit = False
        node.commit_at_win = core.log.commit
        if self.faults_on and self.now < self.fragile_until:
            # Elections in quick succession: this leader is cut off the moment it wins (its
            # no-op stays on it alone), or dies soon after, or is cut off at its first commit.
            fate = self.fragile_plan.pop(0) if self.fragile_plan else self.rng.choice(FATES)
            self.trace(f"n{node.id} fate: {fate}")
            if fate == "cut":
                self._cut_now(node, 50, 300)
            elif fate == "hold":
                self._hold(node)
            elif fate == "crash":
                self._schedule(self.rng.randrange(0, 25), "crash", (node.id, 20, 300))
            elif fate in ("commit_cut", "commit_hold"):
                node.fragile_commit = True
                node.fragile_commit_hold = fate == "commit_hold"

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
        self._check_committed_before_apply(node, e)
        if self.proposed.pop((node.id, e.index), None) == (e.term, e.data):
            self.acked[e.index] = (e.term, e.data)  # the proposer learns its command committed

    def _check_committed_before_apply(self, node: SimNode, e: Entry) -> None:
        """An applied entry must be durable on a majority of the voters of its configuration (or
        of a later one, which may have committed it): data a minority holds is not committed."""
        holders = {node.id}
        for n in self.nodes.values():
            if n is node:
                continue
            if n is self.lossy and (not n.up or n.core.quarantined):
                holders.add(n.id)  # it may have held the entry before its repair cut it
                continue
            if n.up:
                log = n.core.log
                if e.index <= log.snapshot.index or (e.index <= log.stable and log.term(e.index) == e.term):
                    holders.add(n.id)
            elif e.index <= n.on_disk_snap or n.on_disk.get(e.index) == e.term:
                holders.add(n.id)
        # A later configuration may have committed it, even one the applier has not received.
        confs = [node.core.log.conf_at(e.index)] + [c for i, c in self.conf_entries if i > e.index]
        confs = [c for c in confs if c.voters]
        if confs and not any(len(holders & set(c.voters)) >= quorum(len(c.voters)) for c in confs):
            self.fail(f"node {node.id} applied {e.index} (term {e.term}) held durably only by {sorted(holders)}, "
                      f"no majority of {[c.voters for c in confs]}")

    def send(self, m: AnyMessage) -> None:
        self.stats["messages"] += 1
        if type(m) is VoteResponse and m.granted and not m.pre_vote:
            self.trace(f"n{m.src} votes for n{m.dst} in term {m.term}")
            if self.votes.setdefault((m.term, m.src), m.dst) != m.dst:
                self.fail(f"node {m.src} voted for {self.votes[(m.term, m.src)]} and {m.dst} in term {m.term}")
        elif type(m) is TimeoutNow:
            self._check_transfer(m)
        elif type(m).__name__ == "InstallSnapshot":
            self.stats["snapshots_sent"] += 1
        if not self.linked(m.src, m.dst):
            return
        if type(m) is RequestVote and not m.pre_vote and m.src == self.drop_votes[0] and \
                m.dst != self.drop_votes[1] and self.now < self.drop_votes[2]:
            return
        if self.net_lossy and self.rng.random() < self.drop_p:
            return
        data = encode(m)
        copies = 2 if self.net_lossy and self.rng.random() < self.dup_p else 1
        for _ in range(copies):
            delay = 1 + self.rng.randrange(self.delay_max_ms)
            if self.net_lossy and (self.rng.random() < self.long_delay_p or
                                   (self.now < self.storm_until and self.rng.random() < 0.3)):
                delay += self.rng.randrange(100, 1500)
            self._schedule(delay, "msg", data)

    def _check_transfer(self, m: TimeoutNow) -> None:
        """Dissertation 3.10: the leader catches the target up before telling it to campaign."""
        leader, target = self.nodes[m.src].core, self.nodes[m.dst]
        if not target.up or target.core.term != m.term or target.core.quarantined:
            return  # down (its disk is checked on restart), or it moved on to a later term
        log, tlog = leader.log, target.core.log
        if log.last_index > tlog.snapshot.index and tlog.term(log.last_index) != log.last_term:
            self.fail(f"leader {m.src} sent TimeoutNow to {m.dst}, which lacks its last entry "
                      f"{log.last_index} (target log ends at {tlog.last_index})")

    def deliver(self, node: SimNode, m: AnyMessage) -> None:
        c1, c2, voter, in_fsync, until = self.vote_crash
        if m.src == c1 and m.dst == voter and type(m) is RequestVote and not m.pre_vote and self.now < until \
                and self.faults_on:
            self.vote_crash = (0, 0, 0, False, 0)
            restart_ms = self.rng.randrange(3, 40)
            self._schedule(restart_ms + self.rng.randrange(5, 40), "campaign", c2)
            if in_fsync:
                self.arm_crash(node, restart_ms)  # dies inside the fsync of its vote
            else:
                self._deliver(node, m)
                if node.up:
                    self._crash(node, torn=False)  # dies right after its vote went out
                    self._schedule(restart_ms, "restart", node.id)
                return
        self._deliver(node, m)

    def _deliver(self, node: SimNode, m: AnyMessage) -> None:
        core = node.core
        old_term, old_state, old_conf = core.term, core.state, core.log.conf_index
        core.step(m)
        if core.term > old_term:
            # A term only rises to a term a message carries, after a won pre-vote (whose grants
            # carry the new term), or by one on TimeoutNow.
            ok = core.term == m.term or (type(m) is TimeoutNow and core.term == m.term + 1)
            if not ok or (type(m) is RequestVote and m.pre_vote):
                self.fail(f"node {node.id} term {old_term} -> {core.term} on {type(m).__name__} of term {m.term}")
            self.feature(("term", type(m).__name__, getattr(m, "pre_vote", None), old_state, core.state))
        if old_state == CANDIDATE and core.state != CANDIDATE and core.state != LEADER and core.term == old_term:
            self.feature(("election_lost", type(m).__name__))
        if core.log.conf_index < old_conf:
            self.feature(("conf_rollback", core.state))
        if type(m) is AppendResponse and core.state == LEADER and m.term == core.term:
            node.heard[m.src] = node.leader_ticks
        self.process(node)

    def tick(self, node: SimNode) -> None:
        core = node.core
        old_term, voters, was_leader = core.term, core.voters, core.state == LEADER
        core.tick()
        if core.term > old_term:
            if self.cfg["pre_vote"] and voters != (node.id,):
                self.fail(f"pre-vote: node {node.id} raised its term {old_term} -> {core.term} on a timeout")
            if core.term > old_term + 1:
                self.fail(f"node {node.id} jumped from term {old_term} to {core.term} on a timeout")
        self.process(node)
        if was_leader and node.up and core.state == LEADER and core.term == node.led_term:
            node.leader_ticks += 1
            self._check_quorum_contact(node)

    def _check_quorum_contact(self, node: SimNode) -> None:
        """Check-quorum (dissertation 6.2): the leader looks at who answered every election
        timeout, so one that heard from no majority for two of them must have stepped down."""
        if not self.cfg["check_quorum"]:
            return
        core, span = node.core, 2 * self.cfg["election_ticks"]
        if core.voters != node.voters_seen:
            node.voters_seen, node.voters_tick = core.voters, node.leader_ticks
        t = node.leader_ticks
        if t < span or t - node.voters_tick < span + self.cfg["election_ticks"]:
            return
        recent = {v for v in core.voters if v == node.id or t - node.heard.get(v, 0) < span}
        if len(recent) < quorum(len(core.voters)):
            self.fail(f"check-quorum: leader {node.id} of term {core.term} heard only from {sorted(recent)} "
                      f"of {core.voters} in its last {span} ticks and still leads")

    # -- faults and clients -------------------------------------------------------------------------
    def up_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up]

    def leader(self) -> SimNode | None:
        best = None
        for n in self.up_nodes():
            if n.core.state == LEADER and (best is None or n.core.term > best.core.term):
                best = n
        return best

    def propose(self, any_leader: bool = False) -> None:
        leaders = [n for n in self.up_nodes() if n.core.state == LEADER]
        if not leaders:
            return
        # Mostly the newest leader; sometimes a stale one, whose entries must later be cut.
        node = self.rng.choice(leaders) if any_leader else self.leader()
        try:
            data = b"v%d" % self.seq
            index = node.core.propose(data)
            self.proposed[(node.id, index)] = (node.core.term, data)
        except (NotLeader, ProposalRejected):
            return
        self.process(node)

    def fault(self) -> None:
        if self.now < self.scenario_until:
            return
        if self.last_fault is not None:
            self.fault_gain[self.last_fault] += self.novel
        self.novel = 0
        weights = [self.fault_weight[k] * (1 + 3 * self.fault_gain[k] / (1 + self.fault_uses[k])) for k in FAULT_KINDS]
        kind = self.rng.choices(FAULT_KINDS, weights)[0]
        self.fault_uses[kind] += 1
        self.last_fault = kind
        getattr(self, "fault_" + kind)()

    def fault_partition(self) -> None:
        r = self.rng
        ids = list(NODE_IDS)
        r.shuffle(ids)
        k = r.randrange(1, len(ids))
        a, b = set(ids[:k]), set(ids[k:])
        self.blocked = {(x, y) for x in a for y in b}
        if r.random() < 0.7:
            self.blocked |= {(y, x) for x in a for y in b}
        self.trace(f"partition {sorted(a)} | {sorted(b)}")

    def fault_links(self) -> None:
        """Asymmetric: each directed link is cut on its own."""
        p = self.rng.choice((0.15, 0.3, 0.5))
        self.blocked = {(x, y) for x in NODE_IDS for y in NODE_IDS if x != y and self.rng.random() < p}
        self.trace(f"links cut {sorted(self.blocked)}")

    def fault_heal(self) -> None:
        self.blocked = set()
        self.trace("heal")

    def fault_crash(self) -> None:
        ups = self.up_nodes()
        if ups:
            self.crash_and_restart(self.rng.choice(ups), self.rng.randrange(50, 400))

    def fault_crash_leader(self) -> None:
        leader = self.leader()
        if leader is not None:
            self.crash_and_restart(leader, self.rng.randrange(20, 400))

    def fault_power_loss(self) -> None:
        for node in self.up_nodes():
            self._crash(node, torn=True)  # power loss everywhere
            self._schedule(self.rng.randrange(50, 400), "restart", node.id)

    def fault_corrupt(self) -> None:
        downs = [n for n in self.nodes.values() if not n.up]
        if downs:
            self.corrupt(self.rng.choice(downs))

    def fault_pause(self) -> None:
        ups = self.up_nodes()
        if ups:
            node = self.rng.choice(ups)
            node.paused_until = self.now + self.rng.randrange(50, 600)
            self.trace(f"n{node.id} paused until {node.paused_until}")

    def fault_membership(self) -> None:
        self.change_membership()

    def fault_transfer(self) -> None:
        leader = self.leader()
        if leader is not None:
            target = self.rng.choice(NODE_IDS)
            try:
                leader.core.transfer_leadership(target)
                self.stats["transfers"] += 1
            except (NotLeader, ProposalRejected):
                pass
            self.process(leader)

    def fault_minority(self) -> None:
        """The leader keeps only a minority of followers in reach, appends a few entries (they
        reach that minority only), and crashes soon after: divergent uncommitted suffixes."""
        leader = self.leader()
        if leader is None:
            return
        r, core = self.rng, leader.core
        others = [v for v in core.voters if v != leader.id]
        keep = set(r.sample(others, r.randrange(0, max(1, quorum(len(core.voters)) - 1)))) if others else set()
        cut = tuple((leader.id, p) for p in NODE_IDS if p != leader.id and p not in keep)
        self.cuts.update(cut)
        self.trace(f"n{leader.id} reaches only {sorted(keep)}")
        if self.membership and r.random() < 0.5:
            self.change_membership()  # a configuration only a minority holds, to be cut later
        for _ in range(r.randrange(1, 10)):
            self.propose()
        self._schedule(r.randrange(60, 300), "uncut", cut)
        if r.random() < 0.3:
            self._schedule(r.randrange(1, 40), "crash", (leader.id, 150, 500))
            return
        # Figure 8, step by step: this leader (A) goes down holding its minority-only entries.
        # The next leader (B) is cut off as it wins, so its no-op stays on it alone, and goes
        # down while A comes back. The leader after that (A, if it wins) is cut off and taken
        # down at its first commit while B comes back: if that commit counted replicas of A's
        # older-term entries, B can now win and overwrite a committed entry.
        self._schedule(r.randrange(1, 40), "hold", leader.id)
        self.fragile_until = self.now + r.randrange(600, 1500)
        self.fragile_plan = ["hold", "commit_hold"]
        if r.random() < 0.5:
            self.scenario_until = self.fragile_until  # no other fault gets in its way
            self.blocked = set()

    def fault_fragile(self) -> None:
        self.fragile_until = self.now + self.rng.randrange(200, 1000)
        self.fragile_plan = [self.rng.choice(FATES) for _ in range(self.rng.randrange(4))]
        self.trace(f"leaders fragile until {self.fragile_until}")

    def fault_campaign(self) -> None:
        """Several election timeouts fire at once: split votes, competing candidates in one term."""
        ups = [n for n in self.up_nodes() if n.core.state != LEADER]
        for node in self.rng.sample(ups, min(len(ups), self.rng.randrange(1, 4))):
            node.core.campaign()
        for node in ups:
            if node.up:
                self.process(node)

    def fault_vote_crash(self) -> None:
        """A voter dies inside the fsync of the vote it just granted and restarts at once, then a
        second candidate of the same term asks it: a vote that left before its fsync, or was
        never persisted, is given twice."""
        r = self.rng
        ups = [n for n in self.up_nodes() if n.core.state != LEADER and n.id in n.core.voters]
        if len(ups) < 3:
            return
        # The candidates hold the longest logs, so their (pre-)votes can succeed.
        ups.sort(key=lambda n: (n.core.log.last_term, n.core.log.last_index, r.random()), reverse=True)
        c1, c2 = ups[0], ups[1]
        voter = r.choice(ups[2:])
        leader = self.leader()
        if leader is not None:
            self.crash_and_restart(leader, r.randrange(200, 500))
        wait = self.cfg["election_ticks"] * tick_ms + r.randrange(10, 60)  # the followers' leases run out
        until = self.now + wait + 300
        self.scenario_until = max(self.scenario_until, until)
        self.blocked = set()
        # The first candidate's vote requests (not its pre-votes) reach the voter only, so the
        # second candidate still campaigns in the same term.
        self.drop_votes = (c1.id, voter.id, until)
        self.vote_crash = (c1.id, c2.id, voter.id, r.random() < 0.5, until)
        self._schedule(wait, "campaign", c1.id)
        self.trace(f"vote crash: n{voter.id} between candidates n{c1.id} and n{c2.id}")

    def fault_false_peer_down(self) -> None:
        """A transport wrongly reports a live peer down (a route flapped)."""
        a, b = self.rng.sample(NODE_IDS, 2)
        self._schedule(0, "peer_down", (a, b))

    def fault_lossy_vote(self) -> None:
        """A follower acknowledges entries the other follower lacks, the leader goes down, and the
        acknowledging follower's WAL is damaged behind them: repaired, it has lost acknowledged
        entries, and the follower that never had them asks for its vote."""
        leader = self.leader()
        if leader is None or self.lossy is not None:
            return
        core, r = leader.core, self.rng
        if len(core.voters) != 3 or leader.id not in core.voters or core.log.conf_index > core.log.commit:
            return
        q, c = r.sample([self.nodes[v] for v in core.voters if v != leader.id], 2)
        if not (q.up and c.up):
            return
        cut = ((leader.id, c.id),)
        self.cuts.update(cut)
        for _ in range(r.randrange(2, 7)):
            self.propose()
        until = self.now + 700
        self.scenario_until = max(self.scenario_until, until)
        self._schedule(2 * self.delay_max_ms + 10, "lossy_vote", (leader.id, q.id, c.id, cut))
        self.trace(f"lossy vote: n{q.id} acknowledges what n{c.id} lacks")

    def fault_delay_storm(self) -> None:
        self.storm_until = self.now + self.rng.randrange(50, 400)
        self.trace(f"delay storm until {self.storm_until}")

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
        # Records a compaction left below the snapshot may never be read again: not those.
        records = [r for r in wal_records(node.disk) if r[3].index > node.on_disk_snap]
        if len(records) < 3:
            return
        k = self.rng.randrange(len(records) - 2)
        name, lo, hi, _ = records[k]
        node.disk.flip_bit(name, self.rng, lo, hi)
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
            elif node.up and self.linked(m.src, m.dst):
                self.deliver(node, m)
        elif kind == "tick":
            node = self.nodes[payload]
            if node.up and node.paused_until <= self.now:
                self.tick(node)
            self._schedule(node.tick_ms, "tick", payload)
        elif kind == "restart":
            node = self.nodes[payload]
            if not node.up:
                self._start(node)
                self.trace(f"n{node.id} restarts term {node.core.term} log {node.core.log.last_index}")
                self.process(node)
        elif kind == "crash":
            node = self.nodes[payload[0]]
            if self.faults_on and node.up:
                self.crash_and_restart(node, self.rng.randrange(payload[1], payload[2]))
        elif kind == "peer_down":
            node = self.nodes[payload[0]]
            if node.up and node.paused_until <= self.now:
                old_term = node.core.term
                node.core.peer_down(payload[1])
                if self.cfg["pre_vote"] and node.core.term > old_term and node.core.voters != (node.id,):
                    self.fail(f"pre-vote: node {node.id} raised its term on peer_down({payload[1]})")
                self.process(node)
        elif kind == "campaign":
            node = self.nodes[payload]
            if self.faults_on and node.up:
                node.core.campaign()
                self.process(node)
        elif kind == "lossy_vote":
            leader, q, c = (self.nodes[i] for i in payload[:3])
            for link in payload[3]:
                if self.cuts[link] > 0:
                    self.cuts[link] -= 1
            if self.faults_on and leader.up and q.up and c.up and self.lossy is None:
                self._hold(leader)
                self._crash(q, torn=False)
                records = [rec for rec in wal_records(q.disk) if rec[3].index > q.on_disk_snap]
                if len(records) >= 3:
                    name, lo, hi, _ = records[self.rng.randrange(max(0, len(records) - 8), len(records) - 2)]
                    q.disk.flip_bit(name, self.rng, lo, hi)  # behind the entries it acknowledged last
                    q.corrupted = True
                    self.lossy = q
                    self.stats["corruptions"] += 1
                    self.trace(f"n{q.id} WAL bit flip near its end")
                restart = self.rng.randrange(10, 40)
                self._schedule(restart, "restart", q.id)
                self._schedule(restart + self.rng.randrange(10, 60), "campaign", c.id)
        elif kind == "hold":
            if self.faults_on and self.nodes[payload].up:
                self._hold(self.nodes[payload])
        elif kind == "revive":
            cut = self.held.pop(payload, None)
            if cut is not None:
                for link in cut:
                    if self.cuts[link] > 0:
                        self.cuts[link] -= 1
                node = self.nodes[payload]
                if not node.up:
                    self._start(node)
                    self.trace(f"n{node.id} revived term {node.core.term} log {node.core.log.last_index}")
                    self.process(node)
        elif kind == "uncut":
            for link in payload:
                if self.cuts[link] > 0:  # (the heal phase cleared every cut already)
                    self.cuts[link] -= 1
        elif kind == "propose":
            if self.faults_on or self.rng.random() < 0.3:
                self.propose(any_leader=self.faults_on and self.rng.random() < 0.2)
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
        self.cuts.clear()
        for node in self.nodes.values():
            node.disk.armed = False
            node.restart_ms = 0
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
                if not leader.up:
                    continue
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
        for i, (t, data) in self.acked.items():
            if self.applied_by_index.get(i) != (t, NORMAL, data):
                self.fail(f"entry {i} acknowledged to its proposer is not in the final state")
        hashes = {self.nodes[v].sm.h for v in leader.core.voters if self.nodes[v].applied == marker}
        if len(hashes) > 1:
            self.fail(f"voters diverged at {marker}: {hashes}")
        ups = [n for n in self.nodes.values() if n.up]
        for a in ups:  # log matching over every pair of logs: same (index, term) means same prefix
            for b in ups:
                if a.id < b.id:
                    self._check_log_matching(a.core, b.core)
        self.stats.update(seed=self.seed, applied=marker, terms=max(self.leaders) if self.leaders else 0,
                          features=len(self.seen))
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
