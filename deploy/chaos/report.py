"""The run's verdict: a table on stdout, the same as JSON, and on failure the ids involved
with the faults that surrounded them."""

from __future__ import annotations

import json

from deploy.chaos.checker import ANOMALIES, check, stats

SHOW_IDS = 20           # ids printed per anomaly kind
TIMELINE_WINDOW_S = 10  # faults this close to an id's operation are printed with it


def build(history: dict) -> dict:
    result = check(history)
    counts = result["counts"]
    return {"meta": history.get("meta", {}), "ok": not any(counts.values()),
            "complete": all(n is not None for n in counts.values()), "counts": counts, "stats": stats(history), "ids": result["ids"],
            "faults": history.get("faults", [])}


def table(report: dict) -> str:
    labels = dict(ANOMALIES)
    width = max(len(v) for v in labels.values())
    lines = [f"{'check':<{width}}  count", f"{'-' * width}  -----"]
    for key, label in ANOMALIES:
        n = report["counts"][key]
        if n is None:
            lines.append(f"{label:<{width}}    n/a  (could not read it back)")
        else:
            lines.append(f"{label:<{width}}  {n:>5}{'  FAIL' if n else ''}")
    s = report["stats"]
    lines.append("")
    lines.append(f"publishes: {s['published_ok']} acknowledged, {s['published_fail']} refused, "
                 f"{s['published_unknown']} unknown ({s['unknown_but_stored']} of the not-acknowledged were "
                 f"stored); stream holds {'n/a' if s['stored'] is None else s['stored']}")
    lines.append("deliveries: " + ", ".join(f"{c} {n}" for c, n in sorted(s["deliveries"].items()))
                 + f" ({s['redeliveries']} redeliveries, {s['acks_confirmed']} acks confirmed)")
    lines.append(f"kv: {s['kv_ok']} updates acknowledged, {s['kv_fail']} refused, {s['kv_unknown']} unknown; "
                 f"{'n/a' if s['kv_revisions'] is None else s['kv_revisions']} revisions")
    lines.append(f"faults injected: {s['faults']}")
    if not report["ok"]:
        verdict = "FAIL"
    elif not report.get("complete", True):
        verdict = "NO VERDICT on the n/a checks (the cluster did not serve that data again); the rest pass"
    else:
        verdict = "PASS (nothing acknowledged was lost)"
    lines.append("RESULT: " + verdict)
    return "\n".join(lines)


def _when(history: dict, ident: str) -> float | None:
    """The time of the operation an anomaly id refers to."""
    value = ident.rsplit(":", 1)[-1]  # "consumer:value" or a bare value
    for p in history.get("publishes", []):
        if p["value"] == value:
            return p["t0"]
    for d in history.get("deliveries", []):
        if d["value"] == value:
            return d["t"]
    for o in history.get("kv_ops", []):
        if o["value"] == value:
            return o["t0"]
    return None


def failure_details(report: dict, history: dict) -> str:
    """Per anomaly kind: the ids (the first SHOW_IDS), when their operations ran, and the
    fault timeline from TIMELINE_WINDOW_S before the first to as long after the last."""
    out = []
    faults = history.get("faults", [])
    for key, label in ANOMALIES:
        ids = report["ids"].get(key)
        if not ids:
            continue
        times = [t for t in (_when(history, i) for i in ids) if t is not None]
        more = f" (+{len(ids) - SHOW_IDS} more in the JSON report)" if len(ids) > SHOW_IDS else ""
        out.append(f"\n{label}: {len(ids)}")
        out.append("  ids: " + ", ".join(ids[:SHOW_IDS]) + more)
        if not times:
            continue
        lo, hi = min(times), max(times)
        out.append(f"  their operations ran at t={lo:.2f}s .. {hi:.2f}s; faults around them:")
        near = [f for f in faults if lo - TIMELINE_WINDOW_S <= f["t"] <= hi + TIMELINE_WINDOW_S]
        for f in near:
            out.append(f"    t={f['t']:7.2f}s {f['phase']:<5} {f['kind']} {','.join(f.get('targets', []))}"
                       f" {f.get('detail', '')}".rstrip())
        if not near:
            out.append("    (none within the window)")
    return "\n".join(out)


def write_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
