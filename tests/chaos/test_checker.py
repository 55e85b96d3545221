"""The checker on a recorded history: clean, it counts nothing; each injected mutation (a
lost ack, a duplicate, a phantom, a reorder, a redelivery after a confirmed ack, a never
delivered message, KV lost / double-applied updates) is caught by its own count and only it.

tests/chaos/data/history-nats-server.json.gz is the history of a real run against a
three-node nats-server cluster with faults (`nats-chaos --server nats-server --history ...`,
seed and faults in its meta).
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pytest

from deploy.chaos import report
from deploy.chaos.checker import ANOMALIES, check

DATA = Path(__file__).parent / "data" / "history-nats-server.json.gz"


@pytest.fixture(scope="module")
def recorded() -> dict:
    with gzip.open(DATA, "rt") as f:
        return json.load(f)


@pytest.fixture
def h(recorded) -> dict:
    return copy.deepcopy(recorded)


def only(counts: dict, **expected) -> None:
    """Every count is zero except the expected ones, which have exactly these values."""
    assert {k: v for k, v in counts.items() if v} == expected


def test_recorded_history_is_a_real_faulted_run(recorded):
    faults = {f["kind"] for f in recorded["faults"] if f["phase"] == "start"}
    assert len(faults) >= 3, faults
    assert len(recorded["stream"]) > 500
    assert {d["consumer"] for d in recorded["deliveries"]} == {"pull", "push"}
    assert sum(1 for o in recorded["kv_ops"] if o["outcome"] == "ok") > 20
    assert sum(1 for o in recorded["kv_ops"] if o["outcome"] == "fail") > 0  # real CAS contention


def test_clean_history_counts_nothing(h):
    only(check(h)["counts"])


def acked_stored(h) -> list[dict]:
    stored = {v for _, v in h["stream"]}
    return [p for p in h["publishes"] if p["outcome"] == "ok" and p["value"] in stored]


def test_lost_ack_is_caught(h):
    victim = acked_stored(h)[len(h["stream"]) // 2]["value"]
    h["stream"] = [row for row in h["stream"] if row[1] != victim]
    result = check(h)
    # the victim is gone from the stream, so also from what consumers must have seen
    only(result["counts"], lost=1)
    assert result["ids"]["lost"] == [victim]


def test_unacknowledged_loss_is_allowed(h):
    """A publish whose outcome was unknown may be missing: that is not a loss."""
    p = acked_stored(h)[10]
    p["outcome"], p["seq"] = "info", None
    h["stream"] = [row for row in h["stream"] if row[1] != p["value"]]
    only(check(h)["counts"])


def test_duplicate_is_caught(h):
    seq, value = h["stream"][7]
    h["stream"].append([h["stream"][-1][0] + 1, value])
    result = check(h)
    only(result["counts"], duplicated=1)
    assert result["ids"]["duplicated"] == [value]


def test_phantom_is_caught(h):
    h["stream"].append([h["stream"][-1][0] + 1, "p9-999999"])
    for consumer in h["consumers"]:  # delivered, so only the phantom check can see it
        h["deliveries"].append({"consumer": consumer, "value": "p9-999999", "seq": 0, "n": 1, "tick": 0, "t": 0})
    result = check(h)
    only(result["counts"], phantom=1)
    assert result["ids"]["phantom"] == ["p9-999999"]


def test_reorder_within_a_publisher_is_caught(h):
    # swap the stored positions of two consecutive acknowledged values of publisher 1
    mine = sorted((p for p in acked_stored(h) if p["pub"] == 1), key=lambda p: p["i"])
    a, b = mine[5]["value"], mine[6]["value"]
    h["stream"] = [[seq, b if v == a else a if v == b else v] for seq, v in h["stream"]]
    seq_of = {v: s for s, v in h["stream"]}
    for p in h["publishes"]:  # the PubAcks agree with the swapped layout: only the order is wrong
        if p["value"] in (a, b):
            p["seq"] = seq_of[p["value"]]
    result = check(h)
    only(result["counts"], reordered=1)
    assert result["ids"]["reordered"] == [b]


def test_interleaving_of_publishers_is_not_a_reorder(h):
    """Moving values of different publishers relative to each other is allowed."""
    by_pub = {}
    for p in acked_stored(h):
        by_pub.setdefault(p["pub"], p)
    first, second = list(by_pub.values())[:2]
    a, b = first["value"], second["value"]
    h["stream"] = [[seq, b if v == a else a if v == b else v] for seq, v in h["stream"]]
    seq_of = {v: s for s, v in h["stream"]}
    for p in h["publishes"]:
        if p["value"] in (a, b):
            p["seq"] = seq_of[p["value"]]
    counts = check(h)["counts"]
    assert counts["reordered"] == 0


def test_pub_ack_sequence_mismatch_is_caught(h):
    p = acked_stored(h)[3]
    p["seq"] += 100_000
    only(check(h)["counts"], ack_seq_mismatch=1)


def test_pub_ack_sequence_reused_is_caught(h):
    """Two acknowledged values with one PubAck seq: the one acknowledged later reused it."""
    a, b = sorted(acked_stored(h)[40:42], key=lambda p: p["t1"])
    b["seq"] = a["seq"]
    result = check(h)
    only(result["counts"], seq_reused=1, ack_seq_mismatch=1)
    assert result["ids"]["seq_reused"] == [b["value"]]


def test_redelivery_after_confirmed_ack_is_caught(h):
    ack = next(a for a in h["acks"] if a["ok"] and a["consumer"] == "pull")
    h["deliveries"].append({"consumer": "pull", "value": ack["value"], "seq": ack["seq"], "n": 2,
                            "tick": ack["tick"] + 1, "t": ack["t"] + 1})
    result = check(h)
    only(result["counts"], redelivered_after_ack=1)
    assert result["ids"]["redelivered_after_ack"] == [f"pull:{ack['value']}"]


def test_redelivery_before_the_confirmation_is_allowed(h):
    """A redelivery that reached the connection before the ack's confirmation was sent
    before the server processed the ack: allowed."""
    ack = next(a for a in h["acks"] if a["ok"] and a["consumer"] == "push")
    h["deliveries"].append({"consumer": "push", "value": ack["value"], "seq": ack["seq"], "n": 2,
                            "tick": ack["tick"] - 1, "t": ack["t"]})
    only(check(h)["counts"])


def test_never_delivered_is_caught(h):
    value = h["stream"][20][1]
    h["deliveries"] = [d for d in h["deliveries"] if not (d["consumer"] == "push" and d["value"] == value)]
    h["acks"] = [a for a in h["acks"] if not (a["consumer"] == "push" and a["value"] == value)]
    result = check(h)
    only(result["counts"], undelivered=1)
    assert result["ids"]["undelivered"] == [f"push:{value}"]


def test_kv_lost_update_is_caught(h):
    ok = [o for o in h["kv_ops"] if o["outcome"] == "ok"]
    victim = ok[-1]  # the last revision: dropping it breaks no later CAS link
    assert h["kv_history"][-1][1] == victim["value"]
    h["kv_history"].pop()
    result = check(h)
    only(result["counts"], kv_lost=1)
    assert result["ids"]["kv_lost"] == [victim["value"]]


def test_kv_double_applied_update_is_caught(h):
    rev, value, expect = h["kv_history"][5]
    last = h["kv_history"][-1][0]
    h["kv_history"].append([last + 1, value, last])  # the same update applied again, on the latest
    result = check(h)
    only(result["counts"], kv_duplicated=1)
    assert result["ids"]["kv_duplicated"] == [value]


def test_kv_update_on_stale_revision_is_caught(h):
    """Two writers both succeed from the same revision: the second was applied on a stale one."""
    last = h["kv_history"][-1][0]
    fail = next(o for o in h["kv_ops"] if o["outcome"] == "fail" and o["expect"] != last)
    # the refused update is stored anyway, with the revision it expected (not the latest)
    h["kv_history"].append([last + 1, fail["value"], fail["expect"]])
    fail["outcome"], fail["rev"] = "ok", last + 1
    result = check(h)
    only(result["counts"], kv_cas_violation=1)
    assert result["ids"]["kv_cas_violation"] == [fail["value"]]


def test_kv_phantom_is_caught(h):
    last = h["kv_history"][-1][0]
    h["kv_history"].append([last + 1, "w9-1", last])
    only(check(h)["counts"], kv_phantom=1)


def test_every_mutation_fails_the_report(h):
    h["stream"] = h["stream"][:-1]
    r = report.build(h)
    assert not r["ok"]
    text = report.table(r)
    assert "FAIL" in text and "RESULT: FAIL" in text
    details = report.failure_details(r, h)
    lost = r["ids"]["lost"]
    assert lost and lost[0] in details
    assert set(r["counts"]) == {k for k, _ in ANOMALIES}


def test_failure_details_show_the_fault_timeline_around_an_id(h):
    start = next(f for f in h["faults"] if f["phase"] == "start")
    near = min((p for p in acked_stored(h)), key=lambda p: abs(p["t0"] - start["t"]))
    h["stream"] = [row for row in h["stream"] if row[1] != near["value"]]
    r = report.build(h)
    details = report.failure_details(r, h)
    assert near["value"] in details
    assert start["kind"] in details


def test_unreadable_kv_gives_no_verdict_on_kv_only(h):
    h["kv_history"] = None  # the KV stream had no leader when it was read back
    result = check(h)
    assert {k for k, n in result["counts"].items() if n is None} == {"kv_lost", "kv_duplicated",
                                                                      "kv_cas_violation", "kv_phantom"}
    assert not any(result["counts"].values())
    r = report.build(h)
    assert r["ok"] and not r["complete"]
    assert "n/a" in report.table(r) and "NO VERDICT" in report.table(r)


def test_unreadable_stream_still_checks_what_needs_no_read(h):
    ack = next(a for a in h["acks"] if a["ok"])
    h["deliveries"].append({"consumer": ack["consumer"], "value": ack["value"], "seq": ack["seq"], "n": 2,
                            "tick": ack["tick"] + 1, "t": ack["t"] + 1})
    h["stream"] = None
    result = check(h)
    assert result["counts"]["lost"] is None and result["counts"]["undelivered"] is None
    assert result["counts"]["redelivered_after_ack"] == 1
    r = report.build(h)
    assert not r["ok"] and "RESULT: FAIL" in report.table(r)
