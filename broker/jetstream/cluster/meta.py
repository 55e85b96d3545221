"""The meta state machine: which streams and consumers exist in the cluster, where they live.

How this works. Every JetStream node is a member of one Raft group, `_meta_`. Its log holds
assignments: a stream's config, the server names of its peers and its creation time; updates
and removals of those; each consumer with its config, creation time and host; and the names
behind Raft peer ids (so an offline peer can still be shown by name). `MetaState.apply` is deterministic and never looks at the clock or the disk:
every node that applies the same entries holds the same assignments. What a node must *do*
about an entry (create its local copy of a stream placed on it, answer the client that asked)
is returned as an `Action` for the caller to carry out, in order, outside the state machine.

Pure: no trio, no sockets, no files.
"""

from __future__ import annotations

import hashlib
from typing import Union

import msgspec

from broker.jetstream.api import StreamConfig

META_GROUP = "_meta_"


_HASH_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def peer_hash(server_name: str) -> str:
    """nats-server's 8-character peer id of a server name: the first 8 bytes of its SHA-256,
    each mapped onto 62 digits."""
    return "".join(_HASH_DIGITS[b % 62] for b in hashlib.sha256(server_name.encode()).digest()[:8])


def raft_id(server_name: str) -> int:
    """A stable positive Raft node id for a server name."""
    return int.from_bytes(hashlib.sha256(server_name.encode()).digest()[:6], "big") or 1


class StreamAssignment(msgspec.Struct, frozen=True):
    name: str
    config: StreamConfig
    peers: list[str]  # server names; peers[0] is the preferred (for R1: the only) host
    created: int  # ns, the meta leader's clock when it proposed the stream
    voters: list[str] = []  # its Raft group's first voters when not all peers (grown from R1: its host)
    epoch: int = 0  # bumped by every change of the replica count: a new Raft group each time


class ConsumerAssignment(msgspec.Struct, frozen=True):
    stream: str
    name: str
    config: bytes  # the consumer's config as JSON, as its host made it
    created: int  # ns, the host's clock when it made the consumer
    host: str  # the server holding the consumer (one of its stream's peers)


class AssignStream(msgspec.Struct, tag="assign_stream"):
    stream: StreamAssignment
    reply: str = ""  # the client's reply subject: the host answers it once it has the stream
    origin: str = ""  # the server name whose meta leader proposed it (it answers on failure)


class UpdateStream(msgspec.Struct, tag="update_stream"):
    name: str
    config: StreamConfig
    reply: str = ""
    assignment: StreamAssignment | None = None  # a new placement (the replica count changed)


class RemoveStream(msgspec.Struct, tag="remove_stream"):
    name: str
    reply: str = ""


class PeerNames(msgspec.Struct, tag="peer_names"):
    names: list[str]


class AssignConsumer(msgspec.Struct, tag="assign_consumer"):
    """Proposed for the consumer's host (which made it and checked its config): the host
    answers the create once this applied."""
    consumer: ConsumerAssignment
    reply: str = ""


class RemoveConsumer(msgspec.Struct, tag="remove_consumer"):
    stream: str
    name: str
    created: int  # only the consumer made at that time goes (a newer one of the name stays)


MetaOp = Union[AssignStream, UpdateStream, RemoveStream, PeerNames, AssignConsumer, RemoveConsumer]

_encoder = msgspec.msgpack.Encoder()
_op_decoder = msgspec.msgpack.Decoder(MetaOp)


class _Snapshot(msgspec.Struct):
    streams: list[StreamAssignment]
    peers: list[str]
    consumers: list[ConsumerAssignment] = []


_snap_decoder = msgspec.msgpack.Decoder(_Snapshot)


def encode_op(op: MetaOp) -> bytes:
    return _encoder.encode(op)


class Action(msgspec.Struct, frozen=True):
    """What the node carries out after an entry applied: kind is 'create', 'update' or
    'remove' for a stream placed on this node, 'removed' when a stream elsewhere is gone,
    'conflict' for the proposer of a create that lost to another one of the same name,
    'consumer' for the host of a consumer whose assignment applied."""
    kind: str
    stream: StreamAssignment
    reply: str = ""
    consumer: ConsumerAssignment | None = None  # kind 'consumer': its assignment applied


