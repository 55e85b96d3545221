"""Which node decides a meta request, and which requests wait for an election: MetaApi.on_api
against a stand-in for the cluster runtime (no processes, no Raft)."""

from __future__ import annotations

import pytest

from broker.jetstream.cluster.metaapi import MetaApi


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple] = []

    def start_soon(self, fn, *args) -> None:
        self.started.append((fn.__name__, args[0]))


class NoStreams:
    def host_of(self, stream: str):
        return None


class Node(MetaApi):
    """The state on_api reads, set by hand."""

    def __init__(self, *, leader_ready: bool, is_leader: bool, leader_name: str | None) -> None:
        self.leader_ready = leader_ready
        self.is_leader = is_leader
        self.leader_name = leader_name
        self._waiting = []
        self._nursery = Recorder()
        self.meta = NoStreams()
        self.me = "n1"

    def _requester_here(self, reply: str) -> bool:
        return False


CREATE = "$JS.API.STREAM.CREATE.S"
STEPDOWN = "$JS.API.META.LEADER.STEPDOWN"


def held(node: Node) -> list[str]:
    return [subject for _, subject, *_ in node._waiting]


def test_a_ready_leader_decides_both_at_once():
    node = Node(leader_ready=True, is_leader=True, leader_name="n1")
    assert node.on_api(CREATE, "_INBOX.a", None, b"{}") is False
    assert node.on_api(STEPDOWN, "_INBOX.b", None, b"") is False
    assert node._nursery.started == [("_meta_request", "STREAM.CREATE"),
                                     ("_meta_request", "META.LEADER.STEPDOWN")]
    assert held(node) == []


@pytest.mark.parametrize("is_leader, leader_name", [(False, None), (True, "n1")],
                         ids=["no-leader", "leader-not-ready"])
def test_a_create_waits_for_the_election_but_a_stepdown_does_not(is_leader, leader_name):
    # the stepdown was meant for the leader of its moment, which may already have stepped down
    # for it: decided again after the election it would step the new leader down as well and
    # answer the requester twice (a CI failure of test_meta_leader_stepdown[ours])
    node = Node(leader_ready=False, is_leader=is_leader, leader_name=leader_name)
    node.on_api(CREATE, "_INBOX.a", None, b"{}")
    node.on_api(STEPDOWN, "_INBOX.b", None, b"")
    assert held(node) == [CREATE]
    assert node._nursery.started == []


def test_a_follower_that_knows_its_leader_leaves_both_to_it():
    node = Node(leader_ready=False, is_leader=False, leader_name="n2")
    node.on_api(CREATE, "_INBOX.a", None, b"{}")
    node.on_api(STEPDOWN, "_INBOX.b", None, b"")
    assert held(node) == [] and node._nursery.started == []
