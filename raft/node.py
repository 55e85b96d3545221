"""The trio driver: one task owns the core and runs persist -> send -> apply -> advance.
(A leader's own appends go out before its fsync: see send_leader_messages_early.)

Create a node, start it in a nursery, feed it transport messages, propose:

    storage = Storage.open(OsDisk(path), ConfState((1, 2, 3)))
    node = RaftNode(RaftConfig(node_id=1), storage, my_state_machine, transport, seed=1)
    network_inbox = node.deliver              # the transport calls this for each message
    await nursery.start(node.run)
    index, result = await node.propose(b"cmd")  # returns once committed and applied here

Every input (message, tick, proposal) goes through one bounded channel to the loop task, so
the core is only touched between Ready cycles. The fsync runs in a worker thread so the event
loop keeps serving other tasks; nothing leaves the node until it returns. Inbound messages
are dropped when the inbox is full (Raft retries); proposals wait for room instead.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Protocol

import trio

from .core import LEADER, NotLeader, ProposalRejected, RaftConfig, RaftCore, Ready
from .messages import NORMAL, AnyMessage, AppendEntries, ConfChange, Entry, InstallSnapshot
from .storage import Storage
from .transport import Transport

__all__ = ["RaftNode", "StateMachine", "ProposalDropped", "process_ready"]


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class ProposalDropped(Exception):
    """Another leader's entry was committed at the proposal's index: it will never apply."""


def process_ready(core: RaftCore, storage: Storage, rd: Ready, send: Callable[[AnyMessage], None],
                  state_machine: StateMachine, on_apply: Callable[[Entry, Any], None] | None = None) -> None:
    """The Ready contract, synchronously: persist (fsync), then send, then apply, then advance.
    The trio driver does the same with the fsync in a thread."""
    send_leader_messages_early(rd, send)
    storage.save(rd.hard_state, rd.snapshot, rd.entries)
    deliver_ready(core, rd, send, state_machine, on_apply)


def send_leader_messages_early(rd: Ready, send: Callable[[AnyMessage], None]) -> None:
    """Send a leader's appends before its own fsync, so the leader's and the followers' fsyncs
    overlap (dissertation 10.2.1). Safe because the leader counts itself toward a quorum only
    in advance(), after persisting. Votes and acknowledgements stay in `rd.messages` and wait."""
    late = []
    for m in rd.messages:
        if isinstance(m, (AppendEntries, InstallSnapshot)):
            send(m)
        else:
            late.append(m)
    rd.messages = late


def deliver_ready(core: RaftCore, rd: Ready, send: Callable[[AnyMessage], None], state_machine: StateMachine,
                  on_apply: Callable[[Entry, Any], None] | None = None) -> None:
    for m in rd.messages:
        send(m)
    if rd.snapshot is not None:
        state_machine.restore(rd.snapshot.data)
    for e in rd.committed:
        result = state_machine.apply(e) if e.kind == NORMAL else None
        if on_apply is not None:
            on_apply(e, result)
    core.advance(rd)


class _Waiter:
    __slots__ = ("term", "event", "result", "error")

    def __init__(self, term: int) -> None:
        self.term = term
        self.event = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


_TICK = object()


class RaftNode:
    def __init__(self, config: RaftConfig, storage: Storage, state_machine: StateMachine, transport: Transport,
                 *, seed: int, tick_interval_s: float = 0.05, snapshot_entries: int = 10_000,
                 inbox_messages_max: int = 4096, fsync_in_thread: bool = True) -> None:
        assert tick_interval_s > 0 and snapshot_entries > 0 and inbox_messages_max > 0
        hard_state, snapshot, entries = storage.initial_state()
        self.core = RaftCore(config, random.Random(seed), hard_state, snapshot, entries)
        self.storage = storage
        self.state_machine = state_machine
        self.transport = transport
        self.tick_interval_s = tick_interval_s
        self.snapshot_entries = snapshot_entries
        self.fsync_in_thread = fsync_in_thread
        if snapshot.index > 0:
            state_machine.restore(snapshot.data)
        self._send_ch, self._recv_ch = trio.open_memory_channel(inbox_messages_max)
        self._waiters: dict[int, _Waiter] = {}
        self.inbox_dropped = 0
        self.leader_changed = trio.Event()

    # -- status --------------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self.core.id

    @property
    def is_leader(self) -> bool:
        return self.core.state == LEADER

    @property
    def leader_id(self) -> int | None:
        return self.core.lead or None

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def voters(self) -> tuple[int, ...]:
        return self.core.voters

    @property
    def applied_index(self) -> int:
        return self.core.log.applied

    # -- inputs --------------------------------------------------------------------------------
    def deliver(self, message: AnyMessage) -> None:
        """Called by the transport for every inbound message. Never blocks."""
        try:
            self._send_ch.send_nowait(message)
        except trio.WouldBlock:
            self.inbox_dropped += 1

    async def propose(self, data: bytes) -> tuple[int, Any]:
        """Replicate `data`; returns (index, state machine result) once applied on this node.
        Raises NotLeader (with a hint) or ProposalDropped. Wrap in a timeout at the caller."""
        return await self._call(lambda: self.core.propose(data))

    async def propose_conf_change(self, change: ConfChange) -> int:
        index, _ = await self._call(lambda: self.core.propose_conf_change(change))
        return index

    async def transfer_leadership(self, target: int) -> None:
        done = trio.Event()
        box: list[BaseException] = []

        def op() -> None:
            try:
                self.core.transfer_leadership(target)
            except (NotLeader, ProposalRejected) as exc:  # the caller's problem; our bugs crash
                box.append(exc)
            done.set()

        await self._send_ch.send(op)
        await done.wait()
        if box:
            raise box[0]

    async def _call(self, fn: Callable[[], int]) -> tuple[int, Any]:
        holder: list[Any] = []
        started = trio.Event()

        def op() -> None:
            try:
                index = fn()
            except (NotLeader, ProposalRejected) as exc:  # the caller's problem; our bugs crash
                holder.append(exc)
            else:
                w = _Waiter(self.core.term)
                self._waiters[index] = w
                holder.append((index, w))
            started.set()

        await self._send_ch.send(op)
        await started.wait()
        if isinstance(holder[0], Exception):
            raise holder[0]
        index, w = holder[0]
        await w.event.wait()
        if w.error is not None:
            raise w.error
        return index, w.result

    # -- the loop --------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            task_status.started()
            try:
                await self._loop()
            finally:
                for w in self._waiters.values():
                    w.error = NotLeader(None)
                    w.event.set()
                self._waiters.clear()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval_s)
            await self._send_ch.send(_TICK)

    async def _loop(self) -> None:
        while True:
            self._handle(await self._recv_ch.receive())
            while True:  # batch whatever else is queued into one fsync
                try:
                    self._handle(self._recv_ch.receive_nowait())
                except trio.WouldBlock:
                    break
            while self.core.has_ready():
                await self._cycle()

    def _handle(self, item: object) -> None:
        lead = self.core.lead
        if item is _TICK:
            self.core.tick()
        elif callable(item):
            item()
        else:
            self.core.step(item)  # type: ignore[arg-type]
        if self.core.lead != lead:
            self.leader_changed.set()
            self.leader_changed = trio.Event()

    async def _cycle(self) -> None:
        rd = self.core.ready()
        send_leader_messages_early(rd, self.transport.send)
        if rd.hard_state is not None or rd.snapshot is not None or rd.entries:
            if self.fsync_in_thread:
                await trio.to_thread.run_sync(self.storage.save, rd.hard_state, rd.snapshot, rd.entries)
            else:
                self.storage.save(rd.hard_state, rd.snapshot, rd.entries)
        if rd.snapshot is not None:
            for index in [i for i in self._waiters if i <= rd.snapshot.index]:
                w = self._waiters.pop(index)
                w.error = ProposalDropped(f"index {index} was covered by a leader snapshot: outcome unknown")
                w.event.set()
        deliver_ready(self.core, rd, self.transport.send, self.state_machine, self._applied)
        if self.core.log.applied - self.core.log.snapshot.index >= self.snapshot_entries:
            await self._snapshot()

    def _applied(self, entry: Entry, result: Any) -> None:
        w = self._waiters.pop(entry.index, None)
        if w is None:
            return
        if entry.term == w.term:
            w.result = result
        else:
            w.error = ProposalDropped(f"index {entry.index} was taken by term {entry.term}")
        w.event.set()

    async def _snapshot(self) -> None:
        applied = self.core.log.applied
        snap = self.core.compact(applied, self.state_machine.snapshot())
        if self.fsync_in_thread:
            await trio.to_thread.run_sync(self.storage.compact, snap)
        else:
            self.storage.compact(snap)
