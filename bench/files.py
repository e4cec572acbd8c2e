"""The json-file fast path: the agent reading log files against the agent reading the logs
API, and the raw logs-API read floor, on the same workload.

Each run starts, for each path in turn, C fresh containers printing L lines of ~100 bytes as
fast as they can, every line with a unique sequence number (``bench.throughput``'s
writers), and measures wall time to the last line delivered, lines/s, the reader's CPU per
million lines, the engine's (dockerd) CPU during the run, peak RSS, and lost and duplicated
lines. The agent runs as a subprocess with ``logs.source: api`` or ``files`` (its
``containers_dir`` is the test engine's ``DockerRootDir``/containers). Medians of the runs.

``--idle`` also measures the agent following N idle containers from their files, watching
them with inotify and with a short poll (the fallback when inotify is unavailable), and
through the API.

    python -m bench.files [--containers 4] [--lines 250000] [--runs 3] [--profile] [--idle]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import idle, throughput
from bench.common import (
    RESULTS_DIR,
    RUN_LABEL,
    AgentProcess,
    BenchEngine,
    add_quiet_argument,
    add_retries_argument,
    agent_command,
    engine_host,
    log,
    machine_info,
    machine_line,
    median,
    run_main,
    table,
    write_json,
)

TARGETS = {  # files mode, from the issue
    "lines_per_s": 200_000,
    "cpu_s_per_mlines": 2.5,
    "peak_rss_mb": 60.0,
}
PATHS = ("floor", "api", "files")
COLUMNS = (
    ("wall_s", "wall s"),
    ("lines_per_s", "lines/s"),
    ("cpu_s_per_mlines", "CPU s/M lines"),
    ("dockerd_cpu_s", "dockerd CPU s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("lost", "lost"),
    ("dup", "dup"),
)


class ConfiguredAgent(AgentProcess):
    """``AgentProcess`` with a ``logs`` section; ``poll``: the json-file source polls
    instead of using inotify (set in the subprocess, not an option of the agent)."""

    def __init__(
        self,
        host: str,
        run_id: str,
        workdir: Path,
        log_level: str = "warning",
        *,
        logs: dict[str, Any],
        poll: bool = False,
    ) -> None:
        super().__init__(host, run_id, workdir, log_level)
        self.logs = logs
        self.poll = poll

    def start(self) -> None:
        config = {
            "engine": {"host": self.host},
            "agent": {"log_level": self.log_level, "log_format": "json"},
            "logs": self.logs,
            "containers": {"include": {"label": [f"{RUN_LABEL}=^{self.run_id}$"]}},
            "exporters": {"records": {"type": "file", "path": str(self.records_path)}},
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        command = agent_command()
        if self.poll:
            command = [
                sys.executable,
                "-c",
                "import sys, agent.sources.jsonfile.source as j; j.USE_INOTIFY = False; "
                "from agent.cli import main; sys.exit(main())",
            ]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )


@contextlib.contextmanager
def agents_as(module: ModuleType, **kw: Any) -> Iterator[None]:
    """Makes ``module`` (``bench.throughput``, ``bench.idle``) start ``ConfiguredAgent``s:
    their runs build their ``AgentProcess`` themselves."""
    saved = module.AgentProcess
    module.AgentProcess = functools.partial(ConfiguredAgent, **kw)
    try:
        yield
    finally:
        module.AgentProcess = saved


async def containers_dir(engine: BenchEngine) -> str:
    info = await engine.docker.system.info()
    return str(Path(info["DockerRootDir"]) / "containers")


async def agent_run(
    engine: BenchEngine, logs: dict[str, Any], c: int, n: int, profile: Path | None = None
) -> dict[str, Any]:
    with agents_as(throughput, logs=logs):
        return await throughput.agent_run(engine, c, n, profile=profile)


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    cdir = await containers_dir(engine)
    logs = {"api": {"source": "api"}, "files": {"source": "files", "containers_dir": cdir}}
    result: dict[str, Any] = await throughput_runs(args, engine, logs) if args.runs else {}
    if args.idle:
        result["idle"] = {}
        for name, kw in (
            ("files, inotify", {"logs": logs["files"]}),
            ("files, poll", {"logs": logs["files"], "poll": True}),
            ("api", {"logs": logs["api"]}),
        ):
            log(f"idle: {args.idle_containers} containers, {name}")
            with agents_as(idle, **kw):
                result["idle"][name] = await idle.run(args, engine)
    return result


async def throughput_runs(
    args: argparse.Namespace, engine: BenchEngine, logs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    c, n = args.containers, args.lines
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    for i in range(args.runs):
        for path in PATHS:
            log(f"files run {i + 1}/{args.runs}: {path}, {c} containers x {n:,} lines")
            if path == "floor":
                phase = functools.partial(throughput.floor_run, engine, c, n)
            else:
                phase = functools.partial(agent_run, engine, logs[path], c, n)
            r = await throughput.measured(engine, args, path, phase)
            runs[path].append(r)
            log(
                f"  {path}: {r['wall_s']:.2f} s, {r['lines_per_s']:,.0f} lines/s, "
                f"{r.get('cpu_s_per_mlines') or 0:.2f} CPU s/M, lost {r.get('lost', '-')}, "
                f"dup {r.get('dup', '-')}"
            )
    medians = {p: {k: median(r.get(k) for r in rs) for k, _ in COLUMNS} for p, rs in runs.items()}
    for m in medians.values():
        for k in ("lost", "dup"):
            if m.get(k) is not None:
                m[k] = round(m[k])
    result: dict[str, Any] = {
        "params": {"containers": c, "lines": n, "line_bytes": throughput.LINE_BYTES},
        "runs": runs,
        "median": medians,
        "lost_max": {p: max((r.get("lost") or 0) for r in runs[p]) for p in ("api", "files")},
        "dup_max": {p: max((r.get("dup") or 0) for r in runs[p]) for p in ("api", "files")},
    }
    floor = medians["floor"]["lines_per_s"]
    result["ratio_to_floor"] = {
        p: medians[p]["lines_per_s"] / floor if floor else None for p in ("api", "files")
    }
    f = medians["files"]
    result["targets"] = {
        "lines_per_s": f["lines_per_s"] >= TARGETS["lines_per_s"],
        "cpu_s_per_mlines": f["cpu_s_per_mlines"] <= TARGETS["cpu_s_per_mlines"],
        "peak_rss_mb": f["peak_rss_mb"] < TARGETS["peak_rss_mb"],
        "no_loss_or_dup": result["lost_max"]["files"] == 0 and result["dup_max"]["files"] == 0,
    }
    if args.profile:
        out = RESULTS_DIR / "files-profile.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        log("profile run (not counted): the agent reading files, under py-spy")
        prof = await throughput.measured(
            engine,
            args,
            "profile",
            functools.partial(agent_run, engine, logs["files"], c, n, out),
        )
        ok = out.exists() and out.stat().st_size > 0
        result["profile"] = {
            "raw": str(out),
            "run": prof,
            "top": throughput.top_functions(out, 15) if ok else [],
        }
    return result


def report(result: dict[str, Any]) -> str:
    text = report_throughput(result) if "params" in result else []
    idle_results = result.get("idle")
    if idle_results:
        n = next(iter(idle_results.values()))["params"]["containers"]
        text.append(f"idle: {n} containers, agent CPU and RSS")
        text.append(
            table(
                ["agent", "CPU %", "dockerd CPU %", "RSS MB"],
                [
                    [name, r.get("cpu_pct"), r.get("dockerd_cpu_pct"), r.get("rss_mb")]
                    for name, r in idle_results.items()
                ],
            )
        )
    return "\n".join(text)


def report_throughput(result: dict[str, Any]) -> list[str]:
    p = result["params"]
    m = result["median"]
    rows = [[path, *(m[path].get(k) for k, _ in COLUMNS)] for path in PATHS]
    runs = len(result["runs"]["floor"])
    text = [
        f"json-file vs logs API: {p['containers']} containers x {p['lines']:,} lines of "
        f"{p['line_bytes']} B, median of {runs} run(s)",
        table(["path", *(title for _, title in COLUMNS)], rows),
        "floor: raw logs-API read (no decoding); CPU s/M lines is the reader's own CPU",
        "lines/s vs floor: "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["ratio_to_floor"].items() if v),
        "worst run, lost/dup: "
        + ", ".join(
            f"{k} {result['lost_max'][k]}/{result['dup_max'][k]}" for k in result["lost_max"]
        ),
        "files targets: "
        + ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in result["targets"].items()),
    ]
    prof = result.get("profile")
    if prof:
        text.append(f"profile (files mode, under py-spy): {prof['raw']}")
        text.append(
            table(
                ["function", "self %", "total %"],
                [[t["function"], t["self_pct"], t["total_pct"]] for t in prof["top"]],
            )
        )
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("files")
    g.add_argument("--containers", type=int, default=4, help="containers per run (4)")
    g.add_argument("--lines", type=int, default=250_000, help="lines per container (250000)")
    g.add_argument("--runs", type=int, default=3, help="repetitions, medians reported (3; 0: none)")
    g.add_argument("--profile", action="store_true", help="one extra files run under py-spy")
    g.add_argument("--idle", action="store_true", help="also the idle inotify/poll/api runs")
    g.add_argument("--idle-containers", type=int, default=100, help="idle containers (100)")
    g.add_argument("--idle-seconds", type=float, default=20.0, help="idle window (20 s)")
    g.add_argument("--idle-settle", type=float, default=5.0, help="before the window (5 s)")
    add_quiet_argument(parser)
    add_retries_argument(parser)


async def _main(args: argparse.Namespace) -> int:
    async with BenchEngine(engine_host()) as engine:
        info = await machine_info(engine)
        result = await run(args, engine)
    print(machine_line(info))
    print(report(result))
    out = Path(args.json) if args.json else RESULTS_DIR / "files.json"
    write_json(out, {"machine": info, "files": result})
    print(f"(written to {out})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.files", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--json", help="where to write the JSON (bench/results/files.json)")
    args = parser.parse_args()
    sys.exit(run_main(lambda: _main(args)))


if __name__ == "__main__":
    main()
