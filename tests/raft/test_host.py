"""RaftHost: many groups per node on one loop and one ticker, on MockClock; core.peer_down."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from raft.core import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, NotLeader, ProposalRejected, RaftConfig
from raft.host import PeerProgress, ProposalDropped, RaftHost
from raft.messages import AppendEntries, ConfChange, ConfState, Entry, RequestVote, decode_message, encode
from raft.storage import OsDisk, Storage, StorageCorruption, segment_name, wal_records, wal_segments
from tests.raft.cluster import Cluster
from tests.raft.simdisk import SimDisk
from tests.raft.test_node import ListMachine

VOTERS = (1, 2, 3)
TICK = 0.01
GROUPS = ("meta", "s1")


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0)


class Net:
    """Hosts by node id; messages cross the wire encoding; links can be cut."""

    def __init__(self) -> None:
        self.hosts: dict[int, RaftHost] = {}
        self.cut: set[tuple[int, int]] = set()

    def sender(self, src: int):
        def send(group: str, m) -> None:
            assert m.src == src
            host = self.hosts.get(m.dst)
            if host is not None and (m.src, m.dst) not in self.cut:
                host.deliver(group, decode_message(encode(m)))

        return send


class Cell:
    """Three hosts, each running the same groups."""

    def __init__(self, nursery, path, groups=GROUPS, segment_bytes=64 << 20, sim_disks=None, **group_kw) -> None:
        self.nursery = nursery
        self.path = path
        self.net = Net()
        self.groups = groups
        self.group_kw = group_kw
        self.segment_bytes = segment_bytes
        self.machines: dict[tuple[int, str], ListMachine] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.disks: dict[int, list[OsDisk]] = {}
        self.changes: dict[tuple[int, str], list] = {}
        self.repaired: list[tuple[int, str]] = []
        self.sim_disks = sim_disks  # a random.Random: SimDisks that lose unsynced writes on kill
        self.sims: dict[tuple[int, str], SimDisk] = {}

    async def start(self, node_id: int, voters=VOTERS) -> RaftHost:
        host = RaftHost(self.net.sender(node_id), tick_interval_s=TICK, fsync_in_thread=False)
        self.disks[node_id] = []
        for name in self.groups:
            if self.sim_disks is not None:
                disk = self.sims.setdefault((node_id, name), SimDisk())
            else:
                disk = OsDisk(str(self.path / f"n{node_id}" / name))
                self.disks[node_id].append(disk)
            try:  # as the broker does: a damaged log rejoins as a quarantined follower
                storage = Storage.open(disk, ConfState(voters), segment_bytes=self.segment_bytes)
            except StorageCorruption:
                self.repaired.append((node_id, name))
                storage = Storage.open(disk, ConfState(voters), repair=True, segment_bytes=self.segment_bytes)
            sm = self.machines[(node_id, name)] = ListMachine()
            g = host.add_group(name, RaftConfig(node_id=node_id), storage, sm,
                               seed=node_id * 7 + len(name), **self.group_kw)
            log = self.changes[(node_id, name)] = []
            g.on_leader_change = lambda is_leader, lead, log=log: log.append((is_leader, lead))
        self.net.hosts[node_id] = host
        scope = self.scopes[node_id] = trio.CancelScope()

        async def runner(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await host.run(task_status=task_status)

        await self.nursery.start(runner)
        return host

    def kill(self, node_id: int) -> None:
        self.scopes[node_id].cancel()
        del self.net.hosts[node_id]
        for disk in self.disks[node_id]:
            disk.close()
        for (i, _), disk in self.sims.items():
            if i == node_id:
                disk.crash(self.sim_disks, torn=True)

    def live(self):
        return {i: h for i, h in self.net.hosts.items() if not self.scopes[i].cancel_called}

    async def leader(self, name: str, exclude=()):
        while True:
            for i, h in self.live().items():
                g = h.groups.get(name)
                if g is not None and g.is_leader and i not in exclude:
                    return g
            await trio.sleep(TICK)


async def test_groups_on_three_hosts_elect_and_apply_in_order(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path)
        for i in VOTERS:
            await cell.start(i)
        for name in GROUPS:
            leader = await cell.leader(name)
            results = [await leader.propose(b"%s-%d" % (name.encode(), k)) for k in range(10)]
            assert [r for _, r in results] == list(range(1, 11))
        await trio.sleep(0.1)
        for (_, name), sm in cell.machines.items():
            assert sm.items == [b"%s-%d" % (name.encode(), k) for k in range(10)]
        nursery.cancel_scope.cancel()


async def test_campaign_elects_a_new_group_without_waiting_an_election_timeout(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("g",))
        hosts = [await cell.start(i) for i in VOTERS]
        start = trio.current_time()
        hosts[0].groups["g"].campaign()
        leader = await cell.leader("g")
        assert leader.id == VOTERS[0]
        # the first election timeout is at least election_ticks; asked, it took a few ticks
        assert trio.current_time() - start < RaftConfig(node_id=1).election_ticks * TICK / 2
        nursery.cancel_scope.cancel()


async def test_propose_nowait_calls_back_once_applied_and_refusals_too(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        done = []
        for k in range(5):
            leader.propose_nowait(b"%d" % k, lambda i, r, e: done.append((i, r, e)))
        follower = next(h.groups["meta"] for i, h in cell.live().items() if i != leader.id)
        follower.propose_nowait(b"no", lambda i, r, e: done.append((i, r, e)))
        while len(done) < 6:
            await trio.sleep(TICK)
        refused = [d for d in done if d[2] is not None]
        assert len(refused) == 1 and isinstance(refused[0][2], NotLeader) and refused[0][2].leader == leader.id
        applied = [d for d in done if d[2] is None]
        assert [r for _, r, _ in applied] == [1, 2, 3, 4, 5]
        assert [i for i, _, _ in applied] == sorted(i for i, _, _ in applied)
        nursery.cancel_scope.cancel()


async def test_one_ticker_drives_every_group(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=tuple(f"g{k}" for k in range(6)))
        host = await cell.start(1, voters=(1,))

        def tasks(task):
            yield task
            for n in task.child_nurseries:
                for t in n.child_tasks:
                    yield from tasks(t)

        names = [t.name for t in tasks(trio.lowlevel.current_root_task())]
        assert len([n for n in names if n.endswith("RaftHost._ticker")]) == 1, names
        await trio.sleep(1)
        assert all(g.is_leader for g in host.groups.values())  # single voter: every group elected itself
        nursery.cancel_scope.cancel()


async def test_on_leader_change_reports_leader_and_followers(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        await leader.propose(b"x")
        await trio.sleep(0.1)
        for i in VOTERS:
            last = cell.changes[(i, "meta")][-1]
            assert last == (i == leader.id, leader.id)
        nursery.cancel_scope.cancel()


async def test_peer_down_fails_over_well_within_an_election_timeout(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path)
        for i in VOTERS:
            await cell.start(i)
        for name in GROUPS:
            await (await cell.leader(name)).propose(b"before")
        old = (await cell.leader("meta")).id
        cell.kill(old)
        t0 = trio.current_time()
        for h in cell.live().values():
            h.peer_down(old)
        for name in GROUPS:
            new = await cell.leader(name, exclude=(old,))
            await new.propose(b"after")
        elapsed_ticks = (trio.current_time() - t0) / TICK
        assert elapsed_ticks < RaftConfig(node_id=1).election_ticks / 2, elapsed_ticks
        nursery.cancel_scope.cancel()


async def test_false_peer_down_does_not_disturb_a_live_leader(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        await leader.propose(b"x")
        term = leader.term
        other = next(i for i in VOTERS if i != leader.id)
        cell.net.hosts[other].peer_down(leader.id)  # only this follower thinks the leader died
        await trio.sleep(0.5)
        assert leader.is_leader and leader.term == term
        await leader.propose(b"y")
        nursery.cancel_scope.cancel()


async def test_progress_reports_lag_offline_and_current(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        await leader.propose(b"a")
        await trio.sleep(0.1)
        prog = leader.progress()
        assert set(prog) == set(VOTERS) - {leader.id}
        assert all(isinstance(p, PeerProgress) and p.current and p.active and p.lag == 0 for p in prog.values())
        follower_host = next(h for i, h in cell.live().items() if i != leader.id)
        assert follower_host.groups["meta"].progress() == {}
        victim = next(i for i in VOTERS if i != leader.id)
        cell.kill(victim)
        cell.net.hosts[leader.id].peer_down(victim)
        for k in range(3):
            await leader.propose(b"%d" % k)
        p = leader.progress()[victim]
        assert p.offline and not p.active and not p.current and p.lag == 3
        assert p.match_index == leader.last_index - 3 and p.last_heard_s is not None
        nursery.cancel_scope.cancel()


async def test_step_down_hands_leadership_to_a_caught_up_voter(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        await leader.propose(b"a")
        outcome = []
        leader.step_down(on_done=lambda i, r, e: outcome.append((r, e)))
        new = await cell.leader("meta", exclude=(leader.id,))
        assert outcome == [(new.id, None)]
        target = next(i for i in VOTERS if i != new.id)
        new.step_down(preferred=target)
        again = await cell.leader("meta", exclude=(new.id,))
        assert again.id == target
        follower = cell.net.hosts[new.id].groups["meta"]
        with pytest.raises(NotLeader):
            await follower.transfer_leadership(target)
        with pytest.raises(ProposalRejected):
            await again.transfer_leadership(99)
        nursery.cancel_scope.cancel()


async def test_conf_change_through_the_host(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        await cell.start(4, voters=())
        leader = await cell.leader("meta")
        await leader.propose(b"a")
        await leader.propose_conf_change(ConfChange(ConfChange.ADD_LEARNER, 4))
        joiner = cell.net.hosts[4].groups["meta"]
        while joiner.applied_index < leader.applied_index:
            await trio.sleep(TICK)
        assert 4 in leader.progress() and leader.progress()[4].learner
        await leader.propose_conf_change(ConfChange(ConfChange.ADD, 4))
        assert leader.voters == (1, 2, 3, 4) and cell.machines[(4, "meta")].items == [b"a"]
        nursery.cancel_scope.cancel()


async def test_unknown_group_and_bad_messages_are_dropped_not_raised(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",))
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        await leader.propose(b"a")
        follower_id = next(i for i in VOTERS if i != leader.id)
        host = cell.net.hosts[follower_id]
        term = leader.term
        host.deliver("nope", RequestVote(term, leader.id, follower_id, 0, 0))
        host.deliver("meta", RequestVote(term, leader.id, 99, 0, 0))  # not addressed to this node
        bad = AppendEntries(term, leader.id, follower_id, 0, 0, 0, (Entry(term, 5), Entry(term, 9)))  # gap
        host.deliver("meta", bad)
        host.deliver("meta", AppendEntries(term, leader.id, follower_id, 0, 0, 0, (Entry(term, 1, 1, b"\xff"),)))
        host.deliver_bytes("meta", b"\x00garbage")
        await trio.sleep(0.1)
        assert host.unknown_group_dropped == 1 and host.invalid_dropped == 4
        assert host.groups["meta"].error is None
        await leader.propose(b"b")
        await trio.sleep(0.1)
        assert cell.machines[(follower_id, "meta")].items == [b"a", b"b"]
        nursery.cancel_scope.cancel()


class Exploding(ListMachine):
    def apply(self, entry: Entry) -> int:
        if entry.data == b"boom":
            raise RuntimeError("state machine bug")
        return super().apply(entry)


async def test_a_failing_group_stops_alone_and_fails_its_waiters(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        host = RaftHost(lambda name, m: None, tick_interval_s=TICK, fsync_in_thread=False)
        groups = {}
        for name, sm in (("bad", Exploding()), ("good", ListMachine())):
            storage = Storage.open(OsDisk(str(tmp_path / name)), ConfState((1,)))
            groups[name] = host.add_group(name, RaftConfig(node_id=1), storage, sm, seed=1)
        await nursery.start(host.run)
        while not all(g.is_leader for g in groups.values()):
            await trio.sleep(TICK)
        results = []
        groups["bad"].propose_nowait(b"boom", lambda i, r, e: results.append(e))
        with pytest.raises(ProposalDropped):
            await groups["bad"].propose(b"after")
        assert isinstance(groups["bad"].error, RuntimeError) and groups["bad"].closed.is_set()
        assert "bad" not in host.groups and not groups["bad"].is_leader
        assert await groups["good"].propose(b"fine") == (2, 1)
        nursery.cancel_scope.cancel()


async def test_remove_group_fails_pending_proposals_and_drops_its_messages(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path)
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("s1")
        await leader.propose(b"a")
        host = cell.net.hosts[leader.id]
        for i in VOTERS:
            if i != leader.id:
                cell.net.cut |= {(leader.id, i), (i, leader.id)}  # nothing can commit now
        errors = []
        leader.propose_nowait(b"stuck", lambda i, r, e: errors.append(e))
        await trio.sleep(0.05)
        host.remove_group("s1")
        assert len(errors) == 1 and isinstance(errors[0], ProposalDropped)
        await leader.closed.wait()
        with pytest.raises(NotLeader):
            await leader.propose(b"late")
        cell.net.cut.clear()
        await trio.sleep(0.5)
        assert host.unknown_group_dropped > 0 and "meta" in host.groups
        await (await cell.leader("meta")).propose(b"meta-still-works")
        nursery.cancel_scope.cancel()


async def test_snapshot_bytes_triggers_compaction(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        host = RaftHost(lambda name, m: None, tick_interval_s=TICK, fsync_in_thread=False)
        storage = Storage.open(OsDisk(str(tmp_path / "g")), ConfState((1,)))
        g = host.add_group("g", RaftConfig(node_id=1), storage, ListMachine(), seed=1,
                           snapshot_entries=1_000_000, snapshot_bytes=1000)
        await nursery.start(host.run)
        while not g.is_leader:
            await trio.sleep(TICK)
        for _ in range(5):
            await g.propose(b"x" * 300)
        assert g.core.log.snapshot.index >= 4 and storage.snapshot.index == g.core.log.snapshot.index
        nursery.cancel_scope.cancel()


async def test_fsync_in_a_worker_thread_for_several_groups(tmp_path):
    # Real clock and threads: only checks that the threaded path works, never how fast.
    async with trio.open_nursery() as nursery:
        host = RaftHost(lambda name, m: None, tick_interval_s=0.02)
        gs = [host.add_group(f"g{k}", RaftConfig(node_id=1), Storage.open(OsDisk(str(tmp_path / f"g{k}")),
                             ConfState((1,))), ListMachine(), seed=k) for k in range(3)]
        await nursery.start(host.run)
        with trio.fail_after(30):
            while not all(g.is_leader for g in gs):
                await trio.sleep(0.02)
            for g in gs:
                assert (await g.propose(b"t"))[1] == 1
        nursery.cancel_scope.cancel()


# -- core.peer_down, lock step ----------------------------------------------------------------
def test_core_peer_down_of_the_leader_campaigns_at_once_lowest_id_first():
    c = Cluster(3, seed=4)
    c.elect(3)
    c.nodes[3].propose(b"x")
    c.deliver_all()
    c.isolate(3)
    c.nodes[1].peer_down(3)
    c.nodes[2].peer_down(3)
    assert c.nodes[1].state in (PRE_CANDIDATE, CANDIDATE)  # rank 0 campaigns at once
    assert c.nodes[2].state == FOLLOWER and c.nodes[2].lead == 0  # rank 1 waits one tick
    c.deliver_all()
    assert c.nodes[1].state == LEADER and c.nodes[2].lead == 1


def test_core_peer_down_is_ignored_while_others_still_hear_the_leader():
    c = Cluster(3, seed=5)
    leader = c.elect(1)
    term = leader.term
    c.nodes[2].peer_down(1)  # a false alarm on one follower: its pre-vote meets node 3's lease
    c.deliver_all()
    assert leader.state == LEADER and leader.term == term and c.nodes[3].lead == 1
    c.tick(2)
    assert c.nodes[2].state == FOLLOWER and c.nodes[2].lead == 1 and c.nodes[2].term == term


def test_core_peer_down_of_a_follower_makes_the_leader_count_it_inactive():
    c = Cluster(3, seed=6)
    leader = c.elect(1)
    c.isolate(2)
    c.isolate(3)
    leader.peer_down(2)
    leader.peer_down(3)
    assert not leader.progress[2].recent_active and not leader.progress[3].recent_active
    c.tick(leader.cfg.election_ticks, only=(1,))
    assert leader.state == FOLLOWER  # check-quorum: no majority heard from


def test_inbound_checks_name_what_would_trip_the_core():
    from raft.inbound import invalid_reason
    from raft.messages import AppendResponse, InstallSnapshot, Snapshot

    c = Cluster(3, seed=7)
    leader = c.elect(1)
    for k in range(3):
        leader.propose(b"%d" % k)
    c.deliver_all()
    c.tick(1)  # the followers learn the commit index
    follower = c.nodes[2]
    t = leader.term
    commit = follower.log.commit
    assert commit >= 3
    ok = AppendEntries(t, 1, 2, commit, follower.log.term(commit), commit, (Entry(t, commit + 1),))
    assert invalid_reason(ok, follower) is None
    bad = [
        AppendEntries(t, 1, 2, 1, 1, 0, (Entry(t + 5, 2),)),  # entry from a later term than the message
        AppendEntries(t, 1, 2, 1, follower.log.term(1), 0, (Entry(t, 2, 7),)),  # unknown kind
        AppendEntries(t, 1, 2, 0, 0, 0, (Entry(t, 1),) * 2),  # repeats an index
        AppendEntries(t + 1, 3, 2, 1, follower.log.term(1), 0, (Entry(t + 1, 2),)),  # rewrites committed 2
        AppendEntries(t, 2, 2, 0, 0, 0),  # from itself
        RequestVote(t, 3, 2, 5, t + 1),  # last term past its own term
        InstallSnapshot(t, 1, 2, Snapshot(5, 0, ConfState((1, 2, 3)))),
    ]
    for m in bad:
        assert invalid_reason(m, follower) is not None, m
    assert invalid_reason(AppendResponse(t, 2, 1, leader.log.last_index + 5), leader) is not None
    assert invalid_reason(AppendResponse(t, 2, 1, leader.log.last_index), leader) is None


def test_a_deposed_leaders_late_append_is_stale_not_damage():
    """An append from an older term that disagrees with what a later leader committed is
    refused by the core on its term (which tells the sender), not dropped as damage."""
    from raft.inbound import invalid_reason

    c = Cluster(3, seed=7)
    c.elect(1).transfer_leadership(3)  # a later term, led by 3
    c.deliver_all()
    leader = c.nodes[3]
    assert leader.state == LEADER and leader.term > 1
    for k in range(3):
        leader.propose(b"%d" % k)
    c.deliver_all()
    c.tick(1)
    follower = c.nodes[2]
    old_term = leader.term - 1
    index = next(i for i in range(1, follower.log.commit + 1) if follower.log.term(i) == leader.term)
    assert follower.log.term(index - 1) <= old_term  # the first entry the later leader committed
    stale = AppendEntries(old_term, 1, 2, index - 1, follower.log.term(index - 1), 0, (Entry(old_term, index),))
    assert invalid_reason(stale, follower) is None
    follower.step(stale)
    reply = [msg for msg in follower.ready().messages if msg.dst == 1]
    assert reply and reply[-1].term == leader.term  # the deposed leader learns the newer term


async def test_a_host_restarts_from_segments_and_snapshots_and_catches_up(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",), segment_bytes=300, snapshot_entries=8)
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        for k in range(30):
            await leader.propose(b"a%d" % k)
        victim = next(i for i in VOTERS if i != leader.id)
        await trio.sleep(0.1)
        cell.kill(victim)
        for k in range(30):
            await leader.propose(b"b%d" % k)
        segs = wal_segments(OsDisk(str(tmp_path / f"n{leader.id}" / "meta")))
        assert segs[0] != segment_name(1) and len(segs) < 5  # compaction deleted whole segments
        host = await cell.start(victim)
        assert host.groups["meta"].core.log.snapshot.index >= 8  # restored from its own snapshot
        want = [b"a%d" % k for k in range(30)] + [b"b%d" % k for k in range(30)]
        while cell.machines[(victim, "meta")].items != want:
            await trio.sleep(TICK)
        nursery.cancel_scope.cancel()


async def test_a_damaged_wal_rejoins_quarantined_and_heals(tmp_path, clock):
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, groups=("meta",), segment_bytes=300)
        for i in VOTERS:
            await cell.start(i)
        leader = await cell.leader("meta")
        for k in range(20):
            await leader.propose(b"%d" % k)
        await trio.sleep(0.1)
        victim = next(i for i in VOTERS if i != leader.id)
        cell.kill(victim)
        path = tmp_path / f"n{victim}" / "meta"
        name, lo, hi, _ = wal_records(OsDisk(str(path)))[5]
        data = bytearray((path / name).read_bytes())
        data[lo + 14] ^= 0x10  # inside record 6's payload: valid records follow
        (path / name).write_bytes(bytes(data))
        host = await cell.start(victim)
        g = host.groups["meta"]
        assert cell.repaired == [(victim, "meta")] and g.quarantined
        await leader.propose(b"after")
        while g.quarantined or cell.machines[(victim, "meta")].items != cell.machines[(leader.id, "meta")].items:
            await trio.sleep(TICK)
        assert cell.machines[(victim, "meta")].items[-1] == b"after"
        nursery.cancel_scope.cancel()


class GatedStorage:
    """A Storage whose save waits (in its worker thread) until the test opens the gate."""

    def __init__(self, storage) -> None:
        import threading

        self.storage = storage
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.hard_state, self.snapshot = storage.hard_state, storage.snapshot

    def initial_state(self):
        return self.storage.initial_state()

    def save(self, hard_state, snapshot, entries):
        self.entered.set()
        assert self.gate.wait(30)
        self.storage.save(hard_state, snapshot, entries)

    def compact(self, snap):
        self.storage.compact(snap)


async def test_remove_group_during_an_fsync_sets_closed_only_after_it(tmp_path):
    # Real clock and threads: checks the `closed` contract, never how fast.
    async with trio.open_nursery() as nursery:
        host = RaftHost(lambda name, m: None, tick_interval_s=0.02)
        gated = GatedStorage(Storage.open(OsDisk(str(tmp_path / "g")), ConfState((1,))))
        other = host.add_group("other", RaftConfig(node_id=1), Storage.open(OsDisk(str(tmp_path / "o")),
                               ConfState((1,))), ListMachine(), seed=2)
        g = host.add_group("g", RaftConfig(node_id=1), gated, ListMachine(), seed=1)
        await nursery.start(host.run)
        with trio.fail_after(30):
            while not gated.entered.is_set():  # its first election's hard state is being saved
                await trio.sleep(0.01)
            host.remove_group("g")
            assert g.stopped and not g.closed.is_set()  # the save is still in flight
            gated.gate.set()
            await g.closed.wait()
            while not other.is_leader:
                await trio.sleep(0.02)
            assert (await other.propose(b"x"))[1] == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(6))
async def test_random_faults_keep_every_group_consistent(tmp_path, clock, seed):
    """Hosts with two groups each under random cuts, false and true peer_down reports, kills
    (losing unsynced writes, tearing some) and restarts from disk, while proposals flow without
    waiting. After healing, every group's
    machines agree, and every proposal reported applied is in them at its index."""
    import random

    rng = random.Random(seed)
    async with trio.open_nursery() as nursery:
        cell = Cell(nursery, tmp_path, segment_bytes=400, snapshot_entries=6, sim_disks=rng)
        for i in VOTERS:
            await cell.start(i)
        acked: dict[tuple[str, int], bytes] = {}
        outcomes = {"ok": 0, "refused": 0, "dropped": 0}

        def proposer(name, data):
            def done(index, result, error):
                if error is None:
                    assert acked.setdefault((name, index), data) == data
                    outcomes["ok"] += 1
                else:
                    outcomes["dropped" if isinstance(error, ProposalDropped) else "refused"] += 1
            return done

        n = 0
        for step in range(300):
            r = rng.random()
            live = cell.live()
            if r < 0.05:
                a, b = rng.sample(VOTERS, 2)
                cell.net.cut |= {(a, b), (b, a)}
            elif r < 0.09:
                cell.net.cut.clear()
            elif r < 0.12 and len(live) == 3:
                victim = rng.choice(VOTERS)
                cell.kill(victim)
                for h in cell.live().values():
                    h.peer_down(victim)
            elif r < 0.17 and len(live) < 3:
                back = next(i for i in VOTERS if i not in live)
                await cell.start(back)
                for h in cell.live().values():
                    h.peer_up(back)
            elif r < 0.20:
                h = rng.choice(list(live.values()))
                h.peer_down(rng.choice([i for i in VOTERS if i in cell.net.hosts and cell.net.hosts[i] is not h]))
            for name in GROUPS:
                for h in cell.live().values():
                    g = h.groups[name]
                    if g.is_leader:
                        n += 1
                        data = b"%s-%d" % (name.encode(), n)
                        g.propose_nowait(data, proposer(name, data))
            await trio.sleep(TICK * rng.randrange(1, 6))
        cell.net.cut.clear()
        for i in VOTERS:
            if i not in cell.live():
                await cell.start(i)
        for name in GROUPS:
            leader = await cell.leader(name)
            await leader.propose(b"final")
        await trio.sleep(1)
        for name in GROUPS:
            logs = [cell.machines[(i, name)].items for i in VOTERS]
            assert logs[0] == logs[1] == logs[2] and logs[0][-1] == b"final"
        assert outcomes["ok"] > 50, outcomes
        # every acknowledged proposal is in the agreed history exactly once
        for (name, index), data in acked.items():
            assert cell.machines[(VOTERS[0], name)].items.count(data) == 1
        nursery.cancel_scope.cancel()


async def test_inline_small_saves_are_durable_before_anything_applies(tmp_path):
    """With inline_small_saves an idle loop persists a small Ready itself instead of in a
    thread: what was applied is on disk (a reopened storage holds every entry) and the
    outcomes are the same as with the thread."""
    path = str(tmp_path / "g")
    machine = ListMachine()
    async with trio.open_nursery() as nursery:
        host = RaftHost(lambda name, m: None, tick_interval_s=0.02, inline_small_saves=True)
        g = host.add_group("g", RaftConfig(node_id=1), Storage.open(OsDisk(path), ConfState((1,))), machine, seed=1)
        await nursery.start(host.run)
        with trio.fail_after(30):
            while not g.is_leader:
                await trio.sleep(0.02)
            indexes = [(await g.propose(b"v%d" % i))[0] for i in range(5)]
        nursery.cancel_scope.cancel()
    assert machine.items[-5:] == [b"v%d" % i for i in range(5)]
    _, _, entries = Storage.open(OsDisk(path), ConfState((1,))).initial_state()
    stored = {e.index: e.data for e in entries}
    assert [stored[i] for i in indexes] == [b"v%d" % i for i in range(5)]


class _Box:
    """A transport that gathers what the loop sends between hold() and flush(), as the
    broker's route batches do, and records what was still unflushed at each save and apply."""

    def __init__(self, net: "_BoxNet", node_id: int) -> None:
        self.net, self.node_id = net, node_id
        self.holding = False
        self.pending: list = []
        self.outside_hold = 0
        self.at_save: list[list[str]] = []
        self.at_apply: list[list[str]] = []

    def hold(self) -> None:
        self.holding = True

    def flush(self) -> None:
        self.holding = False
        pending, self.pending = self.pending, []
        for group, m in pending:
            host = self.net.hosts.get(m.dst)
            if host is not None:
                host.deliver(group, decode_message(encode(m)))

    def send(self, group: str, m) -> None:
        if not self.holding:
            self.outside_hold += 1
        self.pending.append((group, m))

    def unflushed(self) -> list[str]:
        return [type(m).__name__ for _, m in self.pending]


