"""The optional C extension (agent/_speedups.c), set up for this process, or None.

The extension mirrors the per-line loops of the logs-API read path (de-chunking, frame
decoding), of the file exporter (NDJSON encoding) and of the json parser (a line that is
one JSON object: its fields and level); the Python versions stay next to
their callers and are used when the extension was not built (no compiler at
install time) or when ``CONTAINER_AGENT_PURE_PYTHON=1`` asks for them (benchmarks compare
both; the unit tests run both).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import ModuleType

import orjson

from agent import record
from agent.record import FRAME_STREAMS, Extra, Record

PURE_ENV = "CONTAINER_AGENT_PURE_PYTHON"

# What a log record built in C holds besides its timestamp, meta, stream and message:
# what Record.__init__ leaves for a log line. setup() refuses a Record slot missing here.
_LOG_DEFAULTS = {
    "kind": "log",
    "truncated": False,
    "action": None,
    "attributes": None,
    "stats": None,
    "_json": None,
    "mark": None,
    "extra": None,  # processing results (an Extra: encode_ndjson writes them too)
}
# What a new Extra holds (Extra.__init__): json_fields builds one so, without the call.
# setup_extra() refuses an Extra slot missing here.
_EXTRA_DEFAULTS = {"level": None, "fields": None, "lines": 1, "end": None}


def _load_extension() -> ModuleType | None:
    """The extension, set up; None when it was not built."""
    try:
        from agent import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    _speedups.setup(
        Record,
        _LOG_DEFAULTS,
        FRAME_STREAMS,
        Extra,
        orjson.dumps,
        orjson.loads,
        orjson.JSONDecodeError,
    )
    _speedups.setup_extra(_EXTRA_DEFAULTS)
    return _speedups


def _load() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None
    return _load_extension()


speedups: ModuleType | None = _load()

# The file exporter's and the disk buffer's encoder: the same bytes either way.
encode_ndjson: Callable[[Sequence[Record]], bytes] = (
    speedups.encode_ndjson if speedups is not None else record.encode_ndjson
)


def trim_heap() -> None:
    """Hands the heap pages freed so far back to the system (glibc's ``malloc_trim``;
    elsewhere nothing happens): through the extension, which spares the agent ctypes
    (~0.3 MB of modules and libffi), or through ctypes when it was not built."""
    if speedups is not None:
        speedups.malloc_trim()
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols include libc's
