"""Deterministic simulation: three replicas of the replicated stream state machine behind a
committed Raft log, under crashes, restarts, lag, snapshots and catch-up.

Raft itself is not simulated (tests/raft does that): the log here is what Raft guarantees,
the committed entries in order, and each replica is what a RaftHost does with it: it applies
entries after its snapshot index, takes snapshots at its applied index, restores its own
snapshot when it restarts (then replays) and a leader's snapshot when it lags (InstallSnapshot).
The leader is a replica that has applied the whole log (one batch in flight): it stamps each
PubBatch from its own state, and its apply result is what the publisher is told.

Faults: a crash loses what the store did not fsync. `CrashStore` (a MemoryStore) keeps, of the
writes since its last sync, a random prefix (a process crash: the OS had them in order) or a
random subset (a power loss); a FileStore replica loses its unwritten buffers and keeps what it
handed to the OS, sometimes everything (flush first). Clocks of successive leaders are skewed.
At most one replica is down or catching up at a time (R3 tolerates one fault), except a
whole-cluster power loss that keeps only fsynced data.

Invariants: the outcome of every entry is the same on every replica that applies it as on a
fault-free reference; after the run every replica equals the reference (messages, sequences,
timestamps, deleted, duplicate window, config), so no acknowledged message is lost.
A failure names its seed and the one-line command that replays it.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest

from broker.jetstream.api import StreamConfig
from broker.jetstream.cluster.streamsm import (DeleteMsg, Expire, MsgError, Purge, RemoveAcked, StreamSM,
                                               UpdateConfig, encode_op)
from broker.jetstream.filestore import FileStore
from broker.jetstream.store import MemoryStore
from broker.jetstream.streamconfig import normalize
from raft.messages import Entry

S = 1_000_000_000
T0 = 1_700_000_000 * S
STEPS = 160


class CrashStore(MemoryStore):
    """A MemoryStore that models durability: sync() makes everything durable; crash() keeps
    the durable state plus a prefix or a subset of the writes made since."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.hold = hold  # as FileStore(hold_removals=True): removals reach the disk only by sync
        self._journal: list[tuple] = []
        self._durable: tuple = ({}, 0, 0)
        self.syncs = 0

    def append(self, subject, hdr, data, ts):
        seq = super().append(subject, hdr, data, ts)
        self._journal.append(("put", self._msgs[seq]))
        return seq

    def skip_to(self, seq):
        super().skip_to(seq)
        self._journal.append(("skip", seq))

    def _remove_seqs(self, seqs):
        seqs = [q for q in seqs if q in self._msgs]
        self._journal.extend(("rm", q) for q in seqs)
        return super()._remove_seqs(seqs)

    def _purge_all(self):
        self._journal.append(("purge",))
        super()._purge_all()

    def truncate_after(self, seq, last_ts):
        super().truncate_after(seq, last_ts)
        self.sync()

    def sync(self):
        self._durable = (dict(self._msgs), self._last, self._last_ts)
        self._journal = []
        self.syncs += 1

    def crash(self, rng: random.Random, keep: str) -> "CrashStore":
        msgs, last, last_ts = self._durable
        ops = self._journal
        if keep == "prefix":
            ops = ops[: rng.randrange(len(ops) + 1)]
        elif keep == "subset":
            ops = [op for op in ops if rng.random() < 0.5]
        else:
            ops = []
        if self.hold:
            ops = [op for op in ops if op[0] in ("put", "skip")]
        new = CrashStore(self.hold)
        for seq in sorted(msgs):
            m = msgs[seq]
            MemoryStore.append_at(new, seq, m.subject, m.hdr, m.data, m.ts)
        if last > new._last or last_ts != new._last_ts:
            MemoryStore.truncate_after(new, last, last_ts)
        for op in ops:
            if op[0] == "put":
                m = op[1]
                if m.seq > new._last:
                    MemoryStore.append_at(new, m.seq, m.subject, m.hdr, m.data, m.ts)
            elif op[0] == "rm":
                MemoryStore._remove_seqs(new, [op[1]] if op[1] in new._msgs else [])
            elif op[0] == "purge":
                MemoryStore._purge_all(new)
            elif op[1] > new._last and self.hold:
                MemoryStore.truncate_after(new, op[1] - 1, new._last_ts)  # only its new META
            elif op[1] > new._last:
                MemoryStore.skip_to(new, op[1])
        new.sync()
        return new


class Replica:
    def __init__(self, sim: "Sim", i: int) -> None:
        self.sim, self.i = sim, i
        self.store = sim.open_store(i)
        self.sm = StreamSM(sim.config0, self.store, T0)
        self.sm.ensure_started()
        self.snap: tuple[int, bytes] | None = None  # (index, data) Raft holds for it
        self.applied = 0  # what Raft handed over
        self.up = True
        self.crashed_catching_up = False
        self.dirty = False

    def busy(self) -> bool:
        return not self.up or self.sm.catching_up


