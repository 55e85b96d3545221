"""A Raft library: pure core (core.py), durable storage (storage.py), trio driver (node.py).

It imports only the standard library, trio and msgspec, and nothing from broker/ or cluster/.
The trio driver is imported from `raft.node`, so importing the core never loads trio.
"""

from .core import NotLeader, ProposalRejected, RaftConfig, RaftCore, Ready
from .messages import AnyMessage, ConfChange, ConfState, Entry, HardState, Snapshot, decode_message, encode
from .storage import OsDisk, Storage, StorageCorruption
from .transport import InMemoryNetwork, Transport

__all__ = [
    "AnyMessage", "ConfChange", "ConfState", "Entry", "HardState", "InMemoryNetwork", "NotLeader", "OsDisk",
    "ProposalRejected", "RaftConfig", "RaftCore", "Ready", "Snapshot", "Storage", "StorageCorruption",
    "Transport", "decode_message", "encode",
]
