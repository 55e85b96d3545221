"""The pure Raft state machine: no trio, no clock, no sockets, no disk.

How this works: the caller feeds it events (`step(message)`, `tick()`, `propose(data)`,
`propose_conf_change`, `transfer_leadership`) and then drains a `Ready`: hard state and entries
to persist, a snapshot to persist and restore, messages to send, committed entries to apply.
The caller must do them in that order (persist with fsync, then send, then apply) and then call
`advance(ready)`. Because messages only leave after the fsync, no vote and no append
acknowledgement is ever sent for state that a crash could lose. The leader counts its own log
toward a quorum only once `advance` reports it persisted.

Elections use randomized timeouts, pre-vote (a node first asks whether it could win, without
raising its term, so a partitioned node does not disrupt the cluster when it returns) and
check-quorum (a leader that has not heard from a majority for an election timeout steps down;
followers that heard from a leader within that time ignore vote requests: the leader lease).
Membership changes one voter at a time; a configuration takes effect as soon as it is in the
log (dissertation section 4.1) and only one may be uncommitted. Randomness comes from the
injected `random.Random`, so a seed replays a run exactly.
"""

from __future__ import annotations

import random

import msgspec

from .log import RaftLog
from .messages import (
    CONF,
    NOOP,
    NORMAL,
    AnyMessage,
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfState,
    Entry,
    HardState,
    InstallSnapshot,
    RequestVote,
    Snapshot,
    TimeoutNow,
    VoteResponse,
    encode,
)

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"

PROBE = "probe"  # one append per heartbeat until the follower's position is known
REPLICATE = "replicate"  # pipeline appends optimistically
SNAPSHOT = "snapshot"  # waiting for an InstallSnapshot to be acknowledged


class RaftConfig(msgspec.Struct, frozen=True):
    node_id: int
    election_ticks: int = 10  # the election timeout is random in [election_ticks, 2 * election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    append_entries_max: int = 256  # entries per AppendEntries message
    append_bytes_max: int = 1 << 20  # payload bytes per AppendEntries message
    inflight_messages_max: int = 16  # unacknowledged AppendEntries per follower while replicating
    apply_entries_max: int = 4096  # committed entries handed out per Ready

    def __post_init__(self) -> None:
        assert self.node_id > 0
        assert 0 < self.heartbeat_ticks < self.election_ticks


class Ready(msgspec.Struct):
    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    committed: list[Entry]
    messages: list[AnyMessage]


class NotLeader(Exception):
    def __init__(self, leader: int | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class ProposalRejected(Exception):
    """The leader refused a proposal (a transfer or membership change is in progress)."""


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "recent_active", "snapshot_ticks", "heartbeat_match",
                 "heal")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = PROBE
        self.probe_sent = False
        self.recent_active = False
        self.snapshot_ticks = 0
        self.heartbeat_match = -1
        self.heal = False  # its last answer said it is quarantined (a repair lost entries it acked)


def quorum(n: int) -> int:
    return n // 2 + 1