class Sim:
    def __init__(self, seed: int, kind: str, root: str, steps: int = STEPS) -> None:
        self.seed, self.kind, self.root, self.steps = seed, kind, root, steps
        self.rng = random.Random(seed)
        # FileStore replicas hold removals until sync (as R3 should run); memory ones model
        # both that and a store that lets removals reach the disk at any time.
        self.hold = kind == "file" or seed % 3 != 0
        self.config0 = self.random_config()
        self.log: list[bytes] = []
        self.results: list = []  # the reference outcome of each entry
        self.ref = StreamSM(self.config0, self.open_store("ref"), T0)
        self.ref.ensure_started()
        self.reps = [Replica(self, i) for i in range(3)]
        self.clock = T0
        self.skew = 0
        self.leader = 0
        self.stats = {"crash": 0, "restart": 0, "catchup_chunks": 0, "install": 0, "snap": 0,
                      "refused": 0, "dups": 0, "mismatch_restarts": 0, "cluster_crash": 0}
        self.commit(UpdateConfig(self.config0, T0))

    # -- setup ---------------------------------------------------------------------------------
    def random_config(self) -> StreamConfig:
        r = self.rng
        ttl = r.random() < 0.3
        kw = dict(max_msgs=r.choice([-1, 15, 40]), max_msgs_per_subject=r.choice([-1, -1, 3]),
                  max_age=r.choice([0, 0, 6 * S]), discard=r.choice(["old", "old", "new"]),
                  duplicate_window=r.choice([1, 2, 5]) * S, allow_msg_ttl=ttl)
        if ttl and r.random() < 0.5:
            kw.update(allow_rollup_hdrs=True, subject_delete_marker_ttl=2 * S)
        return normalize(StreamConfig(name="SIM", subjects=["s.>"], num_replicas=3,
                                      storage="file" if self.kind == "file" else "memory", **kw),
                         clustered=True)

    def open_store(self, i):
        if self.kind == "file":
            return FileStore(os.path.join(self.root, f"r{i}"), block_size_max_bytes=self.rng.choice([256, 1024, 8192]),
                             hold_removals=True)
        return CrashStore(self.hold)

    def fail(self, what: str) -> None:
        pytest.fail(f"seed {self.seed} ({self.kind}, {self.steps} steps): {what}; replay: PYTHONPATH=. python3 -c "
                    f"'from tests.jetstream.test_streamsm_sim import run; run({self.seed}, \"{self.kind}\", {self.steps})'")

    # -- the log -------------------------------------------------------------------------------
    def commit(self, op) -> None:
        self.log.append(encode_op(op))
        index = len(self.log)
        self.results.append(self.ref.apply(Entry(1, index, data=self.log[-1])))
        lead = self.reps[self.leader]
        if lead.up and not lead.sm.catching_up and lead.applied == index - 1:
            self.advance(lead, 1)

    def advance(self, rep: Replica, n: int) -> None:
        for index in range(rep.applied + 1, min(len(self.log), rep.applied + n) + 1):
            held = rep.sm.catching_up or index <= rep.sm.applied_index
            try:
                result = rep.sm.apply(Entry(1, index, data=self.log[index - 1]))
            except AssertionError as exc:
                self.fail(f"replica {rep.i} stopped at index {index}: {exc}")
            if not held and result != self.results[index - 1]:
                self.fail(f"replica {rep.i} index {index}: outcome {result!r}, reference {self.results[index - 1]!r}")
            rep.applied = index

    def pick_leader(self) -> Replica | None:
        ready = [r for r in self.reps if not r.busy()]
        if not ready:
            return None
        lead = self.reps[self.leader]
        if lead not in ready or self.rng.random() < 0.05:
            lead = self.rng.choice(ready)
            self.leader = lead.i
            self.skew = self.rng.randrange(-S // 2, S // 2)  # another node's clock
        self.advance(lead, len(self.log))  # a new leader applies everything before proposing
        return lead

    def propose(self) -> None:
        lead = self.pick_leader()
        if lead is None:
            return
        r = self.rng
        self.clock += r.randrange(S // 3)
        now = self.clock + self.skew
        x = r.random()
        if x < 0.65:
            self.commit(lead.sm.pub_batch(self.random_msgs(lead.sm), now))
            for res in self.results[-1]:
                if isinstance(res, MsgError):
                    self.stats["refused"] += 1
                elif res[1]:
                    self.stats["dups"] += 1
        elif x < 0.78:
            self.commit(Expire(now))
        elif x < 0.85:
            st = lead.sm.store.state()
            self.commit(DeleteMsg(r.randrange(max(1, st.first_seq - 2), st.last_seq + 3)))
        elif x < 0.91:
            st = lead.sm.store.state()
            self.commit(RemoveAcked(sorted({r.randrange(1, st.last_seq + 2) for _ in range(r.randrange(1, 6))})))
        elif x < 0.97:
            keep = r.choice([0, 0, 2])
            seq = 0 if keep else r.choice([0, lead.sm.store.state().last_seq - r.randrange(5),
                                           lead.sm.store.state().last_seq + r.randrange(1, 4)])
            self.commit(Purge(r.choice(["", "s.1", "s.*", "s.2"]), max(seq, 0), keep))
        else:
            cfg = self.random_config()
            cfg.allow_msg_ttl = cfg.allow_msg_ttl or lead.sm.stream.config.allow_msg_ttl  # cannot be turned off
            cfg = normalize(cfg, clustered=True)
            self.commit(UpdateConfig(cfg, now))

    def random_msgs(self, sm: StreamSM) -> list:
        r = self.rng
        msgs = []
        st = sm.store.state()
        for _ in range(r.randrange(1, 7)):
            subject = f"s.{r.randrange(6)}"
            lines = []
            if r.random() < 0.35:
                lines.append(f"Nats-Msg-Id: m{r.randrange(25)}")
            if r.random() < 0.08:
                lines.append(f"Nats-Expected-Last-Sequence: {st.last_seq + r.randrange(3)}")
            if r.random() < 0.08:
                last = sm.store.last_msg(subject)
                lines.append(f"Nats-Expected-Last-Subject-Sequence: {(last.seq if last else 0) + r.randrange(2)}")
            if r.random() < 0.05:
                lines.append("Nats-Expected-Last-Msg-Id: m" + str(r.randrange(25)))
            if sm.stream.config.allow_msg_ttl and r.random() < 0.2:
                lines.append(f"Nats-TTL: {r.randrange(1, 4)}s")
            hdr = ("NATS/1.0\r\n" + "".join(ln + "\r\n" for ln in lines) + "\r\n").encode() if lines else None
            msgs.append((subject, hdr, r.randbytes(r.randrange(24))))
        return msgs

    # -- faults and recovery -------------------------------------------------------------------
    def crash(self, rep: Replica, keep: str) -> None:
        self.stats["crash"] += 1
        rep.up = False
        rep.crashed_catching_up = rep.sm.catching_up or rep.dirty
        if self.kind == "file":
            if keep != "none":
                rep.store.flush()
            rep.store._release()  # a process crash: the unwritten buffers are gone
            rep.store._closed = True
        else:
            rep.store = rep.store.crash(self.rng, keep)

    def restart(self, rep: Replica) -> None:
        self.stats["restart"] += 1
        if self.kind == "file":
            rep.store = FileStore(os.path.join(self.root, f"r{rep.i}"),
                                  block_size_max_bytes=self.rng.choice([256, 8192]), hold_removals=True)
        rep.sm = StreamSM(self.config0, rep.store, T0)
        if rep.snap is not None:
            rep.sm.restore(rep.snap[1])  # RaftHost.add_group
            rep.applied = rep.snap[0]
            if rep.sm.catching_up:
                self.stats["mismatch_restarts"] += 1
                if self.hold and not rep.crashed_catching_up:
                    self.fail(f"replica {rep.i} restarted from its own snapshot needs a catch-up, "
                              f"though its store held removals until sync")
            else:
                rep.dirty = False
        else:
            rep.sm.ensure_started()
            rep.applied = 0
        rep.up = True

    def serve(self, rep: Replica) -> None:
        servers = [r for r in self.reps if r is not rep and not r.busy()]
        if not servers:
            return
        server = self.rng.choice(servers)
        self.advance(server, self.rng.randrange(0, 4))
        chunk = server.sm.catchup_chunk(rep.sm.need.from_seq, self.rng.randrange(1, 30))
        self.stats["catchup_chunks"] += 1
        try:
            rep.sm.apply_catchup(chunk)
        except AssertionError as exc:
            self.fail(f"replica {rep.i} catch-up from {server.i}: {exc}")
        self.snapshot_if_wanted(rep)

    def snapshot_if_wanted(self, rep: Replica) -> None:
        if rep.sm.snapshot_wanted:
            rep.dirty = True  # its store is durable past its snapshot until the next one
            if self.rng.random() < 0.9:  # the wiring snapshots at once (mostly before a crash)
                self.take_snapshot(rep)

    def take_snapshot(self, rep: Replica) -> None:
        rep.snap = (rep.applied, rep.sm.snapshot())
        rep.dirty = False
        self.stats["snap"] += 1

    def install_snapshot(self, rep: Replica) -> None:
        lead = self.reps[self.leader]
        if lead is rep or lead.busy() or lead.snap is None or lead.snap[0] <= rep.applied:
            return
        self.stats["install"] += 1
        rep.sm.restore(lead.snap[1])
        rep.snap = lead.snap
        rep.applied = lead.snap[0]
        self.snapshot_if_wanted(rep)

    def step(self) -> None:
        r = self.rng
        x = r.random()
        rep = r.choice(self.reps)
        if x < 0.45:
            self.propose()
        elif x < 0.65:
            if rep.up:
                self.advance(rep, r.randrange(1, 8))
        elif x < 0.72:
            if rep.up:
                self.advance(rep, r.randrange(0, 3))
                self.take_snapshot(rep)
        elif x < 0.77:
            others_fine = all(not o.busy() for o in self.reps if o is not rep)
            if rep.up and others_fine:
                self.crash(rep, r.choice(["prefix", "subset", "none"]))
        elif x < 0.85:
            if not rep.up:
                self.restart(rep)
        elif x < 0.95:
            if rep.up and rep.sm.catching_up:
                self.serve(rep)
        elif x < 0.97:
            if rep.up and not rep.sm.catching_up and len(self.log) - rep.applied > 5:
                self.install_snapshot(rep)
        elif x < 0.975 and all(not o.busy() for o in self.reps):
            # Everything crashes at once. Holding removals, any prefix or subset of the unsynced
            # writes may survive; otherwise only fsynced data (a store that let removals reach
            # the disk could leave every replica needing a catch-up nobody can serve).
            for o in self.reps:
                self.crash(o, r.choice(["prefix", "subset", "none"]) if self.hold else "none")
            self.stats["cluster_crash"] += 1
            for o in self.reps:
                self.restart(o)

    def settle(self) -> None:
        for rep in self.reps:
            if not rep.up:
                self.restart(rep)
        for _ in range(10_000):
            waiting = [rep for rep in self.reps if rep.sm.catching_up]
            if not waiting:
                break
            for rep in waiting:
                self.serve(rep)
            for rep in self.reps:
                if not rep.busy():
                    self.advance(rep, len(self.log))
        else:
            self.fail("catch-up never finished")
        for rep in self.reps:
            self.advance(rep, len(self.log))

    def check(self) -> None:
        want = self.ref.fingerprint()
        for rep in self.reps:
            if rep.sm.applied_index != len(self.log):
                self.fail(f"replica {rep.i} applied {rep.sm.applied_index} of {len(self.log)}")
            got = rep.sm.fingerprint()
            if got != want:
                diff = [k for k, (a, b) in enumerate(zip(got, want)) if a != b]
                self.fail(f"replica {rep.i} differs from the reference in fingerprint fields {diff}: "
                          f"{got[0]} vs {want[0]}")
        # Every acknowledged publish the reference still holds is on every replica.
        for res in self.results:
            if isinstance(res, list):
                for x in res:
                    if isinstance(x, tuple) and not x[1] and self.ref.store.get(x[0]) is not None:
                        assert all(rep.sm.store.get(x[0]) == self.ref.store.get(x[0]) for rep in self.reps)

    def close(self) -> None:
        for rep in self.reps:
            if rep.up:
                rep.store.close()
        self.ref.store.close()


def run(seed: int, kind: str, steps: int = STEPS) -> dict:
    root = tempfile.mkdtemp(prefix=f"streamsm-sim-{seed}-")
    try:
        sim = Sim(seed, kind, root, steps)
        try:
            for _ in range(steps):
                sim.step()
            sim.settle()
            sim.check()
        except pytest.fail.Exception:
            raise
        except Exception as exc:
            sim.fail(f"{type(exc).__name__}: {exc}")
        sim.close()
        return sim.stats
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("seed", range(100))
def test_sim_memory(seed):
    run(seed, "memory")


@pytest.mark.parametrize("seed", range(20))
def test_sim_file(seed):
    run(seed, "file")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 1100))
def test_sim_memory_many(seed):
    run(seed, "memory", steps=400)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 300))
def test_sim_file_many(seed):
    run(seed, "file", steps=300)


def test_sim_exercises_every_fault():
    total: dict = {}
    for seed in range(12):
        for k, v in run(seed, "memory").items():
            total[k] = total.get(k, 0) + v
    for k in ("crash", "restart", "catchup_chunks", "install", "snap", "refused", "dups", "mismatch_restarts",
              "cluster_crash"):
        assert total[k] > 0, (k, total)
