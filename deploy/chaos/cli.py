"""nats-chaos: load a NATS cluster, fault it on a seeded schedule, heal it, and check that
nothing acknowledged was lost.

Exit status: 0 every count is zero, 1 an anomaly was found, 2 the run could not be set up
or the cluster never became healthy again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

from deploy.chaos import nemesis, report, workload
from deploy.chaos.cluster import ComposeCluster, LocalCluster, UrlCluster, cleanup_dir
from deploy.chaos.lazyfs import available as fuse_available

EPILOG = """\
fault kinds (--kinds; default: every kind the target supports):
{kinds}

examples:
  nats-chaos --server nats-server --seconds 60 --seed 1
  nats-chaos --server "python3 -m broker" --seconds 60 --seed 1
  nats-chaos --server "python3 -m broker" --seconds 600 --warmup 130 --seed 2026 --out long.json
                                   # the long schedule: every fault kind, 10 minutes (same for nats-server)
  nats-chaos --server nats-server --kinds powerloss-all --seconds 40          # power loss only
  nats-chaos --compose --seconds 120                  # after deploy/cluster-up.sh
  nats-chaos --urls nats://10.0.0.1:4222,nats://10.0.0.2:4222 --seconds 120
  nats-chaos --server nats-server --seed 3 --seconds 600 --print-schedule

