"""Counts what a NATS cluster got wrong, from a recorded history (plain JSON data).

A history is a dict with these lists (every `t` is seconds since the run started):

  publishes   {"pub": p, "i": i, "value": v, "t0", "t1", "outcome": "ok"|"fail"|"info",
               "seq": stream seq from the PubAck or None, "attempts": n}
              One record per value; a publisher sends its values in order of i and waits for
              each (retrying with the same Nats-Msg-Id) before the next. "fail" is a definite
              refusal, "info" an unknown outcome (timeouts until the publisher gave up).
  stream      [[seq, value], ...]  the whole stream, read after the cluster healed
  deliveries  {"consumer", "value", "seq", "n" (delivery count), "tick", "t"}
  acks        {"consumer", "value", "seq", "tick", "t", "ok"}  an AckSync: ok when its
              confirmation arrived; tick is the position of that confirmation in the
              consumer connection's stream of incoming messages, comparable with deliveries'
  consumers   [names]  consumers that read the whole stream
  kv_ops      {"writer", "value", "expect", "outcome": "ok"|"fail"|"info", "rev", "t0", "t1"}
  kv_history  [[rev, value, expect], ...]  every revision of the register, in order
  faults      {"t", "kind", "phase": "start"|"end"|"note", "targets": [...], "detail"}

check() returns {"counts": {...}, "ids": {...}} with one entry per anomaly kind; any
non-zero count fails the run. `stream` or `kv_history` is None when it could not be read
after the run (e.g. no leader): the checks that need it count None (no verdict).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

# (key, label) in report order
ANOMALIES = [
    ("lost", "acknowledged but lost"),
    ("duplicated", "stored more than once"),
    ("phantom", "stored but never published"),
    ("reordered", "out of publish order within one publisher"),
    ("ack_seq_mismatch", "stored at another seq than its PubAck said"),
    ("seq_reused", "PubAck seq already acknowledged for another value"),
    ("undelivered", "stored but never delivered (per consumer)"),
    ("redelivered_after_ack", "delivered again after the ack was confirmed"),
    ("kv_lost", "KV update acknowledged but lost"),
    ("kv_duplicated", "KV update applied more than once"),
    ("kv_cas_violation", "KV update applied on a stale revision"),
    ("kv_phantom", "KV value never written"),
]


def natural(ident: str) -> list:
    """Sort key: "p1-9" before "p1-10"."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", ident)]


# Checks that need the final read of the stream / of the KV history: when that read
# failed (recorded as None), they have no verdict (count None), the others still run.
NEEDS_STREAM = ("lost", "duplicated", "phantom", "reordered", "ack_seq_mismatch", "undelivered")
NEEDS_KV = ("kv_lost", "kv_duplicated", "kv_cas_violation", "kv_phantom")


