"""container-agent: follows Docker containers' logs and events and ships them as records."""

# The one place the version is written: pyproject.toml reads it from here (dynamic), so
# the agent needs no importlib.metadata (20 ms and half a megabyte at every start).
__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


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


def frozenlist_in_python() -> None:
    """frozenlist (aiohttp's middleware and signal lists, aiosignal's ``Signal``) is built
    as a C++ extension: loading it maps libstdc++, about 1.3 MB of resident memory at
    every start, for lists that aiohttp reads a few times per request or connection (none
    of them on a log line's path). frozenlist's own pure-Python ``FrozenList``, which it
    uses when the extension is absent (or ``FROZENLIST_NO_EXTENSIONS`` is set), behaves
    the same. Called by the command line before anything imports aiohttp."""
    import sys

    if "frozenlist" in sys.modules:
        return
    sys.modules["frozenlist._frozenlist"] = None  # type: ignore[assignment]  # (an ImportError)
    try:
        import frozenlist  # noqa: F401
    finally:
        del sys.modules["frozenlist._frozenlist"]


# aiohttp's default contexts (verifying and not), made without the CA store
_DEFERRED_CA: "list[ssl.SSLContext]" = []


def aiohttp_without_ca_store() -> None:
    """aiohttp makes its two default TLS contexts when it is imported, the verifying one
    and the one for ``ssl=False``, and each reads every certificate of the system's CA
    store: about 1.3 MB of resident memory and 20 ms of CPU each at every start, for
    contexts that only an https request without a context of its own uses. The agent's
    engine client and its https exporters bring their own. So aiohttp is imported with
    ``set_default_verify_paths`` (what ``ssl.create_default_context`` and the
    non-verifying context's set-up call to read the store) deferred, and
    ``load_deferred_ca`` reads the store into those contexts before anything could use
    them (an http exporter: a redirect may lead to https). Should the verifying one be
    used empty, its requests fail certificate verification: never unverified. Called by
    the command line before anything imports aiohttp."""
    import ssl
    import sys

    if "aiohttp" in sys.modules:
        return

    def deferred(self: ssl.SSLContext) -> None:
        _DEFERRED_CA.append(self)

    ssl.SSLContext.set_default_verify_paths = deferred  # type: ignore[method-assign]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths  # _ssl._SSLContext's again


def load_deferred_ca() -> None:
    """The system's CA store read into the contexts ``aiohttp_without_ca_store`` left
    without it (blocking file reads: call it from a thread)."""
    while _DEFERRED_CA:
        _DEFERRED_CA.pop().set_default_verify_paths()
