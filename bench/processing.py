"""The processing chain's cost: the 4 x 250,000 workload in files mode per configuration,
and an in-process micro-benchmark per stage.

Configurations (``CONFIGS``): ``none`` (nothing configured: no chain; on plain lines and
on JSON lines, the baseline of the json runs: the agent already derives a JSON message's
fields when it encodes it), ``json`` (the json parser), ``multiline`` (the java preset),
``redaction`` (all six presets), ``all`` (java multiline, json parser, an exclude filter,
all redaction presets). The json and all runs
print JSON lines of the same size (``{"level":"info","msg":"c<i> xxx…","seq":N}``, the
sequence number still checked for loss and duplicates); the others bench.throughput's
plain lines. Each run is bench.throughput's agent run (a fresh agent subprocess, the
writers started together, wall time to the last record, the agent's CPU), reading the
json-file logs (``logs.source: files``, as bench.files does).

``today``: the same workload with nothing configured on a copy of this tree with the
processing foundation taken out (Record's ``extra`` slot, ``advance`` reading it, the
runtime's Processing): the "no measurable change" comparison. Built with ``--today``
(a git worktree under /tmp, the C extension copied in).

The micro-benchmark runs each stage's ``process`` on batches of 200 records built from
recorded input (bench.throughput's line format, JSON lines, and the genuine traces of
tests/unit/processing/data/traces.json mixed in at 1 line in 50), and reports
microseconds per line next to the bare decode (JsonFileDecoder) + encode (NDJSON) cost.

    python -m bench.processing [--containers 4] [--lines 250000] [--runs 3] [--today]
                               [--micro-only] [--configs none,all] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from bench import throughput
from bench.common import (
    BenchEngine,
    add_quiet_argument,
    add_retries_argument,
    agent_command,
    log,
    median,
    standalone,
    table,
)
from bench.files import ConfiguredAgent, containers_dir

ROOT = Path(__file__).resolve().parents[1]
ALL_REDACTIONS = ["bearer", "url_password", "aws", "jwt", "card", "email"]
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "none": ({}, "plain"),
    "none-json": ({}, "json"),
    "json": ({"parser": "json"}, "json"),
    "multiline": ({"multiline": "java"}, "plain"),
    "redaction": ({"redact": ALL_REDACTIONS}, "plain"),
    "all": (
        {
            "multiline": "java",
            "parser": "json",
            "exclude": "^DEBUG ",
            "redact": ALL_REDACTIONS,
        },
        "json",
    ),
}
TARGETS = {"lines_per_s": 200_000, "cpu_vs_none": 2.0}
TODAY_DIR = Path("/tmp/container-agent-bench-today")
# Both line formats: "c<i> xxx… <seq>" and {"level":"info","msg":"c<i> xxx…","seq":<seq>}
# as the message appears in a record (the JSON one escaped).
MESSAGE_RE = re.compile(rb'c(\d+) x+(?: |\\",\\"seq\\":)(\d+)')
COLUMNS = (
    ("lines_per_s", "lines/s"),
    ("cpu_s_per_mlines", "CPU s/M lines"),
    ("cpu_vs_none", "CPU vs none"),
    ("peak_rss_mb", "peak RSS MB"),
    ("lost", "lost"),
    ("dup", "dup"),
)


def json_writer_command(index: int, lines: int) -> tuple[list[str], dict[str, str]]:
    """bench.throughput's writer, printing JSON objects of the same 100 bytes. The last
    line lacks its closing brace (seq ends with its last number): one unparsed line."""
    head0 = f'{{"level":"info","msg":"c{index} '
    tail = '","seq":'
    pad = "x" * (throughput.LINE_BYTES - len(head0) - len(tail) - 10 - 1 - 1)
    head = f"{head0}{pad}{tail}"
    env = {
        "HEAD": head,
        "SEP": "}\n" + head,
        "FIRST": str(throughput.SEQ_BASE),
        "LAST": str(throughput.SEQ_BASE + lines - 1),
    }
    cmd = ["sh", "-c", 'printf "%s" "$HEAD"; exec seq -s "$SEP" "$FIRST" "$LAST"']
    return cmd, env


class ProcessingAgent(ConfiguredAgent):
    """bench.files' agent with a ``processing`` section; ``tree``: run that copy of the
    agent instead (PYTHONPATH)."""

    def __init__(
        self,
        host: str,
        run_id: str,
        workdir: Path,
        log_level: str = "warning",
        *,
        logs: dict[str, Any],
        processing: dict[str, Any],
        tree: Path | None = None,
    ) -> None:
        super().__init__(host, run_id, workdir, log_level, logs=logs)
        self.processing = processing
        self.tree = tree

    def start(self) -> None:
        config = {
            "engine": {"host": self.host},
            "agent": {"log_level": self.log_level, "log_format": "json"},
            "logs": self.logs,
            "containers": {"include": {"label": [f"ca-bench-run=^{self.run_id}$"]}},
            "exporters": {"records": {"type": "file", "path": str(self.records_path)}},
        }
        if self.processing:
            config["processing"] = self.processing
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        env = dict(os.environ)
        if self.tree is not None:
            env["PYTHONPATH"] = str(self.tree)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*agent_command(), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
                env=env,
            )


@contextlib.contextmanager
def workload(kind: str, **agent: Any) -> Iterator[None]:
    """bench.throughput's runs with this agent and these lines."""
    saved = (throughput.AgentProcess, throughput.writer_command, throughput.MESSAGE_RE)
    throughput.AgentProcess = functools.partial(ProcessingAgent, **agent)
    if kind == "json":
        throughput.writer_command = json_writer_command
    throughput.MESSAGE_RE = MESSAGE_RE
    try:
        yield
    finally:
        throughput.AgentProcess, throughput.writer_command, throughput.MESSAGE_RE = saved


