"""Start the toxiproxy-compatible server (deploy/chaos/toxiproxy_server.py) and point
toxiproxy-python at it."""

from __future__ import annotations

import subprocess
import sys

from toxiproxy import Toxiproxy

from tests.conftest import ROOT, free_port, wait_port


class ToxiproxyProc:
    def __init__(self, log_path):
        self.port = free_port()
        self.log_path = log_path
        self.proc = None

    def __enter__(self) -> Toxiproxy:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "deploy" / "chaos" / "toxiproxy_server.py"), "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_port(self.port, self.proc)
        client = Toxiproxy()
        client.update_api_consumer("127.0.0.1", self.port)
        return client

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
