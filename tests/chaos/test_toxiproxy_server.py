"""The toxiproxy-compatible proxy, driven by toxiproxy-python against a real broker process."""

import socket
import time

import pytest
from toxiproxy.exceptions import ProxyExists

from tests.chaos.toxi import ToxiproxyProc
from tests.conftest import free_port


def nats_ping(port: int, timeout: float = 5.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.recv(65536)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        return s.recv(65536)
    finally:
        s.close()


def test_proxy_passes_cuts_and_restores(core_server, tmp_path):
    with ToxiproxyProc(tmp_path / "toxi.log") as toxi:
        listen = f"127.0.0.1:{free_port()}"
        proxy = toxi.create(upstream=f"127.0.0.1:{core_server.port}", name="nats", listen=listen)
        port = int(listen.split(":")[1])
        assert nats_ping(port).startswith(b"PONG")
        with pytest.raises(ProxyExists):
            toxi.create(upstream=f"127.0.0.1:{core_server.port}", name="nats", listen=listen)

        live = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert live.recv(65536).startswith(b"INFO")
        proxy.disable()
        assert toxi.get_proxy("nats").enabled is False
        assert live.recv(65536) == b""  # live connections are cut
        with pytest.raises(OSError):
            nats_ping(port, timeout=1)
        proxy.enable()
        assert nats_ping(port).startswith(b"PONG")

        proxy.add_toxic(type="latency", attributes={"latency": 50})
        assert list(proxy.toxics()) == ["latency_downstream"]
        assert nats_ping(port).startswith(b"PONG")
        proxy.destroy_toxic("latency_downstream")
        assert proxy.toxics() == {}

        proxy.add_toxic(type="timeout", name="blackhole", attributes={"timeout": 0})
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        with pytest.raises(socket.timeout):
            s.recv(65536)  # nothing passes while the timeout toxic holds the link
        s.close()
        toxi.reset()
        assert proxy.toxics() == {}
        assert nats_ping(port).startswith(b"PONG")
        toxi.destroy(proxy)
        assert toxi.proxies() == {}
        time.sleep(0.1)
        with pytest.raises(OSError):
            nats_ping(port, timeout=1)
