"""Raft wire and disk types: one msgspec Struct per message, a tagged union for the wire.

Every message carries (term, src, dst). Encoders and decoders are built once. Evolution is
append-only: new fields go last and carry defaults, so old peers' bytes still decode.
"""

from __future__ import annotations

from typing import Union

import msgspec

# Entry kinds. A NOOP is appended by every new leader (Raft paper section 8: a leader commits
# an entry of its own term before it can know what is committed); CONF carries a full ConfState.
NORMAL = 0
CONF = 1
NOOP = 2


class Entry(msgspec.Struct, frozen=True, array_like=True):
    term: int
    index: int
    kind: int = NORMAL
    data: bytes = b""


class ConfState(msgspec.Struct, frozen=True, array_like=True):
    """The members. Voters elect and form quorums; learners only receive the log (a new server
    catches up as a learner, then is promoted, so it never holds back a quorum while empty).
    Membership changes one server at a time."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class HardState(msgspec.Struct, frozen=True):
    """What must be durable before any vote or acknowledgement leaves the node.

    `quarantined` is set by a repair of a corrupt log: the node may have lost entries it
    acknowledged, so it neither votes nor campaigns until it has caught up with a leader.
    """

    term: int = 0
    vote: int = 0  # 0 means "no vote in this term"; node ids are positive
    quarantined: bool = False


class Snapshot(msgspec.Struct, frozen=True):
    index: int
    term: int
    conf: ConfState
    data: bytes = b""


class ConfChange(msgspec.Struct, frozen=True):
    ADD = "add"  # add a voter, or promote a learner
    ADD_LEARNER = "add_learner"
    REMOVE = "remove"  # a voter or a learner

    op: str
    node_id: int


class Message(msgspec.Struct, frozen=True, tag_field="t"):
    term: int
    src: int
    dst: int


class AppendEntries(Message, frozen=True, tag="app"):
    """Also the heartbeat. `index`/`log_term` name the entry just before `entries`."""

    index: int
    log_term: int
    commit: int
    entries: tuple[Entry, ...] = ()
    last_index: int = 0  # the leader's last index, so a quarantined follower knows when it caught up
    heals: bool = False  # sent knowing the follower is quarantined: catching up to last_index ends it


class AppendResponse(Message, frozen=True, tag="app_resp"):
    """Accept: `index` is the highest index known to match. Reject: `index` is the rejected
    prev index, and (hint_index, hint_term) let the leader skip a whole term at a time."""

    index: int
    reject: bool = False
    hint_index: int = 0
    hint_term: int = 0
    quarantined: bool = False  # the follower lost entries in a repair: its old acks are void


class RequestVote(Message, frozen=True, tag="vote"):
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # sent because of TimeoutNow: bypasses the leader lease


class VoteResponse(Message, frozen=True, tag="vote_resp"):
    granted: bool
    pre_vote: bool = False


class InstallSnapshot(Message, frozen=True, tag="snap"):
    snapshot: Snapshot


class TimeoutNow(Message, frozen=True, tag="timeout_now"):
    """Leadership transfer: the target campaigns at once, without pre-vote."""


AnyMessage = Union[AppendEntries, AppendResponse, RequestVote, VoteResponse, InstallSnapshot, TimeoutNow]

_encoder = msgspec.msgpack.Encoder()
_message_decoder = msgspec.msgpack.Decoder(AnyMessage)
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_hard_state_decoder = msgspec.msgpack.Decoder(HardState)
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
_conf_decoder = msgspec.msgpack.Decoder(ConfState)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_message(data: bytes) -> AnyMessage:
    return _message_decoder.decode(data)


def decode_entry(data: bytes) -> Entry:
    return _entry_decoder.decode(data)


def decode_hard_state(data: bytes) -> HardState:
    return _hard_state_decoder.decode(data)


def decode_snapshot(data: bytes) -> Snapshot:
    return _snapshot_decoder.decode(data)


def decode_conf(data: bytes) -> ConfState:
    return _conf_decoder.decode(data)
