"""One Raft group with its own loop: a RaftHost (raft/host.py) that drives a single group.

    storage = Storage.open(OsDisk(path), ConfState((1, 2, 3)))
    node = RaftNode(RaftConfig(node_id=1), storage, my_state_machine, transport, seed=1)
    network_inbox = node.deliver              # the transport calls this for each message
    await nursery.start(node.run)
    index, result = await node.propose(b"cmd")  # returns once committed and applied here

The Ready cycle (persist with fsync -> send -> apply -> advance; a leader's own appends go out
before its fsync) lives in raft/cycle.py and is shared with RaftHost and the simulator. If the
group stops on an internal error, `run` raises it.
"""

from __future__ import annotations

from typing import Any

import trio

from .core import RaftConfig, RaftCore
from .cycle import ProposalDropped, StateMachine, deliver_ready, process_ready, send_leader_messages_early
from .host import RaftGroup, RaftHost
from .messages import AnyMessage, ConfChange
from .storage import Storage
from .transport import Transport

__all__ = ["RaftNode", "StateMachine", "ProposalDropped", "process_ready", "deliver_ready",
           "send_leader_messages_early"]

_GROUP = "group"


class RaftNode:
    def __init__(self, config: RaftConfig, storage: Storage, state_machine: StateMachine, transport: Transport,
                 *, seed: int, tick_interval_s: float = 0.05, snapshot_entries: int = 10_000,
                 snapshot_bytes: int = 64 << 20, inbox_messages_max: int = 4096,
                 fsync_in_thread: bool = True) -> None:
        self.transport = transport
        self.host = RaftHost(lambda _name, m: self.transport.send(m), tick_interval_s=tick_interval_s,
                             fsync_in_thread=fsync_in_thread, inbox_messages_max=inbox_messages_max)
        self.group: RaftGroup = self.host.add_group(_GROUP, config, storage, state_machine, seed=seed,
                                                    snapshot_entries=snapshot_entries, snapshot_bytes=snapshot_bytes)
        self.state_machine = state_machine

    # -- status --------------------------------------------------------------------------------
    @property
    def core(self) -> RaftCore:
        return self.group.core

    @property
    def storage(self) -> Storage:
        return self.group.storage

    @storage.setter
    def storage(self, storage: Storage) -> None:
        self.group.storage = storage

    @property
    def id(self) -> int:
        return self.group.id

    @property
    def is_leader(self) -> bool:
        return self.group.is_leader

    @property
    def leader_id(self) -> int | None:
        return self.group.leader_id

    @property
    def term(self) -> int:
        return self.group.term

    @property
    def voters(self) -> tuple[int, ...]:
        return self.group.voters

    @property
    def applied_index(self) -> int:
        return self.group.applied_index

    @property
    def leader_changed(self) -> trio.Event:
        return self.host.leader_changed

    @property
    def inbox_dropped(self) -> int:
        return self.host.inbox_dropped

    # -- inputs --------------------------------------------------------------------------------
    def deliver(self, message: AnyMessage) -> None:
        """Called by the transport for every inbound message. Never blocks."""
        self.host.deliver(_GROUP, message)

    async def propose(self, data: bytes) -> tuple[int, Any]:
        """Replicate `data`; returns (index, state machine result) once applied on this node.
        Raises NotLeader (with a hint), ProposalRejected or ProposalDropped. Wrap in a timeout."""
        return await self.group.propose(data)

    async def propose_conf_change(self, change: ConfChange) -> int:
        return await self.group.propose_conf_change(change)

    async def transfer_leadership(self, target: int) -> None:
        await self.group.transfer_leadership(target)

    def peer_down(self, node_id: int) -> None:
        self.host.peer_down(node_id)

    def peer_up(self, node_id: int) -> None:
        self.host.peer_up(node_id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.host.run)
            task_status.started()
            await self.group.closed.wait()
            nursery.cancel_scope.cancel()
        if self.group.error is not None:
            raise self.group.error
