"""The ``container-agent`` command: ``run``, ``check-config FILE``, ``config-reference``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import sys

import orjson
import structlog

from agent import __version__
from agent import logging as agent_logging
from agent.config import ConfigError, load, reference_markdown
from agent.runtime import EXIT_OK, EXIT_USAGE, Runtime


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="container-agent",
        description="Follows Docker containers' logs and events and ships them as records.",
    )
    parser.add_argument("--version", action="version", version=f"container-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", help="YAML config file (default: built-in defaults)")
    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("file", help="YAML config file")
    sub.add_parser("config-reference", help="print the config reference (Markdown)")
    return parser


def _error(message: str) -> int:
    print(f"container-agent: {message}", file=sys.stderr)
    return EXIT_USAGE


GC_THRESHOLD = 20_000  # allocations between two young-generation collections (default 700)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config-reference":
        sys.stdout.write(reference_markdown())
        return EXIT_OK
    if args.command == "check-config":
        try:
            config = load(args.file)
        except ConfigError as exc:
            return _error(f"config error: {exc}")
        sys.stdout.write(
            orjson.dumps(
                config.model_dump(mode="json", serialize_as_any=True), option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
        print(f"{args.file}: OK", file=sys.stderr)
        return EXIT_OK
    try:
        config = load(args.config)
    except ConfigError as exc:
        return _error(f"config error: {exc}")
    agent_logging.configure(config.agent.log_level, config.agent.log_format)
    tune_gc()
    try:
        return asyncio.run(Runtime(config).run())
    except KeyboardInterrupt:  # a second Ctrl-C before the handlers were installed
        structlog.get_logger("agent").warning("agent_interrupted")
        return 130


def tune_gc() -> None:
    """The cyclic GC, tuned for a stream of short-lived records.

    Every log line is one GC-tracked ``Record`` that lives until the exporters have it (tens
    of thousands at a time in the queues); with the default thresholds the collector runs
    every 700 allocations and keeps promoting queued records into the old generations, then
    walks everything the imports left behind (~200k objects) again and again: measured, a
    third of the decoding cost. Records form no cycles; the objects made at start-up are
    frozen out of the collector, and the young generation holds many more objects.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    _trim_heap()


def _trim_heap() -> None:
    """Hands the heap pages freed after start-up (config parsing, schema building) back to
    the system (glibc only; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols include libc's
