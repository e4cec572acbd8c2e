"""Runs every benchmark (throughput, idle, demux, stats, http, delivery, scrape); one summary.

Each benchmark's options pass through, e.g. a quick run:

    python -m bench.run_all --lines 50000 --runs 1

The summary, each benchmark's full result and the machine are also written as JSON to
bench/results/latest.json (git-ignored).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import delivery, demux, http, idle, scrape, stats, throughput
from bench.common import (
    RESULTS_DIR,
    BenchEngine,
    engine_host,
    log,
    machine_info,
    machine_line,
    run_main,
    table,
    write_json,
)

BENCHES = {
    "throughput": throughput,
    "idle": idle,
    "demux": demux,
    "stats": stats,
    "http": http,
    "delivery": delivery,
    "scrape": scrape,
}


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    t = results.get("throughput")
    if t:
        p = t["params"]
        f, a = t["floor"]["median"], t["agent"]["median"]
        what = f"{p['containers']}x{p['lines']:,} lines, median of {p['runs']}"
        rows += [
            ["throughput", f"floor lines/s ({what})", f["lines_per_s"]],
            ["throughput", "agent lines/s", a["lines_per_s"]],
            ["throughput", "agent / floor", t["ratio"]],
            ["throughput", "floor wall s / agent wall s", f"{f['wall_s']:.2f} / {a['wall_s']:.2f}"],
            ["throughput", "agent CPU s per M lines", a["cpu_s_per_mlines"]],
            ["throughput", "floor reader CPU s per M lines", f["cpu_s_per_mlines"]],
            ["throughput", "agent peak RSS MB", a["peak_rss_mb"]],
            [
                "throughput",
                "dockerd CPU s, floor / agent",
                f"{f.get('dockerd_cpu_s') or 0:.2f} / {a.get('dockerd_cpu_s') or 0:.2f}",
            ],
            ["throughput", "agent lost / dup lines (median)", f"{a['lost']} / {a['dup']}"],
            [
                "throughput",
                "follow streams cut short by the engine, all runs: floor / agent",
                f"{sum(r.get('short_streams', 0) for r in t['floor']['runs'])} / "
                f"{sum(r.get('short_containers', 0) for r in t['agent']['runs'])}",
            ],
        ]
        if f.get("machine_busy_pct") is not None and a.get("machine_busy_pct") is not None:
            rows.append(
                [
                    "throughput",
                    "machine CPU busy %, floor / agent",
                    f"{f['machine_busy_pct']:.0f} / {a['machine_busy_pct']:.0f}",
                ]
            )
    i = results.get("idle")
    if i:
        n = i["params"]["containers"]
        rows += [
            ["idle", f"agent RSS MB ({n} idle containers)", i["rss_mb"]],
            ["idle", f"agent CPU % ({i['measured_s']:.0f} s window)", i["cpu_pct"]],
            ["idle", "dockerd CPU %", i["dockerd_cpu_pct"]],
        ]
    d = results.get("demux")
    if d:
        rows += [
            ["demux", "agent LogDecoder µs/line", d["agent_us_per_line"]],
            ["demux", "aiodocker fetch+decode µs/line", d["aiodocker_us_per_line"]],
            ["demux", "aiodocker + ts/msg split µs/line", d["aiodocker_split_us_per_line"]],
        ]
    s = results.get("stats")
    if s:
        n = s["params"]["containers"]
        for r in s["agent"]:
            src = r["source"]
            rows += [
                [
                    "stats",
                    f"{src}: agent CPU % ({n} idle containers, 10 s interval)",
                    r["agent_cpu_pct"],
                ],
                ["stats", f"{src}: agent RSS MB", r["agent_rss_mb"]],
                ["stats", f"{src}: engine extra CPU %", r["engine_extra_cpu_pct"]],
                [
                    "stats",
                    f"{src}: /metrics ms (median) / KB",
                    f"{r['scrape_ms_median']:.1f} / {r['scrape_bytes'] / 1024:.0f}",
                ],
            ]
        rows += [
            ["stats", f"engine CPU %: {n} streaming stats requests", s["engine_streaming_cpu_pct"]],
            [
                "stats",
                "engine CPU %: one-shot per container per interval",
                s["engine_one_shot_cpu_pct"],
            ],
        ]
    h = results.get("http")
    if h:
        p = h["params"]
        what = f"{p['containers']}x{p['lines']:,} lines, median of {p['runs']}"
        for mode, m in h["median"].items():
            rows.append(["http", f"{mode}: lines/s ({what})", m.get("lines_per_s")])
            if mode in h["ratio"]:
                rows.append(["http", f"{mode} / file", h["ratio"][mode]])
    dl = results.get("delivery")
    if dl:
        for key in ("buffer_fsync_on", "buffer_fsync_off"):
            r = dl[key]
            label = key.replace("buffer_", "disk buffer, ").replace("_", " ")
            rows.append(
                [
                    "delivery",
                    f"{label}: append / drain records/s",
                    f"{r['write_records_per_s']:,.0f} / {r['drain_records_per_s']:,.0f}",
                ]
            )
        for n, ms in dl["checkpoint_write_ms"].items():
            rows.append(["delivery", f"checkpoint write ms ({n} containers)", ms])
    sc = results.get("scrape")
    if sc:
        n = sc["params"]["containers"]
        for name, m in sc["phases"].items():
            rows.append(
                [
                    "scrape",
                    f"log lag p50 / p99 ms, scrapers {name} ({n} containers x 1 line/s)",
                    f"{m['lag_p50_ms']:.0f} / {m['lag_p99_ms']:.0f}",
                ]
            )
        one = sc["phases"].get("1/s")
        if one and one["scrapes"]:
            rows.append(
                [
                    "scrape",
                    "/metrics ms (median) / MB",
                    f"{one['scrape_ms_p50']:.0f} / {one['scrape_bytes'] / 1e6:.2f}",
                ]
            )
    return rows


def warnings(results: dict[str, Any]) -> list[str]:
    """Measurements that others' processes or containers skewed even after retries."""
    out = []
    t = results.get("throughput")
    if t:
        runs = t["floor"]["runs"] + t["agent"]["runs"]
        bad = [r for r in runs if r.get("skewed")]
        if bad:
            cpu = max(r.get("others_cpu_s", 0.0) for r in bad)
            out.append(
                f"throughput: {len(bad)} run(s) shared the machine (others up to {cpu:.1f} CPU s)"
            )
    for name in ("idle", "demux"):
        r = results.get(name)
        if r and r.get("skewed"):
            out.append(f"{name}: others used {r.get('others_cpu_s', 0.0):.1f} CPU s meanwhile")
    return out


