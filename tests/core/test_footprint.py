"""What a core-only node (default flags: no JetStream, routes, monitoring or TLS) loads and
keeps resident: only what serving clients needs.

The modules are checked in a child interpreter started with -S (site-packages on
PYTHONPATH instead), so .pth files of the environment, which may import tempfile or
msgspec themselves, do not hide an import of ours. The memory is measured on a real
`python -m broker` process against a reference process of the same interpreter that
imports what any trio server needs (trio with the same placeholders, logging), so the
bound is on what our own code adds and does not move with the environment.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time

from tests.conftest import ROOT, free_port, wait_port

sys.path.insert(0, str(ROOT / "bench"))
from loadgen import rss_kib  # noqa: E402  (bench/loadgen.py: VmRSS of a process)

# imported only by JetStream, routes, monitoring or config files: msgspec alone (its _core
# imports datetime, decimal, uuid, typing_extensions) is about 1.3 MiB resident
NOT_AT_START = ("msgspec", "decimal", "uuid", "datetime", "cluster.protocol", "cluster.manager",
                "broker.jetstream", "broker.monitor", "broker.confparse", "broker.confapply",
                "broker.cluster_glue")

# What our modules add on top of interpreter + trio + logging, measured 1.5-1.7 MiB here with
# PYTHONDONTWRITEBYTECODE set (about 0.55 MiB of it the heap our modules' compilation from
# source fragments; 1.0 MiB with bytecode cached). Importing msgspec again would add ~1.3 MiB.
OURS_OVER_TRIO_MAX_KIB = 2304


def _clean_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + site.getsitepackages() + [site.getusersitepackages()])
    return env


def test_core_node_imports_nothing_it_does_not_use():
    code = (
        "import sys, broker.__main__\n"
        f"loaded = [m for m in {NOT_AT_START!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "placeholders = [m for m in ('ssl', 'tempfile', 'shutil') if type(sys.modules[m]).__name__ == '_LazyModule']\n"
        "assert placeholders == ['ssl', 'tempfile', 'shutil'], placeholders\n"
        "import tempfile, shutil\n"
        "assert tempfile.gettempdir() and shutil.which('sh')\n"  # the real modules, on first use
        "assert type(sys.modules['tempfile']).__name__ == 'module'\n"
    )
    subprocess.run([sys.executable, "-S", "-c", code], check=True, env=_clean_env(), cwd=ROOT)


def _settled_rss_kib(pid: int) -> int:
    """VmRSS once three readings 0.1 s apart agree (startup ends with a heap trim)."""
    readings = [rss_kib(pid)]
    for _ in range(100):
        time.sleep(0.1)
        readings.append(rss_kib(pid))
        if len(readings) >= 3 and readings[-1] == readings[-2] == readings[-3]:
            break
    return readings[-1]


REFERENCE = (
    "import ctypes, gc, sys, time\n"
    "from broker.lazy import defer_unused_imports\n"
    "defer_unused_imports()\n"
    "import logging, trio\n"
    "gc.collect(); ctypes.CDLL(None).malloc_trim(0)\n"  # as the server does once listening
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_fresh_core_node_adds_little_to_trio():
    if not os.path.exists("/proc/self/status"):
        import pytest
        pytest.skip("needs /proc")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "broker", "-a", "127.0.0.1", "-p", str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = subprocess.Popen([sys.executable, "-c", REFERENCE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    try:
        wait_port(port, server)
        assert ref.stdout.readline().strip() == b"ready"
        ours, trio_only = _settled_rss_kib(server.pid), _settled_rss_kib(ref.pid)
        assert ours - trio_only <= OURS_OVER_TRIO_MAX_KIB, (
            f"fresh node {ours / 1024:.2f} MiB, interpreter + trio {trio_only / 1024:.2f} MiB: "
            f"ours adds {(ours - trio_only) / 1024:.2f} MiB (bound {OURS_OVER_TRIO_MAX_KIB / 1024:.2f})")
    finally:
        for p in (server, ref):
            p.kill()
            p.wait(10)
