"""deploy/compose.sh picks `docker compose` (v2 plugin) or, where only it exists, the
standalone docker-compose v1; nats-chaos --compose and tests/deploy reach the cluster
through it. Fake CLIs on PATH record how each is called; the real docker-compose, when
installed, must parse compose.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "deploy" / "compose.sh"


def fake(bin_dir, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def run(bin_dir, *args: str) -> subprocess.CompletedProcess:
    """compose.sh with a PATH of bin_dir plus only the tools the script itself needs."""
    tools = bin_dir.parent / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("bash", "dirname"):
        if not (tools / tool).exists():
            os.symlink(shutil.which(tool), tools / tool)
    env = {**os.environ, "PATH": f"{bin_dir}:{tools}"}
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def test_only_docker_compose_v1_installed(tmp_path):
    fake(tmp_path / "bin", "docker", 'echo "docker: \'compose\' is not a docker command." >&2; exit 1\n')
    fake(tmp_path / "bin", "docker-compose", 'echo "v1 $*"\n')
    out = run(tmp_path / "bin", "kill", "n2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"v1 --project-directory {ROOT} -f {ROOT}/compose.yaml kill n2"


def test_v2_plugin_preferred(tmp_path):
    fake(tmp_path / "bin", "docker", 'if [ "$1 $2" = "compose version" ]; then exit 0; fi; echo "v2 $*"\n')
    fake(tmp_path / "bin", "docker-compose", 'echo "v1 $*"\n')
    out = run(tmp_path / "bin", "ps", "-q", "n1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"v2 compose --project-directory {ROOT} -f {ROOT}/compose.yaml ps -q n1"


def test_neither_installed(tmp_path):
    fake(tmp_path / "bin", "docker", "exit 1\n")
    out = run(tmp_path / "bin", "ps")
    assert out.returncode == 127 and "neither" in out.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")
def test_real_docker_compose_v1_reads_compose_yaml(tmp_path):
    fake(tmp_path / "bin", "docker", "exit 1\n")  # hide the v2 plugin, if any
    os.symlink(shutil.which("docker-compose"), tmp_path / "bin" / "docker-compose")
    out = run(tmp_path / "bin", "config", "--services")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["n1", "n2", "n3"]
