"""A small threaded TCP proxy for cutting routes between real server processes.

Stands in for toxiproxy (noxious-server was not available on this machine):
`cut()` resets every proxied connection and refuses new ones (like toxiproxy's
`enabled=false`), `blackhole()` keeps connections open but silently drops bytes in
both directions (like a `timeout` toxic with timeout=0), and `heal()` restores
normal forwarding.
"""

from __future__ import annotations

import select
import socket
import threading

BUFFER_BYTES = 65536


class TcpProxy:
    def __init__(self, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._lsock = socket.socket()
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", listen_port))
        self._lsock.listen(64)
        self.port = self._lsock.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._mode = "pass"  # pass | cut | blackhole
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control

    def cut(self) -> None:
        with self._lock:
            self._mode = "cut"
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _close(a, reset=True)
            _close(b, reset=True)

    def blackhole(self) -> None:
        with self._lock:
            self._mode = "blackhole"

    def heal(self) -> None:
        """Back to forwarding. Black-holed connections are reset (their streams lost bytes)."""
        with self._lock:
            was = self._mode
            self._mode = "pass"
            pairs = self._pairs if was == "blackhole" else []
            if was == "blackhole":
                self._pairs = []
        for a, b in pairs:
            _close(a, reset=True)
            _close(b, reset=True)

    def close(self) -> None:
        self._stop = True
        self.cut()
        _close(self._lsock)

    # ------------------------------------------------------------ internals

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                client, _ = self._lsock.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
            if mode == "cut":
                _close(client, reset=True)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 0.5)
                if self._stop:
                    return
                for s in readable:
                    data = s.recv(BUFFER_BYTES)
                    if not data:
                        return
                    with self._lock:
                        mode = self._mode
                    if mode == "pass":
                        peers[s].sendall(data)
        except (OSError, ValueError):
            # OSError: a socket failed; ValueError: cut() closed one under select() (fd -1)
            return
        finally:
            _close(a)
            _close(b)
            with self._lock:
                if (a, b) in self._pairs:
                    self._pairs.remove((a, b))


def _close(s: socket.socket, reset: bool = False) -> None:
    try:
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    except OSError:
        pass
