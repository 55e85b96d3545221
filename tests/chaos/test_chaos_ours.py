"""nats-chaos's short schedule against our own three-node cluster, with R3 streams: the CI run
of the chaos suite (issue 12). Every fault kind of the short schedule is injected (stream and
consumer leader kills, a follower kill, SIGSTOP, the leader cut from the majority, one node
cut off, latency), and every count of the checker must be zero: nothing acknowledged lost,
nothing duplicated or invented, no confirmed ack delivered again, no KV update lost or
applied twice. The report table is printed to the terminal, as `nats-chaos` prints it.

The same command by hand:
`nats-chaos --server "python3 -m broker" --seconds 45 --seed 1 --kinds <SHORT_KINDS>`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.chaos.test_chaos_nats_server import SHORT_KINDS, assert_clean
from tests.conftest import ROOT


@pytest.mark.timeout(400)
def test_short_schedule_against_our_r3_cluster(tmp_path, capsys):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy.chaos", "--server", f"{sys.executable} -m broker",
                           "--replicas", "3", "--out", str(out), "--history", str(tmp_path / "history.json"),
                           "--workdir", str(tmp_path / "cluster"), "--seconds", "45", "--seed", "1",
                           "--kinds", SHORT_KINDS],
                          cwd=ROOT, capture_output=True, text=True, timeout=360)
    report = json.loads(out.read_text()) if out.exists() else {}
    with capsys.disabled():
        table = proc.stdout[proc.stdout.find("check "):] if "check " in proc.stdout else proc.stdout[-3000:]
        print("\nnats-chaos short schedule against our cluster (R3):\n" + table)
    assert_clean(proc, report, {f["kind"] for f in report.get("meta", {}).get("schedule", [])})
    assert report["meta"]["replicas"] == 3, report["meta"]
    assert len({f["kind"] for f in report["faults"] if f["phase"] == "start"}) >= 4
