"""Core benchmark: our broker next to the real nats-server, one load generator for both.

    python bench/core_bench.py [--seconds N] [--repeat N] [--only NAME[,NAME..]]
                               [--conns N] [--subs N] [--servers nats,ours] [--ours-root DIR]

Starts nats-server and our server (`python -m broker`), each as its own process on a free
loopback port, runs every scenario against both with the same load generator
(bench/loadgen.py: raw sockets, precomputed frames, one OS process per role) and prints
scenario | nats-server msgs/s | ours msgs/s | ratio, then resident memory (VmRSS) of
each server with 10,000 idle connections and with 100,000 subscriptions.

Scenarios (names for --only):
  pub16      publish only, 16 B payload; rate = messages the server acknowledged (the
             publisher sends PING after every batch and counts PONGs)
  pubsub16   publisher -> 1 subscriber, 16 B; rate = messages delivered to the subscriber
  pubsub1k   publisher -> 1 subscriber, 1 KiB
  pubsub4    publisher -> 4 subscribers (4 connections), 16 B; rate = deliveries summed
  rr1        request-reply, 1 request in flight; rate = round trips
  rr50       request-reply, 50 requests in flight
  memconns   RSS with --conns idle connections (default 10,000), each server fresh
  memsubs    RSS with --subs subscriptions over 10 connections (default 100,000), fresh

The machine has 2 cores shared by the server and the generator; the CPU columns show
server and generator CPU use (1.00 = one full core) so a generator-bound run is visible.
It never runs in the test suite; tests/bench/test_bench_smoke.py only checks the
generator works against our server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402  (bench/ is not a package)

THROUGHPUT = ["pub16", "pubsub16", "pubsub1k", "pubsub4", "rr1", "rr50"]
MEMORY = ["memconns", "memsubs"]
TITLES = {
    "pub16": "publish only, 16 B",
    "pubsub16": "pub -> 1 sub, 16 B",
    "pubsub1k": "pub -> 1 sub, 1 KiB",
    "pubsub4": "pub -> 4 subs, 16 B",
    "rr1": "request-reply, 1 in flight",
    "rr50": "request-reply, 50 in flight",
}
TARGET = ("pubsub16", 0.25)


# ---- server processes ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """The real nats-server executable (skipping a pyenv shim, which is a shell script)."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "nats-server"), shutil.which("nats-server")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            with open(c, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return c
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found on PATH")
    return found


class Server:
    def __init__(self, kind: str, logdir: Path, root: Path = ROOT):
        self.kind = kind
        self.logdir = logdir
        self.root = root  # for ours: the source tree whose `broker` package runs
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def label(self) -> str:
        return "nats-server" if self.kind == "nats" else "ours"

    def argv(self) -> list[str]:
        head = [nats_server_binary()] if self.kind == "nats" else [sys.executable, "-m", "broker"]
        return head + ["-a", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> "Server":
        self.stop()
        self.port = free_port()
        self.starts += 1
        log = open(self.logdir / f"{self.kind}-{self.starts}.log", "wb")
        env = dict(os.environ)
        if self.kind == "ours":
            env["PYTHONPATH"] = os.pathsep.join([str(self.root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.label} exited at start (code {self.proc.returncode}); "
                                 f"see {self.logdir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.settimeout(5)
                    if s.recv(4096).startswith(b"INFO"):
                        break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit(f"{self.label} did not open port {self.port}")
        time.sleep(0.3)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# ---- scenarios ---------------------------------------------------------------------------------

def run_throughput(name: str, srv: Server, seconds: float, warmup: float) -> loadgen.Result:
    kw = dict(seconds=seconds, warmup=warmup, server_pid=srv.pid, name=name)
    if name == "pub16":
        return loadgen.pub_sub(srv.port, size=16, nsubs=0, **kw)
    if name == "pubsub16":
        return loadgen.pub_sub(srv.port, size=16, nsubs=1, **kw)
    if name == "pubsub1k":
        return loadgen.pub_sub(srv.port, size=1024, nsubs=1, **kw)
    if name == "pubsub4":
        return loadgen.pub_sub(srv.port, size=16, nsubs=4, **kw)
    if name == "rr1":
        return loadgen.request_reply(srv.port, inflight=1, **kw)
    if name == "rr50":
        return loadgen.request_reply(srv.port, inflight=50, **kw)
    raise ValueError(name)


def run_memory(name: str, srv: Server, conns: int, subs: int) -> dict:
    srv.start()  # fresh process for each memory measurement
    try:
        baseline = loadgen.rss_kib(srv.pid)
        measure = lambda: loadgen.rss_kib(srv.pid)  # noqa: E731
        if name == "memconns":
            held, rss, errors = loadgen.hold_connections(srv.port, conns, measure)
        else:
            held, rss, errors = loadgen.hold_subscriptions(srv.port, subs, 10, measure)
        return {"baseline_kib": baseline, "rss_kib": rss, "held": held, "errors": errors,
                "alive": srv.alive()}
    finally:
        srv.stop()


def startup_pth_files() -> list[str]:
    """The .pth files of this interpreter's site-packages that run code at every start (lines
    beginning with `import`): they add to any Python process's resident memory."""
    import site
    out = []
    for d in site.getsitepackages():
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".pth"))
        except OSError:
            continue
        for n in names:
            try:
                text = Path(d, n).read_text(errors="replace")
            except OSError:
                continue
            if any(line.startswith(("import ", "import\t")) for line in text.splitlines()):
                out.append(n)
    return out


def memory_conditions(root: Path) -> str:
    """Compile our packages' bytecode first, as a server's first start writes it (unless
    PYTHONDONTWRITEBYTECODE is set) and a regular pip install does: the fresh-server figure is
    then that of every later start, not of one that also compiles every module. Says so, and
    which interpreter and start-up .pth files the figure includes."""
    import compileall
    ok = all(compileall.compile_dir(str(root / pkg), quiet=2) for pkg in ("broker", "cluster", "raft"))
    venv = sys.prefix != sys.base_prefix
    pth = startup_pth_files()
    return (f"memory: ours runs on {sys.executable} ({'a venv' if venv else 'not a venv'}); "
            f"bytecode of broker/, cluster/, raft/ {'compiled' if ok else 'NOT all compiled'} first "
            f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}); "
            f".pth files importing at start-up: {', '.join(pth) if pth else 'none'}")


