"""nats-chaos's short schedule against the compose cluster (compose.yaml), with R3 streams.

Opt-in: needs Docker Engine and compose (the `docker compose` plugin or `docker-compose` v1),
so it runs only with RUN_DOCKER=1 (`RUN_DOCKER=1 pytest -m docker tests/chaos`). The cluster is
built and started by deploy/cluster-up.sh (which builds the local base image with
deploy/build-base.sh when it is missing) under its own compose project, pybroker-chaos, and
removed with its volumes by deploy/cluster-down.sh --volumes. It needs host ports 4222-4224 and
8222-8224 free, as tests/deploy does.

The run is the same command by hand:
`nats-chaos --compose --compose-project pybroker-chaos --seconds 50 --seed 1`: every fault
kind of the compose target once (docker kill of the stream leader, a consumer leader, a follower
and all three containers, each started again; docker pause/unpause; docker restart), with
R3 streams and consumers (nats-chaos's default --replicas 3). Every count must be zero.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from deploy.chaos import nemesis
from deploy.chaos.cluster import ComposeCluster
from tests.chaos.test_chaos_nats_server import assert_clean
from tests.conftest import ROOT

nats = pytest.importorskip("nats")

DEPLOY = ROOT / "deploy"
PROJECT = "pybroker-chaos"
PORTS = (4222, 4223, 4224, 8222, 8223, 8224)

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.environ.get("RUN_DOCKER") != "1", reason="needs Docker: set RUN_DOCKER=1"),
]


def compose_env() -> dict[str, str]:
    return {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT}


def run(*argv: str, timeout: float = 1100) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=compose_env(), cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def compose_cluster():
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.fail(f"127.0.0.1 ports {busy} are already in use (a cluster already running? "
                    f"stop it with deploy/cluster-down.sh)")
    up = run(str(DEPLOY / "cluster-up.sh"))
    ok = False
    try:
        assert up.returncode == 0, f"deploy/cluster-up.sh failed ({up.returncode}):\n{up.stdout[-6000:]}"
        yield
        ok = True
    finally:
        if not ok or os.environ.get("DOCKER_TEST_LOGS") == "1":
            print(run(str(DEPLOY / "compose.sh"), "logs", "--no-color", "--tail=200", timeout=120).stdout)
        down = run(str(DEPLOY / "cluster-down.sh"), "--volumes", timeout=300)
        assert down.returncode == 0, down.stdout


def replication(stream: str) -> tuple[int, str | None, list[str]]:
    """(num_replicas, leader, replica names) of a stream on the compose cluster."""
    async def main():
        nc = await nats.connect(["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"])
        try:
            si = await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()
        return si.config.num_replicas, si.cluster.leader, [r.name for r in si.cluster.replicas or []]

    return asyncio.run(main())


@pytest.mark.timeout(1800)  # the first run also debootstraps the base image and builds pybroker:latest
def test_short_schedule_on_the_compose_cluster(compose_cluster, tmp_path, capsys):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "deploy.chaos", "--compose", "--compose-project", PROJECT,
                           "--out", str(out), "--history", str(tmp_path / "history.json"),
                           "--seconds", "50", "--seed", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=420)
    report = json.loads(out.read_text()) if out.exists() else {}
    with capsys.disabled():
        table = proc.stdout[proc.stdout.find("check "):] if "check " in proc.stdout else proc.stdout[-3000:]
        print("\nnats-chaos short schedule on the compose cluster (R3):\n" + table)
        print("\n".join(proc.stderr.splitlines()[-14:]))
    compose_kinds = set(nemesis.kinds_for(ComposeCluster.capabilities))
    scheduled = {f["kind"] for f in report.get("meta", {}).get("schedule", [])}
    assert set(report.get("meta", {}).get("kinds", [])) == compose_kinds, report.get("meta")
    assert_clean(proc, report, scheduled)
    assert report["meta"]["replicas"] == 3, report["meta"]
    assert report["meta"]["target"].startswith(f"compose cluster (project {PROJECT})")
    # seed 1 over 50 s schedules every fault kind of the compose target once
    assert scheduled == compose_kinds, scheduled
    # the streams the workload used are replicated on all three containers
    for stream in ("CHAOS", "KV_chaos"):
        num, leader, peers = replication(stream)
        assert num == 3 and leader in ("n1", "n2", "n3"), (stream, num, leader)
        assert sorted([leader, *peers]) == ["n1", "n2", "n3"], (stream, leader, peers)
