"""Subscription trie with a bounded cache of match results.

How this works: subscriptions are stored in a tree keyed by subject token; `*` and
`>` are ordinary keys of a level's dict, visited alongside the literal token while
matching. `match(subject)` returns a Match: the plain subscribers, the distinct
remote peers with plain interest, and the queue groups (name, members, weights).
Results are cached by the raw subject bytes the router sees on the wire, "no interest"
(an empty Match) included; an insert or removal drops exactly the cached subjects it
could change (an insert matching a subject cached as having no interest drops that
entry like any other), so the hot path is one dict lookup per published message.

A subscriber's `conn` says what kind it is: anything with `is_route = True` is a
remote peer (cluster route) whose subscriptions stand for another node's interest.
"""

from __future__ import annotations

import random

from broker.subjects import match as subject_match

CACHE_MAX = 4096


class Subscription:
    __slots__ = ("conn", "subject", "queue", "sid", "max_msgs", "delivered", "weight", "callback")

    def __init__(self, conn, subject: str, queue: str | None, sid: bytes, weight: int = 1, callback=None):
        self.conn = conn
        self.subject = subject
        self.queue = queue
        self.sid = sid
        self.max_msgs = 0
        self.delivered = 0
        self.weight = weight
        self.callback = callback


class QueueGroup:
    """Members of one queue group matching a subject; `pick()` chooses one, weighted."""
    __slots__ = ("name", "members", "total", "uniform")

    def __init__(self, name: str, members: list[Subscription]):
        self.name = name
        self.members = members
        self.total = sum(s.weight for s in members)
        self.uniform = self.total == len(members)

    def pick(self, exclude_routes: bool = False) -> Subscription | None:
        members = self.members
        if exclude_routes:
            members = [s for s in members if not s.conn.is_route]
            if not members:
                return None
            return members[random.randrange(len(members))]
        if self.uniform:
            return members[random.randrange(len(members))]
        r = random.randrange(self.total)
        for s in members:
            r -= s.weight
            if r < 0:
                return s
        return members[-1]


class Match:
    __slots__ = ("plain", "peers", "queues", "empty", "plan")

    def __init__(self, plain: list, peers: list, queues: list):
        self.plain = plain  # local (client/internal) plain subscriptions
        self.peers = peers  # distinct route peers with plain interest
        self.queues = queues  # list[QueueGroup], local and remote members together
        self.empty = not plain and not peers and not queues
        # the router's delivery plan for a subject published with this result, or True
        # after the first message (see ClientConn._plain_targets): a Match never changes
        # once made, so neither does the plan; a subscription change makes a new Match
        self.plan: tuple | bool | None = None


class _Level:
    __slots__ = ("nodes",)

    def __init__(self):
        self.nodes: dict[str, _Node] = {}


class _Node:
    # next/qsubs are created on first use: most nodes are leaves with plain subscribers
    __slots__ = ("next", "psubs", "qsubs")

    def __init__(self):
        self.next: _Level | None = None
        self.psubs: list[Subscription] = []
        self.qsubs: dict[str, list[Subscription]] | None = None

    def is_empty(self) -> bool:
        return not self.psubs and not self.qsubs and not (self.next and self.next.nodes)


