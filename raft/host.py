"""Many Raft groups on one node, driven by one trio loop and one ticker.

    host = RaftHost(send)                       # send(group_name, message): fire-and-forget
    await nursery.start(host.run)
    g = host.add_group("meta", RaftConfig(node_id=1), storage, state_machine, seed=1)
    host.deliver("meta", message)               # the transport's inbox; never blocks
    g.propose_nowait(b"cmd", on_done)           # on_done(index, result, error) once applied here
    index, result = await g.propose(b"cmd")

How this works: every input (inbound message, proposal, operator call, tick) is queued and
handled by the one loop task, so a core is only touched between its Ready cycles. After
handling what is queued, the loop drains a Ready from every group that has one, sends the
leaders' appends, persists all of them in worker threads (each group's Storage.save fsyncs;
up to `fsync_threads` groups' fsyncs overlap; inputs keep queuing meanwhile), then for each group sends what waited for the fsync,
applies committed entries (state_machine.apply is synchronous), fires proposal callbacks and
calls `advance` (raft/cycle.py holds that contract). One ticker task ticks every group.

Node ids are host-wide: a server has the same id in every group, so `peer_down(id)` (its route
closed) reaches every group it is in. A malformed inbound message is dropped and logged; a
group whose processing raises anyway is stopped (`error` set, waiters failed, logged) and the
other groups keep running.
"""

from __future__ import annotations

import collections
import logging
import random
from typing import Any, Callable, Protocol

import msgspec
import trio

from .core import LEADER, NotLeader, ProposalRejected, RaftConfig, RaftCore
from .cycle import ProposalDropped, StateMachine, deliver_ready, needs_persist, send_after_persist, send_leader_messages_early
from .inbound import invalid_reason
from .messages import AnyMessage, ConfChange, Entry, decode_message
from .storage import Storage

__all__ = ["RaftHost", "RaftGroup", "PeerProgress", "ProposalDropped", "OnDone", "Outbox"]

log = logging.getLogger("raft.host")

OnDone = Callable[[int | None, Any, BaseException | None], None]


class Outbox(Protocol):
    """How the transport gathers what the loop sends (optional). Between hold() and flush()
    every message `send` is given, and any other output the state machines make meanwhile
    (replies to proposals), may be held back and is written out at flush(). The loop holds
    while it runs synchronously and flushes before each wait or fsync, and right after
    sending a cycle's acknowledgements: they leave with one write per connection, from the
    loop itself, instead of waking a writer task per connection."""

    def hold(self) -> None: ...
    def flush(self) -> None: ...


class PeerProgress(msgspec.Struct, frozen=True):
    """What the leader knows about one other member (nats-server's `cluster.replicas[]`)."""

    match_index: int  # highest index known replicated there
    next_index: int  # next index the leader will send
    lag: int  # leader's last index - match_index
    active: bool  # heard from within an election timeout and not reported down
    offline: bool  # its route is down (peer_down) and nothing was heard since
    current: bool  # active and fully caught up (lag 0)
    last_heard_s: float | None  # seconds since a message from it arrived; None if never
    learner: bool = False


class _Waiter:
    __slots__ = ("term", "on_done")

    def __init__(self, term: int, on_done: OnDone) -> None:
        self.term = term
        self.on_done = on_done


