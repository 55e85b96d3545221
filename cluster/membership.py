"""Pure gossip view of the cluster: who is known, via whom, since when, in what state.

How this works: every node keeps one `Member` per other server_id it has heard of,
either directly (a route to it completed its handshake: state "up", via "") or by
gossip (another member forwarded its route INFO: via = that member's id). A member
whose route goes down turns "down" and keeps its route URL, so the node can redial
it; a member down (or only heard of, never reached) for longer than
`forget_after_s` is forgotten. Client connect URLs are taken from members that are
up, so clients only learn servers that are reachable right now.

Duplicate routes: two nodes may dial each other at the same moment. Both ends apply
`keep_new_route`, which keeps the connection solicited by the lower server_id; since
both ends see the same two solicitors, they keep the same connection. Who dials
first after gossip is also decided by server_id order (`dials_first`) so that in the
common case only one connection is ever made.

Time is passed in by the caller (seconds, any monotonic origin); nothing here reads a
clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UP = "up"
DOWN = "down"


@dataclass
class Member:
    server_id: str
    name: str
    route_url: str  # "host:port" of the member's cluster listener
    client_urls: list[str] = field(default_factory=list)
    state: str = DOWN
    via: str = ""  # "" when learned directly, else server_id of the gossiping peer
    last_heard: float = 0.0
    down_since: float | None = None


def dials_first(self_id: str, other_id: str) -> bool:
    """After gossip, the lower server_id dials; the other waits a little first."""
    return self_id < other_id


def keep_new_route(self_id: str, remote_id: str, existing_solicited: bool, new_solicited: bool) -> bool:
    """Given an established route and a new one to the same peer, keep the new one?

    Keep the connection solicited by the lower server_id. When both were solicited
    by the same side, keep the established one.
    """
    if existing_solicited == new_solicited:
        return False
    lower_is_self = self_id < remote_id
    # The new route wins when it was solicited by the lower id.
    return new_solicited == lower_is_self


class Membership:
    def __init__(self, self_id: str, forget_after_s: float) -> None:
        assert forget_after_s > 0
        self.self_id = self_id
        self.forget_after_s = forget_after_s
        self.members: dict[str, Member] = {}

    def route_up(self, server_id: str, name: str, route_url: str, client_urls: list[str], now: float) -> None:
        assert server_id != self.self_id
        m = self.members.get(server_id)
        if m is None:
            m = self.members[server_id] = Member(server_id, name, route_url)
        m.name = name or m.name
        m.route_url = route_url or m.route_url
        m.client_urls = list(client_urls)
        m.state = UP
        m.via = ""
        m.last_heard = now
        m.down_since = None

    def route_down(self, server_id: str, now: float) -> None:
        m = self.members.get(server_id)
        if m is None or m.state == DOWN:
            return
        m.state = DOWN
        m.down_since = now

    def update_client_urls(self, server_id: str, client_urls: list[str], now: float) -> bool:
        """A connected peer re-sent its own INFO. True when its client URLs changed."""
        m = self.members.get(server_id)
        if m is None:
            return False
        m.last_heard = now
        if m.client_urls == list(client_urls):
            return False
        m.client_urls = list(client_urls)
        return True

    def gossip(self, server_id: str, name: str, route_url: str, client_urls: list[str], via: str, now: float) -> bool:
        """A peer told us about `server_id`. True when we are not connected to it (dial it)."""
        if server_id == self.self_id:
            return False
        m = self.members.get(server_id)
        if m is None:
            m = self.members[server_id] = Member(server_id, name, route_url, list(client_urls))
            m.via = via
            m.down_since = now
        elif m.state == UP:
            return False
        else:
            m.name = name or m.name
            m.route_url = route_url or m.route_url
            m.via = via
            if m.down_since is None:
                m.down_since = now
        m.last_heard = now
        return True

    def expire(self, now: float) -> list[Member]:
        """Forget members down or unreachable for longer than forget_after_s."""
        gone = [
            m
            for m in self.members.values()
            if m.state == DOWN and m.down_since is not None and now - m.down_since >= self.forget_after_s
        ]
        for m in gone:
            del self.members[m.server_id]
        return gone

    def forget(self, server_id: str) -> None:
        self.members.pop(server_id, None)

    def down_at_url(self, route_url: str) -> list[str]:
        """Ids of down members last seen at `route_url` (a restarted server gets a new id)."""
        return [m.server_id for m in self.members.values() if m.state == DOWN and m.route_url == route_url]

    def is_up(self, server_id: str) -> bool:
        m = self.members.get(server_id)
        return m is not None and m.state == UP

    def wants_dial(self, server_id: str) -> bool:
        """Still worth dialing: known (not forgotten) and not connected."""
        m = self.members.get(server_id)
        return m is not None and m.state == DOWN

    def up_members(self) -> list[Member]:
        return sorted((m for m in self.members.values() if m.state == UP), key=lambda m: m.server_id)

    def connect_urls(self) -> list[str]:
        """Client URLs of the other members that are up, in a stable order, no duplicates."""
        seen: dict[str, None] = {}
        for m in self.up_members():
            for u in m.client_urls:
                seen[u] = None
        return list(seen)

    def route_urls(self) -> list[str]:
        return [m.route_url for m in self.up_members()]
