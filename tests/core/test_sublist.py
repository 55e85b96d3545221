"""Subscription trie: wildcards, queue groups, cache invalidation."""

from collections import Counter

from hypothesis import given, settings, strategies as st

from broker.subjects import match as subject_match
from broker.sublist import Sublist, Subscription


class Conn:
    is_route = False


class Peer:
    is_route = True


def sub(subject, queue=None, conn=None, weight=1):
    return Subscription(conn or Conn(), subject, queue, b"1", weight=weight)


def subjects(m):
    return sorted(s.subject for s in m.plain)


def test_literal_and_wildcards():
    sl = Sublist()
    for s in ("foo.bar", "foo.*", "foo.>", ">", "*.bar", "foo.bar.baz", "*"):
        sl.insert(sub(s))
    assert subjects(sl.match(b"foo.bar")) == sorted(["foo.bar", "foo.*", "foo.>", ">", "*.bar"])
    assert subjects(sl.match(b"foo.bar.baz")) == sorted(["foo.>", ">", "foo.bar.baz"])
    assert subjects(sl.match(b"foo")) == sorted([">", "*"])
    assert sl.match(b"nope.x.y").plain and subjects(sl.match(b"nope.x.y")) == [">"]


def test_publish_to_wildcard_subject_matches_literally():
    sl = Sublist()
    for s in ("foo.*", "foo.>", "foo.bar"):
        sl.insert(sub(s))
    assert subjects(sl.match(b"foo.*")) == ["foo.*", "foo.>"]


def test_queue_groups_and_pick():
    sl = Sublist()
    a, b, c = sub("q.x", "g"), sub("q.x", "g"), sub("q.*", "h")
    for s in (a, b, c):
        sl.insert(s)
    m = sl.match(b"q.x")
    groups = {g.name: g for g in m.queues}
    assert set(groups) == {"g", "h"}
    picks = Counter(groups["g"].pick() for _ in range(400))
    assert set(picks) == {a, b}


def test_weighted_pick_with_remote_member():
    sl = Sublist()
    local = sub("w", "g")
    remote = sub("w", "g", conn=Peer(), weight=3)
    sl.insert(local)
    sl.insert(remote)
    g = sl.match(b"w").queues[0]
    assert g.total == 4 and not g.uniform
    assert g.pick(exclude_routes=True) is local
    assert {g.pick() for _ in range(300)} == {local, remote}


def test_route_peers_deduplicated():
    sl = Sublist()
    p = Peer()
    sl.insert(sub("a.*", conn=p))
    sl.insert(sub("a.>", conn=p))
    m = sl.match(b"a.b")
    assert m.peers == [p] and m.plain == []


def test_cache_invalidated_on_insert_and_remove():
    sl = Sublist()
    s1 = sub("foo.bar")
    sl.insert(s1)
    assert subjects(sl.match(b"foo.bar")) == ["foo.bar"]
    assert sl.cache_size == 1
    s2 = sub("foo.*")
    sl.insert(s2)
    assert subjects(sl.match(b"foo.bar")) == ["foo.*", "foo.bar"]
    assert sl.remove(s1)
    assert subjects(sl.match(b"foo.bar")) == ["foo.*"]
    assert sl.remove(s2)
    assert sl.match(b"foo.bar").empty
    assert not sl.remove(s2)
    assert sl.count == 0


TOKENS = st.sampled_from(["a", "b", "c", "*"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(TOKENS, min_size=1, max_size=3), min_size=1, max_size=12),
       st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3), min_size=1, max_size=8),
       st.booleans())
def test_matches_agree_with_reference_matcher(patterns, pubs, use_fwc):
    sl = Sublist()
    subs = []
    for toks in patterns:
        if use_fwc:
            toks = toks[:-1] + [">"]
        s = sub(".".join(toks))
        subs.append(s)
        sl.insert(s)
    def check():
        for toks in pubs:
            subject = ".".join(toks)
            got = {id(x) for x in sl.match(subject.encode()).plain}
            want = {id(x) for x in subs if subject_match(x.subject, subject)}
            assert got == want, subject

    check()
    for s in subs[::2]:
        assert sl.remove(s)
    subs = subs[1::2]
    check()


