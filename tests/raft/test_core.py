"""Paper-rule tests for the pure core. Each test names the Raft paper section it checks
("In Search of an Understandable Consensus Algorithm", extended version; "dissertation" is
Ongaro's thesis, for pre-vote, check-quorum, membership and leadership transfer)."""

from __future__ import annotations

import random

import pytest

from raft.core import CANDIDATE, FOLLOWER, LEADER, PRE_CANDIDATE, NotLeader, ProposalRejected, RaftConfig, RaftCore
from raft.messages import (
    CONF,
    NOOP,
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    InstallSnapshot,
    RequestVote,
    Snapshot,
    VoteResponse,
    decode_conf,
)
from tests.raft.cluster import Cluster, make_core


def core_with_log(node_id, voters, term, entries, **cfg):
    return RaftCore(RaftConfig(node_id=node_id, **cfg), random.Random(node_id), HardState(term, 0),
                    Snapshot(0, 0, ConfState(voters)), entries)


def log_of(core):
    return [(e.index, e.term) for e in core.log.entries]


# -- 5.2 leader election ----------------------------------------------------------------------
def test_5_2_follower_times_out_and_becomes_leader():
    c = Cluster(3, seed=1)
    c.tick(25)
    leaders = [n for n in c.nodes.values() if n.state == LEADER]
    assert len(leaders) == 1
    assert all(n.lead == leaders[0].id for n in c.nodes.values())


def test_5_2_randomized_election_timeout_is_within_bounds():
    core = make_core(1, (1, 2, 3), election_ticks=10)
    seen = set()
    for _ in range(200):
        core._reset_election_timeout()
        seen.add(core.randomized_timeout)
    assert min(seen) >= 10 and max(seen) < 20 and len(seen) > 5


def test_5_2_one_vote_per_term():
    core = make_core(1, (1, 2, 3), pre_vote=False, check_quorum=False)
    core.step(RequestVote(1, 2, 1, 0, 0))
    core.step(RequestVote(1, 3, 1, 0, 0))
    votes = [m for m in core.ready().messages if isinstance(m, VoteResponse)]
    assert [(m.dst, m.granted) for m in votes] == [(2, True), (3, False)]
    assert core.vote == 2


def test_5_2_election_safety_at_most_one_leader_per_term_random_runs():
    for seed in range(30):
        c = Cluster(5, seed=seed)
        rng = random.Random(seed)
        leaders_by_term: dict[int, int] = {}
        for _ in range(150):
            c.cut = {(a, b) for a in c.nodes for b in c.nodes if a != b and rng.random() < 0.3}
            c.tick(1)
            for n in c.nodes.values():
                if n.state == LEADER:
                    assert leaders_by_term.setdefault(n.term, n.id) == n.id, (seed, n.term)


def test_5_4_1_candidate_with_stale_log_loses():
    stale = core_with_log(1, (1, 2, 3), 2, [Entry(1, 1)], pre_vote=False)
    fresh = core_with_log(2, (1, 2, 3), 2, [Entry(1, 1), Entry(2, 2)], pre_vote=False)
    fresh.step(RequestVote(3, 1, 2, stale.log.last_index, stale.log.last_term))
    (resp,) = fresh.ready().messages
    assert not resp.granted and fresh.vote == 0
    # same last term, shorter log also loses; longer or equal wins
    fresh.step(RequestVote(3, 3, 2, 2, 2))
    (resp,) = fresh.ready().messages
    assert resp.granted


# -- 5.3 log replication ----------------------------------------------------------------------
def test_5_3_leader_replicates_and_commits():
    c = Cluster(3)
    leader = c.elect(1)
    idx = leader.propose(b"hello")
    c.deliver_all()
    c.tick(1)
    for i in c.nodes:
        assert [e.data for e in c.applied[i] if e.index == idx] == [b"hello"]


def test_5_3_log_matching_follower_truncates_conflicting_suffix():
    f = core_with_log(2, (1, 2, 3), 3, [Entry(1, 1), Entry(1, 2), Entry(2, 3), Entry(2, 4)])
    f.step(AppendEntries(3, 1, 2, index=2, log_term=1, commit=0, entries=(Entry(3, 3, 0, b"x"),)))
    assert log_of(f) == [(1, 1), (2, 1), (3, 3)]
    (resp,) = f.ready().messages
    assert not resp.reject and resp.index == 3