class RaftGroup:
    """One group on a host. Properties are safe to read from any task; every change goes through
    the host's loop."""

    def __init__(self, host: "RaftHost", name: str, core: RaftCore, storage: Storage, state_machine: StateMachine,
                 snapshot_entries: int, snapshot_bytes: int) -> None:
        self.host = host
        self.name = name
        self.core = core
        self.storage = storage
        self.state_machine = state_machine
        self.snapshot_entries = snapshot_entries
        self.snapshot_bytes = snapshot_bytes
        self.on_leader_change: Callable[[bool, int | None], None] | None = None
        self.on_applied: Callable[[], None] | None = None  # after each cycle that applied entries
        self._snapshot_now = False
        self.error: BaseException | None = None  # why the group stopped, if it failed
        self.stopped = False
        self.closed = trio.Event()  # set once the loop no longer touches the storage
        self.applied_bytes = 0  # payload bytes applied since the last snapshot
        self.heard: dict[int, float] = {}  # peer -> trio time of its last message
        self._waiters: dict[int, _Waiter] = {}
        self._reported: tuple[bool, int] = (False, 0)
        self._busy = False  # a Ready of this group is between ready() and advance()

    # -- status ----------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.core.id

    @property
    def is_leader(self) -> bool:
        return not self.stopped and self.core.state == LEADER

    @property
    def leader_id(self) -> int | None:
        return None if self.stopped else (self.core.lead or None)

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def voters(self) -> tuple[int, ...]:
        return self.core.voters

    @property
    def learners(self) -> tuple[int, ...]:
        return self.core.learners

    @property
    def applied_index(self) -> int:
        return self.core.log.applied

    @property
    def commit_index(self) -> int:
        return self.core.log.commit

    @property
    def last_index(self) -> int:
        return self.core.log.last_index

    @property
    def quarantined(self) -> bool:
        """Opened with repair=True after damage: it neither votes nor leads until caught up."""
        return self.core.quarantined

    def progress(self) -> dict[int, PeerProgress]:
        """Per-peer replication state; empty unless this node leads the group."""
        core = self.core
        if self.stopped or core.state != LEADER:
            return {}
        now = trio.current_time()
        window = core.cfg.election_ticks * self.host.tick_interval_s
        out = {}
        for peer, pr in core.progress.items():
            if peer == self.id:
                continue
            heard = self.heard.get(peer)
            since = None if heard is None else max(0.0, now - heard)
            offline = peer in self.host.down
            active = not offline and since is not None and since <= window
            lag = max(0, core.log.last_index - pr.match)
            out[peer] = PeerProgress(pr.match, pr.next, lag, active, offline, active and lag == 0, since,
                                     peer in core.learners)
        return out

    # -- proposals and operator calls (all run on the host loop) ------------------------------
    def propose_nowait(self, data: bytes, on_done: OnDone) -> None:
        """Replicate `data` without waiting. `on_done(index, result, None)` fires from the host
        loop once the entry is applied here; `on_done(None, None, NotLeader | ProposalRejected)`
        if it was refused; `on_done(index | None, None, ProposalDropped)` if it will not apply."""
        self.host._submit(lambda: self._start(lambda: self.core.propose(data), on_done), self)

    async def propose(self, data: bytes) -> tuple[int, Any]:
        """Replicate `data`; returns (index, state machine result) once applied on this node.
        Raises NotLeader (with a hint), ProposalRejected or ProposalDropped. Wrap in a timeout."""
        return await _wait(lambda cb: self.propose_nowait(data, cb))

    def propose_conf_change_nowait(self, change: ConfChange, on_done: OnDone) -> None:
        self.host._submit(lambda: self._start(lambda: self.core.propose_conf_change(change), on_done), self)

    async def propose_conf_change(self, change: ConfChange) -> int:
        """Add or remove a voter or learner; returns its index once applied here."""
        index, _ = await _wait(lambda cb: self.propose_conf_change_nowait(change, cb))
        return index

    async def transfer_leadership(self, target: int) -> None:
        """Ask `target` to take over; returns once the request is under way (NotLeader,
        ProposalRejected otherwise). Leadership moves when the target has caught up."""
        await _wait(lambda cb: self.host._submit(lambda: self._transfer(target, cb), self))

    def campaign(self) -> None:
        """Start an election now (pre-vote first when configured): a group just formed need
        not wait an election timeout for its first leader. Safe as any election: it takes a
        majority."""
        self.host._submit(lambda: None if self.stopped else self.core.campaign(), self)

    def step_down(self, preferred: int | None = None, on_done: OnDone | None = None) -> None:
        """Hand leadership to `preferred`, or to the most caught-up voter that is not down
        (META.LEADER.STEPDOWN). `on_done(None, target, None)` once the transfer is under way;
        errors go to it as `on_done(None, None, NotLeader | ProposalRejected)`."""
        cb = on_done or _ignore
        self.host._submit(lambda: self._step_down(preferred, cb), self)

    def snapshot_soon(self) -> None:
        """Take a snapshot at the end of the next cycle, whatever the thresholds say (a state
        machine whose durable state ran ahead of Raft's snapshot, e.g. after a catch-up)."""
        self._snapshot_now = True
        self.host._submit(lambda: None, self)

    def _start(self, fn: Callable[[], int], on_done: OnDone) -> None:
        if self.stopped:
            _call(on_done, None, None, NotLeader(None))
            return
        try:
            index = fn()
        except (NotLeader, ProposalRejected) as exc:  # the caller's problem; our bugs stop the group
            _call(on_done, None, None, exc)
            return
        except Exception as exc:
            self.host._fail(self, exc)
            _call(on_done, None, None, ProposalDropped(f"group stopped: {exc!r}"))
            return
        self._waiters[index] = _Waiter(self.core.term, on_done)

    def _transfer(self, target: int, on_done: OnDone) -> None:
        if self.stopped:
            _call(on_done, None, None, NotLeader(None))
            return
        try:
            self.core.transfer_leadership(target)
        except (NotLeader, ProposalRejected) as exc:
            _call(on_done, None, None, exc)
            return
        except Exception as exc:
            self.host._fail(self, exc)
            _call(on_done, None, None, NotLeader(None))
            return
        _call(on_done, None, target, None)

    def _step_down(self, preferred: int | None, on_done: OnDone) -> None:
        if self.stopped or self.core.state != LEADER:
            _call(on_done, None, None, NotLeader(None if self.stopped else (self.core.lead or None)))
            return
        target = preferred
        if target is None:
            core = self.core
            candidates = [v for v in core.voters if v != self.id and v in core.progress and v not in self.host.down]
            if not candidates:
                _call(on_done, None, None, ProposalRejected("no other voter to hand leadership to"))
                return
            target = max(candidates, key=lambda v: (core.progress[v].match, self.heard.get(v, -1.0), -v))
        self._transfer(target, on_done)

    # -- loop side ---------------------------------------------------------------------------
    def _applied(self, entry: Entry, result: Any) -> None:
        self.applied_bytes += len(entry.data)
        w = self._waiters.pop(entry.index, None)
        if w is None:
            return
        if entry.term == w.term:
            _call(w.on_done, entry.index, result, None)
        else:
            _call(w.on_done, entry.index, None, ProposalDropped(f"index {entry.index} was taken by term {entry.term}"))

    def _drop_waiters_below(self, index: int) -> None:
        for i in [i for i in self._waiters if i <= index]:
            w = self._waiters.pop(i)
            _call(w.on_done, i, None, ProposalDropped(f"index {i} was covered by a leader snapshot: outcome unknown"))

    def _fail_waiters(self, why: str) -> None:
        waiters, self._waiters = self._waiters, {}
        for i, w in waiters.items():
            _call(w.on_done, i, None, ProposalDropped(f"index {i}: {why}: outcome unknown"))

    def _report_leader(self) -> None:
        now = (self.core.state == LEADER, self.core.lead)
        if now != self._reported:
            self._reported = now
            self.host._leader_changed(self)
            if self.on_leader_change is not None:
                try:
                    self.on_leader_change(now[0], now[1] or None)
                except Exception:
                    log.exception("raft group %s: on_leader_change raised", self.name)

    def _snapshot_due(self) -> bool:
        applied, base = self.core.log.applied, self.core.log.snapshot.index
        if applied > base and self._snapshot_now:
            self._snapshot_now = False
            return True
        return applied > base and (applied - base >= self.snapshot_entries or self.applied_bytes >= self.snapshot_bytes)


