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


# aiohttp's default verifying contexts, made without certificates
_DEFERRED_CA: "list[ssl.SSLContext]" = []


def aiohttp_without_ca_store() -> None:
    """aiohttp makes its default verifying TLS context when it is imported, reading every
    certificate of the system's CA store: about 2.4 MB of resident memory and 20-45 ms at
    every start, for a context that only an https request without a context of its own
    uses. The agent's engine client and its https exporters bring their own. So aiohttp
    is imported with that context made empty, and ``load_deferred_ca`` reads the store
    into it before anything could use it (an http exporter: a redirect may lead to https).
    Should one be used empty, its requests fail certificate verification: never
    unverified. Called by the command line before anything imports aiohttp."""
    import ssl
    import sys

    if "aiohttp" in sys.modules:
        return
    real = ssl.create_default_context

    def deferred(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: str | bytes | None = None,
    ) -> ssl.SSLContext:
        if purpose is not ssl.Purpose.SERVER_AUTH or cafile or capath or cadata is not None:
            return real(purpose, cafile=cafile, capath=capath, cadata=cadata)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifying, as create_default_context
        _DEFERRED_CA.append(context)
        return context

    ssl.create_default_context = deferred  # type: ignore[assignment]
    try:
        import aiohttp.connector  # noqa: F401
    finally:
        ssl.create_default_context = real


def load_deferred_ca() -> None:
    """The system's CA store read into the contexts ``aiohttp_without_ca_store`` left
    empty (blocking file reads: call it from a thread)."""
    import ssl

    while _DEFERRED_CA:
        _DEFERRED_CA.pop().load_default_certs(ssl.Purpose.SERVER_AUTH)
