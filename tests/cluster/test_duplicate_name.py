"""Two nodes with the same server name never form a route (nats-server: Duplicate Server Name)."""

import time

from tests.cluster.test_cluster_e2e import http_json
from tests.conftest import free_port, our_server


def test_duplicate_server_name_is_refused(tmp_path):
    c1, c2 = free_port(), free_port()
    a = our_server(tmp_path, "-n", "dup", "--cluster", f"nats://127.0.0.1:{c1}", "--cluster_name", "d",
                   jetstream=False, name="a").start()
    b = our_server(tmp_path, "-n", "dup", "--cluster", f"nats://127.0.0.1:{c2}", "--routes",
                   f"nats://127.0.0.1:{c1}", "--cluster_name", "d", jetstream=False, name="b").start()
    try:
        deadline = time.monotonic() + 20
        while "duplicate name" not in a.log_text() + b.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "duplicate name" in a.log_text() + b.log_text()
        assert http_json(a, "/routez")["num_routes"] == 0
        assert http_json(b, "/routez")["num_routes"] == 0
    finally:
        a.stop()
        b.stop()