class RaftHost:
    def __init__(self, send: Callable[[str, AnyMessage], None], *, tick_interval_s: float = 0.1,
                 fsync_in_thread: bool = True, fsync_threads: int = 4, inbox_messages_max: int = 65536,
                 inline_small_saves: bool = False, outbox: Outbox | None = None) -> None:
        assert tick_interval_s > 0 and inbox_messages_max > 0 and fsync_threads > 0
        self.send = send
        self.inline_small_saves = inline_small_saves  # see _inline_save
        self._hold = outbox.hold if outbox is not None else _nothing
        self._flush = outbox.flush if outbox is not None else _nothing
        self.tick_interval_s = tick_interval_s
        self.fsync_in_thread = fsync_in_thread
        self.fsync_threads = fsync_threads
        self.inbox_messages_max = inbox_messages_max
        self.groups: dict[str, RaftGroup] = {}
        self.down: set[int] = set()  # peers whose route is down (peer_down, nothing heard since)
        self.inbox_dropped = 0  # messages dropped because the inbox was full
        self.unknown_group_dropped = 0
        self.invalid_dropped = 0
        self.leader_changed = trio.Event()  # replaced after every leadership change (tests, waiters)
        self._queue: collections.deque = collections.deque()
        self._queued_messages = 0
        self._ticks = 0
        self._wakeup = trio.Event()
        self._dirty: dict[RaftGroup, None] = {}  # groups that may have a Ready (insertion order)
        self._running = False
        self._finished = False  # run() has returned: the groups are stopped for good
        self._unknown_logged: set[str] = set()

    # -- groups ------------------------------------------------------------------------------
    def add_group(self, name: str, config: RaftConfig, storage: Storage, state_machine: StateMachine, *, seed: int,
                  snapshot_entries: int = 10_000, snapshot_bytes: int = 64 << 20) -> RaftGroup:
        """Start driving a group whose storage is already open. Its state machine is restored
        from the stored snapshot here."""
        assert name not in self.groups, f"group {name!r} already on this host"
        assert snapshot_entries > 0 and snapshot_bytes > 0
        hard_state, snapshot, entries = storage.initial_state()
        core = RaftCore(config, random.Random(seed), hard_state, snapshot, entries)
        if snapshot.index > 0:
            state_machine.restore(snapshot.data)
        g = RaftGroup(self, name, core, storage, state_machine, snapshot_entries, snapshot_bytes)
        self.groups[name] = g
        self._dirty[g] = None
        self._kick()
        return g

    def remove_group(self, name: str) -> None:
        """Stop a group: its pending proposals fail (ProposalDropped, or NotLeader if not yet
        proposed) and its messages are dropped from now on. `g.closed` is set once the loop no
        longer touches its storage (an fsync may be in flight); close the disk after that."""
        g = self.groups.pop(name, None)
        if g is None:
            return
        self._stop(g, "group removed")

    def _stop(self, g: RaftGroup, why: str) -> None:
        g.stopped = True
        g._fail_waiters(why)
        if not g._busy:
            g.closed.set()

    def group(self, name: str) -> RaftGroup | None:
        return self.groups.get(name)

    # -- inputs ------------------------------------------------------------------------------
    def deliver(self, group: str, message: AnyMessage) -> None:
        """The transport's inbox. Never blocks: a full inbox drops (Raft retries)."""
        if self._queued_messages >= self.inbox_messages_max:
            self.inbox_dropped += 1
            return
        self._queued_messages += 1
        self._queue.append((group, message))
        self._kick()

    def deliver_bytes(self, group: str, data: bytes) -> None:
        """`deliver` for wire bytes (`messages.encode`); undecodable bytes are dropped and logged."""
        try:
            message = decode_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.invalid_dropped += 1
            log.warning("raft group %s: dropped an undecodable message (%d bytes): %s", group, len(data), exc)
            return
        self.deliver(group, message)

    def peer_down(self, node_id: int) -> None:
        """The route to `node_id` closed: followers it led campaign now, leaders stop counting it."""
        self._submit(lambda: self._peer_down(node_id))

    def peer_up(self, node_id: int) -> None:
        """The route to `node_id` is back: it is no longer reported offline."""
        self._submit(lambda: self.down.discard(node_id))

    def _submit(self, op: Callable[[], None], group: RaftGroup | None = None) -> None:
        """Queue `op` for the loop; it may change `group` (None: any group)."""
        if self._finished:
            op()  # the host has stopped: every group is stopped, so the operation fails at once
            return
        self._queue.append((None, (op, group)))
        self._kick()

    def _kick(self) -> None:
        self._wakeup.set()

    def _peer_down(self, node_id: int) -> None:
        self.down.add(node_id)
        for g in list(self.groups.values()):
            if node_id in g.core.progress or node_id in g.voters or node_id in g.learners or node_id == g.core.lead:
                self._guard(g, lambda g=g: g.core.peer_down(node_id))
                if not g.stopped:
                    g._report_leader()

    def _leader_changed(self, g: RaftGroup) -> None:
        self.leader_changed.set()
        self.leader_changed = trio.Event()

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        assert not self._running, "RaftHost.run is already running"
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                task_status.started()
                await self._loop()
        finally:
            self._running = False
            self._finished = True
            for g in list(self.groups.values()):
                g.stopped = True
                g._fail_waiters("host stopped")
                g._busy = False
                g.closed.set()
            while self._queue:  # proposals that never reached a core
                name, item = self._queue.popleft()
                if name is None:
                    _fail_op(item[0])
            self._queued_messages = 0

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval_s)
            self._ticks += 1
            self._kick()

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            self._hold()
            try:
                self._drain()
                while True:
                    # Only a group touched since its last cycle (or still busy) can have a Ready.
                    ready = [g for g in self._dirty if not g.stopped and self._guard(g, g.core.has_ready)]
                    self._dirty = dict.fromkeys(ready)  # after a cycle they may have more to apply
                    if not ready:
                        break
                    await self._cycle(ready)  # flushes before it waits, holds again after
                    self._drain()  # what queued during the fsync joins the next batch
            finally:
                self._flush()

    def _drain(self) -> None:
        touched: dict[RaftGroup, None] = {}
        while self._queue:
            name, item = self._queue.popleft()
            if name is None:
                op, group = item
                op()
                if group is None:
                    touched.update(dict.fromkeys(self.groups.values()))
                else:
                    touched[group] = None
                continue
            self._queued_messages -= 1
            g = self.groups.get(name)
            if g is None:
                self.unknown_group_dropped += 1
                if name not in self._unknown_logged and len(self._unknown_logged) < 1000:
                    self._unknown_logged.add(name)
                    log.warning("raft: dropped a message for unknown group %r (from %s)", name, item.src)
                continue
            problem = invalid_reason(item, g.core)
            if problem is not None:
                self.invalid_dropped += 1
                log.warning("raft group %s: dropped a bad message from %s: %s", name, item.src, problem)
                continue
            g.heard[item.src] = trio.current_time()
            self.down.discard(item.src)
            self._guard(g, lambda g=g, m=item: g.core.step(m))
            touched[g] = None
        ticks, self._ticks = self._ticks, 0
        for _ in range(ticks):
            for g in list(self.groups.values()):
                self._guard(g, g.core.tick)
        if ticks:
            touched.update(dict.fromkeys(self.groups.values()))
        for g in touched:
            if not g.stopped:
                g._report_leader()
        self._dirty.update(touched)

    def _guard(self, g: RaftGroup, fn: Callable[[], Any]) -> Any:
        """Run `fn` against one group; if it raises, stop that group and keep the others."""
        if g.stopped:
            return None
        try:
            return fn()
        except Exception as exc:
            self._fail(g, exc)
            return None

    def _fail(self, g: RaftGroup, exc: Exception) -> None:
        log.error("raft group %s: stopped after an internal error", g.name, exc_info=exc)
        g.error = exc
        if self.groups.get(g.name) is g:
            del self.groups[g.name]
        self._stop(g, f"group stopped: {exc!r}")

    async def _cycle(self, groups: list[RaftGroup]) -> None:
        batch = []
        for g in groups:
            rd = self._guard(g, g.core.ready)
            if rd is None:
                continue
            g._busy = True
            self._guard(g, lambda g=g, rd=rd: send_leader_messages_early(rd, self._sender(g)))
            batch.append((g, rd))
        writes = [(g, rd) for g, rd in batch if needs_persist(rd)]
        self._flush()  # the leaders' appends go on the wire before the fsync
        saved_inline = False
        try:
            if writes:
                if self.fsync_in_thread and not (self.inline_small_saves and _inline_save(writes)):
                    errors = await self._in_threads(_save_all, writes)
                else:
                    errors = _save_all(writes)
                    saved_inline = True
                for g, exc in errors:
                    g._busy = False
                    self._guard(g, _raiser(exc))
        finally:
            self._hold()
        for g, rd in batch:  # acknowledgements and votes leave before anything is applied
            if g._busy and not g.stopped and rd.messages:
                self._guard(g, lambda g=g, rd=rd: send_after_persist(rd, self._sender(g)))
        self._flush()
        if saved_inline:  # the acks are out: now let the rest of the program run between cycles
            await trio.lowlevel.checkpoint()
        self._hold()
        compact = []
        for g, rd in batch:
            if not g._busy:
                continue
            g._busy = False
            if g.stopped:
                g.closed.set()
                continue
            if rd.snapshot is not None:
                g.applied_bytes = 0
                g._drop_waiters_below(rd.snapshot.index)
            self._guard(g, lambda g=g, rd=rd: deliver_ready(g.core, rd, self._sender(g), g.state_machine, g._applied))
            if g.stopped:
                continue
            g._report_leader()
            if g._snapshot_due():
                snap = self._guard(g, lambda g=g: g.core.compact(g.core.log.applied, g.state_machine.snapshot()))
                if snap is not None:
                    g.applied_bytes = 0
                    g._busy = True
                    compact.append((g, snap))
            if rd.committed and g.on_applied is not None and not g.stopped:
                try:
                    g.on_applied()
                except Exception:
                    log.exception("raft group %s: on_applied raised", g.name)
        if compact:
            self._flush()
            try:
                if self.fsync_in_thread:
                    errors = await self._in_threads(_compact_all, compact)
                else:
                    errors = _compact_all(compact)
            finally:
                self._hold()
            for g, _ in compact:
                g._busy = False
                if g.stopped:
                    g.closed.set()
            for g, exc in errors:
                self._guard(g, _raiser(exc))

    async def _in_threads(self, fn: Callable[[list], list], work: list) -> list:
        """Run `fn` over `work` in up to `fsync_threads` worker threads at once (each group's
        files are fsynced by one thread; different groups' fsyncs overlap)."""
        n = min(len(work), self.fsync_threads)
        if n == 1:
            return await trio.to_thread.run_sync(fn, work)
        errors: list = []

        async def part(chunk: list) -> None:
            errors.extend(await trio.to_thread.run_sync(fn, chunk))

        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(part, work[k::n])
        return errors

    def _sender(self, g: RaftGroup) -> Callable[[AnyMessage], None]:
        name, send = g.name, self.send

        def out(m: AnyMessage) -> None:
            try:
                send(name, m)
            except Exception:
                log.exception("raft group %s: send to %s raised", name, m.dst)

        return out


