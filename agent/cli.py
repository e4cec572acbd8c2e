"""The ``container-agent`` command: ``run``, ``check-config FILE``, ``config-reference``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from pathlib import Path

from agent import (
    __version__,
    aiohttp_without_ca_store,
    frozenlist_in_python,
    structlog_without_rich,
)

structlog_without_rich()  # before the first import of structlog
frozenlist_in_python()  # before the first import of aiohttp
aiohttp_without_ca_store()  # before the first import of aiohttp

import orjson  # noqa: E402
import structlog  # noqa: E402

from agent import logging as agent_logging  # noqa: E402
from agent.config import ConfigError, load, reference_markdown  # noqa: E402
from agent.eventloop import new_loop  # noqa: E402
from agent.limits import raise_nofile_limit  # noqa: E402
from agent.ops import commands  # noqa: E402
from agent.runtime import EXIT_OK, EXIT_USAGE, PID_FILE, Runtime  # noqa: E402
from agent.speedups import trim_heap  # noqa: E402


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
    commands.register(sub)
    reload = sub.add_parser(
        "reload", help="make the running agent read its config file again (SIGHUP)"
    )
    reload.add_argument("--config", "-c", help="its config file (to find its state_dir)")
    reload.add_argument("--pid-file", help="the agent's pid file (default <state_dir>/agent.pid)")
    return parser


def _error(message: str) -> int:
    print(f"container-agent: {message}", file=sys.stderr)
    return EXIT_USAGE


GC_THRESHOLD = 20_000  # allocations between two young-generation collections (default 700)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in commands.COMMANDS:
        return commands.run(args)
    if args.command == "config-reference":
        sys.stdout.write(reference_markdown())
        return EXIT_OK
    if args.command == "reload":
        return _reload(args)
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
    raise_nofile_limit()  # every followed container holds a log stream or file open
    try:
        with asyncio.Runner(loop_factory=lambda: new_loop(config.agent.wake_window_seconds)) as run:
            return run.run(Runtime(config, args.config).run())
    except KeyboardInterrupt:  # a second Ctrl-C before the handlers were installed
        structlog.get_logger("agent").warning("agent_interrupted")
        return 130


def _reload(args: argparse.Namespace) -> int:
    """Sends SIGHUP to the agent whose pid file is under the config's state_dir."""
    pid_file = args.pid_file
    if pid_file is None:
        try:
            config = load(args.config)
        except ConfigError as exc:
            return _error(f"config error: {exc}")
        pid_file = os.path.join(config.state_dir, PID_FILE)
    try:
        pid = int(Path(pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        return _error(f"cannot signal the agent through {pid_file}: {exc}")
    print(f"container-agent: reload requested (pid {pid}); its log says whether it applied")
    return EXIT_OK


def tune_gc() -> None:
    """The cyclic GC, tuned for a stream of short-lived records.

    Every log line is one GC-tracked ``Record`` that lives until the exporters have it (tens
    of thousands at a time in the queues); with the default thresholds the collector runs
    every 700 allocations and keeps promoting queued records into the old generations, then
    walks everything the imports left behind (~200k objects) again and again: measured, a
    third of the decoding cost. Records form no cycles; the objects made at start-up are
    frozen out of the collector, and the young generation holds many more objects.

    Before freezing, the young generations are collected (config parsing and schema
    building just before leave their cycles there; the imports' were collected as they
    went): a full collection walks all ~50,000 start-up objects, ~20 ms of every start,
    and found 5 objects more than this one (the file and prometheus exporters; an http
    one with a disk buffer, multiline, a parser, redaction and rate limits).
    """
    gc.collect(1)
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    trim_heap()  # the pages freed by config parsing and schema building
