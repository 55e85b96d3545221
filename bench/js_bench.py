"""JetStream benchmark: our server vs nats-server in the same run, same load generator.

Scenarios (file storage, 16-byte payloads, one stream `BENCH` on `bench.>`):
  sync        one publish at a time, wait for each PubAck
  pipelined   1,000 publishes in flight, a new one sent per PubAck received
  pull        a pull consumer (ack none) draining the stream with batches of 1,000
  pull+ack    a pull consumer with explicit acks (max_ack_pending 1,000, two requests of 500
              outstanding), every delivery acked by the generator as it arrives
  push        a push consumer (ack none, no flow control) draining the stream
  push+ack    a push consumer with explicit acks (max_ack_pending 1,000), every delivery acked
Servers: ours (`python -m broker -js`, fsync before every ack), nats-server -js with its
default lazy fsync, and nats-server with `jetstream { sync_interval: always }`.
Afterwards it times fdatasync after a small append on the same filesystem: with one
publish in flight and an fsync before each ack, 1/mean fsync latency is the ceiling.

The load generator is a separate process speaking the raw protocol: precomputed PUB
frames with fixed-width reply subjects; replies are counted by scanning for the `MSG `
token, never parsed. It reports its own CPU time so a saturated generator shows up.

    python bench/js_bench.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECT = (b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
           b'"lang":"bench","protocol":1}\r\n')
PAYLOAD = b"x" * 16
INFLIGHT = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.recv(65536)  # INFO
    s.sendall(CONNECT + b"PING\r\n")
    buf = b""
    while b"PONG\r\n" not in buf:
        buf += s.recv(65536)
    return s


def request(s: socket.socket, subject: str, body: bytes, inbox: str = "_INBOX.setup") -> bytes:
    s.sendall(f"SUB {inbox} 99\r\nPUB {subject} {inbox} {len(body)}\r\n".encode() + body + b"\r\n")
    buf = b""
    while True:
        buf += s.recv(65536)
        i = buf.find(b"MSG " + inbox.encode())
        if i >= 0:
            head_end = buf.find(b"\r\n", i)
            if head_end > 0:
                n = int(buf[i:head_end].split()[-1])
                if len(buf) >= head_end + 2 + n:
                    s.sendall(f"UNSUB 99\r\n".encode())
                    return buf[head_end + 2: head_end + 2 + n]


def pong(s: socket.socket, data: bytes) -> None:
    """Answer server PINGs (a PING can not occur inside our frames)."""
    if b"PING\r\n" in data:
        s.sendall(b"PONG\r\n" * data.count(b"PING\r\n"))


class Counter:
    """Counts occurrences of a token in a byte stream split into arbitrary chunks."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self.tail = b""
        self.n = 0

    def feed(self, data: bytes) -> int:
        chunk = self.tail + data
        found = chunk.count(self.token)
        self.n += found
        self.tail = chunk[-(len(self.token) - 1):]
        return found


def _sync(port: int, seconds: float, q) -> None:
    s = connect(port)
    s.sendall(b"SUB _INBOX.s.* 1\r\n")
    frame = f"PUB bench.s _INBOX.s.1 {len(PAYLOAD)}\r\n".encode() + PAYLOAD + b"\r\n"
    counter = Counter(b"MSG _INBOX.s.")
    errors = Counter(b'"error"')
    t0 = time.perf_counter()
    end = t0 + seconds
    done = 0
    while time.perf_counter() < end:
        s.sendall(frame)
        while counter.n == done:
            data = s.recv(65536)
            counter.feed(data)
            errors.feed(data)
            pong(s, data)
        done = counter.n
    q.put((done, time.perf_counter() - t0, errors.n, time.process_time()))


def _pipelined(port: int, seconds: float, q) -> None:
    s = connect(port)
    s.sendall(b"SUB _INBOX.p.* 1\r\n")
    frames = [f"PUB bench.p _INBOX.p.{i:04d} {len(PAYLOAD)}\r\n".encode() + PAYLOAD + b"\r\n"
              for i in range(INFLIGHT)]
    counter = Counter(b"MSG _INBOX.p.")
    errors = Counter(b'"error"')
    s.sendall(b"".join(frames))
    sent = INFLIGHT
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        data = s.recv(1 << 20)
        got = counter.feed(data)
        errors.feed(data)
        pong(s, data)
        if got:
            s.sendall(b"".join(frames[(sent + k) % INFLIGHT] for k in range(got)))
            sent += got
    elapsed = time.perf_counter() - t0
    q.put((counter.n, elapsed, errors.n, time.process_time()))


ACK_REPLY = re.compile(rb"MSG \S+ \S+ (\$JS\.ACK\.\S+) \d+\r\n")


