"""The container-agent command as an operator runs it: start-up line, SIGTERM, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

AGENT = [sys.executable, "-m", "agent"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env.update(extra)
    return env


def test_version() -> None:
    out = subprocess.run([*AGENT, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("container-agent ")


def test_unreachable_engine_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    out = subprocess.run(
        [*AGENT, "run"],
        capture_output=True,
        text=True,
        env=_env(DOCKER_HOST=f"unix://{sock}"),
        cwd=tmp_path,
        timeout=30,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    event = orjson.loads(lines[0])
    assert event["event"] == "engine_unreachable"
    assert event["host"] == f"unix://{sock}"
    assert "DOCKER_HOST" in event["hint"] and "engine.host" in event["hint"]


def test_broken_config_exit_2_no_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("exporters:\n  x: {type: nope}\n")
    out = subprocess.run([*AGENT, "run", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "exporters.x.type: unknown exporter type 'nope'" in out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run(
        [*AGENT, "check-config", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert out.returncode == 2 and "missing.yaml" in out.stderr


async def test_run_with_defaults_then_sigterm_drains_and_exits_0(
    engine_host: str, containers, tmp_path: Path
) -> None:
    # No --config: built-in defaults, records to ./var/records.ndjson, engine from DOCKER_HOST.
    # Only this test's containers, through a config that narrows the default one.
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "containers:\n  include:\n    label: ['ca-test-run=" + containers.run_id + "']\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - the agent under test is a child process
        [*AGENT, "run", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        env=_env(DOCKER_HOST=engine_host),
        cwd=tmp_path,
    )
    try:
        assert proc.stderr is not None
        first: dict = {}
        while first.get("event") != "agent_started":
            line = await asyncio.to_thread(proc.stderr.readline)
            assert line, "the agent exited before its start-up line"
            first = orjson.loads(line)
        assert first["engine"] == engine_host
        assert first["engine_version"] and first["api_version"]
        assert first["containers"] == 0
        assert first["speedups"] == "c"  # make builds the extension; the machines have gcc
        out = tmp_path / "var" / "records.ndjson"
        assert first["exporters"] == {
            "records": f"file:{out}",
            "metrics": "http://127.0.0.1:9811/metrics",
        }

        n = 20000
        cid = await containers.run(f"seq 1 {n}")
        await containers.wait(cid)
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 0
        assert time.monotonic() - t0 < 10
        logs = [r for r in map(orjson.loads, out.read_bytes().splitlines()) if r["kind"] == "log"]
        # Everything read before the signal is written (a loaded machine may not have read
        # all yet): a prefix, in order, and the checkpoint says exactly where it ends, so
        # that the next start goes on from there.
        got = [r["message"] for r in logs]
        assert got and got == [str(i) for i in range(1, len(got) + 1)]
        saved = orjson.loads((tmp_path / "var" / "state" / "checkpoints.json").read_bytes())
        assert saved["containers"][cid]["stdout"]["timestamp"] == logs[-1]["timestamp"]
        rest = proc.stderr.read().decode()
        assert "agent_stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _last_event(stderr: str) -> dict:
    return orjson.loads(stderr.strip().splitlines()[-1])


def test_an_unusable_state_dir_or_output_path_is_exit_2_naming_the_key(
    tmp_path: Path, engine_host: str
) -> None:
    """A state_dir or output path that cannot be written fails at start, naming the
    key (it used to run on, failing every checkpoint write, or name the wrong file)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    cases = [
        (
            {"state_dir": str(blocker / "state")},
            {"event": "state_dir_unusable", "key": "state_dir"},
        ),
        (
            {
                "state_dir": str(tmp_path / "state"),
                "exporters": {"out": {"type": "file", "path": str(blocker / "out.ndjson")}},
            },
            {"event": "exporter_start_failed", "exporter": "out", "key": "exporters.out"},
        ),
    ]
    for config, want in cases:
        cfg = tmp_path / "c.yaml"
        cfg.write_bytes(orjson.dumps({"engine": {"host": engine_host}, **config}))
        out = subprocess.run(
            [*AGENT, "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            env=_env(),
            cwd=tmp_path,
            timeout=30,
        )
        assert out.returncode == 2, out.stderr
        event = _last_event(out.stderr)
        assert {k: event.get(k) for k in want} == want
        assert str(blocker) in event["error"] + event.get("path", "")
