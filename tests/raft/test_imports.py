"""Dependency rules: raft/ stands alone, and its pure modules never touch trio."""

from __future__ import annotations

import ast
import pathlib
import sys

RAFT = pathlib.Path(__file__).resolve().parents[2] / "raft"
PURE = {"core.py", "log.py", "messages.py"}
ALLOWED_THIRD_PARTY = {"trio", "msgspec"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_pure_modules_do_not_import_trio():
    for name in PURE:
        roots = imported_roots(RAFT / name)
        assert "trio" not in roots, name
        assert roots <= set(sys.stdlib_module_names) | {"msgspec"}, (name, roots)


def test_raft_imports_only_stdlib_trio_and_msgspec():
    files = sorted(RAFT.glob("*.py"))
    assert {"core.py", "log.py", "messages.py", "storage.py", "node.py", "transport.py"} <= {f.name for f in files}
    for f in files:
        roots = imported_roots(f)
        assert not roots & {"broker", "cluster", "tests"}, (f.name, roots)
        assert roots <= set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY, (f.name, roots)


def test_importing_the_core_does_not_load_trio():
    import subprocess

    code = "import sys, raft, raft.core, raft.log, raft.messages, raft.storage; print('trio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=RAFT.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