class Acker:
    """Turns deliveries (a byte stream split anywhere) into one empty ack PUB per message."""

    def __init__(self) -> None:
        self.tail = b""

    def acks(self, data: bytes) -> list[bytes]:
        buf = self.tail + data
        last = 0
        out = []
        for m in ACK_REPLY.finditer(buf):  # payloads are b"x" * 16: no false matches
            out.append(b"PUB %b 0\r\n\r\n" % m.group(1))
            last = m.end()
        self.tail = buf[last:][-256:] if out else buf[-256:]
        return out


def _pull(port: int, seconds: float, total: int, ack: bool, q) -> None:
    """A pull consumer draining the stream with two requests outstanding: ack none with
    batches of 1,000, or with `ack` explicit acks (nats-server's default max_ack_pending of
    1,000, batches of 500), every delivery acked (an empty PUB to its reply) as it arrives."""
    s = connect(port)
    name, batch = ("A", 500) if ack else ("C", 1000)
    cfg = {"stream_name": "BENCH", "config": {"durable_name": name, "name": name,
                                              "ack_policy": "explicit" if ack else "none",
                                              "deliver_policy": "all", "max_waiting": 512}}
    request(s, f"$JS.API.CONSUMER.CREATE.BENCH.{name}", json.dumps(cfg).encode())
    s.sendall(b"SUB _INBOX.pull 2\r\n")
    req = json.dumps({"batch": batch, "expires": 5_000_000_000}).encode()
    frame = f"PUB $JS.API.CONSUMER.MSG.NEXT.BENCH.{name} _INBOX.pull {len(req)}\r\n".encode() + req + b"\r\n"
    counter = Counter(f" $JS.ACK.BENCH.{name}.".encode())  # deliveries: reply = ack subject
    acker = Acker()
    s.sendall(frame * 2)  # two requests outstanding keep the pipe full
    requested = 2 * batch
    t0 = time.perf_counter()
    end = t0 + seconds
    while counter.n < total and time.perf_counter() < end:
        data = s.recv(1 << 20)
        counter.feed(data)
        pong(s, data)
        out = acker.acks(data) if ack else []
        while counter.n + batch >= requested and requested < total + batch:
            out.append(frame)
            requested += batch
        if out:
            s.sendall(b"".join(out))
    q.put((counter.n, time.perf_counter() - t0, 0, time.process_time()))


def _push(port: int, seconds: float, total: int, ack: bool, q) -> None:
    """A push consumer (deliver subject, no flow control) draining the stream; with `ack`
    its ack policy is explicit (max_ack_pending 1,000) and every delivery is acked."""
    s = connect(port)
    name = "PA" if ack else "P"
    cfg = {"stream_name": "BENCH", "config": {"durable_name": name, "ack_policy": "explicit" if ack else "none",
                                              "deliver_policy": "all", "deliver_subject": f"push.{name}"}}
    body = json.dumps(cfg).encode()  # not request(): deliveries start before its reply is read
    s.sendall(f"SUB push.{name} 3\r\nPUB $JS.API.CONSUMER.CREATE.BENCH.{name} _INBOX.create {len(body)}\r\n".encode()
              + body + b"\r\n")
    counter = Counter(b"MSG bench.")
    acker = Acker()
    t0 = time.perf_counter()
    end = t0 + seconds
    while counter.n < total and time.perf_counter() < end:
        data = s.recv(1 << 20)
        counter.feed(data)
        pong(s, data)
        out = acker.acks(data) if ack else None
        if out:
            s.sendall(b"".join(out))
    q.put((counter.n, time.perf_counter() - t0, 0, time.process_time()))


