"""Processing against the real engine: labelled containers' traces grouped on both streams
(API and json-file sources, and TTY), enabled=false, invalid labels, secrets redacted
everywhere, and a SIGKILL with a multiline group pending (exactness)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from tests.http_receiver import Answer, Receiver, free_port
from tests.integration.conftest import read_ndjson

P = "container-agent.logs."
ROOT = Path(__file__).resolve().parents[3]
TRACES = json.loads((ROOT / "tests/unit/processing/data/traces.json").read_text())
PY = TRACES["python"]["chained_direct_cause"]
JAVA = TRACES["java"]["Uncaught"]
NODE = TRACES["node"]["uncaught"]


def say(lines: list[str], stream: str = "stdout") -> str:
    """A shell command printing ``lines`` (one printf: they reach the engine together)."""
    out = "printf '%s\\n' " + " ".join(shlex.quote(line) for line in lines)
    return out + (" >&2" if stream == "stderr" else "")


def interleaved(trace: str, tag: str) -> tuple[str, dict[str, list[str]]]:
    """A script printing, on both streams in turn, a normal line, the trace (in two
    pieces, the other stream printing in between), a normal line; and the records each
    stream must give."""
    lines = trace.split("\n")
    half = len(lines) // 2
    steps = [
        say([f"{tag} out 1"]),
        say([f"{tag} err 1"], "stderr"),
        say(lines[:half]),
        say(lines[:half], "stderr"),
        "usleep 200000",
        say(lines[half:], "stderr"),
        say(lines[half:]),
        say([f"{tag} out 2"]),
        say([f"{tag} err 2"], "stderr"),
        "sleep 1",
    ]
    return "; ".join(steps), {
        s: [f"{tag} {s[3:]} 1", trace, f"{tag} {s[3:]} 2"] for s in ("stdout", "stderr")
    }


async def files_dir(containers: Any) -> str:
    info = await containers.docker.system.info()
    return f"{info['DockerRootDir']}/containers"


@pytest.mark.parametrize("source", ["api", "files"])
async def test_labelled_traces_on_both_streams_are_grouped(start_agent, containers, source) -> None:
    logs: dict[str, Any] = {"source": "api"}
    if source == "files":
        logs = {"source": "files", "containers_dir": await files_dir(containers)}
    agent = await start_agent(logs=logs)
    runs = {}
    for preset, trace in (("python", PY), ("java", JAVA), ("node", NODE)):
        script, want = interleaved(trace, preset)
        cid = await containers.run(script, labels={P + "multiline": preset})
        runs[cid] = want
    plain_script, _ = interleaved(PY, "plain")
    plain = await containers.run(plain_script)  # no label: lines stay lines
    for cid in [*runs, plain]:
        await containers.wait(cid)

    def done() -> bool:
        return (
            all(len(agent.logs(c)) >= 6 for c in runs)
            and len(agent.logs(plain)) >= 4 + 2 * PY.count("\n") + 2
        )

    await agent.wait_for(done, 30, "every record")
    await asyncio.sleep(0.3)
    for cid, want in runs.items():
        got = agent.logs(cid)
        for stream in ("stdout", "stderr"):
            records = [r for r in got if r["stream"] == stream]
            assert [r["message"] for r in records] == want[stream], (cid[:12], stream)
            assert [r.get("lines", 1) for r in records] == [1, want[stream][1].count("\n") + 1, 1]
    assert all("lines" not in r for r in agent.logs(plain))
    assert len(agent.logs(plain)) == 4 + 2 * (PY.count("\n") + 1)


async def test_tty_container_trace_is_grouped(start_agent, containers) -> None:
    agent = await start_agent()
    lines = NODE.split("\n")
    cid = await containers.run(
        "; ".join([say(["tty before"]), say(lines), say(["tty after"]), "sleep 1"]),
        tty=True,
        labels={P + "multiline": "node"},
    )
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 3, 20, "three records")
    assert [r["message"] for r in agent.logs(cid)] == ["tty before", NODE, "tty after"]


async def test_enabled_false_yields_nothing(start_agent, containers) -> None:
    agent = await start_agent()
    off = await containers.run(say(["secret stuff"] * 5), labels={P + "enabled": "false"})
    on = await containers.run(say(["visible"]))
    for cid in (off, on):
        await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(on)) == 1, 20, "the enabled container's line")
    await agent.wait_for(
        lambda: any(e["action"] == "die" for e in agent.events(off)), 20, "its die event"
    )
    await asyncio.sleep(0.5)
    assert agent.logs(off) == []


async def test_config_can_lock_enabled_and_require_redaction(start_agent, containers) -> None:
    agent = await start_agent(
        processing={"locked": ["enabled"], "redact": ["email"]},
    )
    cid = await containers.run(
        say(["mail me at ops@example.com", "Bearer abcdef123"]),
        labels={P + "enabled": "false", P + "redact": "bearer"},
    )
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) == 2, 20, "two lines")
    assert [r["message"] for r in agent.logs(cid)] == [
        "mail me at **********",
        "Bearer **********",
    ]


async def test_invalid_label_is_reported_and_ignored(start_agent, containers) -> None:
    with capture_logs() as logs:
        agent = await start_agent()
        cid = await containers.run(
            say(["Error: x", "    at f (a.js:1:1)", "ok"]),
            labels={P + "multiline": "cobol", P + "exclude": "^ok$"},
            name=f"bad-label-{containers.run_id}",
        )
        await containers.wait(cid)
        await agent.wait_for(lambda: len(agent.logs(cid)) >= 2, 20, "its lines")
        await asyncio.sleep(0.3)
    # the bad setting is ignored, the good one applies, collection goes on
    assert [r["message"] for r in agent.logs(cid)] == ["Error: x", "    at f (a.js:1:1)"]
    bad = [e for e in logs if e["event"] == "processing_label_invalid"]
    assert len(bad) == 1
    assert bad[0]["container"] == f"bad-label-{containers.run_id}"
    assert bad[0]["label"] == P + "multiline" and "cobol" in bad[0]["problem"]
    assert agent.runtime.followers.processing.invalid_labels == 1


# -- secrets: nowhere but masked ---------------------------------------------------------

SECRETS = [
    "hunter2pass",
    "s3cr3tBearerT0ken",
    "AKIAIOSFODNN7EXAMPLE",
    "4111111111111111",
    "leak@example.org",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]


def agent_process(cfg: dict[str, Any], tmp: Path, name: str) -> subprocess.Popen[bytes]:
    path = tmp / f"{name}.yaml"
    path.write_bytes(orjson.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(path)],
        stderr=open(tmp / f"{name}.stderr", "wb"),
        env=env,
        cwd=tmp,
    )


async def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_redacted_secrets_appear_nowhere(engine_host, containers, tmp_path) -> None:
    receiver = await Receiver(default=lambda got: Answer(400, b'{"error":"rejected"}')).start()
    port = free_port()
    cfg = {
        "engine": {"host": engine_host},
        "state_dir": str(tmp_path / "state"),
        "agent": {"log_format": "json", "log_level": "debug"},
        "containers": {"include": {"label": [f"ca-test-run={containers.run_id}"]}},
        "processing": {
            "parser": "json",
            "redact": ["bearer", "url_password", "aws", "card", "email", "jwt"],
        },
        "exporters": {
            "records": {"type": "file", "path": str(tmp_path / "out.ndjson")},
            "buffered": {
                "type": "file",
                "path": str(tmp_path / "buffered.ndjson"),
                "buffer": {"type": "disk"},
            },
            "rejecting": {
                "type": "http",
                "url": receiver.url + "/ingest",
                "dead_letter_path": str(tmp_path / "dead.ndjson"),
                "batch": {"max_seconds": 0.1},
            },
            "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{port}"},
        },
    }
    proc = agent_process(cfg, tmp_path, "agent")
    try:
        await asyncio.sleep(1.5)
        lines = [
            "connecting to postgres://app:hunter2pass@db:5432/x",
            "GET /api Authorization: Bearer s3cr3tBearerT0ken",
            '{"level":"error","key":"AKIAIOSFODNN7EXAMPLE","user":{"mail":"leak@example.org"}}',
            '{"card":"4111 1111 1111 1111","note":"x\\u0040y.org"}',
            "paid with 4111111111111111",
            "token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ]
        cid = await containers.run(
            "; ".join([say(lines), say(lines, "stderr"), "sleep 1"]),
            name=f"secrets-{containers.run_id}",
        )
        await containers.wait(cid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = tmp_path / "out.ndjson"
            dead = tmp_path / "dead.ndjson"
            got = [r for r in read_ndjson(out) if r["kind"] == "log"] if out.exists() else []
            if len(got) >= 12 and dead.exists() and dead.stat().st_size:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = await r.text()
        assert "container_agent" in metrics
    finally:
        await stop(proc)
        await receiver.stop()
    got = [r for r in read_ndjson(tmp_path / "out.ndjson") if r["kind"] == "log"]
    assert len(got) == 12 and all("**********" in r["message"] for r in got)
    assert got[2]["fields"]["user"]["mail"] == "**********" and got[2]["level"] == "error"
    places = {"metrics": metrics.encode()}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            places[str(path.relative_to(tmp_path))] = path.read_bytes()
    places["http requests"] = b"".join(g.body for g in receiver.got)
    assert any(k.startswith("state/buffers/") for k in places), list(places)
    assert places.get("dead.ndjson")
    assert receiver.got
    for where, data in places.items():
        for secret in [*SECRETS, "x@y.org"]:
            assert secret.encode() not in data, (secret, where)
    # the counts per preset, never the secret, in the agent's log
    assert b"Traceback" not in places["agent.stderr"]


# -- SIGKILL with a group pending ---------------------------------------------------------


def kill_config(tmp: Path, engine_host: str, run_id: str, out: str, logs: dict) -> dict:
    return {
        "engine": {"host": engine_host},
        "logs": logs,
        "state_dir": str(tmp / "state"),
        "checkpoints": {"interval_seconds": 0.2},
        "containers": {"include": {"label": [f"ca-test-run={run_id}"]}},
        "processing": {"multiline": {"preset": "python", "flush_timeout_seconds": 60}},
        "exporters": {"records": {"type": "file", "path": str(tmp / f"{out}.ndjson")}},
        "agent": {"log_format": "json"},
    }


def logs_of(path: Path, cid: str) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_ndjson(path) if r["kind"] == "log" and r["container_id"] == cid]


@pytest.mark.parametrize("source", ["api", "files"])
async def test_sigkill_with_a_group_pending_emits_it_whole_once(
    engine_host, containers, tmp_path, source
) -> None:
    logs: dict[str, Any] = {"source": "api"}
    if source == "files":
        logs = {"source": "files", "containers_dir": await files_dir(containers)}
    tb = PY.split("\n")
    head, rest = tb[:4], tb[4:]
    script = "; ".join(
        [
            say([f"before {i}" for i in range(50)], "stderr"),
            say([f"out {i}" for i in range(50)]),
            "sleep 2",
            say(head, "stderr"),  # the group starts: pending, its timeout far away
            "sleep 6",  # the agent is killed meanwhile
            say(rest, "stderr"),
            say(["after"], "stderr"),
            "sleep 1",
        ]
    )
    first = agent_process(
        kill_config(tmp_path, engine_host, containers.run_id, "run1", logs), tmp_path, "run1"
    )
    try:
        await asyncio.sleep(1.5)
        cid = await containers.run(script)
        deadline = time.monotonic() + 30
        while len(logs_of(tmp_path / "run1.ndjson", cid)) < 100:
            assert time.monotonic() < deadline, "run 1: the first lines"
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # the head is read and held; checkpoints written meanwhile
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 30) == -9
    finally:
        if first.poll() is None:
            first.kill()
    run1 = logs_of(tmp_path / "run1.ndjson", cid)
    assert [r["message"] for r in run1 if r["stream"] == "stderr"] == [
        f"before {i}" for i in range(50)
    ]  # nothing of the group went out
    saved = orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
    entry = saved["containers"][cid]
    last_before = run1[[r["message"] for r in run1].index("before 49")]["timestamp"]
    assert entry["stderr"]["timestamp"] == last_before  # not past the group's first line
    await containers.wait(cid, timeout=60)
    second = agent_process(
        kill_config(tmp_path, engine_host, containers.run_id, "run2", logs), tmp_path, "run2"
    )
    try:
        deadline = time.monotonic() + 30
        while not any(r["message"] == "after" for r in logs_of(tmp_path / "run2.ndjson", cid)):
            assert time.monotonic() < deadline, "run 2: the rest"
            await asyncio.sleep(0.1)
    finally:
        await stop(second)
    run2 = logs_of(tmp_path / "run2.ndjson", cid)
    err = [r["message"] for r in run1 + run2 if r["stream"] == "stderr"]
    assert err == [*[f"before {i}" for i in range(50)], PY, "after"]  # once, whole
    joined = next(r for r in run2 if r["message"] == PY)
    assert joined["lines"] == len(tb)
    out = [r["message"] for r in run1 + run2 if r["stream"] == "stdout"]
    assert out == [f"out {i}" for i in range(50)]
