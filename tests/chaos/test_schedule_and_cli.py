"""The seeded fault schedule and the command line, without starting servers."""

from __future__ import annotations

import subprocess
import sys

from deploy.chaos import cli, nemesis
from tests.conftest import ROOT


def test_same_seed_same_schedule_and_different_seed_differs():
    kinds = nemesis.kinds_for({"process", "network", "fuse"})
    a = nemesis.make_schedule(7, 600, kinds)
    assert a == nemesis.make_schedule(7, 600, kinds)
    assert a != nemesis.make_schedule(8, 600, kinds)


def test_long_schedule_uses_every_kind_and_stays_inside_the_run():
    kinds = nemesis.kinds_for({"process", "network", "fuse"})
    sched = nemesis.make_schedule(3, 600, kinds)
    assert {f["kind"] for f in sched} == set(kinds)
    assert sched[0]["at"] == nemesis.WARMUP_S
    for prev, f in zip(sched, sched[1:]):
        assert f["at"] >= prev["at"] + prev["duration"]  # one fault at a time, healed before the next
    last = sched[-1]
    assert last["at"] + last["duration"] <= 600 - 60  # 10% of the run is left to recover
    for f in sched:
        lo, hi = nemesis.FAULTS[f["kind"]][2]
        assert lo <= f["duration"] <= hi and 0 <= f["pick"] < 1


def test_kinds_follow_the_target_capabilities():
    assert set(nemesis.kinds_for({"network"})) == {"partition-one", "partition-leader", "latency", "bandwidth",
                                                   "reset-peer", "timeout"}
    compose = set(nemesis.kinds_for({"process", "container"}))
    assert "restart" in compose and "kill-all" in compose and "latency" not in compose
    assert not any(k.startswith("powerloss") for k in nemesis.kinds_for({"process", "network"}))


def test_choose_is_stable_under_candidate_order():
    assert nemesis.choose(["n3", "n1", "n2"], 0.0) == "n1"
    assert nemesis.choose(["n2", "n3", "n1"], 0.99) == "n3"
    assert nemesis.choose(["n2", "n1"], 0.5) == "n2"


def test_unsupported_kinds_are_skipped_with_a_reason():
    args = cli.parse_args(["--urls", "nats://127.0.0.1:4222", "--kinds", "latency,kill-all"])
    kinds, notes = cli.choose_kinds(args, {"network"})
    assert kinds == ["latency"]
    assert notes == ["skipping kill-all: this target cannot inject 'process' faults"]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.chaos", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_help_explains_every_option_and_fault_kind():
    out = run_cli("--help")
    assert out.returncode == 0
    actions = [a for a in cli.build_parser()._actions if a.option_strings]
    assert len(actions) > 15
    for action in actions:
        assert action.help, action.option_strings
        for opt in action.option_strings:
            assert opt in out.stdout, opt
    for kind in nemesis.FAULTS:
        assert kind in out.stdout


def test_print_schedule_is_reproducible():
    a = run_cli("--server", "nats-server", "--seed", "5", "--seconds", "120", "--print-schedule")
    b = run_cli("--server", "nats-server", "--seed", "5", "--seconds", "120", "--print-schedule")
    assert a.returncode == 0 and a.stdout == b.stdout
    lines = a.stdout.splitlines()
    assert lines and all(line.startswith("t=") for line in lines)
    expected = nemesis.make_schedule(5, 120, nemesis.kinds_for({"process", "network", "fuse"}))
    assert len(lines) == len(expected)
    for line, f in zip(lines, expected):
        assert line.split("s", 1)[1].split()[0] == f["kind"]


def test_a_target_is_required():
    out = run_cli("--seconds", "5")
    assert out.returncode == 2 and "one of the arguments --check --server --compose --urls is required" in out.stderr


def test_check_rechecks_a_recorded_history(tmp_path):
    import gzip
    import json

    history = json.loads(gzip.decompress((ROOT / "tests/chaos/data/history-nats-server.json.gz").read_bytes()))
    (tmp_path / "clean.json").write_text(json.dumps(history))
    out = run_cli("--check", str(tmp_path / "clean.json"), "--out", str(tmp_path / "clean-report.json"))
    assert out.returncode == 0 and "RESULT: PASS" in out.stdout
    assert json.loads((tmp_path / "clean-report.json").read_text())["ok"] is True

    gone = history["stream"][0][1]
    history["stream"] = history["stream"][1:]  # the first stored value is gone
    (tmp_path / "lost.json").write_text(json.dumps(history))
    out = run_cli("--check", str(tmp_path / "lost.json"), "--out", str(tmp_path / "lost-report.json"))
    assert out.returncode == 1 and "RESULT: FAIL" in out.stdout
    lost = json.loads((tmp_path / "lost-report.json").read_text())["ids"]["lost"]
    assert lost == [gone] and gone in out.stdout