async def _main(args: argparse.Namespace) -> int:
    wanted = [b.strip() for b in args.only.split(",")] if args.only else list(BENCHES)
    unknown = set(wanted) - set(BENCHES)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    started = time.time()
    async with BenchEngine(engine_host()) as engine:
        info = await machine_info(engine)
        for name in wanted:
            log(f"== {name}")
            try:
                results[name] = await BENCHES[name].run(args, engine)
            except Exception as exc:  # one failing bench must not hide the others' results
                failures[name] = f"{type(exc).__name__}: {exc}"
                log(f"{name} failed: {failures[name]}")
                continue
            print(BENCHES[name].report(results[name]), end="\n\n", flush=True)
    print("summary")
    print(machine_line(info))
    print(table(["bench", "metric", "value"], summary_rows(results)))
    for name, error in failures.items():
        print(f"{name}: FAILED: {error}")
    for warning in warnings(results):
        print(f"WARNING (figures skewed): {warning}")
    out = Path(args.json) if args.json else RESULTS_DIR / "latest.json"
    write_json(
        out,
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "argv": sys.argv[1:],
            "machine": info,
            "summary": [{"bench": b, "metric": m, "value": v} for b, m, v in summary_rows(results)],
            "results": results,
            "failures": failures,
            "warnings": warnings(results),
        },
    )
    print(f"(written to {out})")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run_all", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    parser.add_argument("--json", help="where to write the JSON (bench/results/latest.json)")
    for module in BENCHES.values():
        module.add_arguments(parser)
    args = parser.parse_args()
    sys.exit(run_main(lambda: _main(args)))


if __name__ == "__main__":
    main()
