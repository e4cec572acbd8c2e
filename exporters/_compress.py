"""gzip of the http exporter's request bodies and the prometheus exporter's answers:
ISA-L's deflate when the ``isal`` package is installed (the same gzip, 4-5x faster than
zlib's at the same ratio), else zlib's."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

_fast_zlib: ModuleType | None
try:
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - depends on the installation
    _fast_zlib = None


def _compressor(level: int, fast: bool) -> Any:
    """A gzip compressor: ISA-L's when installed (``isal``; its levels 1-3 stand for
    zlib's 1-3, 4-6 and 7-9), else zlib's."""
    if fast and _fast_zlib is not None:
        return _fast_zlib.compressobj((level + 2) // 3, _fast_zlib.DEFLATED, 31)
    return zlib.compressobj(level, zlib.DEFLATED, 31)


def gzip_bytes(body: bytes, level: int, fast: bool = True) -> bytes:
    """``body`` as one gzip member."""
    c = _compressor(level, fast)
    return c.compress(body) + c.flush()


def gzip_stream(chunks: Iterable[bytes], level: int, fast: bool = True) -> Iterator[bytes]:
    """``chunks``, one body in pieces, as one gzip member in pieces (as the compressor
    gives them: some may be empty)."""
    c = _compressor(level, fast)
    for chunk in chunks:
        yield c.compress(chunk)
    yield c.flush()
