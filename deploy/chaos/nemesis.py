"""The seeded fault schedule and the task that carries it out.

make_schedule(seed, seconds, kinds) is a pure function: the same seed, length and kinds
give the same list of faults (start time, kind, duration, and a number `pick` in [0, 1)
that chooses the target among the candidates the cluster offers at that moment, e.g. which
follower). Which node is the leader depends on the run, so targets are resolved then and
recorded in the history's fault timeline.
"""

from __future__ import annotations

import asyncio
import random
import time

# kind -> (what it does, capability the cluster must offer, (min, max) duration in s)
FAULTS: dict[str, tuple[str, str, tuple[float, float]]] = {
    "kill-stream-leader": ("SIGKILL the stream leader, restart it after the duration", "process", (2, 6)),
    "kill-consumer-leader": ("SIGKILL a durable consumer's leader, restart it", "process", (2, 6)),
    "kill-follower": ("SIGKILL a random follower of the stream, restart it", "process", (2, 6)),
    "kill-all": ("SIGKILL every node at once, restart them all", "process", (2, 5)),
    "pause": ("SIGSTOP a random node (docker pause on compose), SIGCONT after the duration", "process", (2, 6)),
    "restart": ("docker restart a random container (compose only)", "container", (0, 0)),
    "partition-one": ("cut one random node off from the rest (disable its proxies)", "network", (3, 8)),
    "partition-leader": ("cut the stream leader off from the majority", "network", (3, 8)),
    "latency": ("100 ms +- 50 ms latency on every link of a random node", "network", (3, 8)),
    "bandwidth": ("limit every link of a random node to 8 KB/s", "network", (3, 8)),
    "reset-peer": ("reset (RST) every connection of a random node as soon as it carries data", "network", (2, 5)),
    "timeout": ("black-hole every link of a random node (data dropped, no close)", "network", (3, 8)),
    "powerloss-one": ("power loss on a random node: SIGKILL and drop its unsynced writes", "fuse", (2, 5)),
    "powerloss-minority": ("power loss on a minority that includes the stream leader", "fuse", (2, 5)),
    "powerloss-all": ("power loss on every node at once", "fuse", (2, 5)),
}

WARMUP_S = 5.0
GAP_S = (2.0, 5.0)


def kinds_for(capabilities: set[str]) -> list[str]:
    return [k for k, (_, cap, _) in FAULTS.items() if cap in capabilities]


def make_schedule(seed: int, seconds: float, kinds: list[str], cooldown: float | None = None,
                  warmup: float = WARMUP_S) -> list[dict]:
    """Faults from `warmup` seconds until `cooldown` seconds before the end; every kind is used once
    before any repeats (shuffled bags), so a long enough run covers all of them."""
    rng = random.Random(seed)
    if cooldown is None:
        cooldown = max(5.0, seconds * 0.1)
    out: list[dict] = []
    t = warmup
    bag: list[str] = []
    for _ in range(10_000):
        if not kinds:
            break
        if not bag:
            bag = sorted(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        lo, hi = FAULTS[kind][2]
        dur = round(rng.uniform(lo, hi), 2)
        if t + dur > seconds - cooldown:
            break
        out.append({"at": round(t, 2), "kind": kind, "duration": dur, "pick": round(rng.random(), 6)})
        t += dur + rng.uniform(*GAP_S)
    return out


def choose(candidates: list[str], pick: float) -> str:
    cands = sorted(candidates)
    return cands[min(int(pick * len(cands)), len(cands) - 1)]


class Nemesis:
    """Runs a schedule against a cluster backend (see cluster.py) and records every step."""

    def __init__(self, cluster, schedule: list[dict], recorder, leaders):
        self.cluster = cluster
        self.schedule = schedule
        self.rec = recorder
        self.leaders = leaders  # async () -> {"stream", "pull", "push": server name or None}
        self.current = "none"

    def log(self, kind: str, phase: str, targets: list[str], detail: str = "") -> None:
        self.rec.fault(kind, phase, targets, detail)

    async def targets(self, f: dict) -> list[str]:
        nodes = self.cluster.node_names()
        kind, pick = f["kind"], f["pick"]
        leaders = {}
        if kind in ("kill-stream-leader", "kill-consumer-leader", "kill-follower", "partition-leader",
                    "powerloss-minority"):
            leaders = await self.leaders()
        if kind == "kill-stream-leader" or kind == "partition-leader":
            return [leaders.get("stream") or choose(nodes, pick)]
        if kind == "kill-consumer-leader":  # the pull or the push consumer's leader, by pick
            lead = leaders.get("pull" if pick < 0.5 else "push")
            return [lead or choose(nodes, pick)]
        if kind == "kill-follower":
            followers = [n for n in nodes if n != leaders.get("stream")]
            return [choose(followers, pick)]
        if kind in ("kill-all", "powerloss-all"):
            return list(nodes)
        if kind == "powerloss-minority":
            size = max(1, (len(nodes) - 1) // 2)
            lead = leaders.get("stream") or choose(nodes, pick)
            rest = [n for n in sorted(nodes) if n != lead]
            random.Random(pick).shuffle(rest)
            return [lead] + rest[: size - 1]
        return [choose(nodes, pick)]

    async def run(self, t0: float) -> None:
        try:
            for f in self.schedule:
                delay = t0 + f["at"] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    await self.inject(f)
                except Exception as exc:  # noqa: BLE001 - a fault that fails to apply is logged, the run goes on
                    self.log(f["kind"], "note", [], f"failed: {exc!r}")
        finally:
            self.current = "healing"
            await self.cluster.heal_all()
            self.log("heal", "note", self.cluster.node_names(), "every fault undone")
            self.current = "none"

    async def inject(self, f: dict) -> None:
        kind, dur = f["kind"], f["duration"]
        try:
            targets = await self.targets(f)
        except Exception as exc:  # noqa: BLE001 - a fault that cannot be aimed is skipped, not fatal
            self.log(kind, "note", [], f"skipped: {exc!r}")
            return
        self.current = f"{kind} {','.join(targets)}"
        c = self.cluster
        detail = ""
        try:
            if kind.startswith("kill-"):
                await c.kill(targets)
            elif kind == "pause":
                await c.pause(targets)
            elif kind == "restart":
                await c.restart(targets)
            elif kind.startswith("partition-"):
                await c.isolate(targets)
            elif kind in ("latency", "bandwidth", "reset-peer", "timeout"):
                await c.toxic(kind, targets)
            elif kind.startswith("powerloss-"):
                detail = await c.power_loss(targets)
            self.log(kind, "start", targets, detail)
            await asyncio.sleep(dur)
        finally:
            if kind.startswith("kill-") or kind.startswith("powerloss-"):
                await c.start(targets)
            elif kind == "pause":
                await c.resume(targets)
            elif kind.startswith("partition-"):
                await c.heal_network()
            elif kind in ("latency", "bandwidth", "reset-peer", "timeout"):
                await c.heal_network()
            self.log(kind, "end", targets)
            self.current = "none"
