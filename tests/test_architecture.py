"""The direction of imports: raft/ and cluster/ never import broker/; pure cores never import trio."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PURE = [
    "broker/protocol.py", "broker/sublist.py", "broker/subjects.py", "broker/headers.py",
    "broker/jetstream/stream.py", "broker/jetstream/consumer.py", "broker/jetstream/pullserve.py",
    "broker/jetstream/consumerout.py", "broker/jetstream/pushflow.py", "broker/jetstream/storetypes.py",
    "broker/jetstream/cluster/streamsm.py",
    "cluster/protocol.py", "cluster/runs.py", "cluster/membership.py", "raft/core.py", "raft/log.py", "raft/messages.py",
]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("pkg", ["raft", "cluster"])
def test_independent_packages_never_import_broker(pkg):
    files = sorted((ROOT / pkg).rglob("*.py"))
    assert files, f"{pkg}/ has no modules"
    for f in files:
        assert "broker" not in imported_modules(f), f"{f.relative_to(ROOT)} imports broker"


def test_raft_does_not_import_cluster():
    for f in sorted((ROOT / "raft").rglob("*.py")):
        assert "cluster" not in imported_modules(f), f"{f.relative_to(ROOT)} imports cluster"


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_not_import_trio(rel):
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} is listed as a pure module but does not exist")
    assert "trio" not in imported_modules(path), f"{rel} imports trio"