def test_5_3_stale_duplicate_append_does_not_truncate_newer_entries():
    f = core_with_log(2, (1, 2, 3), 1, [])
    f.step(AppendEntries(1, 1, 2, 0, 0, 0, (Entry(1, 1), Entry(1, 2), Entry(1, 3))))
    f.step(AppendEntries(1, 1, 2, 0, 0, 0, (Entry(1, 1),)))  # reordered older message
    assert log_of(f) == [(1, 1), (2, 1), (3, 1)]


def test_5_3_rejects_append_whose_previous_entry_does_not_match():
    f = core_with_log(2, (1, 2, 3), 3, [Entry(1, 1)])
    f.step(AppendEntries(3, 1, 2, index=5, log_term=3, commit=0))
    (resp,) = f.ready().messages
    assert resp.reject and resp.hint_index == 1 and resp.hint_term == 1


def test_5_3_fast_backtracking_skips_a_whole_term_per_round_trip():
    # Follower has 50 entries of term 2 that the leader (term 3) never had.
    leader_log = [Entry(1, i) for i in range(1, 11)] + [Entry(3, i) for i in range(11, 21)]
    follower_log = [Entry(1, i) for i in range(1, 11)] + [Entry(2, i) for i in range(11, 61)]
    c = Cluster(3, pre_vote=False)
    c.nodes[1] = core_with_log(1, (1, 2, 3), 3, leader_log, pre_vote=False)
    c.nodes[2] = core_with_log(2, (1, 2, 3), 2, follower_log, pre_vote=False)
    c.nodes[3] = core_with_log(3, (1, 2, 3), 3, leader_log, pre_vote=False)
    c.isolate(2)
    c.elect(1)
    c.heal()
    rejects = 0
    for _ in range(10):
        c.nodes[1].tick()
        c.process(1)
        for m in list(c.inflight):
            if isinstance(m, AppendResponse) and m.reject:
                rejects += 1
        c.deliver_all()
    assert log_of(c.nodes[2]) == log_of(c.nodes[1])
    assert rejects <= 3


# -- 5.4 safety -------------------------------------------------------------------------------
def test_5_4_2_leader_does_not_commit_old_term_entries_by_counting_replicas():
    # Figure 8: entry (2, term 2) sits on a majority but may not be committed by the term-4
    # leader until an entry of term 4 is on a majority too.
    voters = (1, 2, 3, 4, 5)
    leader = core_with_log(1, voters, 3, [Entry(1, 1), Entry(2, 2)], pre_vote=False)
    leader.campaign()
    for peer in (2, 3):
        leader.step(VoteResponse(4, peer, 1, granted=True))
    assert leader.state == LEADER and leader.term == 4
    rd = leader.ready()
    assert [e.kind for e in rd.entries] == [NOOP]
    leader.advance(rd)
    leader.step(AppendResponse(4, 2, 1, index=2))
    leader.step(AppendResponse(4, 3, 1, index=2))
    assert leader.log.commit == 0  # index 2 is on 3 of 5, but it is from term 2
    leader.step(AppendResponse(4, 2, 1, index=3))
    assert leader.log.commit == 0
    leader.step(AppendResponse(4, 3, 1, index=3))
    assert leader.log.commit == 3  # the term-4 entry commits, and index 2 with it


def test_5_4_leader_completeness_new_leader_has_every_committed_entry():
    c = Cluster(5, seed=3)
    old = c.elect(1)
    for i in range(5):
        old.propose(b"%d" % i)
    c.deliver_all()
    committed = [(e.index, e.term, e.data) for e in old.log.entries if e.index <= old.log.commit]
    c.isolate(1)
    c.tick(60, only=(2, 3, 4, 5))
    new = c.leader()
    assert new is not None and new.id != 1
    assert [(e.index, e.term, e.data) for e in new.log.entries[: len(committed)]] == committed


