"""Deterministic simulation of a three-node JetStream Raft cluster: several groups per node over
one shared transport, the meta group running the real `MetaState`.

Each node is a real `raft.host.RaftHost` (one loop, one ticker) driving three groups: `_meta_`,
whose state machine adapts `broker.jetstream.cluster.meta.MetaState` (as the broker's runtime
does), and `S-A`, `S-B`, append-only lists of (index, payload). Every group's Storage is the
real one, on a `SimDisk` that loses whatever was not fsynced when the node crashes. All hosts
send through one `SimNet`: it routes by (destination node, group) through the wire encoding,
drops, duplicates and delays (hence reorders) messages, holds a few back for a long time, and
blocks links, symmetrically (a route closed: both ends get `peer_down`, then `peer_up` when it
is restored, one route or all at once) or one way (silently, as a half-dead link; also a leader
that can only send or only receive). Nodes crash and restart from their
disks, sometimes by a power loss in the middle of a save (`SimDisk.arm_crash`); route flaps
report a live peer down; leaders step down. A workload proposes random MetaOps (assign, update,
remove, peer names, over a few stream names and placements) and list payloads, mostly to the
current leader, sometimes to whichever node (refusals are part of it).

Determinism: the run is on trio's MockClock (autojump_threshold=0), saves are synchronous
(`fsync_in_thread=False`), every random choice comes from generators seeded from the seed, and
trio's scheduler is put in its deterministic mode (the one its Hypothesis integration uses:
ready tasks sorted by creation, then shuffled by a generator seeded from the seed). A seed
replays exactly; `digest` fingerprints a run.

Checked during the run: every node applies the same payload at each index of a group, in
increasing index order (state machine safety); at most one leader per (group, term); each meta
action agrees with the state it came from (a create/update names the assignment as it now is,
on a node among its peers; remove/removed only for a stream gone; conflict only on the
proposer) and the streams a node incarnation was told to create, minus those it was told to
remove, are exactly the streams placed on it; no group stops with an error other than the
simulated power loss; a crash never leaves a disk that Storage calls corrupt.

Checked after healing (all links restored, nodes restarted, no loss) and a barrier proposal per
group committed and applied everywhere (liveness): each group's state is identical on every
node and equal to replaying every entry any node ever applied, in index order (a list group's
whole history; the meta group's `MetaState.snapshot()` bytes); every proposal acknowledged to
its proposer is at its acknowledged index on every node (durability); the broker-style local
stream set (actions carried out in order, reconciled after a restore, kept across crashes)
equals the streams placed on each node, each local copy made from the assignment as it now
stands (same creation, config as last updated).

Replay one seed: python -m tests.jetstream.clustersim <seed> [--trace]
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import math
import random
import sys
import traceback

import msgspec
import trio
import trio.testing
from trio._core import _run as _trio_run

from broker.jetstream.api import StreamConfig
from broker.jetstream.cluster import meta as m
from raft import ConfState, RaftConfig, Storage, StorageCorruption
from raft.core import NotLeader, ProposalRejected
from raft.cycle import ProposalDropped
from raft.host import RaftGroup, RaftHost
from raft.messages import encode
from tests.raft.simdisk import SimCrash, SimDisk

NAMES = ("n1", "n2", "n3")
IDS = {n: m.raft_id(n) for n in NAMES}
VOTERS = tuple(sorted(IDS.values()))
META = m.META_GROUP
LISTS = ("S-A", "S-B")
GROUPS = (META,) + LISTS
STREAMS = ("ORDERS", "EVENTS", "KV_a", "LOGS")  # few names: creates race, removes hit, re-creates move
TICK = 0.01
SLOT_S = 0.001  # message arrival times are rounded up to this grid
FAULT_S = 2.0  # the fault phase, in virtual seconds
SETTLE_S = 8.0  # after healing, every group must converge within this
FAULT_KINDS = ("isolate", "isolate_leader", "oneway", "heal", "reconnect", "crash", "crash_leader", "power_loss",
               "net", "flap", "step_down")


class SimNet:
    """One transport for every host and group: (dst node, group) routing through the wire
    encoding, seeded loss, duplication, delay and long holds, and link blocks."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hosts: dict[int, RaftHost] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.loss = 0.0
        self.dup = 0.0
        self.hold = 0.0  # chance a message is held back 50-300 ms (arrives terms later)
        self.delay_max = 0.002
        self._heap: list = []
        self._seq = 0
        self._wake = trio.Event()
        self.sent = self.dropped = self.delivered = 0

    def sender(self, src: int):
        def send(group: str, msg) -> None:
            assert msg.src == src, (msg.src, src)
            self.sent += 1
            if (src, msg.dst) in self.blocked or self.rng.random() < self.loss:
                self.dropped += 1
                return
            data = encode(msg)
            now = trio.current_time()
            for _ in range(2 if self.rng.random() < self.dup else 1):
                delay = 0.0002 + self.rng.random() * self.delay_max
                if self.rng.random() < self.hold:
                    delay += self.rng.uniform(0.05, 0.3)
                # Arrivals are batched on a SLOT_S grid (fewer scheduler passes); within a slot
                # they come in random order.
                at = math.ceil((now + delay) / SLOT_S) * SLOT_S
                heapq.heappush(self._heap, (at, self.rng.random(), self._seq, src, msg.dst, group, data))
                self._seq += 1
            self._wake.set()

        return send

    async def run(self) -> None:
        while True:
            if not self._heap:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            at = self._heap[0][0]
            if trio.current_time() < at:
                with trio.move_on_at(at):
                    await self._wake.wait()
                self._wake = trio.Event()
                continue
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, _, src, dst, group, data = heapq.heappop(self._heap)
                host = self.hosts.get(dst)
                if host is None or (src, dst) in self.blocked:  # in flight when the link went
                    self.dropped += 1
                    continue
                self.delivered += 1
                host.deliver_bytes(group, data)