def median_result(rs: list[loadgen.Result]) -> loadgen.Result:
    """The run with the median rate (its CPU numbers belong to that same run)."""
    ordered = sorted(rs, key=lambda r: r.msgs_per_s)
    med = ordered[(len(ordered) - 1) // 2]
    med.errors = sum(r.errors for r in rs)
    med.extra["all_rates"] = [r.msgs_per_s for r in rs]
    return med


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}"


def fmt_mib(kib: int) -> str:
    return f"{kib / 1024:,.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring window per scenario per server")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds; every round runs each scenario on both servers, the table shows medians")
    ap.add_argument("--warmup", type=float, default=0.5, help="warm-up before each window")
    ap.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    ap.add_argument("--conns", type=int, default=10_000, help="idle connections for memconns")
    ap.add_argument("--subs", type=int, default=100_000, help="subscriptions for memsubs")
    ap.add_argument("--servers", default="nats,ours", help="which servers (nats,ours)")
    ap.add_argument("--ours-root", type=Path, default=ROOT,
                    help="source tree to run our server from (A/B-test a change in a copy of the tree)")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or THROUGHPUT + MEMORY
    unknown = [n for n in names if n not in THROUGHPUT + MEMORY]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {THROUGHPUT + MEMORY}")
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]

    # children (servers and generator processes) inherit the raised descriptor limit
    nofile = loadgen.raise_nofile(max(args.conns, 1024) + 1024)
    logdir = Path(tempfile.mkdtemp(prefix="core-bench-"))
    servers = {k: Server(k, logdir, args.ours_root.resolve()) for k in kinds}
    print(f"# {os.cpu_count()} CPUs, load average {loadavg()} at start; {args.seconds:g}s window "
          f"(+{args.warmup:g}s warm-up) per run, {args.repeat} round(s), median shown; "
          f"RLIMIT_NOFILE {nofile}; nats-server = {nats_server_binary()}; ours from {args.ours_root}; "
          f"logs in {logdir}", flush=True)

    runs: dict[str, dict[str, list[loadgen.Result]]] = {}
    memory: dict[str, dict[str, dict]] = {}
    t_start = time.monotonic()
    try:
        tp = [n for n in names if n in THROUGHPUT]
        if tp:
            for srv in servers.values():
                srv.start()
            for rnd in range(max(1, args.repeat)):
                for name in tp:
                    for kind, srv in servers.items():
                        if not srv.alive():
                            print(f"  ({srv.label} died; restarting it, see {logdir})", flush=True)
                            srv.start()
                        res = run_throughput(name, srv, args.seconds, args.warmup)
                        runs.setdefault(name, {}).setdefault(kind, []).append(res)
                        print(f"  [{rnd + 1}] {TITLES[name]:<28} {srv.label:<12} {fmt_rate(res.msgs_per_s):>12}"
                              f" msgs/s  server cpu {res.server_cpu:4.2f}  gen cpu {res.gen_cpu:4.2f}"
                              + (f"  ERRORS {res.errors}" if res.errors else ""), flush=True)
            for srv in servers.values():
                srv.stop()
        if "ours" in servers and any(n in MEMORY for n in names):
            print("  " + memory_conditions(args.ours_root.resolve()), flush=True)
        for name in (n for n in names if n in MEMORY):
            memory[name] = {}
            for kind, srv in servers.items():
                m = run_memory(name, srv, args.conns, args.subs)
                memory[name][kind] = m
                print(f"  {name:<30} {srv.label:<12} baseline {fmt_mib(m['baseline_kib'])}, "
                      f"with {m['held']:,} -> {fmt_mib(m['rss_kib'])}"
                      + (f"  ERRORS {m['errors']}" if m["errors"] else "")
                      + ("" if m["alive"] else "  (server died)"), flush=True)
    finally:
        for srv in servers.values():
            srv.stop()

    results = {name: {kind: median_result(rs) for kind, rs in by.items()} for name, by in runs.items()}
    print(f"\n# load average {loadavg()} at end (other work on this machine skews absolute numbers; "
          f"both servers are measured interleaved under the same conditions)\n")
    print_table(results, memory, kinds, args)
    print(f"\n(total {time.monotonic() - t_start:.0f}s)")
    return 0