# -- helpers ---------------------------------------------------------------------------------
INLINE_SAVE_BYTES = 64 << 10


def _inline_save(writes: list) -> bool:
    """Persist a small Ready on the loop itself when nothing else is ready to run: one group
    with a few KiB and an idle loop (one publish in flight) pays an fsync (tens of
    microseconds on an SSD) instead of a thread handoff each way, and blocking the idle loop
    for it delays nobody. With more work waiting the fsync goes to a thread."""
    if len(writes) != 1 or trio.lowlevel.current_statistics().tasks_runnable:
        return False
    rd = writes[0][1]
    if rd.snapshot is not None:
        return False
    return sum(len(e.data) for e in rd.entries) <= INLINE_SAVE_BYTES


def _save_all(writes: list) -> list:
    errors = []
    for g, rd in writes:
        try:
            g.storage.save(rd.hard_state, rd.snapshot, rd.entries)
        except Exception as exc:  # the disk failed: that group cannot go on without its fsync
            errors.append((g, exc))
    return errors


def _compact_all(compact: list) -> list:
    errors = []
    for g, snap in compact:
        try:
            g.storage.compact(snap)
        except Exception as exc:
            errors.append((g, exc))
    return errors


def _raiser(exc: BaseException) -> Callable[[], None]:
    def fn() -> None:
        raise exc

    return fn


def _nothing() -> None:
    pass


def _ignore(index: int | None, result: Any, error: BaseException | None) -> None:
    if error is not None:
        log.info("raft: step down failed: %s", error)


def _call(on_done: OnDone, index: int | None, result: Any, error: BaseException | None) -> None:
    try:
        on_done(index, result, error)
    except Exception:
        log.exception("raft: a proposal callback raised")


def _fail_op(op: Callable[[], None]) -> None:
    """Operations queued when the host stopped are run against a stopped state: they fail."""
    try:
        op()
    except Exception:
        log.exception("raft: a queued operation failed at shutdown")


async def _wait(submit: Callable[[OnDone], None]) -> tuple[Any, Any]:
    done = trio.Event()
    box: list = []

    def on_done(index: int | None, result: Any, error: BaseException | None) -> None:
        box.append((index, result, error))
        done.set()

    submit(on_done)
    await done.wait()
    index, result, error = box[0]
    if error is not None:
        raise error
    return index, result