The local cluster runs three nodes; the route between every two nodes crosses a proxy of
the toxiproxy-API server in deploy/chaos (toxiproxy-python drives it). Power-loss faults
need FUSE (/dev/fuse, fusermount3, pyfuse3); without them they are skipped with the reason.
"""


def build_parser() -> argparse.ArgumentParser:
    kinds = "\n".join(f"  {k:<22}{desc} [{cap}]" for k, (desc, cap, _) in nemesis.FAULTS.items())
    ap = argparse.ArgumentParser(
        prog="nats-chaos", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Jepsen-style check that a NATS cluster loses nothing it acknowledged: a queue "
                    "workload (publishers with Nats-Msg-Id and retries into an R3 file stream, pull and "
                    "push durable consumers with AckSync) and a KV compare-and-set register run while a "
                    "seeded schedule of faults hits the cluster; after it heals, the whole stream is read, "
                    "the consumers drained, and every anomaly counted. Non-zero count -> exit 1.",
        epilog=EPILOG.format(kinds=kinds))
    target = ap.add_argument_group("target (exactly one)")
    tg = target.add_mutually_exclusive_group(required=True)
    tg.add_argument("--check", metavar="HISTORY",
                    help="no run: check a history written by --history again (table, --out JSON, exit status)")
    tg.add_argument("--server", metavar="CMD",
                    help='start a local three-node cluster of this server command, e.g. "nats-server" or '
                         '"python3 -m broker" (routes through proxies; process, network and power-loss faults)')
    tg.add_argument("--compose", action="store_true",
                    help="the running compose.yaml cluster on 127.0.0.1:4222-4224 (docker kill/pause/restart)")
    tg.add_argument("--urls", metavar="URL[,URL...]",
                    help="any running cluster; the test's clients reach each server through a proxy, so only "
                         "network faults apply")
    ap.add_argument("--seed", type=int, help="seed of the fault schedule and target choices (default: random, "
                                             "printed; the same seed gives the same schedule)")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the load and fault phase (default 60)")
    ap.add_argument("--kinds", metavar="K[,K...]",
                    help="fault kinds to use (default: all the target supports; 'none' for no faults)")
    ap.add_argument("--warmup", type=float, default=nemesis.WARMUP_S,
                    help=f"seconds of load before the first fault (default {nemesis.WARMUP_S:.0f})")
    ap.add_argument("--print-schedule", action="store_true", help="print the schedule for --seed and exit")
    ap.add_argument("--publishers", type=int, default=3, help="queue publishers (default 3)")
    ap.add_argument("--rate", type=float, default=20.0, help="publishes per second per publisher (default 20)")
    ap.add_argument("--kv-writers", type=int, default=2, help="KV compare-and-set writers (default 2)")
    ap.add_argument("--kv-rate", type=float, default=5.0, help="KV updates per second per writer (default 5)")
    ap.add_argument("--replicas", type=int, default=3, help="stream and consumer replicas (default 3)")
    ap.add_argument("--drain-timeout", type=float, default=120.0,
                    help="seconds to wait for recovery and for the consumers to finish (default 120)")
    ap.add_argument("--out", metavar="FILE", default="nats-chaos-report.json",
                    help="JSON report (default nats-chaos-report.json)")
    ap.add_argument("--history", metavar="FILE", help="also write the full recorded history (JSON)")
    ap.add_argument("--workdir", metavar="DIR", help="local cluster files (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the local cluster's workdir (logs, stores)")
    ap.add_argument("--server-style", choices=["auto", "conf", "flags"], default="auto",
                    help="how to configure --server nodes: a nats-server config file per node (conf) or "
                         "nats-server-style flags (flags: -n --cluster --routes --cluster_name -js -sd); "
                         "auto: conf when the command is nats-server")
    ap.add_argument("--sync-always", action="store_true",
                    help="conf style only: jetstream { sync_interval: always } (fsync every write)")
    ap.add_argument("--compose-project", metavar="NAME", help="COMPOSE_PROJECT_NAME of the compose cluster")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    return args


def log(*parts) -> None:
    print("nats-chaos:", *parts, file=sys.stderr, flush=True)


def choose_kinds(args, capabilities: set[str]) -> tuple[list[str], list[str]]:
    """(kinds to run, notes about kinds left out)."""
    notes = []
    supported = nemesis.kinds_for(capabilities)
    if args.kinds:
        wanted = [] if args.kinds == "none" else [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in nemesis.FAULTS]
        if unknown:
            raise SystemExit(f"nats-chaos: unknown fault kinds {unknown}; see --help")
    else:
        wanted = [k for k, (_, cap, _) in nemesis.FAULTS.items()
                  if cap in capabilities or (cap == "fuse" and args.server)]
    kinds = []
    for k in wanted:
        if k in supported:
            kinds.append(k)
        else:
            cap = nemesis.FAULTS[k][1]
            if cap == "fuse" and args.server:
                notes.append(f"skipping {k}: power loss needs FUSE: {fuse_available()[1]}")
            else:
                notes.append(f"skipping {k}: this target cannot inject '{cap}' faults")
    return kinds, notes


async def progress(rec, wl, nem, seconds: float, stop: asyncio.Event) -> None:
    for _ in range(1_000_000):
        try:
            await asyncio.wait_for(stop.wait(), 5)
            return
        except asyncio.TimeoutError:
            pass
        h = rec.h
        ok = sum(1 for p in h["publishes"] if p["outcome"] == "ok")
        per = {}
        for d in h["deliveries"]:
            per[d["consumer"]] = per.get(d["consumer"], 0) + 1
        kv_ok = sum(1 for o in h["kv_ops"] if o["outcome"] == "ok")
        phase = "load+faults" if rec.now() < seconds else "recover+drain"
        log(f"t={rec.now():6.1f}s/{seconds:.0f} [{phase}] published {ok} acked/{len(h['publishes'])} | "
            f"delivered pull {per.get('pull', 0)} push {per.get('push', 0)} | kv {kv_ok} ok/{len(h['kv_ops'])} | "
            f"fault: {nem.current}")


async def run(args, cluster, kinds: list[str], seed: int) -> int:
    schedule = nemesis.make_schedule(seed, args.seconds, kinds, warmup=args.warmup)
    meta = {"seed": seed, "seconds": args.seconds, "target": cluster.describe(), "kinds": kinds,
            "warmup": args.warmup, "schedule": schedule, "publishers": args.publishers, "rate": args.rate, "kv_writers": args.kv_writers,
            "kv_rate": args.kv_rate, "replicas": args.replicas, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
    log(f"target: {cluster.describe()}")
    log(f"seed {seed}: {len(schedule)} faults over {args.seconds:.0f}s: "
        + ", ".join(sorted({f['kind'] for f in schedule})) if schedule else f"seed {seed}: no faults")
    await cluster.setup()
    urls = cluster.urls()
    pin = isinstance(cluster, UrlCluster)
    ctl = await workload.connect(urls, "chaos-control", pin)
    js = ctl.jetstream(timeout=5)
    try:
        await workload.setup_streams(js, args.replicas, timeout=90)
    except RuntimeError as exc:
        log(f"setup failed: {exc}")
        await ctl.close()
        return 2
    rec = workload.Recorder(meta)
    wl = workload.Workload(rec, urls, publishers=args.publishers, rate=args.rate, kv_writers=args.kv_writers,
                           kv_rate=args.kv_rate, pin=pin)
    nem = nemesis.Nemesis(cluster, schedule, rec, lambda: workload.leaders(js))
    stop_progress = asyncio.Event()
    tasks = []
    status = 0
    try:
        t0 = time.monotonic()
        rec.t0 = t0
        consumers = [asyncio.create_task(wl.pull_consumer()), asyncio.create_task(wl.push_consumer())]
        producers = [asyncio.create_task(wl.publisher(p)) for p in range(1, args.publishers + 1)]
        producers += [asyncio.create_task(wl.kv_writer(w)) for w in range(1, args.kv_writers + 1)]
        tasks = consumers + producers
        nem_task = asyncio.create_task(nem.run(t0))
        tasks.append(nem_task)
        if not args.quiet:
            tasks.append(asyncio.create_task(progress(rec, wl, nem, args.seconds, stop_progress)))
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
        wl.stop_publishing.set()
        await nem_task  # every fault undone
        await asyncio.wait_for(asyncio.gather(*producers, return_exceptions=True), workload.RETRY_S + 10)
        rec.fault("load", "note", [], "publishers and KV writers stopped")

        # Recovery: streams and consumers led and current, then the consumers catch up.
        deadline = time.monotonic() + args.drain_timeout
        why = "not checked"
        while time.monotonic() < deadline:
            why = await workload.healthy(js, args.replicas)
            if why is None:
                break
            await asyncio.sleep(1)
        if why is not None:
            log(f"cluster not healthy {args.drain_timeout:.0f}s after the faults stopped: {why}")
            status = 2
        rec.fault("heal", "note", [], "cluster healthy" if why is None else f"not healthy: {why}")
        last: int | None = None
        try:
            last = (await workload.retry("stream info", lambda: js.stream_info(workload.STREAM),
                                         max(10.0, deadline - time.monotonic()), not_found_s=5)).state.last_seq
        except RuntimeError as exc:
            if workload.is_not_found(exc):
                last = 0
                rec.fault("stream", "note", [], "stream CHAOS no longer exists")
                log("stream CHAOS no longer exists after the faults")
            else:
                log(f"stream CHAOS unavailable: {exc}")
        while last is not None and time.monotonic() < deadline:
            try:
                if await workload.consumers_done(js, last):
                    break
            except Exception as exc:  # noqa: BLE001
                if workload.is_not_found(exc):
                    log(f"a durable consumer no longer exists: {workload.describe(exc)}")
                    break
            await asyncio.sleep(1)
        else:
            log("consumers did not finish before --drain-timeout")
        wl.stop_consuming.set()
        await asyncio.wait_for(asyncio.gather(*consumers, return_exceptions=True), 30)
        rec.fault("drain", "note", [], "consumers drained")

        # The whole stream and every KV revision (a stream that no longer exists holds
        # nothing; one that cannot be read is recorded as None: no verdict on its checks).
        read_s = max(60.0, args.drain_timeout / 2)
        rows = await read_or_none(rec, js, workload.STREAM, workload.SUBJECTS, read_s)
        rec.h["stream"] = None if rows is None else [[seq, data.decode(errors="replace")] for seq, data in rows]
        rows = await read_or_none(rec, js, workload.KV_STREAM, f"$KV.{workload.KV_BUCKET}.{workload.KV_KEY}", read_s)
        kv_hist = None if rows is None else []
        for seq, data in rows or []:
            try:
                body = json.loads(data)
                kv_hist.append([seq, body["v"], body.get("e")])
            except (ValueError, KeyError, TypeError):
                kv_hist.append([seq, data.decode(errors="replace"), None])
        rec.h["kv_history"] = kv_hist
    finally:
        stop_progress.set()
        wl.stop_publishing.set()
        wl.stop_consuming.set()
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wl.close()
        await ctl.close()

        if args.history:  # also after an error: the history so far can be re-checked
            with open(args.history, "w") as f:
                json.dump(rec.h, f)
            log(f"history written to {args.history}")
    return verdict(args, rec.h) or status


async def read_or_none(rec, js, stream: str, subject: str, timeout: float):
    try:
        return await workload.read_stream(js, stream, subject, timeout)
    except Exception as exc:  # noqa: BLE001 - no leader, timeouts: unreadable, not empty
        log(f"could not read stream {stream}: {exc}")
        rec.fault("read", "note", [], f"{stream} unreadable: {exc}")
        return None


def verdict(args, history: dict) -> int:
    """Print the table (and on failure the details), write the JSON report; 1 on failure."""
    result = report.build(history)
    print(report.table(result), flush=True)
    report.write_json(result, args.out)
    log(f"report written to {args.out}")
    if not result["ok"]:
        print(report.failure_details(result, history), flush=True)
        return 1
    return 0 if result["complete"] else 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)

    if args.check:
        with open(args.check) as f:
            history = json.load(f)
        return verdict(args, history)

    if args.print_schedule:
        caps = {"process", "network", "fuse"} if args.server else (
            ComposeCluster.capabilities if args.compose else UrlCluster.capabilities)
        kinds = [k for k in (args.kinds.split(",") if args.kinds and args.kinds != "none" else
                             ([] if args.kinds == "none" else nemesis.kinds_for(caps))) if k]
        for f in nemesis.make_schedule(seed, args.seconds, kinds, warmup=args.warmup):
            print(f"t={f['at']:7.2f}s  {f['kind']:<22} {f['duration']:5.2f}s  pick={f['pick']}")
        return 0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"nats-chaos-{seed}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    made_workdir = not args.workdir
    if args.server:
        power, reason = fuse_available()
        cluster = LocalCluster(args.server, workdir, power_loss=power, style=args.server_style,
                               sync_always=args.sync_always)
    elif args.compose:
        cluster = ComposeCluster(args.compose_project or os.environ.get("COMPOSE_PROJECT_NAME"))
    else:
        cluster = UrlCluster([u.strip() for u in args.urls.split(",") if u.strip()], workdir)
    kinds, notes = choose_kinds(args, cluster.capabilities)
    for n in notes:
        log(n)

    # SIGTERM ends the run like Ctrl-C: the cluster is torn down either way.
    def on_term(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return asyncio.run(run(args, cluster, kinds, seed))
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 2
    finally:
        cluster.close()
        signal.signal(signal.SIGTERM, previous)
        if made_workdir and not args.keep:
            cleanup_dir(workdir)
        elif args.server:
            log(f"workdir kept: {workdir}")


if __name__ == "__main__":
    sys.exit(main())