class ListMachine:
    """Append-only history of (index, payload): the whole state, so equal states mean equal
    applied sequences."""

    def __init__(self, sim: "Sim", node: "Node", group: str) -> None:
        self.sim, self.node, self.group = sim, node, group
        self.items: list[tuple[int, bytes]] = []

    def apply(self, entry) -> int:
        if self.items and entry.index <= self.items[-1][0]:
            self.sim.violation(f"{self.node.name}/{self.group}: applied index {entry.index} after {self.items[-1][0]}")
        self.sim.record_apply(self.node, self.group, entry.index, entry.data)
        self.items.append((entry.index, entry.data))
        return len(self.items)

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.items)

    def restore(self, data: bytes) -> None:
        self.sim.restores += self.node.alive  # a leader's snapshot (not our own, at start)
        self.items = [(i, d) for i, d in msgspec.msgpack.decode(data, type=list[tuple[int, bytes]])]
        for i, d in self.items:
            self.sim.check_at(self.node, self.group, i, d, "restored")


class MetaMachine:
    """The broker runtime's adapter: apply -> MetaState.apply(entry.data), snapshot and restore
    delegate; the actions are checked against the state and carried out on a model of the
    node's local streams (kept across crashes, reconciled after a restore, as runtime.py)."""

    def __init__(self, sim: "Sim", node: "Node") -> None:
        self.sim, self.node = sim, node
        self.state = m.MetaState(node.name)
        self.told: set[str] = set()  # streams this incarnation was told to create, minus removes
        self.actions = 0

    def hosted(self) -> set[str]:
        return {n for n, sa in self.state.streams.items() if self.node.name in sa.peers}

    def apply(self, entry) -> list[str]:
        self.sim.record_apply(self.node, META, entry.index, entry.data)
        before = dict(self.state.streams)
        op = m._op_decoder.decode(entry.data)
        acts = self.state.apply(entry.data)
        self._check(acts, before, op, entry.index)
        return [a.kind for a in acts]

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, data: bytes) -> None:
        self.sim.restores += self.node.alive  # a leader's snapshot (not our own, at start)
        before = dict(self.state.streams)
        acts = self.state.restore(data)
        self._check(acts, before, None, None)
        local = self.node.local_streams  # runtime.py queues a reconcile after a restore's actions:
        for name in [n for n in local if n not in self.hosted()]:
            del local[name]  # local streams not placed here go
        for name in sorted(self.hosted()):
            local[name] = self.state.streams[name]  # made, made anew or updated as assigned

    def _check(self, acts: list, before: dict, op, index: int | None) -> None:
        me, st, where = self.node.name, self.state, f"{self.node.name}/meta@{index if index else 'restore'}"
        self.actions += len(acts)
        for a in acts:
            name = a.stream.name
            if a.kind in ("create", "update"):
                if st.streams.get(name) != a.stream or me not in a.stream.peers:
                    self.sim.violation(f"{where}: {a.kind} {name} does not match the state or is not placed here")
                if a.kind == "update" and name not in self.told:
                    self.sim.violation(f"{where}: update of {name}, never told to create it")
                self.told.add(name)
                local = self.node.local_streams  # as runtime.py carries it out:
                if a.kind == "create":
                    local[name] = a.stream  # made, or an older stream of the name made anew, or updated
                elif name in local:
                    local[name] = msgspec.structs.replace(local[name], config=a.stream.config)
            elif a.kind in ("remove", "removed"):
                now = st.streams.get(name)
                if now is not None and (a.kind == "removed" or (me in now.peers and now.created == a.stream.created)):
                    self.sim.violation(f"{where}: {a.kind} {name} but it is still assigned")
                if (a.kind == "remove") != (me in a.stream.peers):
                    self.sim.violation(f"{where}: {a.kind} {name} with peers {a.stream.peers}")
                if a.kind == "remove":
                    if name not in self.told:
                        self.sim.violation(f"{where}: remove of {name}, never told to create it")
                    self.told.discard(name)
                    self.node.local_streams.pop(name, None)
            elif a.kind == "conflict":
                if not (isinstance(op, m.AssignStream) and op.origin == me and before.get(name) == a.stream):
                    self.sim.violation(f"{where}: conflict for {name} not on the proposer of a losing create")
            else:
                self.sim.violation(f"{where}: unknown action {a.kind}")
        if self.told != self.hosted():
            moved = sorted(n for n in self.told - self.hosted() if me in before.get(n, _NONE).peers and n in st.streams)
            why = f"; hosted here before, now placed on {[st.streams[n].peers for n in moved]}" if moved else ""
            self.sim.violation(f"{where}: told to host {sorted(self.told)}, placed here {sorted(self.hosted())}"
                               f" (actions {[(a.kind, a.stream.name, a.stream.peers) for a in acts]}){why}")
            self.told = self.hosted()  # report once, keep checking from here