def test_5_4_3_state_machine_safety_all_nodes_apply_the_same_sequence():
    c = Cluster(3, seed=7)
    rng = random.Random(7)
    for _ in range(200):
        leader = c.leader()
        if leader is not None and rng.random() < 0.5:
            leader.propose(b"%d" % rng.randrange(1000))
        c.cut = {(a, b) for a in c.nodes for b in c.nodes if a != b and rng.random() < 0.2}
        c.tick(1)
    c.heal()
    c.tick(40)
    seqs = [[(e.index, e.term, e.data) for e in c.applied[i]] for i in c.nodes]
    assert seqs[0] == seqs[1] == seqs[2] and len(seqs[0]) > 20


# -- persistence contract -----------------------------------------------------------------------
def test_leader_counts_itself_only_after_its_entries_are_persisted():
    core = make_core(1, (1,))
    core.campaign()
    rd = core.ready()
    assert core.state == LEADER and rd.entries and core.log.commit == 0
    assert rd.committed == []
    core.advance(rd)
    assert core.log.commit == 1


def test_vote_leaves_together_with_the_hard_state_that_records_it():
    core = make_core(1, (1, 2, 3), pre_vote=False)
    core.step(RequestVote(1, 2, 1, 0, 0))
    rd = core.ready()
    assert rd.hard_state == HardState(1, 2) and rd.messages[0].granted


# -- dissertation 9.6: pre-vote and check-quorum -------------------------------------------------
def test_9_6_prevote_partitioned_node_does_not_raise_its_term():
    c = Cluster(3, seed=2)
    c.elect(1)
    term = c.nodes[1].term
    c.isolate(3)
    c.tick(100)
    assert c.nodes[3].term == term and c.nodes[3].state == PRE_CANDIDATE
    c.heal()
    c.tick(3)
    assert c.nodes[1].state == LEADER and c.nodes[1].term == term


def test_9_6_check_quorum_isolated_leader_steps_down():
    c = Cluster(3, seed=4)
    c.elect(1)
    c.isolate(1)
    c.tick(25)
    assert c.nodes[1].state != LEADER
    assert c.leader() is not None and c.leader().id != 1


def test_9_6_leader_lease_followers_ignore_a_disruptive_candidate():
    c = Cluster(3, seed=5)
    c.elect(1)
    c.deliver_all()
    term = c.nodes[1].term
    c.nodes[2].step(RequestVote(term + 5, 3, 2, 100, term + 4))
    assert c.nodes[2].term == term and not c.nodes[2].ready().messages


def test_pre_vote_granted_without_changing_voter_state():
    core = make_core(1, (1, 2, 3))
    core.step(RequestVote(1, 2, 1, 0, 0, pre_vote=True))
    (resp,) = core.ready().messages
    assert resp.granted and resp.pre_vote and core.term == 0 and core.vote == 0


# -- section 7: log compaction and InstallSnapshot --------------------------------------------------
def test_7_far_behind_follower_receives_snapshot():
    c = Cluster(3, seed=6)
    leader = c.elect(1)
    c.isolate(3)
    for i in range(20):
        leader.propose(b"%d" % i)
    c.deliver_all()
    c.tick(1)
    snap = leader.compact(leader.log.applied, b"state-at-%d" % leader.log.applied)
    assert leader.log.first_index == snap.index + 1
    c.heal()
    sent = []
    for _ in range(5):
        c.nodes[1].tick()
        c.process(1)
        sent += [m for m in c.inflight if isinstance(m, InstallSnapshot)]
        c.deliver_all()
    assert sent and c.nodes[3].log.snapshot == snap
    assert c.nodes[3].log.last_index == leader.log.last_index
    assert c.nodes[3].log.commit == leader.log.commit


def test_7_snapshot_behind_commit_is_ignored():
    f = core_with_log(2, (1, 2), 1, [Entry(1, 1), Entry(1, 2)])
    f.step(AppendEntries(1, 1, 2, 0, 0, commit=2, entries=(Entry(1, 1), Entry(1, 2))))
    f.ready()
    f.step(InstallSnapshot(1, 1, 2, Snapshot(1, 1, ConfState((1, 2)), b"old")))
    assert f.pending_snapshot is None and f.log.last_index == 2


