"""What nats.py's own test harnesses rely on, checked against nats-server itself.

nats.py's `nats.server` helper starts `nats-server --port -1 ...`, reads stderr until
"Server is ready" and takes the client port from the "Listening for client connections on"
line before it; it expects a storage directory problem to end the process with an [FTL]
line, and reads config errors from stderr. Its cluster tests reconnect through the
addresses INFO advertises. Each test runs the real binary and ours the same way.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port, nats_server_binary, our_server, reference, wait_port

LINE = re.compile(r"^\[(\d+)\] (\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6}) \[(\w{3})\] (.*)$")


def ours_argv() -> list[str]:
    return [sys.executable, "-m", "broker"]


def read_until_ready(proc: subprocess.Popen) -> list[str]:
    """stderr lines up to and including "Server is ready", as nats.py's harness reads them."""
    lines = []
    for raw in proc.stderr:
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if "Server is ready" in line:
            return lines
    raise AssertionError(f"no 'Server is ready' line; got {lines!r}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err.decode(errors="replace")


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def run_to_exit(argv: list[str]) -> tuple[int, str]:
    """Start a server expected to refuse to start: its exit code and stderr."""
    proc = start(argv)
    try:
        err = proc.communicate(timeout=30)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, err


def messages(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        m = LINE.match(line)
        assert m, f"not in nats-server's log format: {line!r}"
        out.append(m.group(4))
    return out


def shape(msg: str) -> str:
    """A log message with its variable parts (ids, ports, version strings) blanked."""
    msg = re.sub(r"^(\s+\w+:)\s+.*$", r"\1", msg)
    return re.sub(r"\d+", "N", msg)


def test_random_port_is_read_from_the_log_as_nats_py_does():
    for argv in (ours_argv(), [nats_server_binary()]):
        proc = start(argv + ["--addr", "127.0.0.1", "--port", "-1"])
        try:
            lines = read_until_ready(proc)
            listening = [m for m in messages(lines) if m.startswith("Listening for client connections on ")]
            assert len(listening) == 1, lines
            host, port = listening[0].rsplit(" ", 1)[1].rsplit(":", 1)
            assert host == "127.0.0.1"
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.settimeout(10)
                info = b""
                while not info.endswith(b"\r\n"):
                    info += s.recv(4096)
            assert json.loads(info[5:])["port"] == int(port)
        finally:
            stop(proc)


def test_startup_and_shutdown_log_lines_match_nats_server(tmp_path):
    shapes = {}
    for name, make in (("ours", our_server), ("ref", reference)):
        srv = make(tmp_path, "-m", str(free_port()), jetstream=False, name=name).start()
        deadline = time.monotonic() + 20  # the port opens a moment before the ready line
        while "Server is ready" not in srv.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.stop() == 0
        lines = [ln for ln in srv.log_text().splitlines() if ln.strip()]
        msgs = messages(lines)
        # nats-server's Git line carries its commit; the banner's field names are what matter
        shapes[name] = [shape(m) for m in msgs]
    assert shapes["ours"] == shapes["ref"]
    assert shapes["ours"].index("Listening for client connections on N.N.N.N:N") \
        < shapes["ours"].index("Server is ready")
    assert shapes["ours"][-3:] == ['Trapped "terminated" signal', "Initiating Shutdown...", "Server Exiting.."]


def test_storage_directory_that_is_a_file_is_fatal(tmp_path):
    not_a_dir = tmp_path / "not_a_directory"
    not_a_dir.write_text("a file")
    results = {}
    for name, argv in (("ours", ours_argv()), ("ref", [nats_server_binary()])):
        code, err = run_to_exit(argv + ["-p", "-1", "-js", "-sd", str(not_a_dir)])
        fatal = [m for m in messages(err.splitlines()) if "[FTL]" in m or m.startswith("Can't start JetStream")]
        results[name] = (code, fatal)
    assert results["ours"] == results["ref"]
    assert results["ours"] == (1, ["Can't start JetStream: storage directory is not a directory"])


@pytest.mark.parametrize("busy", ["client", "monitor", "cluster"])
def test_a_port_already_in_use_is_one_fatal_line_and_exit_1(busy):
    ports = {"client": free_port(), "monitor": free_port(), "cluster": free_port()}
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[busy]))
    holder.listen()
    results = {}
    try:
        for name, argv in (("ours", ours_argv()), ("ref", [nats_server_binary()])):
            code, err = run_to_exit(argv + ["-a", "127.0.0.1", "-p", str(ports["client"]), "-m",
                                            str(ports["monitor"]), "--cluster", f"nats://127.0.0.1:{ports['cluster']}"])
            fatal = [m.group(4) for m in map(LINE.match, err.splitlines()) if m and m.group(3) == "FTL"]
            results[name] = (code, fatal)
    finally:
        holder.close()
    assert results["ours"] == results["ref"]
    code, fatal = results["ours"]
    assert code == 1 and len(fatal) == 1 and "bind: address already in use" in fatal[0]
    assert f"127.0.0.1:{ports[busy]}" in fatal[0]


