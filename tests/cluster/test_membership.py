"""Pure membership view: joins, gossip, down/forget/rejoin, duplicate-route rule."""

from __future__ import annotations

from cluster.membership import DOWN, UP, Membership, dials_first, keep_new_route


def test_route_up_and_connect_urls():
    m = Membership("B", forget_after_s=10)
    m.route_up("C", "n3", "127.0.0.1:7003", ["127.0.0.1:4003"], now=0)
    m.route_up("A", "n1", "127.0.0.1:7001", ["127.0.0.1:4001"], now=0)
    assert m.connect_urls() == ["127.0.0.1:4001", "127.0.0.1:4003"]
    assert m.route_urls() == ["127.0.0.1:7001", "127.0.0.1:7003"]
    assert m.is_up("A") and not m.wants_dial("A")


def test_gossip_of_unknown_member_asks_to_dial_but_not_when_up():
    m = Membership("A", forget_after_s=10)
    assert m.gossip("C", "n3", "h:3", ["h:43"], via="B", now=1) is True
    assert m.members["C"].via == "B" and m.members["C"].state == DOWN
    assert m.connect_urls() == []  # not reachable yet: not offered to clients
    m.route_up("C", "n3", "h:3", ["h:43"], now=2)
    assert m.gossip("C", "n3", "h:3", ["h:43"], via="B", now=3) is False
    assert m.members["C"].via == ""
    assert m.gossip("A", "me", "h:1", [], via="B", now=3) is False
    assert "A" not in m.members


def test_down_member_is_forgotten_after_timeout_and_rejoins():
    m = Membership("A", forget_after_s=5)
    m.route_up("B", "n2", "h:2", ["h:42"], now=0)
    m.route_down("B", now=10)
    assert m.members["B"].state == DOWN and m.wants_dial("B")
    assert m.connect_urls() == []
    assert m.expire(now=14) == []
    gone = m.expire(now=15)
    assert [g.server_id for g in gone] == ["B"]
    assert not m.wants_dial("B") and "B" not in m.members
    # Comes back with the same id: a clean join.
    m.route_up("B", "n2", "h:2", ["h:42"], now=20)
    assert m.members["B"].state == UP and m.connect_urls() == ["h:42"]


def test_gossiped_member_never_reached_is_forgotten():
    m = Membership("A", forget_after_s=5)
    m.gossip("Z", "dead", "h:9", [], via="B", now=0)
    assert m.wants_dial("Z")
    assert [g.server_id for g in m.expire(now=6)] == ["Z"]


def test_route_down_twice_keeps_first_down_time():
    m = Membership("A", forget_after_s=5)
    m.route_up("B", "n2", "h:2", [], now=0)
    m.route_down("B", now=1)
    m.route_down("B", now=4)
    assert m.members["B"].down_since == 1


def test_update_client_urls():
    m = Membership("A", forget_after_s=5)
    m.route_up("B", "n2", "h:2", ["h:42"], now=0)
    assert m.update_client_urls("B", ["h:42"], now=1) is False
    assert m.update_client_urls("B", ["h:42", "h2:42"], now=1) is True
    assert m.connect_urls() == ["h:42", "h2:42"]
    assert m.update_client_urls("nobody", ["x"], now=1) is False


def test_duplicate_rule_is_the_same_on_both_ends():
    # Pair (A, B), A < B. Route r1 solicited by A, route r2 solicited by B.
    # At A: r1 is "solicited" by A, r2 "accepted". At B: the reverse.
    for a_first in (True, False):
        if a_first:
            # A sees r1 first then r2; B sees r1 first then r2 (accepted first at B).
            keep_at_a = keep_new_route("A", "B", existing_solicited=True, new_solicited=False)
            keep_at_b = keep_new_route("B", "A", existing_solicited=False, new_solicited=True)
            assert keep_at_a is False and keep_at_b is False  # both keep r1
        else:
            keep_at_a = keep_new_route("A", "B", existing_solicited=False, new_solicited=True)
            keep_at_b = keep_new_route("B", "A", existing_solicited=True, new_solicited=False)
            assert keep_at_a is True and keep_at_b is True  # both switch to r1
    # Same solicitor twice (e.g. a configured URL and a gossiped one): keep the old one.
    assert keep_new_route("A", "B", True, True) is False
    assert keep_new_route("A", "B", False, False) is False


def test_dials_first_is_antisymmetric():
    assert dials_first("A", "B") and not dials_first("B", "A")