# -- section 6 / dissertation 4: membership changes -------------------------------------------------
def test_6_add_server_one_at_a_time():
    c = Cluster(3, seed=8)
    leader = c.elect(1)
    c.tick(2)
    c.add(4)
    idx = leader.propose_conf_change(ConfChange(ConfChange.ADD, 4))
    with pytest.raises(ProposalRejected):
        leader.propose_conf_change(ConfChange(ConfChange.ADD, 5))  # one uncommitted change at a time
    c.tick(5)
    assert leader.log.commit >= idx
    assert c.nodes[4].voters == (1, 2, 3, 4)
    assert c.nodes[4].log.last_index == leader.log.last_index


def test_6_removed_leader_steps_down_after_commit_and_others_continue():
    c = Cluster(3, seed=9)
    leader = c.elect(1)
    c.tick(2)
    leader.propose_conf_change(ConfChange(ConfChange.REMOVE, 1))
    c.deliver_all()
    c.tick(2)
    assert c.nodes[1].state == FOLLOWER
    c.tick(40)
    new = c.leader()
    assert new is not None and new.id in (2, 3) and new.voters == (2, 3)
    new.propose(b"after")
    c.tick(2)
    assert any(e.data == b"after" for e in c.applied[2])


def test_6_conf_change_needs_a_committed_entry_of_the_current_term():
    core = make_core(1, (1, 2, 3), pre_vote=False)
    core.campaign()
    core.step(VoteResponse(1, 2, 1, granted=True))
    assert core.state == LEADER
    with pytest.raises(ProposalRejected):
        core.propose_conf_change(ConfChange(ConfChange.ADD, 4))


def test_6_truncating_a_conf_entry_rolls_the_configuration_back():
    conf = Entry(2, 2, CONF, __import__("raft.messages").messages.encode(ConfState((1, 2, 3, 4))))
    f = core_with_log(2, (1, 2, 3), 3, [Entry(1, 1), conf])
    assert f.voters == (1, 2, 3, 4)
    f.step(AppendEntries(3, 1, 2, index=1, log_term=1, commit=0, entries=(Entry(3, 2),)))
    assert f.voters == (1, 2, 3)
    assert decode_conf(conf.data).voters == (1, 2, 3, 4)


# -- dissertation 3.10: leadership transfer ----------------------------------------------------------
def test_3_10_leadership_transfer():
    c = Cluster(3, seed=10)
    leader = c.elect(1)
    leader.propose(b"x")
    c.deliver_all()
    leader.transfer_leadership(3)
    with pytest.raises(ProposalRejected):
        leader.propose(b"y")
    c.deliver_all()
    assert c.nodes[3].state == LEADER and c.nodes[1].state == FOLLOWER
    with pytest.raises(NotLeader):
        c.nodes[1].propose(b"z")


def test_3_10_transfer_to_a_lagging_follower_catches_it_up_first():
    c = Cluster(3, seed=11)
    leader = c.elect(1)
    c.isolate(2)
    for i in range(10):
        leader.propose(b"%d" % i)
    c.deliver_all()
    c.heal()
    leader.transfer_leadership(2)
    c.deliver_all()
    c.tick(3)
    assert c.nodes[2].state == LEADER
    assert [e.data for e in c.applied[2] if e.data][:10] == [b"%d" % i for i in range(10)]