class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState,
        snapshot: Snapshot,
        entries: list[Entry],
    ) -> None:
        self.cfg = config
        self.id = config.node_id
        self.rng = rng
        self.log = RaftLog(snapshot, entries)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.quarantined = hard_state.quarantined
        assert self.log.last_term <= self.term, (self.log.last_term, self.term)
        self.state = FOLLOWER
        self.lead = 0
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.msgs: list[AnyMessage] = []
        self.pending_snapshot: Snapshot | None = None
        self.persisted_hard_state = hard_state
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.transferee = 0
        self.transfer_elapsed = 0
        self.broadcast_pending = False
        self._reset_election_timeout()

    # -- public queries ----------------------------------------------------------------------
    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.quarantined)

    @property
    def voters(self) -> tuple[int, ...]:
        return self.log.conf.voters

    @property
    def learners(self) -> tuple[int, ...]:
        return self.log.conf.learners

    @property
    def promotable(self) -> bool:
        if self.quarantined:
            return False
        if self.id in self.voters:
            return True
        # Our removal is in the log but not known committed: we may hold the longest log, and
        # then no one else can win until we commit it (dissertation 4.2.2). Votes are still
        # counted in the latest configuration, so this is as safe as any election.
        log = self.log
        return log.conf_index > log.commit and self.id in log.conf_at(log.conf_index - 1).voters

    # -- inputs ------------------------------------------------------------------------------
    def tick(self) -> None:
        self.election_elapsed += 1
        if self.state == LEADER:
            self._tick_leader()
        elif self.election_elapsed >= self.randomized_timeout and self.promotable:
            # A node that may not campaign keeps counting, so its leader lease runs out and it
            # will answer the vote requests of those that may.
            self.election_elapsed = 0
            self._campaign(pre_vote=self.cfg.pre_vote)

    def campaign(self) -> None:
        """Start an election now (tests, or an operator forcing one)."""
        if self.state != LEADER and self.promotable:
            self._campaign(pre_vote=self.cfg.pre_vote)

    def peer_down(self, peer: int) -> None:
        """The transport lost its connection to `peer` (a killed process closes its routes at
        once). A follower whose leader that was drops the leader lease and campaigns (pre-vote)
        now instead of after a whole election timeout; among the remaining voters the lowest id
        goes first and each other waits one tick per rank, so they rarely split the vote. A
        leader stops counting the peer as active for check-quorum and probes it gently.
        Safe: winning still takes a majority (pre-vote included), and nodes still hearing from
        the leader keep rejecting per their lease; a false alarm only costs a failed pre-vote."""
        assert peer > 0, peer
        if peer == self.id:
            return
        if self.state == LEADER:
            pr = self.progress.get(peer)
            if pr is not None:
                pr.recent_active = False
                if pr.state == REPLICATE:
                    pr.state = PROBE
                    pr.next = pr.match + 1
                    pr.probe_sent = False
            return
        if peer != self.lead:
            return
        self.lead = 0  # no lease: we answer vote requests from now on
        if not self.promotable:
            return
        live = [v for v in self.voters if v != peer]
        rank = live.index(self.id) if self.id in live else 0
        if rank == 0:
            self._campaign(pre_vote=self.cfg.pre_vote)
        else:
            self.election_elapsed = 0
            self.randomized_timeout = rank

    def propose(self, data: bytes) -> int:
        """Append a command; returns its index. It is committed once applied at that index with
        the same term (`self.term` now)."""
        self._check_can_propose()
        return self._append_own(NORMAL, data)

    def propose_conf_change(self, change: ConfChange) -> int:
        self._check_can_propose()
        if self.log.conf_index > self.log.commit:
            raise ProposalRejected("a configuration change is still uncommitted")
        if self.log.term(self.log.commit) != self.term:
            raise ProposalRejected("the leader has not yet committed an entry in its term")
        voters, learners, node = set(self.voters), set(self.learners), change.node_id
        if change.op == ConfChange.ADD:
            if node in voters:
                raise ProposalRejected(f"{node} is already a voter")
            learners.discard(node)
            voters.add(node)
        elif change.op == ConfChange.ADD_LEARNER:
            if node in voters or node in learners:
                raise ProposalRejected(f"{node} is already a member")
            learners.add(node)
        elif change.op == ConfChange.REMOVE:
            if node in learners:
                learners.discard(node)
            elif node in voters and len(voters) > 1:
                voters.discard(node)
            else:
                raise ProposalRejected(f"cannot remove {node}")
        else:
            raise ProposalRejected(f"unknown op {change.op!r}")
        conf = ConfState(tuple(sorted(voters)), tuple(sorted(learners)))
        index = self._append_own(CONF, encode(conf))
        self._sync_progress()
        return index

    def transfer_leadership(self, target: int) -> None:
        if self.state != LEADER:
            raise NotLeader(self.lead or None)
        if target == self.id or target not in self.voters:
            raise ProposalRejected(f"cannot transfer leadership to {target}")
        self.transferee = target
        self.transfer_elapsed = 0
        if self.progress[target].match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record a state machine snapshot taken at applied `index` and drop the log below it."""
        assert index <= self.log.applied, (index, self.log.applied)
        term = self.log.term(index)
        assert term is not None
        snap = Snapshot(index, term, self.log.conf_at(index), data)
        self.log.compact(snap)
        return snap

    def step(self, m: AnyMessage) -> None:
        assert m.dst == self.id, (m.dst, self.id)
        if m.term > self.term:
            if isinstance(m, RequestVote):
                in_lease = self.cfg.check_quorum and self.lead != 0 and self.election_elapsed < self.cfg.election_ticks
                if in_lease and not m.transfer:
                    return  # a leader is alive: do not let a stray candidate disrupt it
                if not m.pre_vote:
                    self._become_follower(m.term, 0)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            else:
                lead = m.src if isinstance(m, (AppendEntries, InstallSnapshot)) else 0
                self._become_follower(m.term, lead)
        elif m.term < self.term:
            if isinstance(m, (AppendEntries, InstallSnapshot)):
                self._send(AppendResponse(self.term, self.id, m.src, index=self.log.commit, reject=True))
            elif isinstance(m, RequestVote):
                # Tell a stale candidate our term, or two candidates whose configurations do not
                # include each other can race upward in lock step forever.
                self._send(VoteResponse(self.term, self.id, m.src, granted=False, pre_vote=m.pre_vote))
            return
        if isinstance(m, AppendEntries):
            self._handle_append(m)
        elif isinstance(m, AppendResponse):
            if self.state == LEADER:
                self._handle_append_response(m)
        elif isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, InstallSnapshot):
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNow):
            if self.state != LEADER and self.promotable:
                self._campaign(pre_vote=False, transfer=True)
        else:
            raise AssertionError(f"unknown message {m!r}")

    # -- ready / advance -----------------------------------------------------------------------
    def has_ready(self) -> bool:
        if self.broadcast_pending:
            self._flush_broadcast()
        return bool(
            self.msgs
            or self.pending_snapshot is not None
            or self.log.stable < self.log.last_index
            or self.hard_state != self.persisted_hard_state
            or self.log.commit > max(self.log.applied, self.log.snapshot.index)
        )

    def ready(self) -> Ready:
        if self.broadcast_pending:
            self._flush_broadcast()
        hs = self.hard_state
        snap = self.pending_snapshot
        rd = Ready(
            hard_state=hs if hs != self.persisted_hard_state else None,
            entries=self.log.unstable(),
            snapshot=snap,
            committed=self.log.next_committed(self.cfg.apply_entries_max) if snap is None else [],
            messages=self.msgs,
        )
        self.msgs = []
        return rd

    def advance(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.persisted_hard_state = rd.hard_state
        if rd.snapshot is not None:
            assert self.pending_snapshot is rd.snapshot
            self.pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed:
            self.log.applied_to(rd.committed[-1].index)
        if self.state == LEADER and self.id in self.progress:
            pr = self.progress[self.id]
            pr.match = max(pr.match, self.log.stable)
            pr.next = pr.match + 1
            self._maybe_commit()

    # -- state transitions ---------------------------------------------------------------------
    def _reset_election_timeout(self) -> None:
        e = self.cfg.election_ticks
        self.randomized_timeout = e + self.rng.randrange(e)

    def _become_follower(self, term: int, lead: int) -> None:
        assert term >= self.term
        if term > self.term:
            self.term = term
            self.vote = 0
        self.state = FOLLOWER
        self.lead = lead
        self.election_elapsed = 0
        self.transferee = 0
        self.progress = {}
        self._reset_election_timeout()

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        assert self.promotable
        if pre_vote:
            self.state = PRE_CANDIDATE
            self.lead = 0
            term = self.term + 1
        else:
            self.term += 1
            self.vote = self.id
            self.state = CANDIDATE
            self.lead = 0
            term = self.term
        self.election_elapsed = 0
        self._reset_election_timeout()
        self.votes = {self.id: True}
        if self._poll() == 1:
            self._won_election()
            return
        for peer in self.voters:
            if peer != self.id:
                self._send(
                    RequestVote(term, self.id, peer, self.log.last_index, self.log.last_term, pre_vote, transfer)
                )

    def _poll(self) -> int:
        """1 if the election is won, -1 if lost, 0 if undecided."""
        voters = self.voters
        granted = sum(1 for v in voters if self.votes.get(v) is True)
        rejected = sum(1 for v in voters if self.votes.get(v) is False)
        q = quorum(len(voters))
        if granted >= q:
            return 1
        if rejected > len(voters) - q:
            return -1
        return 0

    def _won_election(self) -> None:
        if self.state == PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        assert self.state == CANDIDATE and self.vote == self.id
        self.state = LEADER
        self.lead = self.id
        self.heartbeat_elapsed = 0
        self.election_elapsed = 0
        self.transferee = 0
        self.progress = {}
        self._sync_progress()
        for pr in self.progress.values():
            pr.recent_active = True
        self._append_own(NOOP, b"")

    def _sync_progress(self) -> None:
        """Track exactly the members of the latest configuration (plus ourselves)."""
        members = set(self.voters) | set(self.learners) | {self.id}
        for peer in list(self.progress):
            if peer not in members:
                del self.progress[peer]
        for peer in members:
            if peer not in self.progress:
                pr = Progress(self.log.last_index + 1)
                pr.recent_active = True
                self.progress[peer] = pr
        self.progress[self.id].state = REPLICATE

    # -- leader ----------------------------------------------------------------------------------
    def _check_can_propose(self) -> None:
        if self.state != LEADER:
            raise NotLeader(self.lead or None)
        if self.transferee:
            raise ProposalRejected("leadership transfer in progress")

    def _append_own(self, kind: int, data: bytes) -> int:
        e = Entry(self.term, self.log.last_index + 1, kind, data)
        self.log.append([e])
        self.broadcast_pending = True  # one AppendEntries per peer for a whole burst of proposals
        return e.index  # our own vote for it counts in advance(), after the fsync

    def _flush_broadcast(self) -> None:
        self.broadcast_pending = False
        if self.state == LEADER:
            for peer in self.progress:
                if peer != self.id:
                    self._send_append(peer)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        if self.transferee:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.cfg.election_ticks:
                self.transferee = 0  # give up; the target never caught up or never campaigned
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                active = sum(
                    1 for v in self.voters if v == self.id or (v in self.progress and self.progress[v].recent_active)
                )
                if active < quorum(len(self.voters)):
                    self._become_follower(self.term, 0)
                    return
                for peer, pr in self.progress.items():
                    pr.recent_active = peer == self.id
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            for peer in self.progress:
                if peer != self.id:
                    self._heartbeat(peer)

    def _heartbeat(self, peer: int) -> None:
        pr = self.progress[peer]
        if pr.state == SNAPSHOT:
            pr.snapshot_ticks += self.cfg.heartbeat_ticks
            if pr.snapshot_ticks >= self.cfg.election_ticks:
                self._send_snapshot(peer)  # the last one was lost, or its answer was
        elif pr.state == REPLICATE:
            if pr.match < self.log.last_index and pr.match == pr.heartbeat_match:
                # No progress for a whole heartbeat: something was dropped. Probe again.
                pr.state = PROBE
                pr.next = pr.match + 1
                self._send_append(peer)
            else:
                t = self.log.term(pr.match)
                if t is None:
                    self._send_snapshot(peer)
                else:
                    self._send(AppendEntries(self.term, self.id, peer, pr.match, t, self._commit_for(pr.match),
                                             (), self.log.last_index, pr.heal))
        else:
            pr.probe_sent = False
            self._send_append(peer)
        pr.heartbeat_match = pr.match

    def _commit_for(self, match: int) -> int:
        return min(self.log.commit, match)

    def _send_append(self, peer: int) -> None:
        pr = self.progress[peer]
        if pr.state == SNAPSHOT or (pr.state == PROBE and pr.probe_sent):
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._send_snapshot(peer)
            return
        if pr.state == PROBE:
            pr.probe_sent = True
            self._send(AppendEntries(self.term, self.id, peer, prev, prev_term, self.log.commit,
                                     tuple(self._batch(pr.next)), self.log.last_index, pr.heal))
            return
        # REPLICATE: pipeline several messages, but bound what is in flight.
        window = self.cfg.append_entries_max * self.cfg.inflight_messages_max
        while pr.next <= self.log.last_index and pr.next - pr.match - 1 < window:
            prev = pr.next - 1
            ents = self._batch(pr.next)
            pr.next = ents[-1].index + 1
            self._send(AppendEntries(self.term, self.id, peer, prev, self.log.term(prev), self.log.commit,
                                     tuple(ents), self.log.last_index, pr.heal))

    def _batch(self, lo: int) -> list[Entry]:
        hi = min(self.log.last_index + 1, lo + self.cfg.append_entries_max)
        return self.log.slice(lo, hi, self.cfg.append_bytes_max) if hi > lo else []

    def _send_snapshot(self, peer: int) -> None:
        pr = self.progress[peer]
        pr.state = SNAPSHOT
        pr.snapshot_ticks = 0
        self._send(InstallSnapshot(self.term, self.id, peer, self.log.snapshot))

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self.progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.heal = m.quarantined
        if m.reject:
            if m.quarantined and m.hint_index < pr.match:
                pr.match = m.hint_index  # it lost acknowledged entries in a repair; forget them
            elif m.index <= pr.match:
                return  # stale
            if pr.state == PROBE and m.index != pr.next - 1:
                return  # answer to an older probe
            probe = m.hint_index
            if m.hint_term > 0:
                probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            pr.next = max(min(m.index, probe + 1), pr.match + 1)
            pr.state = PROBE
            pr.probe_sent = False
            self._send_append(m.src)
            return
        if m.index > pr.match:
            pr.match = m.index
            pr.next = max(pr.next, m.index + 1)
            if pr.state != REPLICATE:
                pr.state = REPLICATE
            self._maybe_commit()
            if self.state != LEADER:
                return  # committed our own removal
        elif pr.state == PROBE and m.index == pr.match:
            pr.state = REPLICATE
            pr.next = max(pr.next, pr.match + 1)
        pr.probe_sent = False
        if self.transferee == m.src and pr.match == self.log.last_index:
            self._send(TimeoutNow(self.term, self.id, m.src))
        if pr.next <= self.log.last_index:
            self._send_append(m.src)

    def _maybe_commit(self) -> None:
        voters = self.voters
        matches = sorted((self.progress[v].match if v in self.progress else 0 for v in voters), reverse=True)
        if not matches:
            return
        q = matches[quorum(len(voters)) - 1]
        # Raft section 5.4.2: only entries of the current term are committed by counting replicas.
        if q > self.log.commit and self.log.term(q) == self.term:
            self.log.commit_to(q)
            if self.id not in voters and self.log.commit >= self.log.conf_index:
                self._become_follower(self.term, 0)  # our removal is committed: step down

    # -- follower / candidate ---------------------------------------------------------------------
    def _handle_append(self, m: AppendEntries) -> None:
        assert self.state != LEADER, ("two leaders in one term", self.term, self.id, m.src)
        self.state = FOLLOWER
        self.lead = m.src
        self.election_elapsed = 0
        if m.index < self.log.commit:
            self._send(AppendResponse(self.term, self.id, m.src, index=self.log.commit))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is None:
            hint_index, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index), m.log_term)
            self._send(AppendResponse(self.term, self.id, m.src, index=m.index, reject=True,
                                      hint_index=hint_index, hint_term=hint_term, quarantined=self.quarantined))
            return
        if self.quarantined and m.heals and last_new >= m.last_index:
            # our log now holds the leader's whole log as of a message sent after the leader
            # heard we are quarantined: an append sent before our crash (delivered late) may
            # predate entries we acknowledged and lost, so it cannot end the quarantine
            self.quarantined = False
        self._send(AppendResponse(self.term, self.id, m.src, index=last_new, quarantined=self.quarantined))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        assert self.state != LEADER, ("two leaders in one term", self.term, self.id, m.src)
        self.state = FOLLOWER
        self.lead = m.src
        self.election_elapsed = 0
        s = m.snapshot
        if s.index <= self.log.commit:
            self._send(AppendResponse(self.term, self.id, m.src, index=self.log.commit))
            return
        if self.log.term(s.index) == s.term:
            self.log.commit_to(s.index)  # we already hold that prefix
        else:
            self.log.restore(s)
            self.pending_snapshot = s
        self._send(AppendResponse(self.term, self.id, m.src, index=s.index))

    def _handle_vote_request(self, m: RequestVote) -> None:
        up_to_date = self.log.is_up_to_date(m.last_index, m.last_term)
        if self.quarantined:
            grant = False  # we may have lost entries we acknowledged; our vote could elect a bad leader
        elif m.pre_vote:
            grant = m.term > self.term and up_to_date
        else:
            can_vote = self.vote == m.src or (self.vote == 0 and self.lead == 0)
            grant = can_vote and up_to_date
            if grant:
                self.vote = m.src
                self.election_elapsed = 0
        term = m.term if grant else self.term
        self._send(VoteResponse(term, self.id, m.src, granted=grant, pre_vote=m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self.state == PRE_CANDIDATE and m.pre_vote and m.term == self.term + 1:
            pass
        elif self.state == CANDIDATE and not m.pre_vote and m.term == self.term:
            pass
        else:
            return
        self.votes[m.src] = m.granted
        result = self._poll()
        if result == 1:
            self._won_election()
        elif result == -1:
            self._become_follower(self.term, 0)

    def _send(self, m: AnyMessage) -> None:
        assert m.src == self.id and m.dst != self.id
        self.msgs.append(m)
