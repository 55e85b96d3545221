"""A tiny lock-step cluster of pure cores for paper-rule tests: no disk, explicit delivery."""

from __future__ import annotations

import random

from raft.core import LEADER, RaftConfig, RaftCore
from raft.messages import ConfState, Entry, HardState, Snapshot, decode_message, encode


def make_core(node_id: int, voters: tuple[int, ...], seed: int = 0, **cfg) -> RaftCore:
    base = Snapshot(0, 0, ConfState(voters))
    return RaftCore(RaftConfig(node_id=node_id, **cfg), random.Random(seed * 1000 + node_id), HardState(), base, [])


class Cluster:
    def __init__(self, n: int = 3, seed: int = 0, **cfg) -> None:
        voters = tuple(range(1, n + 1))
        self.nodes = {i: make_core(i, voters, seed, **cfg) for i in voters}
        self.applied: dict[int, list[Entry]] = {i: [] for i in voters}
        self.inflight: list = []
        self.cut: set[tuple[int, int]] = set()  # directed links that drop

    def add(self, node_id: int, voters: tuple[int, ...] = (), **cfg) -> RaftCore:
        self.nodes[node_id] = make_core(node_id, voters, **cfg)
        self.applied[node_id] = []
        return self.nodes[node_id]

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut.clear()

    def process(self, node_id: int) -> None:
        core = self.nodes[node_id]
        while core.has_ready():
            rd = core.ready()
            for m in rd.messages:
                self.inflight.append(decode_message(encode(m)))  # every message survives the wire
            self.applied[node_id].extend(rd.committed)
            core.advance(rd)

    def deliver_all(self, rounds_max: int = 1000) -> None:
        for node_id in self.nodes:
            self.process(node_id)
        for _ in range(rounds_max):
            if not self.inflight:
                return
            batch, self.inflight = self.inflight, []
            for m in batch:
                if (m.src, m.dst) in self.cut or m.dst not in self.nodes:
                    continue
                self.nodes[m.dst].step(m)
                self.process(m.dst)
        raise AssertionError("messages never settled")

    def tick(self, n: int = 1, only: tuple[int, ...] | None = None) -> None:
        for _ in range(n):
            for i, core in self.nodes.items():
                if only is None or i in only:
                    core.tick()
            self.deliver_all()

    def elect(self, node_id: int) -> RaftCore:
        self.nodes[node_id].campaign()
        self.deliver_all()
        assert self.nodes[node_id].state == LEADER
        return self.nodes[node_id]

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.nodes.values() if c.state == LEADER]
        return max(leaders, key=lambda c: c.term) if leaders else None