def test_prefix_cache_serves_unique_subjects_and_is_invalidated():
    sl = Sublist()
    acks = sub("$JS.ACK.>")
    sl.insert(acks)
    for i in range(100):  # unique subjects, one shape: the walk stops after `$JS.ACK.S`
        assert subjects(sl.match(b"$JS.ACK.S.C.1.%d.%d.17.0" % (i, i))) == ["$JS.ACK.>"]
    assert sl.cache_size == 0 and sl.cache_hits == 99  # nothing pushed into the subject cache
    deeper = sub("$JS.ACK.S.C.*.5.>")
    sl.insert(deeper)  # now the same prefix no longer settles the match
    assert subjects(sl.match(b"$JS.ACK.S.C.1.5.5.17.0")) == ["$JS.ACK.>", "$JS.ACK.S.C.*.5.>"]
    assert subjects(sl.match(b"$JS.ACK.S.C.1.6.6.17.0")) == ["$JS.ACK.>"]
    assert sl.remove(deeper)
    assert subjects(sl.match(b"$JS.ACK.S.C.1.5.5.17.0")) == ["$JS.ACK.>"]
    assert sl.remove(acks)
    assert sl.match(b"$JS.ACK.S.C.1.5.5.17.0").empty


OPS = st.lists(st.tuples(st.sampled_from(["insert", "remove", "match"]),
                         st.lists(st.sampled_from(["a", "b", "c", "*", ">"]), min_size=1, max_size=6)),
               min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_interleaved_changes_and_matches_agree_with_reference(ops):
    """Long subjects (so the prefix cache is used) with inserts and removes in between:
    every match equals the reference matcher's answer at that moment."""
    sl = Sublist()
    live: list = []
    for op, toks in ops:
        if op == "insert":
            if ">" in toks:
                toks = toks[:toks.index(">") + 1]
            s = sub(".".join(toks))
            sl.insert(s)
            live.append(s)
        elif op == "remove":
            if live:
                s = live.pop(len(toks) % len(live))
                assert sl.remove(s)
        else:
            subject = ".".join(t if t not in ("*", ">") else "x" for t in toks)
            got = {id(x) for x in sl.match(subject.encode()).plain}
            want = {id(x) for x in live if subject_match(x.subject, subject)}
            assert got == want, (subject, [x.subject for x in live])


def test_no_interest_is_cached_under_the_subject_and_dropped_by_a_matching_insert():
    sl = Sublist()
    sl.insert(sub("other.x"))
    for subject in (b"telemetry.a.b", b"solo"):
        assert sl.match(subject).empty
        assert sl.cache[subject].empty  # the router's one dict lookup answers next time
    hits = sl.cache_hits
    assert sl.match(b"telemetry.a.b").empty and sl.cache_hits == hits + 1
    unrelated = sub("other.y")
    sl.insert(unrelated)  # matches neither: the cached answers stay
    assert b"telemetry.a.b" in sl.cache and b"solo" in sl.cache
    local = sub("telemetry.*.b")
    sl.insert(local)
    assert b"telemetry.a.b" not in sl.cache and b"solo" in sl.cache
    assert subjects(sl.match(b"telemetry.a.b")) == ["telemetry.*.b"]
    peer = Peer()
    sl.insert(sub(">", conn=peer))  # interest that arrived over a route
    assert b"solo" not in sl.cache
    m = sl.match(b"solo")
    assert not m.empty and m.peers == [peer] and m.plain == []
    sl.remove(local)
    assert sl.match(b"telemetry.a.b").peers == [peer]


def test_last_token_literal_comes_before_star_as_in_nats_server():
    sl = Sublist()
    for s in ("foo.*", "foo.bar", ">", "*.bar", "foo.>", "*.*"):
        sl.insert(sub(s))
    # nats-server's matchLevel: at each level fwc, then the '*' subtree, then the literal
    # one; after the last token the literal node, then '*'
    assert [s.subject for s in sl.match(b"foo.bar").plain] == [">", "*.bar", "*.*", "foo.>", "foo.bar", "foo.*"]
