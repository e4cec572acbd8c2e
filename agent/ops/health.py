"""``container-agent health``: asks a running agent's ``/healthz`` whether it is alive.

A container's HEALTHCHECK (the image has no curl) and people run it. The address is
``--endpoint``, else the ``listen`` of the first prometheus exporter in ``--config``, else
``127.0.0.1:9811`` (the built-in default). A wildcard listen address (``0.0.0.0``, ``::``
or none) is asked on loopback. Exit 0 when ``/healthz`` answers 200, else 1; one line says
why either way.

The standard library only (urllib), and PyYAML when a config file is given: no pydantic,
aiohttp or exporter, so ``python -m agent.ops.health`` (what the image's HEALTHCHECK runs)
starts in a fraction of the agent's start-up; ``container-agent health`` is the same check
behind the agent's command, which imports all of the agent first. The config file is read
as YAML, not validated: ``container-agent check-config`` does that.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from agent.ops.commands import DEFAULT_LISTEN, DEFAULT_TIMEOUT, health_arguments

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_BODY_SHOWN = 200  # characters of a non-200 answer's body that the line shows


class HealthError(Exception):
    """The address cannot be found (unreadable config, no prometheus exporter)."""


@dataclass(frozen=True)
class Result:
    ok: bool
    line: str

    @property
    def code(self) -> int:
        return EXIT_HEALTHY if self.ok else EXIT_UNHEALTHY


def url_for_listen(listen: str) -> str:
    """The ``/healthz`` URL of an exporter listening on ``host:port``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise HealthError(f"listen address {listen!r} is not host:port")
    host = host.strip("[]")
    host = _WILDCARDS.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def url_for_endpoint(endpoint: str) -> str:
    """``--endpoint``: ``host:port``, or a URL (``/healthz`` when it names no path)."""
    if "://" not in endpoint:
        return url_for_listen(endpoint)
    scheme, _, rest = endpoint.partition("://")
    if scheme not in ("http", "https"):
        raise HealthError(f"endpoint {endpoint!r}: only http:// and https:// are asked")
    authority, slash, path = rest.partition("/")
    if not authority:
        raise HealthError(f"endpoint {endpoint!r} names no host")
    return f"{scheme}://{authority}/{path if slash and path else 'healthz'}"


def listen_from_config(path: str) -> str:
    """The ``listen`` of the config's first prometheus exporter; the default one when the
    config names no exporters at all (the built-in exporters include one)."""
    import yaml  # only with --config: a bare check imports no more than it needs

    try:
        with open(path, encoding="utf-8") as f:
            data: Any = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HealthError(f"{path}: cannot read the config file: {reason}") from None
    except yaml.YAMLError as exc:
        raise HealthError(f"{path}: not YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HealthError(f"{path}: the top level is not a mapping")
    if "exporters" not in data:
        return DEFAULT_LISTEN
    exporters = data["exporters"]
    if isinstance(exporters, dict):
        for item in exporters.values():
            if isinstance(item, dict) and item.get("type") == "prometheus":
                listen = item.get("listen", DEFAULT_LISTEN)
                return str(listen)
    raise HealthError(f"{path}: no prometheus exporter, so nothing serves /healthz")


def check(url: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """One GET of ``url``: healthy when it answers 200."""
    import urllib.error  # here: the module's helpers (console's too) need no urllib
    import urllib.request

    # No proxy, whatever HTTP_PROXY says: the agent is on this host (or in this container).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"User-Agent": "container-agent-health"})
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            body = response.read(_BODY_SHOWN)
    except urllib.error.HTTPError as exc:
        status = exc.code
        try:
            body = exc.read(_BODY_SHOWN)
        except OSError:
            body = b""
        finally:
            exc.close()
    except urllib.error.URLError as exc:
        return Result(False, f"unhealthy: {url}: {_reason(exc.reason, timeout)}")
    except (TimeoutError, OSError) as exc:  # a timeout or reset while reading the answer
        return Result(False, f"unhealthy: {url}: {_reason(exc, timeout)}")
    if status == 200:
        return Result(True, f"healthy: {url} answered 200")
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return Result(False, f"unhealthy: {url} answered {status}" + (f": {text}" if text else ""))


def _reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the agent running, its prometheus exporter listening there?)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def run(endpoint: str | None, config: str | None, timeout: float) -> Result:
    try:
        if endpoint:
            url = url_for_endpoint(endpoint)
        elif config:
            url = url_for_listen(listen_from_config(config))
        else:
            url = url_for_listen(DEFAULT_LISTEN)
    except HealthError as exc:
        return Result(False, f"unhealthy: {exc}")
    return check(url, timeout)


def main(args: argparse.Namespace) -> int:
    """``container-agent health``: prints one line (stdout if healthy, else stderr)."""
    result = run(args.endpoint, args.config, args.timeout)
    print(result.line, file=sys.stdout if result.ok else sys.stderr)
    return result.code


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.ops.health", description="Asks a running agent's /healthz."
    )
    health_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_standalone())
