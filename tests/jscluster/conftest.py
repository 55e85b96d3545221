"""Fixtures of tests/jscluster live in harness.py (shared with bench/meta_failover.py)."""

from tests.jscluster.harness import jsc, jsc_sys  # noqa: F401  (pytest fixtures)