def check(h: dict) -> dict:
    ids: dict[str, list] = {k: [] for k, _ in ANOMALIES}
    pubs = h.get("publishes", [])
    stream = h.get("stream", [])
    unreadable = [k for k in NEEDS_STREAM if stream is None] + [k for k in NEEDS_KV if h.get("kv_history", []) is None]
    stream = stream or []
    attempted = {p["value"] for p in pubs}
    acked = {p["value"]: p for p in pubs if p["outcome"] == "ok"}

    copies = Counter(v for _, v in stream)
    first_seq: dict[str, int] = {}
    for seq, v in stream:
        first_seq.setdefault(v, seq)

    ids["lost"] = sorted(v for v in acked if v not in copies)
    ids["duplicated"] = sorted(v for v, n in copies.items() if n > 1)
    ids["phantom"] = sorted(v for v in copies if v not in attempted)
    ids["ack_seq_mismatch"] = sorted(v for v, p in acked.items()
                                     if v in first_seq and p.get("seq") is not None and p["seq"] != first_seq[v])

    # A stream sequence acknowledged once belongs to that value forever (I3): a later PubAck
    # with the same seq for another value means the first was lost and its seq reused.
    owner: dict[int, str] = {}
    for p in sorted(acked.values(), key=lambda p: (p.get("t1", p["t0"]), p["value"])):
        if p.get("seq") is None:
            continue
        first = owner.setdefault(p["seq"], p["value"])
        if first != p["value"]:
            ids["seq_reused"].append(p["value"])

    # Per publisher, acknowledged values must be stored in the order they were published.
    by_pub: dict[object, list] = defaultdict(list)
    for p in pubs:
        if p["outcome"] == "ok" and p["value"] in first_seq:
            by_pub[p["pub"]].append((p["i"], first_seq[p["value"]], p["value"]))
    for rows in by_pub.values():
        rows.sort()
        top = 0
        for _, seq, v in rows:
            if seq < top:
                ids["reordered"].append(v)
            top = max(top, seq)
    ids["reordered"].sort()

    # Consumers: every stored value delivered at least once; none delivered after its ack
    # was confirmed (a later tick on the same connection).
    delivered: dict[str, set] = defaultdict(set)
    for d in h.get("deliveries", []):
        delivered[d["consumer"]].add(d["value"])
    for c in h.get("consumers", []):
        ids["undelivered"] += [f"{c}:{v}" for v in sorted(copies) if v not in delivered[c]]
    confirmed: dict[tuple, int] = {}
    for a in h.get("acks", []):
        if a.get("ok"):
            key = (a["consumer"], a["value"])
            confirmed[key] = min(confirmed.get(key, a["tick"]), a["tick"])
    for d in h.get("deliveries", []):
        tick = confirmed.get((d["consumer"], d["value"]))
        if tick is not None and d["tick"] > tick:
            ids["redelivered_after_ack"].append(f"{d['consumer']}:{d['value']}")
    ids["redelivered_after_ack"] = sorted(set(ids["redelivered_after_ack"]))

    # KV register: the history is the chain of accepted compare-and-set updates.
    kv_hist = h.get("kv_history") or []
    kv_attempted = {o["value"] for o in h.get("kv_ops", [])}
    rev_of: dict[str, list[int]] = defaultdict(list)
    for rev, v, _ in kv_hist:
        rev_of[v].append(rev)
    for o in h.get("kv_ops", []):
        if o["outcome"] == "ok" and (o["value"] not in rev_of or (o.get("rev") is not None
                                                                  and o["rev"] not in rev_of[o["value"]])):
            ids["kv_lost"].append(o["value"])
    ids["kv_lost"].sort()
    ids["kv_duplicated"] = sorted(v for v, revs in rev_of.items() if len(revs) > 1)
    ids["kv_phantom"] = sorted(v for v in rev_of if v not in kv_attempted)
    prev = 0
    for rev, v, expect in kv_hist:
        if expect is not None and expect != prev:
            ids["kv_cas_violation"].append(v)
        prev = rev

    return {"counts": {k: None if k in unreadable else len(ids[k]) for k, _ in ANOMALIES},
            "ids": {k: sorted(v, key=natural) for k, v in ids.items() if k not in unreadable}}


def stats(h: dict) -> dict:
    """Totals that give the counts their scale (not failures)."""
    pubs = h.get("publishes", [])
    outcomes = Counter(p["outcome"] for p in pubs)
    kv = Counter(o["outcome"] for o in h.get("kv_ops", []))
    per_consumer = Counter(d["consumer"] for d in h.get("deliveries", []))
    acked_stored = {v for _, v in h.get("stream") or []}
    return {
        "published_ok": outcomes.get("ok", 0), "published_fail": outcomes.get("fail", 0),
        "published_unknown": outcomes.get("info", 0),
        "unknown_but_stored": sum(1 for p in pubs if p["outcome"] != "ok" and p["value"] in acked_stored),
        "stored": None if h.get("stream", []) is None else len(h["stream"]),
        "deliveries": dict(per_consumer),
        "redeliveries": sum(1 for d in h.get("deliveries", []) if d.get("n", 1) > 1),
        "acks_confirmed": sum(1 for a in h.get("acks", []) if a.get("ok")),
        "kv_ok": kv.get("ok", 0), "kv_fail": kv.get("fail", 0), "kv_unknown": kv.get("info", 0),
        "kv_revisions": None if h.get("kv_history", []) is None else len(h["kv_history"]),
        "faults": sum(1 for f in h.get("faults", []) if f.get("phase") == "start"),
    }