_NONE = m.StreamAssignment("", StreamConfig(), [], 0)


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.id = IDS[name]
        self.disks = {g: SimDisk() for g in GROUPS}
        self.host: RaftHost | None = None
        self.groups: dict[str, RaftGroup] = {}
        self.machines: dict = {}
        self.scope: trio.CancelScope | None = None
        self.alive = False
        self.incarnation = 0
        # The broker's local streams (on disk: they survive crashes), as the assignment each was
        # made from (config as last updated, creation time).
        self.local_streams: dict[str, m.StreamAssignment] = {}


class Sim:
    def __init__(self, seed: int, trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.trace_on = trace
        self.net = SimNet(random.Random(self.rng.getrandbits(64)))
        self.nodes = {n: Node(n) for n in NAMES}
        self.by_id = {node.id: node for node in self.nodes.values()}
        self.applied: dict[str, dict[int, bytes]] = {g: {} for g in GROUPS}  # index -> payload, any node
        self.leaders: dict[tuple[str, int], int] = {}  # (group, term) -> leader id
        self.acked: list[tuple[str, int, bytes, str]] = []  # (group, index, payload, proposer)
        self.violations: list[str] = []
        self.events: list[str] = []
        self.cut: set[frozenset] = set()  # routes closed by a symmetric block
        self.proposals = self.refused = self.dropped = 0
        self.crashes = self.power_losses = self.restores = 0
        self.kinds = [k for k in FAULT_KINDS if self.rng.random() < 0.7] or ["crash"]  # swarm testing
        self.snapshot_entries = self.rng.choice((6, 12, 40))
        self.segment_bytes = self.rng.choice((400, 2048, 1 << 20))
        self.pid = 0
        self.nursery: trio.Nursery | None = None

    # -- recording -------------------------------------------------------------------------------
    def event(self, what: str) -> None:
        line = f"{trio.current_time():10.4f} {what}"
        self.events.append(line)
        if self.trace_on:
            print(line)

    def violation(self, what: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(f"t={trio.current_time():.4f} {what}")

    def check_at(self, node: Node, group: str, index: int, data: bytes, how: str) -> None:
        seen = self.applied[group].get(index)
        if seen is None:
            self.applied[group][index] = data
        elif seen != data:
            self.violation(f"{node.name}/{group}: {how} {data[:40]!r} at index {index}, another node {seen[:40]!r}")

    def record_apply(self, node: Node, group: str, index: int, data: bytes) -> None:
        self.check_at(node, group, index, data, "applied")

    def note_leaders(self) -> None:
        for node in self.nodes.values():
            if not node.alive:
                continue
            for name, g in node.groups.items():
                if g.is_leader:
                    self._leader(name, g.term, node.id)

    def _leader(self, group: str, term: int, node_id: int) -> None:
        prev = self.leaders.setdefault((group, term), node_id)
        if prev != node_id:
            self.violation(f"{group}: two leaders in term {term}: {prev} and {node_id}")

    # -- nodes -----------------------------------------------------------------------------------
    def start(self, node: Node) -> None:
        node.incarnation += 1
        host = RaftHost(self.net.sender(node.id), tick_interval_s=TICK, fsync_in_thread=False)
        node.groups, node.machines = {}, {}
        for name in GROUPS:
            disk = node.disks[name]
            try:
                storage = Storage.open(disk, ConfState(VOTERS), segment_bytes=self.segment_bytes)
            except StorageCorruption as exc:  # only crashes here: the disk must always reopen
                self.violation(f"{node.name}/{name}: storage corrupt after a crash: {exc}")
                storage = Storage.open(disk, ConfState(VOTERS), repair=True, segment_bytes=self.segment_bytes)
            sm = MetaMachine(self, node) if name == META else ListMachine(self, node, name)
            node.machines[name] = sm
            g = host.add_group(name, RaftConfig(node_id=node.id), storage, sm, seed=self.rng.getrandbits(32),
                               snapshot_entries=self.snapshot_entries)

            def changed(is_leader, lead, g=g, name=name, node=node):
                if is_leader:
                    self._leader(name, g.term, node.id)

            g.on_leader_change = changed
            node.groups[name] = g
        node.host = host
        node.alive = True
        self.net.hosts[node.id] = host
        scope = node.scope = trio.CancelScope()
        incarnation = node.incarnation

        async def runner() -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(host.run)
                    for g in node.groups.values():
                        inner.start_soon(self._watch, node, incarnation, g)

        assert self.nursery is not None
        self.nursery.start_soon(runner)
        for other in self.nodes.values():  # routes come up with every live peer not cut off
            if other is not node and other.alive and frozenset((node.id, other.id)) not in self.cut:
                other.host.peer_up(node.id)
        self.event(f"start {node.name} #{incarnation}")

    async def _watch(self, node: Node, incarnation: int, g: RaftGroup) -> None:
        await g.closed.wait()
        if not node.alive or node.incarnation != incarnation:
            return
        if isinstance(g.error, SimCrash):
            self.power_losses += 1
            self.event(f"power loss on {node.name} during a save of {g.name}")
            self.crash(node)
        else:
            self.violation(f"{node.name}/{g.name}: group stopped: {g.error!r}")

    def crash(self, node: Node) -> None:
        assert node.alive and node.scope is not None
        node.scope.cancel()
        node.alive = False
        del self.net.hosts[node.id]
        self.crashes += 1
        for other in self.nodes.values():  # its routes close
            if other.alive and frozenset((node.id, other.id)) not in self.cut:
                other.host.peer_down(node.id)
        torn = self.rng.random() < 0.5
        for name in GROUPS:
            node.disks[name].crash(self.rng, torn=torn)
        self.event(f"crash {node.name} torn={torn}")

    # -- links -----------------------------------------------------------------------------------
    def cut_route(self, a: Node, b: Node) -> None:
        key = frozenset((a.id, b.id))
        self.net.blocked |= {(a.id, b.id), (b.id, a.id)}
        if key in self.cut:
            return
        self.cut.add(key)
        for x, y in ((a, b), (b, a)):
            if x.alive and y.alive:
                x.host.peer_down(y.id)

    def restore_route(self, a: Node, b: Node) -> None:
        """One link comes back, both ways (a closed route reconnects: peer_up at both ends)."""
        self.net.blocked -= {(a.id, b.id), (b.id, a.id)}
        key = frozenset((a.id, b.id))
        if key in self.cut:
            self.cut.discard(key)
            for x, y in ((a, b), (b, a)):
                if x.alive and y.alive:
                    x.host.peer_up(y.id)
        self.event(f"reconnect {a.name}-{b.name}")

    def heal(self) -> None:
        self.net.blocked.clear()
        cut, self.cut = sorted(sorted(k) for k in self.cut), set()
        for ids in cut:
            x, y = (self.by_id[i] for i in ids)
            if x.alive and y.alive:
                x.host.peer_up(y.id)
                y.host.peer_up(x.id)
        self.event("heal")

    # -- leaders and proposals -------------------------------------------------------------------
    def leader_of(self, group: str) -> RaftGroup | None:
        for name in NAMES:
            node = self.nodes[name]
            if node.alive:
                g = node.groups[group]
                if g.is_leader:
                    return g
        return None

    def payload(self, group: str) -> bytes:
        self.pid += 1
        if group != META:
            return b"%s/%d" % (group.encode(), self.pid)
        rng, name = self.rng, self.rng.choice(STREAMS)
        r = rng.random()
        reply = f"_INBOX.{self.pid}"
        if r < 0.45:
            cfg = StreamConfig(name=name, subjects=[f"{name.lower()}.>"], max_msgs=rng.randrange(3))
            peers = rng.sample(NAMES, rng.choice((1, 1, 3)))
            op = m.AssignStream(m.StreamAssignment(name, cfg, peers, created=rng.randrange(4)), reply=reply,
                                origin=rng.choice(NAMES))
        elif r < 0.65:
            op = m.UpdateStream(name, StreamConfig(name=name, subjects=[f"{name.lower()}.>"],
                                                   max_msgs=rng.randrange(100)), reply=reply)
        elif r < 0.9:
            op = m.RemoveStream(name, reply=reply)
        else:
            op = m.PeerNames(sorted(rng.sample(NAMES, rng.randrange(1, 4))))
        return m.encode_op(op)

    def propose(self, g: RaftGroup, data: bytes, proposer: str) -> None:
        self.proposals += 1
        group = g.name

        def done(index, result, error) -> None:
            if error is None:
                self.acked.append((group, index, data, proposer))
            elif isinstance(error, (NotLeader, ProposalRejected)):
                self.refused += 1
            elif isinstance(error, ProposalDropped):
                self.dropped += 1
            else:
                self.violation(f"{proposer}/{group}: proposal failed with {error!r}")

        g.propose_nowait(data, done)

    # -- phases ----------------------------------------------------------------------------------
    async def workload(self, until: float) -> None:
        rng = self.rng
        while trio.current_time() < until:
            await trio.sleep(rng.uniform(0.002, 0.03))
            self.note_leaders()
            group = rng.choice(GROUPS)
            g = self.leader_of(group) if rng.random() < 0.85 else None
            if g is None:
                alive = [n for n in NAMES if self.nodes[n].alive]
                if not alive:
                    continue
                g = self.nodes[rng.choice(alive)].groups[group]
            self.propose(g, self.payload(group), self.by_id[g.id].name)

    async def faults(self, until: float) -> None:
        rng = self.rng
        restarts: list[tuple[float, str]] = []
        while True:
            await trio.sleep(rng.uniform(0.04, 0.25))
            now = trio.current_time()
            for at, name in list(restarts):
                if at <= now:
                    restarts.remove((at, name))
                    if not self.nodes[name].alive:
                        self.start(self.nodes[name])
            if now >= until:
                return
            kind = rng.choice(self.kinds)
            alive = [self.nodes[n] for n in NAMES if self.nodes[n].alive]
            if kind in ("isolate", "isolate_leader"):
                target = None
                if kind == "isolate_leader":
                    g = self.leader_of(rng.choice((META, META) + LISTS))
                    target = self.by_id[g.id] if g is not None else None
                target = target or self.nodes[rng.choice(NAMES)]
                for other in self.nodes.values():
                    if other is not target:
                        self.cut_route(target, other)
                self.event(f"isolate {target.name}")
            elif kind == "oneway":
                g = self.leader_of(rng.choice(GROUPS)) if rng.random() < 0.5 else None
                if g is None:
                    a, b = rng.sample(NAMES, 2)
                    self.net.blocked.add((self.nodes[a].id, self.nodes[b].id))
                    self.event(f"block {a}->{b}")
                else:  # a leader that can only send, or only receive
                    others = [i for i in VOTERS if i != g.id]
                    outbound = rng.random() < 0.5
                    self.net.blocked |= {(g.id, i) if outbound else (i, g.id) for i in others}
                    self.event(f"block {'from' if outbound else 'to'} {g.name} leader {self.by_id[g.id].name}")
            elif kind == "heal":
                self.heal()
            elif kind == "reconnect" and (self.cut or self.net.blocked):
                a, b = rng.choice(sorted(tuple(sorted(k)) for k in self.cut) or sorted(self.net.blocked))
                self.restore_route(self.by_id[a], self.by_id[b])
            elif kind in ("crash", "crash_leader") and alive:
                target = None
                if kind == "crash_leader":
                    g = self.leader_of(rng.choice(GROUPS))
                    target = self.by_id[g.id] if g is not None else None
                target = target or rng.choice(alive)
                self.crash(target)
                restarts.append((now + rng.uniform(0.02, 0.6), target.name))
            elif kind == "power_loss" and alive:
                target = rng.choice(alive)
                group = rng.choice(GROUPS)
                target.disks[group].arm_crash(after=rng.randrange(4))
                restarts.append((now + rng.uniform(0.3, 0.9), target.name))
                self.event(f"arm power loss {target.name}/{group}")
            elif kind == "net":
                net = self.net
                net.loss = rng.choice((0.0, 0.05, 0.2, 0.4))
                net.dup = rng.choice((0.0, 0.05, 0.2))
                net.hold = rng.choice((0.0, 0.0, 0.01, 0.05))
                net.delay_max = rng.choice((0.001, 0.005, 0.03))
                self.event(f"net loss={net.loss} dup={net.dup} hold={net.hold} delay<{net.delay_max}")
            elif kind == "flap" and len(alive) >= 2:
                a, b = rng.sample(alive, 2)  # the route drops and reconnects: a false alarm
                a.host.peer_down(b.id)
                b.host.peer_down(a.id)
                a.host.peer_up(b.id)
                b.host.peer_up(a.id)
                self.event(f"flap {a.name}-{b.name}")
            elif kind == "step_down":
                g = self.leader_of(rng.choice(GROUPS))
                if g is not None:
                    g.step_down()
                    self.event(f"step down {g.name} on {self.by_id[g.id].name}")

    async def settle(self) -> bool:
        """Heal everything, then commit a barrier in each group and wait until every node has
        applied it. False if that does not happen within SETTLE_S."""
        self.heal()
        net = self.net
        net.loss = net.dup = net.hold = 0.0
        net.delay_max = 0.002
        for node in self.nodes.values():
            for disk in node.disks.values():
                disk.armed = False
        for name in NAMES:
            if not self.nodes[name].alive:
                self.start(self.nodes[name])
        deadline = trio.current_time() + SETTLE_S
        barriers: dict[str, int] = {}
        with trio.move_on_at(deadline):
            while len(barriers) < len(GROUPS):
                for group in GROUPS:
                    if group in barriers:
                        continue
                    g = self.leader_of(group)
                    if g is None:
                        continue
                    data = m.encode_op(m.PeerNames(list(NAMES))) if group == META else b"barrier-" + group.encode()

                    def done(index, result, error, group=group, data=data, g=g):
                        if error is None:
                            barriers[group] = index
                            self.acked.append((group, index, data, self.by_id[g.id].name))

                    g.propose_nowait(data, done)
                await trio.sleep(0.1)
            while not all(self.nodes[n].groups[gr].applied_index >= barriers[gr] for n in NAMES for gr in GROUPS):
                await trio.sleep(0.05)
            self.note_leaders()
            self.event(f"settled: barriers {barriers}")
            return True
        self.note_leaders()
        self.event(f"no convergence: barriers {barriers}")
        return False

    async def main(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.net.run)
            for name in NAMES:
                self.start(self.nodes[name])
            until = trio.current_time() + FAULT_S
            async with trio.open_nursery() as phase:
                phase.start_soon(self.workload, until)
                phase.start_soon(self.faults, until)
            await trio.sleep(0.05)  # the last proposals and callbacks land
            if await self.settle():
                self.final_checks()
            else:
                self.violation(f"no convergence within {SETTLE_S}s of healing: "
                               + "; ".join(f"{n}/{gr}: leader={g.leader_id} term={g.term} applied={g.applied_index}"
                                           f" commit={g.commit_index} error={g.error!r}"
                                           for n in NAMES for gr, g in self.nodes[n].groups.items()))
            nursery.cancel_scope.cancel()

    # -- the end ---------------------------------------------------------------------------------
    def final_checks(self) -> None:
        nodes = [self.nodes[n] for n in NAMES]
        for group in LISTS:
            reference = sorted(self.applied[group].items())
            for node in nodes:
                if node.machines[group].items != reference:
                    self.violation(f"{node.name}/{group}: final history differs from the replay of every applied entry"
                                   f" ({len(node.machines[group].items)} vs {len(reference)} entries)")
        ref = m.MetaState("ref")
        for _, data in sorted(self.applied[META].items()):
            ref.apply(data)
        want = ref.snapshot()
        for node in nodes:
            sm = node.machines[META]
            if sm.state.snapshot() != want:
                self.violation(f"{node.name}/meta: final state differs from the replay of every applied entry:"
                               f" {sorted(sm.state.streams)} vs {sorted(ref.streams)}")
            hosted = {n for n, sa in ref.streams.items() if node.name in sa.peers}
            if sm.told != hosted:
                self.violation(f"{node.name}/meta: told to host {sorted(sm.told)}, placed here {sorted(hosted)}")
            stale = sorted(n for n, sa in node.local_streams.items() if n in hosted and
                           (sa.config, sa.created) != (ref.streams[n].config, ref.streams[n].created))
            if stale:
                self.violation(f"{node.name}/meta: local copies of {stale} keep an older assignment's config or"
                               f" creation: " + "; ".join(f"{n}: local created={node.local_streams[n].created}"
                                                          f" max_msgs={node.local_streams[n].config.max_msgs}, assigned"
                                                          f" created={ref.streams[n].created}"
                                                          f" max_msgs={ref.streams[n].config.max_msgs}"
                                                          for n in stale))
            if set(node.local_streams) != hosted:
                self.violation(f"{node.name}/meta: local streams {sorted(node.local_streams)}, placed here"
                               f" {sorted(hosted)}")
        for group, index, data, proposer in self.acked:
            if self.applied[group].get(index) != data:
                self.violation(f"{group}: proposal acknowledged to {proposer} at {index} is not what was applied there")
            for node in nodes:
                g = node.groups[group]
                if g.applied_index < index:
                    self.violation(f"{node.name}/{group}: acknowledged index {index} not applied"
                                   f" (applied {g.applied_index})")
                if group in LISTS and (index, data) not in node.machines[group].items:
                    self.violation(f"{node.name}/{group}: acknowledged {data!r} at {index} missing")
        for node in nodes:
            for name, g in node.groups.items():
                if g.error is not None or g.stopped:
                    self.violation(f"{node.name}/{name}: stopped at the end ({g.error!r})")

    def summary(self) -> dict:
        return {
            "seed": self.seed, "kinds": self.kinds, "proposals": self.proposals, "acked": len(self.acked),
            "refused": self.refused, "dropped": self.dropped, "crashes": self.crashes,
            "power_losses": self.power_losses, "installed_snapshots": self.restores,
            "invalid_dropped": sum(n.host.invalid_dropped for n in self.nodes.values() if n.host is not None),
            "sent": self.net.sent, "delivered": self.net.delivered,
            "terms": {g: max((t for (gr, t) in self.leaders if gr == g), default=0) for g in GROUPS},
            "applied": {g: len(self.applied[g]) for g in GROUPS},
            "snapshots": {g: max(n.groups[g].core.log.snapshot.index for n in self.nodes.values()) for g in GROUPS},
            "streams": sorted(self.nodes["n1"].machines[META].state.streams),
            "violations": self.violations,
        }

    def digest(self) -> str:
        h = hashlib.sha256()
        for line in self.events:
            h.update(line.encode() + b"\n")
        for g in GROUPS:
            for i, d in sorted(self.applied[g].items()):
                h.update(b"%s %d %s\n" % (g.encode(), i, d))
        h.update(repr(self.acked).encode())
        h.update(repr((self.net.sent, self.net.delivered, self.net.dropped)).encode())
        return h.hexdigest()


@contextlib.contextmanager
def deterministic_trio(seed: int):
    """trio's deterministic scheduling (what its Hypothesis plugin switches on): runnable tasks
    are sorted by creation and shuffled by a generator seeded here, instead of by an unseeded one."""
    saved = (_trio_run._ALLOW_DETERMINISTIC_SCHEDULING, _trio_run._r)
    _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    _trio_run._r = random.Random(seed)
    try:
        yield
    finally:
        _trio_run._ALLOW_DETERMINISTIC_SCHEDULING, _trio_run._r = saved


def run(seed: int, trace: bool = False) -> Sim:
    sim = Sim(seed, trace)
    with deterministic_trio(seed):
        try:
            trio.run(sim.main, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseException as exc:  # noqa: BLE001 - a crash of the simulation is a failure of the seed
            if isinstance(exc, KeyboardInterrupt):
                raise
            sim.violations.append("the simulation raised:\n" + "".join(traceback.format_exception(exc)))
    return sim


def replay_hint(seed: int) -> str:
    return (f"replay: CLUSTER_SIM_SEED={seed} python -m pytest tests/jetstream/test_cluster_sim.py -q -k replay"
            f"  or  python -m tests.jetstream.clustersim {seed} --trace")


if __name__ == "__main__":
    import pprint
    import time

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    for s in (int(a) for a in args):
        t0 = time.perf_counter()
        result = run(s, trace="--trace" in sys.argv)
        pprint.pprint(result.summary(), width=120)
        print(f"seed {s}: {time.perf_counter() - t0:.2f}s digest {result.digest()[:16]}")
