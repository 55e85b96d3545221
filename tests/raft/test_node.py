"""The trio driver on MockClock: elections, proposals, partitions, crash and restart from disk."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from raft.core import NotLeader, ProposalRejected, RaftConfig
from raft.messages import ConfChange, ConfState, Entry
from raft.node import RaftNode
from raft.storage import OsDisk, Storage
from raft.transport import InMemoryNetwork

VOTERS = (1, 2, 3)


class ListMachine:
    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, entry: Entry) -> int:
        self.items.append(entry.data)
        return len(self.items)

    def snapshot(self) -> bytes:
        return b"\n".join(self.items)

    def restore(self, data: bytes) -> None:
        self.items = data.split(b"\n") if data else []


class Harness:
    def __init__(self, nursery: trio.Nursery, path, ids=VOTERS, **node_kw) -> None:
        self.nursery = nursery
        self.path = path
        self.net = InMemoryNetwork()
        self.nodes: dict[int, RaftNode] = {}
        self.machines: dict[int, ListMachine] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.disks: dict[int, OsDisk] = {}
        self.node_kw = node_kw
        self.ids = ids

    async def start(self, node_id: int, voters=VOTERS) -> RaftNode:
        disk = self.disks[node_id] = OsDisk(str(self.path / f"n{node_id}"))
        storage = Storage.open(disk, ConfState(voters))
        sm = self.machines[node_id] = ListMachine()
        kw = dict(seed=node_id, tick_interval_s=0.01, fsync_in_thread=False)
        kw.update(self.node_kw)
        node = RaftNode(RaftConfig(node_id=node_id), storage, sm, self.net.transport(node_id), **kw)
        self.nodes[node_id] = node
        self.net.register(node_id, node.deliver)
        scope = trio.CancelScope()
        self.scopes[node_id] = scope

        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await node.run(task_status=task_status)

        await self.nursery.start(runner)
        return node

    def kill(self, node_id: int) -> None:
        self.scopes[node_id].cancel()
        self.net.unregister(node_id)
        self.disks[node_id].close()

    async def leader(self, exclude=()) -> RaftNode:
        while True:
            for n in self.nodes.values():
                if n.is_leader and n.id not in exclude and not self.scopes[n.id].cancel_called:
                    return n
            await trio.sleep(0.01)


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


async def test_three_nodes_elect_and_apply_in_the_same_order(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        leader = await h.leader()
        results = [await leader.propose(b"cmd-%d" % k) for k in range(20)]
        assert [r for _, r in results] == list(range(1, 21))
        await trio.sleep(0.1)  # followers learn the commit index on the next heartbeat
        for sm in h.machines.values():
            assert sm.items == [b"cmd-%d" % k for k in range(20)]
        nursery.cancel_scope.cancel()


async def test_follower_rejects_proposals_with_a_leader_hint(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        leader = await h.leader()
        await leader.propose(b"x")
        follower = next(n for n in h.nodes.values() if n is not leader)
        with pytest.raises(NotLeader) as info:
            await follower.propose(b"y")
        assert info.value.leader == leader.id
        nursery.cancel_scope.cancel()


async def test_isolated_leader_is_replaced_and_old_entries_survive(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        old = await h.leader()
        await old.propose(b"before")
        h.net.isolate(old.id)
        new = await h.leader(exclude=(old.id,))
        await new.propose(b"after")
        await trio.sleep(1)
        assert not old.is_leader  # check-quorum
        h.net.heal()
        await trio.sleep(1)
        for sm in h.machines.values():
            assert sm.items == [b"before", b"after"]
        nursery.cancel_scope.cancel()


async def test_crash_and_restart_recovers_from_disk_and_snapshot(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path, snapshot_entries=5)
        for i in VOTERS:
            await h.start(i)
        leader = await h.leader()
        for k in range(12):
            await leader.propose(b"%d" % k)
        await trio.sleep(0.1)
        victim = next(i for i in VOTERS if i != leader.id)
        h.kill(victim)
        for k in range(12, 24):
            await leader.propose(b"%d" % k)
        restarted = await h.start(victim)
        assert restarted.core.log.snapshot.index >= 5  # it compacted before the crash
        await trio.sleep(1)
        assert h.machines[victim].items == [b"%d" % k for k in range(24)]
        nursery.cancel_scope.cancel()


async def test_whole_cluster_restart_keeps_every_acknowledged_entry(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        leader = await h.leader()
        for k in range(10):
            await leader.propose(b"%d" % k)
        for i in VOTERS:
            h.kill(i)
        await trio.sleep(0.5)
        for i in VOTERS:
            await h.start(i)
        leader = await h.leader()
        await leader.propose(b"after-restart")
        assert h.machines[leader.id].items == [b"%d" % k for k in range(10)] + [b"after-restart"]
        nursery.cancel_scope.cancel()


async def test_membership_change_and_leadership_transfer_through_the_driver(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        await h.start(4, voters=())  # a joiner knows nobody until the leader contacts it
        leader = await h.leader()
        await leader.propose(b"a")
        await leader.propose_conf_change(ConfChange(ConfChange.ADD_LEARNER, 4))
        await leader.propose(b"b")
        while h.nodes[4].applied_index < leader.applied_index:
            await trio.sleep(0.01)
        await leader.propose_conf_change(ConfChange(ConfChange.ADD, 4))  # promote once caught up
        with pytest.raises(ProposalRejected):
            await leader.transfer_leadership(99)  # not a voter: the error reaches the caller
        with pytest.raises(ProposalRejected):
            await leader.propose_conf_change(ConfChange(ConfChange.ADD, 4))  # already a voter
        await leader.transfer_leadership(4)
        while not h.nodes[4].is_leader:
            await trio.sleep(0.01)
        await h.nodes[4].propose(b"c")
        assert h.machines[4].items == [b"a", b"b", b"c"]
        assert h.nodes[4].core.voters == (1, 2, 3, 4)
        nursery.cancel_scope.cancel()


async def test_fsync_in_a_worker_thread(tmp_path):
    # Real clock, real threads: only checks that the threaded path works, never how fast.
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path, fsync_in_thread=True, tick_interval_s=0.02)
        for i in VOTERS:
            await h.start(i)
        with trio.fail_after(30):
            leader = await h.leader()
            idx, result = await leader.propose(b"threaded")
        assert result == 1 and idx >= 2
        nursery.cancel_scope.cancel()


class OrderingSpy:
    """Wraps storage and transport: every vote or acknowledgement must leave after the fsync
    that made the state it vouches for durable."""

    def __init__(self, storage, transport) -> None:
        self.storage = storage
        self.transport = transport
        self.durable_term = storage.hard_state.term
        self.durable_vote = storage.hard_state.vote
        self.durable_last = storage.last_index
        self.checked = 0

    def save(self, hard_state, snapshot, entries):
        self.storage.save(hard_state, snapshot, entries)
        if hard_state is not None:
            self.durable_term, self.durable_vote = hard_state.term, hard_state.vote
        if snapshot is not None:
            self.durable_last = snapshot.index
        if entries:
            self.durable_last = entries[-1].index

    def compact(self, snap):
        self.storage.compact(snap)

    def send(self, m):
        from raft.messages import AppendResponse, VoteResponse

        if isinstance(m, VoteResponse) and m.granted and not m.pre_vote:
            assert (self.durable_term, self.durable_vote) == (m.term, m.dst)
            self.checked += 1
        if isinstance(m, AppendResponse) and not m.reject:
            assert m.index <= self.durable_last and m.term <= self.durable_term
            self.checked += 1
        self.transport.send(m)


async def test_votes_and_acknowledgements_leave_only_after_fsync(tmp_path, clock):
    net = InMemoryNetwork()
    spies = []
    async with trio.open_nursery() as nursery:
        nodes = {}
        for i in VOTERS:
            storage = Storage.open(OsDisk(str(tmp_path / f"s{i}")), ConfState(VOTERS))
            spy = OrderingSpy(storage, net.transport(i))
            spies.append(spy)
            node = RaftNode(RaftConfig(node_id=i), storage, ListMachine(), spy, seed=i,
                            tick_interval_s=0.01, fsync_in_thread=False)
            node.storage = spy  # the driver persists through the spy
            net.register(i, node.deliver)
            nodes[i] = node
            await nursery.start(node.run)
        while not any(n.is_leader for n in nodes.values()):
            await trio.sleep(0.01)
        leader = next(n for n in nodes.values() if n.is_leader)
        for k in range(30):
            await leader.propose(b"%d" % k)
        nursery.cancel_scope.cancel()
    assert sum(s.checked for s in spies) > 30


async def test_proposal_lost_to_a_new_leader_raises_proposal_dropped(tmp_path, clock):
    from raft.node import ProposalDropped

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, tmp_path)
        for i in VOTERS:
            await h.start(i)
        old = await h.leader()
        await old.propose(b"committed")
        h.net.isolate(old.id)
        outcome = []

        async def doomed():
            try:
                await old.propose(b"doomed")
            except ProposalDropped as exc:
                outcome.append(exc)

        nursery.start_soon(doomed)
        new = await h.leader(exclude=(old.id,))
        await new.propose(b"winner")
        h.net.heal()
        with trio.fail_after(10):
            while not outcome:
                await trio.sleep(0.01)
        await trio.sleep(0.5)
        assert h.machines[old.id].items == [b"committed", b"winner"]
        nursery.cancel_scope.cancel()
