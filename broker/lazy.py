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