class _BoxNet:
    def __init__(self) -> None:
        self.hosts: dict[int, RaftHost] = {}
        self.boxes: dict[int, _Box] = {}


async def test_outbox_sends_leave_before_each_fsync_and_before_anything_applies(tmp_path):
    """With an Outbox every message is sent while the loop holds, and the loop flushes before
    it persists (a leader's appends are on the wire during its fsync) and before it applies
    (acknowledgements leave first); proposals still apply everywhere in order."""
    net = _BoxNet()
    groups = {}
    async with trio.open_nursery() as nursery:
        for i in VOTERS:
            box = net.boxes[i] = _Box(net, i)
            host = net.hosts[i] = RaftHost(box.send, tick_interval_s=TICK, fsync_in_thread=False, outbox=box)
            storage = Storage.open(OsDisk(str(tmp_path / f"n{i}")), ConfState(VOTERS))
            save = storage.save

            def recording_save(hs, snap, entries, box=box, save=save):
                box.at_save.append(box.unflushed())
                save(hs, snap, entries)

            storage.save = recording_save
            machine = ListMachine()
            apply = machine.apply

            def recording_apply(entry, box=box, apply=apply):
                box.at_apply.append(box.unflushed())
                return apply(entry)

            machine.apply = recording_apply
            groups[i] = (host.add_group("g", RaftConfig(node_id=i), storage, machine, seed=i), machine)
            await nursery.start(host.run)
        with trio.fail_after(30):
            while not any(g.is_leader for g, _ in groups.values()):
                await trio.sleep(TICK)
            leader = next(g for g, _ in groups.values() if g.is_leader)
            for k in range(20):
                await leader.propose(b"p%d" % k)
            while not all(len(m.items) == 20 for _, m in groups.values()):
                await trio.sleep(TICK)
        nursery.cancel_scope.cancel()
    for i, box in net.boxes.items():
        assert box.outside_hold == 0, i
        assert box.at_save and all(u == [] for u in box.at_save), (i, box.at_save)
        assert box.at_apply and all(u == [] for u in box.at_apply), (i, box.at_apply)
    assert all(m.items == [b"p%d" % k for k in range(20)] for _, m in groups.values())
