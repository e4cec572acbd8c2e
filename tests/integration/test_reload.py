"""Reload (SIGHUP, `container-agent reload`) under load: containers print while reloads
add, change and remove exporters; nothing is lost or duplicated (compared with the
engine's own logs), an invalid config is rejected and the running one stays."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from structlog.testing import capture_logs

from agent.config import load
from agent.reload import plan
from agent.runtime import Runtime
from tests.integration.conftest import read_ndjson
from tests.integration.helpers import numbered, until


def lines(path: Path, cid: str) -> list[str]:
    if not path.exists():
        return []
    return [
        r["message"] for r in read_ndjson(path) if r["kind"] == "log" and r["container_id"] == cid
    ]


def write_config(path: Path, engine_host: str, run_id: str, tmp: Path, exporters: dict) -> None:
    path.write_bytes(
        orjson.dumps(
            {
                "engine": {"host": engine_host, "reconnect_max_seconds": 1.0},
                "state_dir": str(tmp / "state"),
                "containers": {"include": {"label": [f"ca-test-run={run_id}"]}},
                "stats": {"enabled": False},
                "agent": {"shutdown_timeout_seconds": 5},
                "exporters": exporters,
            }
        )
    )


def file_exporter(path: Path, **extra: object) -> dict:
    return {"type": "file", "path": str(path), **extra}


async def test_reloads_under_load_swap_exporters_and_lose_nothing(
    engine_host, containers, tmp_path
) -> None:
    cfg = tmp_path / "agent.yaml"
    a, a2, b = tmp_path / "a.ndjson", tmp_path / "a2.ndjson", tmp_path / "b.ndjson"
    write_config(cfg, engine_host, containers.run_id, tmp_path, {"a": file_exporter(a)})
    runtime = Runtime(load(cfg), str(cfg))
    task = asyncio.create_task(runtime.run())
    await until(
        lambda: runtime.discovery is not None and runtime.discovery.connected.is_set(), 15, "start"
    )
    n = 3000
    ids = [
        await containers.run(numbered(f"c{k}", n, every=100, pause_us=100_000)) for k in range(2)
    ]
    await until(lambda: all(len(lines(a, c)) > 300 for c in ids), 30, "output")
    with capture_logs() as logs:
        # 1. add b
        write_config(
            cfg,
            engine_host,
            containers.run_id,
            tmp_path,
            {"a": file_exporter(a), "b": file_exporter(b)},
        )
        assert await runtime.reloader.reload()
        await until(lambda: all(lines(b, c) for c in ids), 15, "b's first lines")
        # 2. change a (another file, another queue size): a swap
        write_config(
            cfg,
            engine_host,
            containers.run_id,
            tmp_path,
            {"a": file_exporter(a2, queue_records=512), "b": file_exporter(b)},
        )
        assert await runtime.reloader.reload()
        await until(lambda: all(lines(a2, c) for c in ids), 15, "a's lines in its new file")
        # 3. an invalid config: rejected, the running one stays
        cfg.write_text("exporters:\n  a: {type: file, path: /x}\n  a: {type: file, path: /y}\n")
        assert not await runtime.reloader.reload()
        assert set(runtime.config.exporters) == {"a", "b"}
        # 4. remove b, by SIGHUP this time
        write_config(
            cfg,
            engine_host,
            containers.run_id,
            tmp_path,
            {"a": file_exporter(a2, queue_records=512)},
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: runtime.reloader.results["ok"] == 3, 15, "the SIGHUP reload")
        assert [r.name for r in runtime.pipeline.runners] == ["a"]
    for cid in ids:
        await containers.wait(cid, timeout=120)
    await until(
        lambda: all(len(lines(a, c)) + len(lines(a2, c)) >= n for c in ids), 60, "every line"
    )
    runtime.stopping.set()
    assert await asyncio.wait_for(task, 30) == 0

    failed = [e for e in logs if e["event"] == "config_reload_failed"]
    assert len(failed) == 1 and "duplicate key 'a'" in failed[0]["error"]
    assert runtime.reloader.results == {"ok": 3, "failed": 1}
    for k, cid in enumerate(ids):
        want = [f"c{k} {i}" for i in range(n)]
        # a: exactly once, in order, across its two files
        assert lines(a, cid) + lines(a2, cid) == want
        # b: one contiguous run, from its addition to its removal, nothing twice
        got_b = lines(b, cid)
        first = want.index(got_b[0])
        assert got_b == want[first : first + len(got_b)]


def test_plan_names_what_changes(tmp_path: Path) -> None:
    from agent.config import parse

    old = parse(
        {"exporters": {"a": {"type": "file", "path": "/a"}, "b": {"type": "file", "path": "/b"}}}
    )
    new = parse(
        {
            "engine": {"host": "unix:///elsewhere.sock"},
            "containers": {"exclude": {"name": ["noisy"]}},
            "exporters": {
                "a": {"type": "file", "path": "/a"},
                "b": {"type": "file", "path": "/b2"},
                "c": {"type": "file", "path": "/c"},
            },
        }
    )
    p = plan(old, new)
    assert (p.added, p.removed, p.changed, p.unchanged) == (["c"], [], ["b"], ["a"])
    assert p.filter_changed and p.needs_restart == ["engine"]


def test_container_agent_reload_signals_the_running_agent(
    engine_host, containers, tmp_path
) -> None:
    cfg = tmp_path / "agent.yaml"
    out = tmp_path / "out.ndjson"
    write_config(cfg, engine_host, containers.run_id, tmp_path, {"a": file_exporter(out)})
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    stderr = tmp_path / "agent.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            stderr=err,
            env=env,
            cwd=tmp_path,
        )
    try:
        pid_file = tmp_path / "state" / "agent.pid"
        for _ in range(100):
            if pid_file.exists() and b"agent_started" in stderr.read_bytes():
                break
            time.sleep(0.1)
        assert int(pid_file.read_text()) == proc.pid
        write_config(
            cfg,
            engine_host,
            containers.run_id,
            tmp_path,
            {"a": file_exporter(out), "b": file_exporter(tmp_path / "b.ndjson")},
        )
        done = subprocess.run(
            [sys.executable, "-m", "agent", "reload", "--config", str(cfg)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        for _ in range(100):
            if b"config_reloaded" in stderr.read_bytes():
                break
            time.sleep(0.1)
        events = [
            orjson.loads(line) for line in stderr.read_bytes().splitlines() if line.startswith(b"{")
        ]
        reloaded = [e for e in events if e["event"] == "config_reloaded"]
        assert reloaded and reloaded[0]["added"] == ["b"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not (tmp_path / "state" / "agent.pid").exists()