def print_table(results, memory, kinds, args) -> None:
    both = "nats" in kinds and "ours" in kinds
    if results:
        hdr = f"| {'scenario':<30} | {'nats-server msgs/s':>18} | {'ours msgs/s':>12} | {'ratio':>6} |" \
              f" {'cpu srv/gen (nats)':>18} | {'cpu srv/gen (ours)':>18} | {'ratio per srv CPU-s':>19} |"
        print(hdr)
        print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
        for name, by in results.items():
            n = by.get("nats")
            o = by.get("ours")
            ratio = f"{o.msgs_per_s / n.msgs_per_s:.3f}" if n and o and n.msgs_per_s else "-"
            eff = (f"{(o.msgs_per_s / o.server_cpu) / (n.msgs_per_s / n.server_cpu):.3f}"
                   if n and o and n.msgs_per_s and n.server_cpu and o.server_cpu else "-")
            cpu = lambda r: f"{r.server_cpu:.2f}/{r.gen_cpu:.2f}" if r else "-"  # noqa: E731
            err = " (errors!)" if (n and n.errors) or (o and o.errors) else ""
            print(f"| {TITLES[name] + err:<30} | {fmt_rate(n.msgs_per_s) if n else '-':>18} |"
                  f" {fmt_rate(o.msgs_per_s) if o else '-':>12} | {ratio:>6} | {cpu(n):>18} | {cpu(o):>18} |"
                  f" {eff:>19} |")
        print("(cpu: CPU seconds per wall second, 1.00 = one core; 'ratio per srv CPU-s' compares msgs per "
              "server CPU-second, which is less sensitive to other load on the machine)")
        if any(len(r.extra.get("all_rates", [])) > 1 for by in results.values() for r in by.values()):
            print("spread over rounds (min..max msgs/s):")
            for name, by in results.items():
                cells = []
                for k in ("nats", "ours"):
                    r = by.get(k)
                    if r is not None and r.extra.get("all_rates"):
                        rates = r.extra["all_rates"]
                        cells.append(f"{'nats-server' if k == 'nats' else 'ours'} "
                                     f"{fmt_rate(min(rates))}..{fmt_rate(max(rates))}")
                print(f"  {TITLES[name]:<30} " + ";  ".join(cells))
        name, want = TARGET
        if both and name in results:
            r = results[name]["ours"].msgs_per_s / max(1.0, results[name]["nats"].msgs_per_s)
            print(f"\ntarget {TITLES[name]} >= {want}x nats-server: {r:.3f}x -> "
                  f"{'MET' if r >= want else 'NOT MET'}")
    if memory:
        print()
        hdr = f"| {'memory (VmRSS)':<34} | {'nats-server':>24} | {'ours':>24} |"
        print(hdr)
        print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
        for name, by in memory.items():
            what = f"{args.conns:,} idle connections" if name == "memconns" else \
                f"{args.subs:,} subscriptions (10 conns)"
            for row, key in (("fresh server", "baseline_kib"), (what, "rss_kib")):
                cells = []
                for k in ("nats", "ours"):
                    m = by.get(k)
                    if m is None:
                        cells.append("-")
                    elif key == "rss_kib" and m["held"] < (args.conns if name == "memconns" else args.subs):
                        cells.append(f"{fmt_mib(m[key])} (only {m['held']:,})")
                    else:
                        cells.append(fmt_mib(m[key]))
                print(f"| {row:<34} | {cells[0]:>24} | {cells[1]:>24} |")
            per = []
            for k in ("nats", "ours"):
                m = by.get(k)
                if m and m["held"]:
                    per.append(f"{(m['rss_kib'] - m['baseline_kib']) * 1024 / m['held']:,.0f} B each")
                else:
                    per.append("-")
            unit = "per connection" if name == "memconns" else "per subscription"
            print(f"| {'  increase ' + unit:<34} | {per[0]:>24} | {per[1]:>24} |")


if __name__ == "__main__":
    sys.exit(main())
