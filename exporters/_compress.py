"""gzip of the http exporter's request bodies and the prometheus exporter's answers:
ISA-L's deflate when the ``isal`` package is installed (the same gzip, 4-5x faster than
zlib's at the same ratio), else zlib's."""

from __future__ import annotations

import zlib
from types import ModuleType

_fast_zlib: ModuleType | None
try:
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - depends on the installation
    _fast_zlib = None


def gzip_bytes(body: bytes, level: int, fast: bool = True) -> bytes:
    """``body`` as one gzip member: with ISA-L when installed (``isal``; its levels 1-3
    stand for zlib's 1-3, 4-6 and 7-9), else with zlib."""
    if fast and _fast_zlib is not None:
        c = _fast_zlib.compressobj((level + 2) // 3, _fast_zlib.DEFLATED, 31)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(body) + c.flush()
