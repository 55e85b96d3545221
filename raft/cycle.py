"""The Ready contract shared by every driver (RaftHost, RaftNode, the simulator).

For each Ready drained from a core, in this order: the leader's own appends go out early, the
hard state, snapshot and entries are persisted with fsync, every other message (votes,
acknowledgements) is sent, the snapshot is restored and committed entries are applied, then
`core.advance(rd)`. Because votes and acknowledgements only leave after the fsync, none is
ever sent for state that a crash could lose.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from .core import RaftCore, Ready
from .messages import NORMAL, AnyMessage, AppendEntries, Entry, InstallSnapshot
from .storage import Storage

__all__ = ["StateMachine", "ProposalDropped", "process_ready", "send_leader_messages_early", "send_after_persist",
           "deliver_ready"]


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> Any: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


class ProposalDropped(Exception):
    """The proposal will not apply here: another leader's entry took its index, a leader snapshot
    covered it (outcome unknown), or its group was removed (outcome unknown)."""


def process_ready(core: RaftCore, storage: Storage, rd: Ready, send: Callable[[AnyMessage], None],
                  state_machine: StateMachine, on_apply: Callable[[Entry, Any], None] | None = None) -> None:
    """The Ready contract, synchronously: persist (fsync), then send, then apply, then advance.
    The trio drivers do the same with the fsync in a thread."""
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


def send_after_persist(rd: Ready, send: Callable[[AnyMessage], None]) -> None:
    """The first step of deliver_ready on its own: send what waited for the persist (votes,
    acknowledgements), so a driver can put them on the wire before applying."""
    for m in rd.messages:
        send(m)
    rd.messages = []


def deliver_ready(core: RaftCore, rd: Ready, send: Callable[[AnyMessage], None], state_machine: StateMachine,
                  on_apply: Callable[[Entry, Any], None] | None = None) -> None:
    """After the persist: send what waited for it, restore, apply, advance."""
    for m in rd.messages:
        send(m)
    if rd.snapshot is not None:
        state_machine.restore(rd.snapshot.data)
    for e in rd.committed:
        result = state_machine.apply(e) if e.kind == NORMAL else None
        if on_apply is not None:
            on_apply(e, result)
    core.advance(rd)


def needs_persist(rd: Ready) -> bool:
    return rd.hard_state is not None or rd.snapshot is not None or bool(rd.entries)