def fsync_probe(directory: str, rounds: int = 2000) -> dict:
    """What one publish in flight is bounded by: the latency of an fdatasync after a small
    append (a 16-byte message's record), on the filesystem the stores use."""
    path = os.path.join(directory, "fsync_probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    record = b"r" * 64
    lat = []
    try:
        off = 0
        for _ in range(rounds):
            os.pwrite(fd, record, off)
            off += len(record)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    mean = sum(lat) / len(lat)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    return {"n": len(lat), "mean_us": mean * 1e6, "p50_us": pick(0.5), "p90_us": pick(0.9),
            "p99_us": pick(0.99), "max_us": lat[-1] * 1e6, "ceiling_per_s": 1 / mean}


def run_in_process(target, *args) -> tuple[int, float, int, float]:
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=target, args=(*args, q))
    p.start()
    result = q.get(timeout=600)
    p.join(30)
    return result


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def bench_server(name: str, argv: list[str], port: int, seconds: float) -> dict:
    log = open(os.path.join(tempfile.gettempdir(), f"js_bench_{name}.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port)
        s = connect(port)
        resp = request(s, "$JS.API.STREAM.CREATE.BENCH",
                       json.dumps({"name": "BENCH", "subjects": ["bench.>"], "storage": "file"}).encode())
        assert b'"error"' not in resp, resp
        out = {}
        for scenario, target in (("sync", _sync), ("pipelined", _pipelined)):
            cpu0 = cpu_of(proc.pid)
            print(f"  {name}: {scenario} ...", file=sys.stderr, flush=True)
            n, elapsed, errs, gen_cpu = run_in_process(target, port, seconds)
            out[scenario] = {"rate": n / elapsed, "errors": errs,
                             "server_cpu": (cpu_of(proc.pid) - cpu0) / elapsed, "gen_cpu": gen_cpu / elapsed}
        info = json.loads(request(s, "$JS.API.STREAM.INFO.BENCH", b""))
        total = info["state"]["messages"]
        cpu0 = cpu_of(proc.pid)
        print(f"  {name}: pull of {total} ...", file=sys.stderr, flush=True)
        n, elapsed, _, gen_cpu = run_in_process(_pull, port, seconds * 3, total, False)
        out["pull"] = {"rate": n / elapsed, "errors": 0, "server_cpu": (cpu_of(proc.pid) - cpu0) / elapsed,
                       "gen_cpu": gen_cpu / elapsed, "consumed": n, "stored": total}
        cpu0 = cpu_of(proc.pid)
        print(f"  {name}: pull with acks ...", file=sys.stderr, flush=True)
        n, elapsed, _, gen_cpu = run_in_process(_pull, port, seconds, total, True)
        out["pull+ack"] = {"rate": n / elapsed, "errors": 0, "server_cpu": (cpu_of(proc.pid) - cpu0) / elapsed,
                           "gen_cpu": gen_cpu / elapsed}
        for scenario, ack in (("push", False), ("push+ack", True)):
            cpu0 = cpu_of(proc.pid)
            print(f"  {name}: {scenario} ...", file=sys.stderr, flush=True)
            n, elapsed, _, gen_cpu = run_in_process(_push, port, seconds, total, ack)
            out[scenario] = {"rate": n / elapsed, "errors": 0, "server_cpu": (cpu_of(proc.pid) - cpu0) / elapsed,
                             "gen_cpu": gen_cpu / elapsed}
        s.close()
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    nats_bin = shutil.which("nats-server")
    if nats_bin is None:
        sys.exit("nats-server not on PATH")
    root = tempfile.mkdtemp(prefix="js_bench_")
    results = {}
    port = free_port()
    results["ours (fsync always)"] = bench_server(
        "ours", [sys.executable, "-m", "broker", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                 os.path.join(root, "ours")], port, args.seconds)
    port = free_port()
    results["nats-server default"] = bench_server(
        "nats", [nats_bin, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", os.path.join(root, "nats")],
        port, args.seconds)
    conf = os.path.join(root, "always.conf")
    with open(conf, "w") as f:
        f.write(f'jetstream {{ store_dir: "{os.path.join(root, "always")}", sync_interval: always }}\n')
    port = free_port()
    results["nats-server sync always"] = bench_server(
        "nats_always", [nats_bin, "-a", "127.0.0.1", "-p", str(port), "-c", conf], port, args.seconds)
    probe = fsync_probe(root)
    shutil.rmtree(root, ignore_errors=True)
    ours = results["ours (fsync always)"]
    print(f"{'server':<26}{'scenario':<11}{'msgs/s':>10}{'srv cpu':>9}{'gen cpu':>9}{'errors':>8}")
    for name, res in results.items():
        for scenario, r in res.items():
            print(f"{name:<26}{scenario:<11}{r['rate']:>10.0f}{r['server_cpu']:>9.2f}{r['gen_cpu']:>9.2f}"
                  f"{r['errors']:>8}")
    print()
    for ref in ("nats-server default", "nats-server sync always"):
        ratios = ", ".join(f"{sc} {ours[sc]['rate'] / results[ref][sc]['rate']:.2f}x" for sc in ours)
        print(f"ours / {ref}: {ratios}")
    print()
    print(f"fdatasync after a 64-byte append ({probe['n']} rounds, store filesystem): "
          f"mean {probe['mean_us']:.0f} us, p50 {probe['p50_us']:.0f}, p90 {probe['p90_us']:.0f}, "
          f"p99 {probe['p99_us']:.0f}, max {probe['max_us']:.0f}")
    print(f"  one publish in flight with fsync before its ack can not beat 1/mean = "
          f"{probe['ceiling_per_s']:.0f} msgs/s (ours sync: {ours['sync']['rate'] / probe['ceiling_per_s']:.2f} of it)")


if __name__ == "__main__":
    main()