def test_storage_directory_is_created_at_startup(tmp_path):
    store = tmp_path / "fresh" / "store"
    srv = our_server(tmp_path, "-js", "-sd", str(store), jetstream=False).start()
    try:
        assert (store / "jetstream").is_dir()  # before any stream exists, as nats-server does
    finally:
        srv.stop()


@pytest.mark.parametrize("text", [
    "port 4222 extra",
    '{\n  "port": : "invalid syntax"\n}',
    "{\n port: 4222 extra\n}\n",
    "port: 1\n  x = { \n",
    "a: [1,,2]\n",
    "a: 1.\n",
    'a: "\\q"\n',
    "port:\n4222",
    "port: 99999999999999999999\n",
    "x = 1\nport = $nope\n",
    "include nothere.conf\n",
    "port",
    "port:",
    "port =",
    "0 \u00b9",  # a superscript is no digit to nats-server: a key "0" with a string value
    "a: \u0663\n",  # an Arabic-Indic digit starts a number, which then is no integer
])
def test_config_syntax_errors_read_like_nats_server(tmp_path, text):
    path = tmp_path / "bad.conf"
    path.write_text(text)
    out = {}
    for name, argv in (("ours", ours_argv()), ("ref", [nats_server_binary()])):
        proc = subprocess.run(argv + ["-c", str(path)], capture_output=True, timeout=30, cwd=tmp_path)
        first = proc.stderr.decode().splitlines()[0]
        out[name] = (proc.returncode, first)
    assert out["ours"] == out["ref"]
    assert out["ours"][0] == 1


