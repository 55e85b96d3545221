"""Meta leader failover: how fast the JetStream API answers again after the meta leader dies.

Starts a fresh three-node cluster of each server (ours and nats-server, launched by
tests/jscluster/harness.py: every node configured with all three routes, JetStream on, names
n1..n3, cluster "jsc") for every round, rounds alternating the servers so both see the same
machine load, and measures per round:

  startup   process launch -> every node's /jsz agrees on a meta leader
  sigkill   SIGKILL of the meta leader -> next successful STREAM.CREATE through a survivor
            (a loop of creates, each with a fresh stream name and a short per-request
            timeout, default 250 ms); the node is then restarted and the cluster waited ready
  sigstop   the same after SIGSTOP of the meta leader (its sockets stay open); then SIGCONT
            and wait until the cluster is ready again
  noleader  (with --no-leader) SIGKILL of two nodes -> first answer of the survivor to a
            STREAM.CREATE sent every 250 ms over a raw client socket; records the exact
            frame, and how many answers one request gets (even rounds keep a follower alive,
            odd rounds the meta leader)

    python bench/meta_failover.py [--servers nats-server,ours] [--rounds 3]
                                  [--per-request 0.25] [--no-leader]

Prints every sample and a table of median/min/max per server with the ratio ours/nats-server
of the medians (lower is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.jscluster.harness import JSCluster, stream_config  # noqa: E402

MEASURES = ("startup", "sigkill", "sigstop")


async def create_until_ok(cl: JSCluster, via: str, prefix: str, per_request: float, limit: float,
                          t0_box: list) -> tuple[float, int]:
    """Loop STREAM.CREATE through `via` until one succeeds; returns (seconds since t0, tries).
    t0_box[0] is set by the caller right before the fault."""
    import nats.errors
    nc = await cl.connect(via)
    try:
        tries = 0
        while True:
            tries += 1
            name = f"{prefix}_{tries}"
            try:
                msg = await nc.request(f"$JS.API.STREAM.CREATE.{name}",
                                       json.dumps(stream_config(name)).encode(), timeout=per_request)
                if "error" not in json.loads(msg.data):
                    return time.monotonic() - t0_box[0], tries
            except (nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError):
                pass
            if time.monotonic() - t0_box[0] > limit:
                raise TimeoutError(f"no successful STREAM.CREATE within {limit}s")
    finally:
        await nc.close()


def fault_round(cl: JSCluster, fault: str, tag: str, per_request: float, limit: float) -> float:
    leader = cl.wait_ready()
    survivor = [n for n in cl.names() if n != leader][0]
    t0_box = [0.0]

    async def go():
        import nats
        nc = await cl.connect(survivor)  # connect before the fault, not timed
        await nc.close()
        t0_box[0] = time.monotonic()
        if fault == "sigkill":
            cl.kill(leader)
        else:
            cl.sigstop(leader)
        return await create_until_ok(cl, survivor, f"FO_{tag}_{fault}", per_request, limit, t0_box)

    try:
        took, _tries = asyncio.run(go())
    finally:
        cl.restore(timeout=60)
    return took


def no_leader_round(cl: JSCluster, keep: str = "follower", interval: float = 0.25, limit: float = 60.0,
                    linger: float = 3.0) -> dict:
    """Kill two nodes, keeping a follower (or the meta leader: keep="leader"); STREAM.CREATE
    every `interval` to the survivor over a raw socket."""
    leader = cl.wait_ready()
    survivor = leader if keep == "leader" else [n for n in cl.names() if n != leader][0]
    s = socket.create_connection(("127.0.0.1", cl.node(survivor).port))
    s.settimeout(0.02)
    buf = bytearray()

    def read_some():
        try:
            data = s.recv(65536)
            if data:
                buf.extend(data)
        except socket.timeout:
            pass

    def wait_for_bytes(token: bytes):
        deadline = time.monotonic() + 5
        while token not in buf:
            if time.monotonic() > deadline:
                raise TimeoutError(token)
            read_some()

    wait_for_bytes(b"\r\n")  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1}\r\n'
              b"SUB _INBOX.nl.* 1\r\nPING\r\n")
    wait_for_bytes(b"PONG\r\n")
    del buf[:]
    body = json.dumps(stream_config("NOLEADER")).encode()
    for n in cl.names():
        if n != survivor:
            cl.kill(n)
    t0 = time.monotonic()
    sent: dict[int, float] = {}
    frames: list[tuple[float, bytes]] = []
    i = 0
    first_at = None
    after_first = 0  # requests sent after the first answer (each should get exactly one)
    next_send = t0
    while time.monotonic() - t0 < limit:
        now = time.monotonic()
        if (first_at is None or after_first < 4) and now >= next_send:
            if first_at is not None:
                after_first += 1
            s.sendall(b"PUB $JS.API.STREAM.CREATE.NOLEADER _INBOX.nl.%d %d\r\n%s\r\n" % (i, len(body), body))
            sent[i] = now
            i += 1
            next_send = now + interval
        read_some()
        while True:  # cut complete MSG/HMSG frames (ignore PING)
            if buf.startswith(b"PING\r\n"):
                s.sendall(b"PONG\r\n")
                del buf[:6]
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).split()
            if head[0] not in (b"MSG", b"HMSG"):
                del buf[:end + 2]
                continue
            size = int(head[-1])
            if len(buf) < end + 2 + size + 2:
                break
            frames.append((time.monotonic() - t0, bytes(buf[:end + 2 + size + 2])))
            del buf[:end + 2 + size + 2]
            if first_at is None:
                first_at = time.monotonic()
        if first_at is not None and time.monotonic() - first_at > linger:
            break
    s.close()
    per_request: dict[int, int] = {}
    for _, fr in frames:
        rid = int(fr.split(b" ", 2)[1].rsplit(b".", 1)[1])
        per_request[rid] = per_request.get(rid, 0) + 1
    first = frames[0] if frames else None
    first_rid = int(first[1].split(b" ", 2)[1].rsplit(b".", 1)[1]) if first else None
    result = {
        "survivor": f"{survivor} (was meta {keep})",
        "first_answer_s": round(first[0], 3) if first else None,
        "first_answer_latency_ms": round((t0 + first[0] - sent[first_rid]) * 1000, 1) if first else None,
        "answers_to_later_requests": sorted(per_request.get(k, 0) for k in sent if first_rid is not None and k > first_rid),
        "requests_sent": i,
        "requests_answered": len(per_request),
        "max_answers_per_request": max(per_request.values()) if per_request else 0,
        "first_frame": first[1] if first else None,
    }
    cl.restore(timeout=60)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="nats-server,ours", help="comma list of nats-server, ours")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-request", type=float, default=0.25, help="STREAM.CREATE timeout (s)")
    ap.add_argument("--limit", type=float, default=60.0, help="give up on one measurement after (s)")
    ap.add_argument("--no-leader", action="store_true", help="also measure the no-meta-leader answer")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    samples: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MEASURES} for k in kinds}
    noleader: dict[str, list[dict]] = {k: [] for k in kinds}
    tmp = Path(tempfile.mkdtemp(prefix="meta_failover-"))
    try:
        for r in range(args.rounds):
            for kind in kinds:
                cl = JSCluster(kind, tmp / f"{kind}-{r}")
                t0 = time.monotonic()
                cl.start(wait_leader=False)
                try:
                    cl.wait_meta_leader(among=cl.names(), timeout=args.limit)
                    startup = time.monotonic() - t0
                    kill = fault_round(cl, "sigkill", f"r{r}", args.per_request, args.limit)
                    stop = fault_round(cl, "sigstop", f"r{r}", args.per_request, args.limit)
                    nl = None
                    if args.no_leader:
                        nl = no_leader_round(cl, "follower" if r % 2 == 0 else "leader", limit=args.limit)
                finally:
                    cl.stop()
                samples[kind]["startup"].append(startup)
                samples[kind]["sigkill"].append(kill)
                samples[kind]["sigstop"].append(stop)
                line = f"round {r + 1} {kind:>11}: startup {startup:.3f}s  sigkill {kill:.3f}s  sigstop {stop:.3f}s"
                if nl is not None:
                    noleader[kind].append(nl)
                    line += (f"  noleader first answer {nl['first_answer_s']}s (latency "
                             f"{nl['first_answer_latency_ms']} ms, max answers/request {nl['max_answers_per_request']})")
                print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| measure | server | median s | min s | max s |")
    print("|---|---|---:|---:|---:|")
    for m in MEASURES:
        for kind in kinds:
            xs = samples[kind][m]
            print(f"| {m} | {kind} | {statistics.median(xs):.3f} | {min(xs):.3f} | {max(xs):.3f} |")
    if "ours" in kinds and "nats-server" in kinds:
        print()
        for m in MEASURES:
            ratio = statistics.median(samples["ours"][m]) / statistics.median(samples["nats-server"][m])
            print(f"{m}: ours / nats-server (medians) = {ratio:.2f}x")
    for kind in kinds:
        for nl in noleader[kind]:
            print(f"\n{kind} no meta leader: survivor {nl['survivor']}, first answer "
                  f"{nl['first_answer_s']}s after killing two nodes, {nl['first_answer_latency_ms']} ms "
                  f"after its request ({nl['requests_answered']} of {nl['requests_sent']} requests answered; "
                  f"answers to each request sent after the first answered one: {nl['answers_to_later_requests']}; at "
                  f"most {nl['max_answers_per_request']} per request); frame: {nl['first_frame']!r}")


if __name__ == "__main__":
    main()