def make_today() -> Path:
    """A worktree of HEAD without the processing foundation (see the module docstring)."""
    if TODAY_DIR.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(TODAY_DIR)], cwd=ROOT)
        shutil.rmtree(TODAY_DIR, ignore_errors=True)
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(TODAY_DIR), "HEAD"], cwd=ROOT, check=True
    )
    first = subprocess.run(
        ["git", "log", "--format=%H", "--reverse", "-S", "class Extra:", "--", "agent/record.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    patch = subprocess.run(
        [
            "git",
            "diff",
            f"{first}^",
            first,
            "--",
            "agent/record.py",
            "agent/speedups.py",
            "agent/positions.py",
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["git", "apply", "-R"], input=patch, cwd=TODAY_DIR, check=True)
    runtime = TODAY_DIR / "agent" / "runtime.py"
    text = runtime.read_text()
    text = re.sub(r"self\.followers\.processing = Processing\([^\n]*\)", "pass", text)
    text = text.replace("from agent.processing.build import Processing\n", "")
    runtime.write_text(text)
    for so in (ROOT / "agent").glob("_speedups*.so"):
        shutil.copy2(so, TODAY_DIR / "agent" / so.name)
    return TODAY_DIR


async def files_runs(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    logs = {"source": "files", "containers_dir": await containers_dir(engine)}
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    plan: list[tuple[str, dict[str, Any], str, Path | None]] = [
        (n, CONFIGS[n][0], CONFIGS[n][1], None) for n in names
    ]
    if args.today:
        plan.append(("today", {}, "plain", make_today()))
    c, n = args.containers, args.lines
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in plan}
    for i in range(args.runs):
        for name, processing, kind, tree in plan:
            log(f"processing run {i + 1}/{args.runs}: {name}, {c} x {n:,} lines, files")
            with workload(kind, logs=logs, processing=processing, tree=tree):
                r = await throughput.measured(
                    engine, args, name, functools.partial(throughput.agent_run, engine, c, n)
                )
            runs[name].append(r)
            log(
                f"  {name}: {r['lines_per_s']:,.0f} lines/s, "
                f"{r.get('cpu_s_per_mlines') or 0:.2f} CPU s/M, lost {r.get('lost')}, "
                f"dup {r.get('dup')}"
            )
    keys = ("lines_per_s", "cpu_s_per_mlines", "peak_rss_mb", "lost", "dup", "wall_s")
    medians = {k: {m: median(r.get(m) for r in rs) for m in keys} for k, rs in runs.items()}
    base = medians.get("none", {}).get("cpu_s_per_mlines")
    for m in medians.values():
        cpu = m.get("cpu_s_per_mlines")
        m["cpu_vs_none"] = cpu / base if cpu and base else None
    result: dict[str, Any] = {
        "params": {"containers": c, "lines": n, "runs": args.runs, "source": "files"},
        "runs": runs,
        "median": medians,
    }
    if "all" in medians:
        a = medians["all"]
        result["targets"] = {
            "all_lines_per_s": (a["lines_per_s"] or 0) >= TARGETS["lines_per_s"],
            "all_cpu_vs_none": (a["cpu_vs_none"] or 99) <= TARGETS["cpu_vs_none"],
        }
    if "today" in medians and "none" in medians:
        t, z = medians["today"], medians["none"]
        result["none_vs_today"] = {
            "lines_per_s": z["lines_per_s"] / t["lines_per_s"] if t["lines_per_s"] else None,
            "cpu_s_per_mlines": (
                z["cpu_s_per_mlines"] / t["cpu_s_per_mlines"] if t["cpu_s_per_mlines"] else None
            ),
            "cpu_spread_today": [r.get("cpu_s_per_mlines") for r in runs["today"]],
            "cpu_spread_none": [r.get("cpu_s_per_mlines") for r in runs["none"]],
        }
    return result


# -- in-process, per stage -------------------------------------------------------------------


def _inputs(lines: int) -> dict[str, list[bytes]]:
    """json-file lines (as the engine writes them) of each kind of input."""
    traces = json.loads((ROOT / "tests/unit/processing/data/traces.json").read_text())
    trace_lines = [
        line
        for group in ("java", "python")
        for text in traces[group].values()
        for line in text.split("\n")
    ]
    out: dict[str, list[bytes]] = {"plain": [], "json": [], "traces": []}
    base = 1_800_000_000_000_000_000
    pad = "x" * 60
    for i in range(lines):
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base + i * 1000) // 10**9))
        stamp = f"{ts}.{(base + i * 1000) % 10**9:09d}Z"
        plain = f"c0 {pad} {1_000_000_000 + i}"
        js = f'{{"level":"info","msg":"c0 {pad[:40]}","seq":{1_000_000_000 + i}}}'
        mixed = trace_lines[i % len(trace_lines)] if i % 50 < 10 else plain
        for kind, msg in (("plain", plain), ("json", js), ("traces", mixed)):
            out[kind].append(
                orjson.dumps({"log": msg + "\n", "stream": "stdout", "time": stamp}) + b"\n"
            )
    return out


def micro(lines: int = 200_000, batch: int = 200) -> dict[str, Any]:
    from agent.cli import tune_gc
    from agent.processing.build import build
    from agent.processing.config import ProcessingConfig
    from agent.processing.resolve import resolve
    from agent.record import ContainerMeta
    from agent.sources.jsonfile.decoder import JsonFileDecoder
    from agent.speedups import encode_ndjson

    meta = ContainerMeta("c" * 64, "/bench", "img", {}, "host")
    inputs = _inputs(lines)
    stages: dict[str, tuple[dict[str, Any], str]] = {
        "multiline java (plain lines)": ({"multiline": "java"}, "plain"),
        "multiline java (20% trace lines)": ({"multiline": "java"}, "traces"),
        "multiline python (20% trace lines)": ({"multiline": "python"}, "traces"),
        "parse json": ({"parser": "json"}, "json"),
        "parse logfmt (plain lines: rejected)": ({"parser": "logfmt"}, "plain"),
        "detect_level": ({"detect_level": True}, "plain"),
        "filter exclude": ({"exclude": "^DEBUG "}, "plain"),
        "redact 6 presets (plain lines)": ({"redact": ALL_REDACTIONS}, "plain"),
        "redact 6 presets (json lines, parsed)": (
            {"parser": "json", "redact": ALL_REDACTIONS},
            "json",
        ),
        "rate limit drop (under the limit)": (
            {"rate_limit": {"lines_per_second": 1e9, "mode": "drop"}},
            "plain",
        ),
        "all (json lines)": (CONFIGS["all"][0], "json"),
    }

    def decoded(kind: str) -> list[list[Any]]:
        dec = JsonFileDecoder(meta, 1 << 20)
        data = inputs[kind]
        return [dec.feed_lines(b"".join(data[i : i + batch])) for i in range(0, lines, batch)]

    def timed(fn: Any, batches: list[Any]) -> float:
        tune_gc()  # as the agent does (agent.cli): the inputs are start-up objects here
        t0 = time.process_time()
        for b in batches:
            fn(b)
        return (time.process_time() - t0) / lines * 1e6

    out: dict[str, Any] = {"lines": lines, "batch": batch, "us_per_line": {}}
    for kind in ("plain", "json"):
        dec = JsonFileDecoder(meta, 1 << 20)
        data = inputs[kind]
        chunks = [b"".join(data[i : i + batch]) for i in range(0, lines, batch)]
        out["us_per_line"][f"bare: decode ({kind})"] = timed(dec.feed_lines, chunks)
        out["us_per_line"][f"bare: encode ({kind})"] = timed(encode_ndjson, decoded(kind))
    for name, (settings, kind) in stages.items():
        cfg = ProcessingConfig.model_validate(settings)
        chain = build(resolve(cfg, meta)[0], cfg, meta)
        batches = decoded(kind)
        out["us_per_line"][name] = timed(chain.process, batches)
        # and the encode of what it made (the file exporter's encoder, processing results too)
        made = [chain.process(b) for b in decoded(kind)]
        out["us_per_line"][name + ": then encode_ndjson"] = timed(encode_ndjson, made)
    return out


def report(result: dict[str, Any]) -> str:
    text: list[str] = []
    files = result.get("files")
    if files:
        p = files["params"]
        m = files["median"]
        text.append(
            f"processing, files mode: {p['containers']} x {p['lines']:,} lines, "
            f"median of {p['runs']} run(s)"
        )
        rows = [[name, *(v.get(k) for k, _ in COLUMNS)] for name, v in m.items()]
        text.append(table(["config", *(t for _, t in COLUMNS)], rows))
        if "targets" in files:
            text.append(
                "targets (all): "
                + ", ".join(f"{k} {'ok' if ok else 'MISSED'}" for k, ok in files["targets"].items())
            )
        if "none_vs_today" in files:
            nt = files["none_vs_today"]
            text.append(
                f"none vs today: lines/s x{nt['lines_per_s']:.3f}, CPU/line "
                f"x{nt['cpu_s_per_mlines']:.3f} (CPU s/M runs: today {nt['cpu_spread_today']}, "
                f"none {nt['cpu_spread_none']})"
            )
    mic = result.get("micro")
    if mic:
        text.append(
            f"per stage, in process: us per line ({mic['lines']:,} lines, "
            f"batches of {mic['batch']})"
        )
        text.append(table(["stage", "us/line"], [[k, v] for k, v in mic["us_per_line"].items()]))
    return "\n".join(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--lines", type=int, default=250_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument(
        "--today", action="store_true", help="also run a tree without the processing code"
    )
    parser.add_argument("--micro-only", action="store_true", help="the in-process part only")
    parser.add_argument("--micro-lines", type=int, default=200_000)
    add_quiet_argument(parser)
    add_retries_argument(parser)


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    log("per stage, in process")
    result: dict[str, Any] = {"micro": micro(args.micro_lines)}
    if not args.micro_only:
        result["files"] = await files_runs(args, engine)
    return result


if __name__ == "__main__":
    standalone(sys.modules[__name__])
