"""Mutation harness: how strong is the Raft simulator, measured.

Each mutation below is a classic Raft bug written as exact source edits. For each one the
harness copies raft/ into a temporary directory, applies the edits to the copy (the real files
are never touched), and runs ONLY the deterministic simulator (tests/raft/sim.py) against the
copy, seed after seed from --base, until a run fails or the --seeds budget is spent. The report
says, per mutation, whether the simulator caught it, after how many seeds, the failing seed and
the first invariant that broke.

An edit whose source snippet is not found exactly once in the copy is an error, not a pass:
when raft/ changes, the harness fails loudly instead of silently testing nothing.

    python -m tests.raft.mutate                     # every mutation, default budget
    python -m tests.raft.mutate --seeds 300 -j 2    # smaller budget, two worker processes
    python -m tests.raft.mutate --only figure8_commit_old_term
    python -m tests.raft.mutate --list
    python -m tests.raft.mutate --replay figure8_commit_old_term 17   # trace one seed, mutated

Exit status: 0 when every selected mutation was caught, 1 when one survived, 2 on a harness
error (a snippet not found, a mutated copy that does not import, a worker that hung).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
RAFT = ROOT / "raft"
DEFAULT_SEEDS = 1000
WORKER_TIMEOUT_S = 900


class MutationError(Exception):
    """A mutation could not be applied (its snippet is gone or ambiguous) or did not run."""


class Mutation:
    def __init__(self, name: str, what: str, edits: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.what = what
        self.edits = edits  # (file under raft/, exact old snippet, replacement)


MUTATIONS = [
    Mutation(
        "figure8_commit_old_term",
        "the leader commits by counting replicas of an entry from an earlier term (paper 5.4.2, Figure 8)",
        [("core.py", "if q > self.log.commit and self.log.term(q) == self.term:", "if q > self.log.commit:")],
    ),
    Mutation(
        "vote_without_up_to_date_check",
        "a vote is granted without checking that the candidate's log is at least as up to date (5.4.1)",
        [("core.py", "grant = can_vote and up_to_date", "grant = can_vote")],
    ),
    Mutation(
        "up_to_date_by_length_only",
        "'at least as up to date' compares log lengths only, not last terms first (5.4.1)",
        [("log.py",
          "return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)",
          "return last_index >= self.last_index")],
    ),
    Mutation(
        "vote_not_persisted",
        "the vote is left out of the persisted hard state: a restarted node forgets whom it voted for",
        [("core.py", "return HardState(self.term, self.vote, self.quarantined)",
          "return HardState(self.term, 0, self.quarantined)")],
    ),
    Mutation(
        "vote_sent_before_fsync",
        "votes leave before the hard state that records the vote and term is fsynced",
        [("cycle.py|node.py", "if isinstance(m, (AppendEntries, InstallSnapshot)):",
          "if type(m).__name__ != 'AppendResponse':")],
    ),
    Mutation(
        "append_ack_before_fsync",
        "a follower acknowledges appended entries before they are fsynced",
        [("cycle.py|node.py", "if isinstance(m, (AppendEntries, InstallSnapshot)):",
          "if type(m).__name__ != 'VoteResponse':")],
    ),
    Mutation(
        "truncate_at_match",
        "a follower cuts its log at the first entry of every AppendEntries, not at the first conflict (5.3)",
        [("log.py", "            if t != e.term:\n                self.append(list(entries[k:]))",
          "            if True:\n                self.append(list(entries[k:]))")],
    ),
    Mutation(
        "follower_commit_is_leader_commit",
        "a follower sets its commit index to the leader's commit instead of min(leader commit, last "
        "new entry), moving it past what the leader's message proved it holds (5.3)",
        [("log.py", "self.commit_to(min(commit, last_new))", "self.commit_to(commit)")],
    ),
    Mutation(
        "pre_vote_raises_term",
        "starting a pre-vote raises (and persists) the node's term (dissertation 9.6)",
        [("core.py",
          "            self.state = PRE_CANDIDATE\n            self.lead = 0\n            term = self.term + 1",
          "            self.term += 1\n            self.vote = 0\n            self.state = PRE_CANDIDATE\n"
          "            self.lead = 0\n            term = self.term + 1")],
    ),
    Mutation(
        "check_quorum_never_steps_down",
        "check-quorum never steps down a leader that lost contact with a majority",
        [("core.py", "if active < quorum(len(self.voters)):", "if active < 0:")],
    ),
    Mutation(
        "snapshot_index_off_by_one",
        "a snapshot of the state after index i is labelled i - 1 (and carries i - 1's term)",
        [("core.py",
          "        term = self.log.term(index)\n        assert term is not None\n"
          "        snap = Snapshot(index, term, self.log.conf_at(index), data)",
          "        term = self.log.term(index - 1)\n        assert term is not None\n"
          "        snap = Snapshot(index - 1, term, self.log.conf_at(index - 1), data)")],
    ),
    Mutation(
        "membership_at_commit",
        "a configuration takes effect when it commits instead of when it is appended (dissertation 4.1)",
        [("log.py", "return self.confs[-1][1] if self.confs else self.snapshot.conf",
          "return self.conf_at(self.commit)")],
    ),
    Mutation(
        "conf_not_rolled_back_on_truncate",
        "cutting a conflicting suffix leaves the configuration of a cut CONF entry in force (4.1)",
        [("log.py", "            while self.confs and self.confs[-1][0] >= first:\n                self.confs.pop()\n", "")],
    ),
    Mutation(
        "truncate_keeps_stable_cursor",
        "cutting a conflicting suffix does not move the persisted cursor back, so the entries that "
        "replace it are acknowledged without being written",
        [("log.py", "            self.stable = min(self.stable, first - 1)\n", "")],
    ),
    Mutation(
        "snapshot_install_skips_term_check",
        "a follower that has any entry at a snapshot's index treats the snapshot as its own prefix "
        "without comparing terms (section 7)",
        [("core.py", "if self.log.term(s.index) == s.term:", "if self.log.last_index >= s.index:")],
    ),
    Mutation(
        "peer_down_skips_pre_vote",
        "a follower told its leader's route closed (peer_down) campaigns at once without pre-vote",
        [("core.py", "        if rank == 0:\n            self._campaign(pre_vote=self.cfg.pre_vote)",
          "        if rank == 0:\n            self._campaign(pre_vote=False)")],
    ),
    Mutation(
        "quarantined_node_votes",
        "a node that lost acknowledged entries in a repair votes before a leader has caught it up",
        [("core.py", "        if self.quarantined:\n            grant = False", "        if False:\n            grant = False")],
    ),
    Mutation(
        "transfer_without_catch_up",
        "leadership transfer sends TimeoutNow at once, without first catching the target up (3.10)",
        [("core.py",
          "        if self.progress[target].match == self.log.last_index:\n"
          "            self._send(TimeoutNow(self.term, self.id, target))",
          "        if True:\n            self._send(TimeoutNow(self.term, self.id, target))")],
    ),
]


def by_name(name: str) -> Mutation:
    for m in MUTATIONS:
        if m.name == name:
            return m
    raise MutationError(f"no mutation named {name!r}; see --list")


def copy_raft(workdir: pathlib.Path, rev: str | None = None) -> pathlib.Path:
    """raft/ as it is in the working tree, or at a git revision, copied to workdir/raft."""
    dest = workdir / "raft"
    if rev is None:
        shutil.copytree(RAFT, dest, ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    archive = subprocess.run(["git", "archive", rev, "raft"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise MutationError(f"git archive {rev} raft failed: {archive.stderr.decode()[-500:]}")
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    return dest


def apply(mutation: Mutation, workdir: pathlib.Path, rev: str | None = None) -> pathlib.Path:
    """Copy raft/ to workdir/raft and apply the mutation's edits to the copy. An edit's file may
    name alternatives ("cycle.py|node.py"): the snippet must occur exactly once among them."""
    dest = copy_raft(workdir, rev)
    for files, old, new in mutation.edits:
        hits = []
        for rel in files.split("|"):
            path = dest / rel
            text = path.read_text() if path.exists() else ""
            hits += [(path, text)] * text.count(old)
        if len(hits) != 1:
            raise MutationError(f"{mutation.name}: snippet found {len(hits)} times in raft/{files} "
                                f"(expected once): {old!r}")
        path, text = hits[0]
        path.write_text(text.replace(old, new))
    return dest


def worker_env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")


def run_mutation(mutation: Mutation, seeds: int, base: int, rev: str | None = None) -> dict:
    """Run the simulator over the mutated copy in a subprocess; returns the worker's report."""
    with tempfile.TemporaryDirectory(prefix=f"raft-mut-{mutation.name}-") as tmp:
        apply(mutation, pathlib.Path(tmp), rev)
        env = worker_env()
        # cwd first on sys.path: `raft` resolves to the mutated copy, `tests` to this checkout.
        argv = [sys.executable, "-m", "tests.raft.mutate", "--worker", "--seeds", str(seeds), "--base", str(base)]
        started = time.monotonic()
        try:
            out = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MutationError(f"{mutation.name}: worker ran longer than {WORKER_TIMEOUT_S}s") from None
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            raise MutationError(f"{mutation.name}: worker failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        report = json.loads(lines[-1])
        if report.get("error"):
            raise MutationError(f"{mutation.name}: the mutated copy is broken: {report['error']}")
        report["name"] = mutation.name
        report["wall_s"] = round(time.monotonic() - started, 1)
        return report


# -- worker: runs inside the temporary directory, against the mutated copy -------------------------
BROKEN = (NameError, SyntaxError, ImportError)  # a mutation that does not even run tests nothing


def worker(seeds: int, base: int) -> dict:
    import raft

    here = pathlib.Path.cwd().resolve()
    if pathlib.Path(raft.__file__).resolve().parent != here / "raft":
        return {"error": f"raft imported from {raft.__file__}, not the mutated copy in {here}"}
    from tests.raft.sim import SimFailure, run_seed

    for k, seed in enumerate(range(base, base + seeds), start=1):
        try:
            run_seed(seed)
        except SimFailure as exc:
            return {"caught": True, "seeds": k, "seed": seed, "how": "invariant", "message": str(exc)}
        except AssertionError as exc:
            return {"caught": True, "seeds": k, "seed": seed, "how": "raft assertion", "message": repr(exc)}
        except BROKEN as exc:
            return {"error": f"seed {seed}: {exc!r}"}
        except Exception as exc:  # noqa: BLE001 - a crash inside the mutated raft/ is a detection
            return {"caught": True, "seeds": k, "seed": seed, "how": "crash", "message": repr(exc)}
    return {"caught": False, "seeds": seeds, "seed": None, "how": "", "message": ""}


def replay(mutation: Mutation, seed: int, rev: str | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix=f"raft-mut-{mutation.name}-") as tmp:
        apply(mutation, pathlib.Path(tmp), rev)
        env = worker_env()
        return subprocess.run([sys.executable, "-m", "tests.raft.sim", str(seed), "--trace"], cwd=tmp, env=env).returncode


def run_all(mutations: list[Mutation], seeds: int, base: int, jobs: int, rev: str | None = None,
            out=print) -> list[dict]:
    for m in mutations:  # fail before spending minutes if any snippet is stale
        with tempfile.TemporaryDirectory() as tmp:
            apply(m, pathlib.Path(tmp), rev)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_mutation, m, seeds, base, rev) for m in mutations]
        reports = []
        for f in futures:
            r = f.result()
            reports.append(r)
            out(format_row(r))
    # A detection means something only if the unmutated raft/ passes the same seeds.
    span = max((r["seeds"] for r in reports if r["caught"]), default=0)
    if span:
        baseline = run_mutation(Mutation("unmutated", "raft/ as it is", []), span, base, rev)
        if baseline["caught"]:
            raise MutationError(f"the unmutated raft/ fails too, so the detections above prove nothing: "
                                f"{baseline['message']}")
        out(f"{'(unmutated raft/)':32} passes seeds {base}..{base + span - 1}")
    return reports


