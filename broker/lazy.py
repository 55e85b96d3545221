"""A module that is imported for real on its first attribute access.

`lazy_module("ssl")` before importing trio keeps OpenSSL out of a server that never uses
TLS: trio imports `ssl` at import time but only touches it when a TLS stream is made, so
with a placeholder in sys.modules the real module (and libssl) loads only then.
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyModule(types.ModuleType):
    def __getattr__(self, name: str):
        real = _load(self)
        return getattr(real, name)


def _load(proxy: _LazyModule) -> types.ModuleType:
    name = proxy.__name__
    if sys.modules.get(name) is proxy:
        del sys.modules[name]
    real = importlib.import_module(name)
    # whoever imported the placeholder keeps it: from now on it holds the real attributes
    proxy.__dict__.update(real.__dict__)
    return real


def lazy_module(name: str) -> None:
    """Put a placeholder for module `name` in sys.modules unless it is imported already."""
    if name not in sys.modules:
        sys.modules[name] = _LazyModule(name)


# Imported at startup by trio or by us, but used only by features a node may never turn on:
# ssl, hmac and idna when TLS is configured or a DTLS cookie made; tempfile and shutil when the
# JetStream store directory defaults to the temp dir (ctypes.util, which trio imports to name
# its worker threads, imports them for fallbacks find_library takes only when ldconfig fails).
# Together about 6 MiB resident, OpenSSL most of it (tests/core/test_footprint.py).
DEFERRED_AT_START = ("ssl", "hmac", "idna", "tempfile", "shutil")


def defer_unused_imports() -> None:
    """Placeholders for DEFERRED_AT_START; call before importing trio."""
    for name in DEFERRED_AT_START:
        lazy_module(name)
