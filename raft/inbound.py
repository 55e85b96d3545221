"""Checks on an inbound message before it reaches a core: a buggy or damaged peer's message
is dropped (and logged by the driver) instead of tripping one of the core's assertions."""

from __future__ import annotations

import msgspec

from .core import LEADER, RaftCore
from .messages import (
    CONF,
    NOOP,
    NORMAL,
    AnyMessage,
    AppendEntries,
    AppendResponse,
    InstallSnapshot,
    RequestVote,
    decode_conf,
)


def invalid_reason(m: AnyMessage, core: RaftCore) -> str | None:
    """Why a decoded message cannot be stepped (a buggy or damaged peer), or None. The core
    asserts on these, so they must never reach it."""
    if m.dst != core.id:
        return f"addressed to {m.dst}, this node is {core.id}"
    if m.src <= 0 or m.src == core.id or m.term < 0:
        return f"bad src/term ({m.src}, {m.term})"
    if isinstance(m, AppendEntries):
        if m.index < 0 or m.log_term < 0 or m.commit < 0 or m.log_term > m.term:
            return "bad append position"
        prev_term = m.log_term
        for k, e in enumerate(m.entries):
            if e.index != m.index + 1 + k or e.term < prev_term or e.term > m.term or e.kind not in (NORMAL, CONF, NOOP):
                return f"entry {k} out of sequence"
            prev_term = e.term
            if e.kind == CONF:
                try:
                    decode_conf(e.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    return f"undecodable configuration at {e.index}"
            if e.index <= core.log.commit and m.term >= core.term:  # older terms: stale, the core refuses them
                t = core.log.term(e.index)
                if t is not None and t != e.term:
                    return f"entry {e.index} contradicts a committed entry"
    elif isinstance(m, AppendResponse):
        if m.index < 0 or m.hint_index < 0 or m.hint_term < 0:
            return "negative index"
        if not m.reject and core.state == LEADER and m.term == core.term and m.index > core.log.last_index:
            return f"acknowledges {m.index}, past our last index {core.log.last_index}"
    elif isinstance(m, RequestVote):
        if m.last_index < 0 or m.last_term < 0 or m.last_term > m.term:
            return "bad last entry"
    elif isinstance(m, InstallSnapshot):
        s = m.snapshot
        if s.index < 0 or s.term < 0 or s.term > m.term or (s.index > 0) != (s.term > 0):
            return "bad snapshot position"
    return None