# -- quarantine after a repaired corrupt log ---------------------------------------------------------
def test_quarantined_node_refuses_to_vote_or_campaign_until_caught_up():
    q = RaftCore(RaftConfig(node_id=3), random.Random(1), HardState(1, 0, True),
                 Snapshot(0, 0, ConfState((1, 2, 3))), [])
    for _ in range(50):
        q.tick()
    assert q.state == FOLLOWER and q.term == 1
    q.step(RequestVote(2, 2, 3, 10, 2))
    (resp,) = [m for m in q.ready().messages if isinstance(m, VoteResponse)]
    assert not resp.granted
    q.step(AppendEntries(2, 1, 3, 0, 0, 0, (Entry(1, 1), Entry(2, 2)), last_index=3))
    assert q.quarantined  # still one entry short of the leader
    # caught up, but by an append sent before the leader knew it is quarantined (it may be a
    # late one from before the crash, older than entries it acknowledged and lost): still out
    q.step(AppendEntries(2, 1, 3, 2, 2, 0, (Entry(2, 3),), last_index=3))
    assert q.quarantined
    (ack,) = [m for m in q.ready().messages if isinstance(m, AppendResponse)][-1:]
    assert ack.quarantined  # which tells the leader, whose next append heals it
    q.step(AppendEntries(2, 1, 3, 3, 2, 0, (), last_index=3, heals=True))
    assert not q.quarantined and q.ready().hard_state == HardState(2, 0, False)


def test_candidate_state_names():
    c = Cluster(3, pre_vote=False, seed=12)
    c.nodes[1].campaign()
    assert c.nodes[1].state == CANDIDATE


def test_3_10_transfer_to_an_unreachable_target_is_abandoned_after_an_election_timeout():
    c = Cluster(3, seed=13)
    leader = c.elect(1)
    c.tick(1)
    c.isolate(3)
    leader.transfer_leadership(3)
    with pytest.raises(ProposalRejected):
        leader.propose(b"blocked")
    c.tick(10, only=(1,))
    assert leader.state == LEADER and leader.transferee == 0
    leader.propose(b"accepted again")


def test_4_2_3_removed_server_cannot_disrupt_the_cluster():
    c = Cluster(3, seed=14)
    leader = c.elect(1)
    c.tick(2)
    leader.propose_conf_change(ConfChange(ConfChange.REMOVE, 3))
    c.isolate(3)  # node 3 never learns it was removed, so it keeps campaigning
    c.tick(5)
    c.heal()
    term = leader.term
    c.tick(80)
    assert leader.state == LEADER and leader.term == term
    assert c.nodes[3].state != LEADER


def test_4_2_1_learner_catches_up_without_counting_then_is_promoted():
    c = Cluster(3, seed=15)
    leader = c.elect(1)
    c.tick(2)
    c.add(4)
    leader.propose_conf_change(ConfChange(ConfChange.ADD_LEARNER, 4))
    c.tick(3)
    assert leader.voters == (1, 2, 3) and leader.learners == (4,)
    assert c.nodes[4].log.last_index == leader.log.last_index  # it receives the log
    c.isolate(2)
    c.isolate(3)
    idx = leader.propose(b"needs a voter majority")
    c.tick(3, only=(1, 4))
    assert leader.log.commit < idx  # the learner's acknowledgement does not count
    c.heal()
    c.tick(2)
    assert leader.log.commit >= idx
    for _ in range(100):
        c.nodes[4].tick()
    assert c.nodes[4].state == FOLLOWER  # a learner never campaigns
    with pytest.raises(ProposalRejected):
        leader.transfer_leadership(4)
    leader.propose_conf_change(ConfChange(ConfChange.ADD, 4))  # promote
    c.tick(3)
    assert c.nodes[4].voters == (1, 2, 3, 4) and c.nodes[4].learners == ()
    leader.transfer_leadership(4)
    c.deliver_all()
    assert c.nodes[4].state == LEADER


def test_4_2_2_leader_removing_itself_can_still_finish_the_job_after_stepping_down():
    # Leader 2 appends "remove 2" but loses its only peer before committing it. Node 1's log is
    # now shorter, so only node 2 can win an election: it must still be allowed to campaign.
    c = Cluster(2, seed=16)
    leader = c.elect(2)
    c.tick(2)
    c.isolate(1)
    leader.propose_conf_change(ConfChange(ConfChange.REMOVE, 2))
    c.tick(25, only=(2,))
    assert leader.state != LEADER and leader.voters == (1,) and leader.promotable
    c.heal()
    c.tick(80)
    assert c.nodes[1].state == LEADER and c.nodes[1].voters == (1,)
    assert c.nodes[2].log.commit >= c.nodes[2].log.conf_index and not c.nodes[2].promotable
