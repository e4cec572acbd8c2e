"""container-agent: follows Docker containers' logs and events and ships them as records."""

# The one place the version is written: pyproject.toml reads it from here (dynamic), so
# the agent needs no importlib.metadata (20 ms and half a megabyte at every start).
__version__ = "0.1.0"


def structlog_without_rich() -> None:
    """structlog.dev imports rich, when it is installed, for tracebacks in colour: 6 MB of
    resident memory and 20 ms at every start of an agent that never shows them (its
    console renderer's tracebacks are plain). rich is there for ``container-agent top``,
    which imports it itself. Called by the command line before anything imports structlog."""
    import sys

    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # (an ImportError for structlog)
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
