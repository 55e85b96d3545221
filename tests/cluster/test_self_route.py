"""A seed route that names this very node (as in compose: every node gets --routes n1:6222)."""

import time

from tests.conftest import free_port, our_server


def test_seed_route_to_self_is_not_redialled(tmp_path):
    cport = free_port()
    srv = our_server(tmp_path, "-n", "n1", "-D", "--cluster", f"nats://127.0.0.1:{cport}",
                     "--routes", f"nats://localhost:{cport}", "--cluster_name", "selfc", jetstream=False)
    srv.start()
    try:
        deadline = time.monotonic() + 30
        while srv.log_text().count("route to self") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.log_text().count("route to self") == 1
        time.sleep(5)  # the redial backoff is far shorter than this: a redial would show up
        assert srv.log_text().count("route to self") == 1
    finally:
        srv.stop()
