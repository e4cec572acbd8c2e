"""The operator commands' arguments: ``status``, ``top``, ``tap`` and ``health``.

``container-agent run`` declares every command's arguments to parse its own, so they live
here, apart from the commands: ``agent.ops.console`` and ``agent.ops.health`` are imported
only when one of their commands runs (~84 kB of an agent's resident memory and ~1.5 ms of
its start otherwise). The standard library only, like ``agent.ops.health``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:9811"  # the prometheus exporter's default `listen`
DEFAULT_TIMEOUT = 5.0

# command -> (module, function) that runs it
COMMANDS = {
    "status": ("agent.ops.console", "status_main"),
    "top": ("agent.ops.console", "top_main"),
    "tap": ("agent.ops.console", "tap_main"),
    "health": ("agent.ops.health", "main"),
}


def _endpoint_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--endpoint`` (``what`` answers there) and ``--config``, which every command takes."""
    parser.add_argument(
        "--endpoint",
        help=f"host:port or URL of the agent's {what} (default: from --config, else "
        f"{DEFAULT_LISTEN})",
    )
    parser.add_argument("--config", "-c", help="the agent's YAML config file")


def health_arguments(parser: argparse.ArgumentParser) -> None:
    _endpoint_arguments(parser, "prometheus exporter")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})",
    )


def register(sub: Any) -> None:
    """Adds ``status``, ``top``, ``tap`` and ``health`` to the CLI's subcommands."""
    status = sub.add_parser("status", help="what the running agent is doing, as tables")
    _endpoint_arguments(status, "listener")
    status.add_argument("--json", action="store_true", help="print the JSON document")
    top = sub.add_parser("top", help="the status, refreshed in place (Ctrl-C to leave)")
    _endpoint_arguments(top, "listener")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    tap = sub.add_parser("tap", help="print the records passing through the running agent")
    _endpoint_arguments(tap, "listener")
    tap.add_argument("--container", help="only containers whose name matches this regex")
    tap.add_argument("--exporter", help="only the records this exporter takes")
    tap.add_argument("--grep", help="only records whose message matches this regex")
    tap.add_argument("--limit", type=int, help="stop after this many records")
    health_arguments(
        sub.add_parser("health", help="ask the running agent's /healthz (exit 0 if it answers 200)")
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``args.command`` (one of ``COMMANDS``), importing its module now."""
    module, function = COMMANDS[args.command]
    code: int = getattr(importlib.import_module(module), function)(args)
    return code