class Sublist:
    def __init__(self):
        self._root = _Level()
        self._cache: dict[bytes, Match] = {}
        self.cache = self._cache  # read-only view for the router's hot path (never rebound)
        # Subjects whose match is settled by their first k tokens (the trie walk stopped
        # there: e.g. every `$JS.ACK.<stream>.<consumer>.<numbers>` against `$JS.ACK.>`)
        # are cached by that prefix, so unique subjects share one entry instead of each
        # costing a walk and pushing hot subjects out of the cache.
        self._pcache: dict[bytes, Match] = {}
        self._pdepths: list[int] = []  # the k (tokens in the prefix) in use, few
        self.count = 0
        self.inserts = 0
        self.removes = 0
        self.matches = 0
        self.cache_hits = 0

    # ---- mutation ----------------------------------------------------------------
    def insert(self, sub: Subscription) -> None:
        level = self._root
        node = None
        for tok in sub.subject.split("."):
            if level is None:
                level = node.next = _Level()
            node = level.nodes.get(tok)
            if node is None:
                node = level.nodes[tok] = _Node()
            level = node.next
        assert node is not None
        if sub.queue is None:
            node.psubs.append(sub)
        else:
            if node.qsubs is None:
                node.qsubs = {}
            node.qsubs.setdefault(sub.queue, []).append(sub)
        self.count += 1
        self.inserts += 1
        self._invalidate(sub.subject)

    def remove(self, sub: Subscription) -> bool:
        path: list[tuple[_Level, str, _Node]] = []
        level = self._root
        for tok in sub.subject.split("."):
            if level is None:
                return False
            node = level.nodes.get(tok)
            if node is None:
                return False
            path.append((level, tok, node))
            level = node.next
        node = path[-1][2]
        if sub.queue is None:
            try:
                node.psubs.remove(sub)
            except ValueError:
                return False
        else:
            group = node.qsubs.get(sub.queue) if node.qsubs else None
            if not group or sub not in group:
                return False
            group.remove(sub)
            if not group:
                del node.qsubs[sub.queue]
        for lvl, tok, nd in reversed(path):
            if nd.is_empty():
                del lvl.nodes[tok]
            else:
                break
        self.count -= 1
        self.removes += 1
        self._invalidate(sub.subject)
        return True

    def _invalidate(self, subject: str) -> None:
        if self._pcache:
            self._pcache.clear()
            self._pdepths.clear()
        cache = self._cache
        if not cache:
            return
        if "*" not in subject and ">" not in subject:
            cache.pop(subject.encode(), None)
            return
        stale = [k for k in cache if subject_match(subject, k.decode("utf-8", "surrogateescape"))]
        for k in stale:
            del cache[k]

    # ---- lookup ------------------------------------------------------------------
    def match(self, subject: bytes) -> Match:
        m = self._cache.get(subject)
        if m is not None:
            self.cache_hits += 1
            self.matches += 1
            return m
        self.matches += 1
        if self._pdepths:
            pcache = self._pcache
            for k in self._pdepths:
                parts = subject.split(b".", k)
                if len(parts) > k:  # more than k tokens: the first k decide
                    m = pcache.get(subject[:len(subject) - len(parts[k]) - 1])
                    if m is not None:
                        self.cache_hits += 1
                        return m
        tokens = subject.decode("utf-8", "surrogateescape").split(".")
        psubs: list[Subscription] = []
        qsubs: dict[str, list[Subscription]] = {}
        deep = [0]
        _collect(self._root, tokens, 0, psubs, qsubs, deep)
        plain = []
        peers = []
        for s in psubs:
            if s.conn.is_route:
                if s.conn not in peers:
                    peers.append(s.conn)
            else:
                plain.append(s)
        queues = [QueueGroup(name, members) for name, members in qsubs.items()]
        m = Match(plain, peers, queues)
        k = deep[0] + 1  # tokens the walk looked at
        if k < len(tokens) and (k in self._pdepths or len(self._pdepths) < 4):
            pcache = self._pcache
            if len(pcache) >= CACHE_MAX:
                pcache.clear()
                self._pdepths.clear()
            key = ".".join(tokens[:k]).encode("utf-8", "surrogateescape")
            pcache[key] = m
            if k not in self._pdepths:
                self._pdepths.append(k)
            if not m.empty:
                return m
            # "no interest" is also cached under the subject itself, where the router looks
            # first (a subject published to with nobody listening then costs one dict
            # lookup); unique subjects under the same dead prefix still resolve through the
            # prefix entry above without being added here
        cache = self._cache
        if len(cache) >= CACHE_MAX:
            for k in list(cache)[: CACHE_MAX // 4]:
                del cache[k]
        cache[subject] = m
        return m

    def all_subs(self) -> list[Subscription]:
        out: list[Subscription] = []
        _walk(self._root, out)
        return out

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def _collect(level: _Level, tokens: list[str], i: int, psubs: list, qsubs: dict, deep: list) -> None:
    nodes = level.nodes
    if i > deep[0]:
        deep[0] = i
    last = i == len(tokens) - 1
    fwc = nodes.get(">")
    if fwc is not None:
        _add(fwc, psubs, qsubs)
    tok = tokens[i]
    # nats-server's visiting order fixes the order of deliveries when several
    # subscriptions of one connection match: at each level fwc first, then the pwc
    # subtree before the literal one; at the last token the literal node before pwc.
    if tok == "*" or tok == ">":
        keys = ("*",)
    elif last:
        keys = (tok, "*")
    else:
        keys = ("*", tok)
    for key in keys:
        node = nodes.get(key)
        if node is None:
            continue
        if last:
            _add(node, psubs, qsubs)
        elif node.next is not None and node.next.nodes:
            _collect(node.next, tokens, i + 1, psubs, qsubs, deep)


def _add(node: _Node, psubs: list, qsubs: dict) -> None:
    if node.psubs:
        psubs.extend(node.psubs)
    if node.qsubs:
        for q, members in node.qsubs.items():
            qsubs.setdefault(q, []).extend(members)


def _walk(level: _Level, out: list) -> None:
    for node in level.nodes.values():
        out.extend(node.psubs)
        if node.qsubs:
            for members in node.qsubs.values():
                out.extend(members)
        if node.next is not None:
            _walk(node.next, out)
