"""How Raft messages leave a node, and an in-memory network for tests.

A Transport is fire-and-forget: Raft tolerates loss, duplication and reordering, so `send`
never blocks and may drop. The receiving side hands each message to `RaftHost.deliver(group,
message)` (or `deliver_bytes`), or `RaftNode.deliver` for a lone group. The
broker provides the real one over routes (internal subjects carrying `messages.encode` bytes).
"""

from __future__ import annotations

from typing import Callable, Protocol

from .messages import AnyMessage, decode_message, encode


class Transport(Protocol):
    def send(self, message: AnyMessage) -> None: ...


class InMemoryNetwork:
    """Routes messages between registered nodes through the wire encoding, with partitions."""

    def __init__(self) -> None:
        self._inboxes: dict[int, Callable[[AnyMessage], None]] = {}
        self._blocked: set[tuple[int, int]] = set()
        self.sent = 0
        self.dropped = 0

    def transport(self, node_id: int) -> "InMemoryTransport":
        return InMemoryTransport(self, node_id)

    def register(self, node_id: int, deliver: Callable[[AnyMessage], None]) -> None:
        self._inboxes[node_id] = deliver

    def unregister(self, node_id: int) -> None:
        self._inboxes.pop(node_id, None)

    def isolate(self, node_id: int) -> None:
        for other in self._inboxes:
            if other != node_id:
                self._blocked |= {(node_id, other), (other, node_id)}

    def block(self, src: int, dst: int) -> None:
        self._blocked.add((src, dst))

    def heal(self) -> None:
        self._blocked.clear()

    def route(self, message: AnyMessage) -> None:
        self.sent += 1
        deliver = self._inboxes.get(message.dst)
        if deliver is None or (message.src, message.dst) in self._blocked:
            self.dropped += 1
            return
        deliver(decode_message(encode(message)))


class InMemoryTransport:
    def __init__(self, network: InMemoryNetwork, node_id: int) -> None:
        self.network = network
        self.node_id = node_id

    def send(self, message: AnyMessage) -> None:
        assert message.src == self.node_id
        self.network.route(message)
