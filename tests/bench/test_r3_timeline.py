"""bench/r3_timeline.py's analysis, on made-up events (no servers)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import r3_timeline  # noqa: E402


def _publish(t0: int, follower_lag: int, extra: bool) -> list[tuple[int, str, str]]:
    ev = [(t0, "n2", "pub_in"), (t0 + 40_000, "n2", "route_out"), (t0 + 40_000 + follower_lag, "n1", "raft_in"),
          (t0 + 200_000, "n2", "client_out"), (t0 + 250_000, "n2", "route_out")]  # a second route_out: not first
    if extra:
        ev.append((t0 + 100_000, "n3", "save0"))
    return ev


def test_timeline_gives_medians_of_first_occurrences_per_publish_and_drops_rare_events():
    events = []
    for i, lag in enumerate([10_000, 30_000, 20_000, 50_000, 40_000, 60_000]):
        events += _publish(i * 1_000_000, lag, extra=(i == 3))
    events.append((6_000_000, "n2", "pub_in"))  # the next publish closes the last window
    got = {k: (us, per) for k, us, per in r3_timeline.timeline(events, "n2", skip=0.0)}
    assert got["L:pub_in"] == (0.0, 1.0)
    assert got["L:route_out"] == (40.0, 1.0)  # the first route write of each publish, not the second
    assert got["F:n1:raft_in"] == (40.0 + 35.0, 1.0)  # median of 10..60 µs of lag
    assert got["L:client_out"] == (200.0, 1.0)
    assert got["next_pub"] == (1000.0, 1.0)
    assert "F:n3:save0" not in got  # seen in one publish of six
    order = [k for k, _, _ in r3_timeline.timeline(events, "n2", skip=0.0)]
    assert order.index("L:route_out") < order.index("F:n1:raft_in") < order.index("L:client_out")


def test_warm_up_is_left_out():
    events = []
    for i, lag in enumerate([900_000, 10_000, 10_000, 10_000, 10_000]):
        events += _publish(i * 1_000_000, lag, extra=False)
    events.append((5_000_000, "n2", "pub_in"))
    got = {k: us for k, us, _ in r3_timeline.timeline(events, "n2", skip=0.2)}
    assert got["F:n1:raft_in"] == 50.0


def test_event_files_read_back(tmp_path):
    p = tmp_path / "n1.events"
    p.write_text("100 pub_in\n250 save0\n")
    assert r3_timeline.read_events(p, "n1") == [(100, "n1", "pub_in"), (250, "n1", "save0")]