class MetaState:
    def __init__(self, me: str) -> None:
        self.me = me
        self.streams: dict[str, StreamAssignment] = {}
        self.peer_names: dict[int, str] = {}  # raft id -> server name
        self.consumers: dict[str, dict[str, ConsumerAssignment]] = {}  # stream -> name -> assignment

    # ---- queries ----
    def hosted_here(self, name: str) -> bool:
        sa = self.streams.get(name)
        return sa is not None and self.me in sa.peers

    def host_of(self, name: str) -> str | None:
        sa = self.streams.get(name)
        return sa.peers[0] if sa is not None and sa.peers else None

    def stream_counts(self) -> dict[str, int]:
        """How many streams each server hosts (placement spreads by it)."""
        counts: dict[str, int] = {}
        for sa in self.streams.values():
            for p in sa.peers:
                counts[p] = counts.get(p, 0) + 1
        return counts

    # ---- the state machine ----
    def apply(self, data: bytes) -> list[Action]:
        op = _op_decoder.decode(data)
        if isinstance(op, AssignStream):
            sa = op.stream
            old = self.streams.get(sa.name)
            if old is not None:
                if old == sa:  # the same create again: the host answers with the stream as it is
                    return [Action("create", old, op.reply)] if self.me in old.peers else []
                # a second create of the name, checked against a state that did not have the
                # first yet (two proposals in flight): the first stands, the proposer refuses
                return [Action("conflict", old, op.reply)] if self.me == op.origin else []
            self.streams[sa.name] = sa
            self.consumers.pop(sa.name, None)
            return [Action("create", sa, op.reply)] if self.me in sa.peers else []
        if isinstance(op, UpdateStream):
            old = self.streams.get(op.name)
            if old is None:
                return []
            sa = op.assignment if op.assignment is not None else msgspec.structs.replace(old, config=op.config)
            self.streams[op.name] = sa
            was, now = self.me in old.peers, self.me in sa.peers
            if was and now:
                return [Action("update", sa, op.reply)]
            if now:  # a new replica here: made, then filled from the others
                return [Action("create", sa)]
            if was:  # no longer a replica here: the stream lives on elsewhere
                return [Action("remove", sa)]
            return []
        if isinstance(op, RemoveStream):
            old = self.streams.pop(op.name, None)
            self.consumers.pop(op.name, None)
            if old is None:
                return []
            return [Action("remove" if self.me in old.peers else "removed", old, op.reply)]
        if isinstance(op, AssignConsumer):
            ca = op.consumer
            sa = self.streams.get(ca.stream)
            if sa is None or ca.host not in sa.peers:
                return []  # its stream is gone or lives elsewhere now: a stale report
            self.consumers.setdefault(ca.stream, {})[ca.name] = ca
            return [Action("consumer", sa, op.reply, ca)] if self.me == ca.host else []
        if isinstance(op, RemoveConsumer):
            named = self.consumers.get(op.stream, {})
            ca = named.get(op.name)
            if ca is not None and ca.created == op.created:
                del named[op.name]
                if not named:
                    del self.consumers[op.stream]
            return []
        assert isinstance(op, PeerNames)
        for name in op.names:
            self.peer_names[raft_id(name)] = name
        return []

    def snapshot(self) -> bytes:
        consumers = [ca for _, named in sorted(self.consumers.items()) for _, ca in sorted(named.items())]
        return _encoder.encode(_Snapshot(sorted(self.streams.values(), key=lambda s: s.name),
                                         sorted(self.peer_names.values()), consumers))

    def restore(self, data: bytes) -> list[Action]:
        """Replace the state by a snapshot; returns what this node must now do so its local
        streams match (a node that was away while streams were deleted, moved, re-created or
        updated): removes first, then creates and updates."""
        snap = _snap_decoder.decode(data)
        before = self.streams
        self.streams = {sa.name: sa for sa in snap.streams}
        self.peer_names = {raft_id(n): n for n in snap.peers}
        self.consumers = {}
        for ca in snap.consumers:
            self.consumers.setdefault(ca.stream, {})[ca.name] = ca
        removes, makes = [], []
        for name, old in before.items():
            new = self.streams.get(name)
            mine_before = self.me in old.peers
            if new is None:
                removes.append(Action("remove" if mine_before else "removed", old))
            elif mine_before and (self.me not in new.peers or new.created != old.created):
                removes.append(Action("remove", old))  # moved away, or deleted and made anew
        for name, sa in self.streams.items():
            if self.me not in sa.peers:
                continue
            old = before.get(name)
            if old is not None and self.me in old.peers and old.created == sa.created:
                if old.config != sa.config or old.peers != sa.peers or old.epoch != sa.epoch:
                    makes.append(Action("update", sa))
            else:
                makes.append(Action("create", sa))
        return removes + makes
def place(replicas: int, online: list[str], counts: dict[str, int], tiebreak: int) -> list[str] | None:
    """Distinct online servers for a new stream, least loaded first; None when there are not
    enough. `tiebreak` rotates servers with equal load so placement spreads evenly."""
    if replicas > len(online):
        return None
    ordered = sorted(online)
    n = len(ordered)
    rotated = [ordered[(i + tiebreak) % n] for i in range(n)]
    rotated.sort(key=lambda s: counts.get(s, 0))  # stable: equal loads keep the rotation
    return rotated[:replicas]