def test_advertised_client_addresses_are_the_interface_addresses(tmp_path):
    """Listening on every interface, a clustered node offers clients each global unicast
    address of the host (loopback and link-local left out), exactly as nats-server does."""
    advertised = {}
    for name, argv in (("ours", ours_argv()), ("ref", [nats_server_binary()])):
        c1, c2, r1, r2 = (free_port() for _ in range(4))
        procs = []
        try:
            for cport, rport, peer in ((c1, r1, r2), (c2, r2, r1)):
                procs.append(subprocess.Popen(
                    argv + ["-a", "0.0.0.0", "-p", str(cport), "--cluster", f"nats://127.0.0.1:{rport}",
                            "--cluster_name", "natspy", "--routes", f"nats://127.0.0.1:{peer}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
            urls = []
            wait_port(c1)
            with socket.create_connection(("127.0.0.1", c1), timeout=20) as s:
                s.settimeout(20)
                buf = b""
                # the route comes up after the client listener: INFO updates carry the peer
                s.sendall(b'CONNECT {"verbose":false,"protocol":1}\r\nPING\r\n')
                while not any(f":{c2}" in u for u in urls):
                    chunk = s.recv(65536)
                    assert chunk, "connection closed before the peer's URL arrived"
                    buf += chunk
                    for line in buf.split(b"\r\n"):
                        if line.startswith(b"INFO "):
                            urls = json.loads(line[5:]).get("connect_urls", urls)
            advertised[name] = sorted(u.rsplit(":", 1)[0] for u in urls if u.endswith(f":{c1}"))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
    assert advertised["ours"] == advertised["ref"]
    for host in advertised["ours"]:
        ip = ipaddress.ip_address(host.strip("[]"))
        assert not ip.is_loopback and not ip.is_link_local


def test_sigterm_while_starting_is_a_clean_stop(tmp_path):
    """nats.py's harness may terminate a node as soon as its port opens; with JetStream and
    monitoring still starting, the process must still stop cleanly (exit 0, no traceback)."""
    for i in range(3):
        port = free_port()
        proc = start(ours_argv() + ["-a", "127.0.0.1", "-p", str(port), "-m", str(free_port()),
                                    "-js", "-sd", str(tmp_path / f"store{i}")])
        wait_port(port, proc)
        err = stop(proc)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert messages([ln for ln in err.splitlines() if ln.strip()])[-1] == "Server Exiting.."


def test_info_carries_the_api_level(tmp_path):
    """nats-server's INFO has api_lvl even without JetStream (clients read it to know which
    JetStream API features to use); the same keys, bar the xkey we do not generate."""
    infos = {}
    for name, make in (("ours", our_server), ("ref", reference)):
        srv = make(tmp_path, jetstream=False, name=name).start()
        try:
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.settimeout(10)
                buf = b""
                while not buf.endswith(b"\r\n"):
                    buf += s.recv(4096)
            infos[name] = json.loads(buf[5:])
        finally:
            srv.stop()
    assert infos["ours"]["api_lvl"] == infos["ref"]["api_lvl"]
    assert set(infos["ours"]) == set(infos["ref"]) - {"xkey"}


def test_tls_handshake_first_from_config(tmp_path):
    """tls { handshake_first: true }: the TLS handshake comes before the INFO, which then
    travels encrypted (nats.py's connect(tls_handshake_first=True)); same as nats-server."""
    import asyncio
    import ssl

    import nats

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))
    conf = tmp_path / "first.conf"
    conf.write_text(f'tls {{\n  cert_file: "{cert_path}"\n  key_file: "{key_path}"\n  handshake_first: true\n}}\n')

    async def roundtrip(port: int):
        ctx = ssl.create_default_context(cafile=str(ca_path))
        nc = await nats.connect(f"nats://127.0.0.1:{port}", tls=ctx, tls_handshake_first=True,
                                allow_reconnect=False)
        sub = await nc.subscribe("first")
        await nc.publish("first", b"encrypted from the start")
        msg = await sub.next_msg(timeout=5)
        required = nc._server_info.get("tls_required")
        await nc.close()
        return msg.data, required

    def first_bytes(port: int) -> bytes:
        ctx = ssl.create_default_context(cafile=str(ca_path))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return s.recv(5)

    results = {}
    for name, make in (("ours", our_server), ("ref", reference)):
        srv = make(tmp_path, "-c", str(conf), jetstream=False, name=name).start()
        try:
            results[name] = (asyncio.run(roundtrip(srv.port)), first_bytes(srv.port))
        finally:
            srv.stop()
    assert results["ours"] == results["ref"]
    assert results["ours"] == ((b"encrypted from the start", True), b"INFO ")


@pytest.mark.parametrize("extra,expected", [
    (["--cluster_name", "c"], (1, "", "nats-server: jetstream cluster requires `server_name` to be set")),
    (["-n", "a"], (1, "", "nats-server: jetstream cluster requires `cluster.name` to be set")),
    (["-n", "a", "--cluster_name", "c"],
     (1, "Can't start JetStream: JetStream cluster requires configured routes or solicited leafnode for the "
         "system account", "")),
])
def test_clustered_jetstream_startup_requirements_match_nats_server(tmp_path, extra, expected):
    """Clustered JetStream needs a server name, a cluster name and configured routes."""
    results = {}
    for name, argv in (("ours", ours_argv()), ("ref", [nats_server_binary()])):
        code, err = run_to_exit(argv + ["-p", "-1", "-js", "-sd", str(tmp_path / name),
                                        "--cluster", f"nats://127.0.0.1:{free_port()}"] + extra)
        usage = [ln for ln in err.splitlines() if ln.startswith("nats-server: ")]
        fatal = [] if usage else [m for m in messages(err.splitlines()) if m.startswith("Can't start JetStream")]
        results[name] = (code, fatal[0] if fatal else "", usage[0] if usage else "")
    assert results["ours"] == results["ref"] == expected