def format_row(r: dict) -> str:
    if r["caught"]:
        return (f"{r['name']:32} caught   after {r['seeds']:5d} seeds (seed {r['seed']}, {r['wall_s']}s) "
                f"by {r['how']}: {r['message'][:160]}")
    return f"{r['name']:32} SURVIVED {r['seeds']} seeds ({r['wall_s']}s)"


def markdown(reports: list[dict]) -> str:
    rows = ["| Mutation | Caught | Seeds needed (failing seed) | First broken invariant |", "| --- | --- | --- | --- |"]
    for r in reports:
        if r["caught"]:
            what = r["message"].split(": ", 1)[-1] if r["how"] == "invariant" else f"{r['how']}: {r['message']}"
            rows.append(f"| `{r['name']}` | yes | {r['seeds']} ({r['seed']}) | {what[:90]} |")
        else:
            rows.append(f"| `{r['name']}` | **no** | survived {r['seeds']} | |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.raft.mutate", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seed budget per mutation")
    p.add_argument("--base", type=int, default=0, help="first seed")
    p.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--only", action="append", help="run just this mutation (repeatable)")
    p.add_argument("--rev", help="mutate raft/ as of this git revision instead of the working tree")
    p.add_argument("--list", action="store_true")
    p.add_argument("--markdown", action="store_true", help="also print the report as a Markdown table")
    p.add_argument("--replay", nargs=2, metavar=("MUTATION", "SEED"), help="trace one seed under one mutation")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.seeds, a.base)))
        return 0
    if a.list:
        for m in MUTATIONS:
            print(f"{m.name:32} {m.what}")
        return 0
    try:
        if a.replay:
            return replay(by_name(a.replay[0]), int(a.replay[1]), a.rev)
        chosen = [by_name(n) for n in a.only] if a.only else MUTATIONS
        started = time.monotonic()
        reports = run_all(chosen, a.seeds, a.base, a.jobs, a.rev)
    except MutationError as exc:
        print(f"mutation harness error: {exc}", file=sys.stderr)
        return 2
    if a.markdown:
        print("\n" + markdown(reports))
    caught = sum(r["caught"] for r in reports)
    print(f"\n{caught}/{len(reports)} mutations caught by the simulator alone "
          f"(budget {a.seeds} seeds from {a.base}; {time.monotonic() - started:.0f}s)")
    return 0 if caught == len(reports) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
