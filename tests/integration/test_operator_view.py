"""The operator's view of a running agent against the real engine: ``/status`` and
``/tap`` on the prometheus exporter's listener, read by ``container-agent status``,
``tap`` and ``top`` (``top`` in a real terminal: tmux). Either endpoint can be turned off."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest

from tests.integration.helpers import free_port, numbered, until

AGENT = [sys.executable, "-m", "agent"]


async def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A ``container-agent`` command, off the event loop the agent under test runs on."""
    return await asyncio.to_thread(
        subprocess.run, [*AGENT, *args], capture_output=True, text=True, timeout=timeout
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_status_tap_and_top(start_agent, containers, tmp_path) -> None:
    port, closed = free_port(), free_port()
    agent = await start_agent(
        exporters={
            "errors": {
                "type": "file",
                "path": str(tmp_path / "e.ndjson"),
                "route": {"streams": ["stderr"]},
            },
            "prom": {"type": "prometheus", "listen": f"127.0.0.1:{port}"},
            "closed": {
                "type": "prometheus",
                "listen": f"127.0.0.1:{closed}",
                "status": False,
                "tap": False,
            },
        },
        stats={"enabled": False},
    )
    endpoint = f"127.0.0.1:{port}"
    busy = await containers.run(numbered("busy", 1_000_000, every=20, pause_us=100_000))
    quiet = await containers.run(
        "i=0; while true; do echo quiet $i; echo oops $i >&2; i=$((i+1)); sleep 1; done"
    )
    await agent.wait_for(lambda: len(agent.logs(quiet)) >= 2 and agent.logs(busy), 30, "lines")

    # status --json: the document as the agent serves it
    out = await cli("status", "--endpoint", endpoint, "--json")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(out.stdout)
    by_id = {c["id"]: c for c in doc["containers"]}
    assert {busy[:12], quiet[:12]} <= set(by_id)
    assert by_id[busy[:12]]["followed"] and by_id[busy[:12]]["source"] in ("api", "files")
    assert by_id[busy[:12]]["lines"] > 0
    assert doc["engine"]["connected"] is True
    assert doc["agent"]["uptime_seconds"] > 0
    names = {e["name"]: e for e in doc["exporters"]}
    assert {"records", "errors", "prom", "closed"} == set(names)
    assert names["records"]["exported"] > 0 and names["records"]["healthy"]

    # status: tables a person reads, busiest container first
    out = await cli("status", "--endpoint", endpoint)
    assert out.returncode == 0, out.stderr
    busy_name = by_id[busy[:12]]["name"].lstrip("/")
    quiet_name = by_id[quiet[:12]]["name"].lstrip("/")
    assert busy_name in out.stdout and quiet_name in out.stdout and "records" in out.stdout
    assert out.stdout.index(busy_name) < out.stdout.index(quiet_name)

    # tap: records as they pass, filtered by container, bounded by --limit
    out = await cli("tap", "--endpoint", endpoint, "--container", quiet_name, "--limit", "3")
    assert out.returncode == 0, out.stderr
    tapped = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(tapped) == 3
    assert all(r["container_id"] == quiet for r in tapped)
    # ... by what one exporter takes (its route: stderr only) and by message
    out = await cli(
        "tap", "--endpoint", endpoint, "--exporter", "errors", "--grep", "^oops", "--limit", "2"
    )
    assert out.returncode == 0, out.stderr
    tapped = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(tapped) == 2
    assert all(r["stream"] == "stderr" and r["message"].startswith("oops") for r in tapped)
    # a bad query is a clear error, exit 1
    out = await cli("tap", "--endpoint", endpoint, "--grep", "(", "--limit", "1")
    assert out.returncode != 0 and "bad regex" in out.stderr
    out = await cli("tap", "--endpoint", endpoint, "--exporter", "nope", "--limit", "1")
    assert out.returncode != 0 and "no exporter named 'nope'" in out.stderr
    assert not agent.runtime.state.tap.taps  # every watcher left

    # turned off: 404, while /metrics still answers
    for path in ("/status", "/tap?limit=1"):
        status, _ = await asyncio.to_thread(get, f"http://127.0.0.1:{closed}{path}")
        assert status == 404
    status, body = await asyncio.to_thread(get, f"http://127.0.0.1:{closed}/metrics")
    assert status == 200 and b"container_agent_" in body


async def test_a_tap_that_does_not_read_never_slows_the_pipeline(
    start_agent, containers, tmp_path
) -> None:
    port = free_port()
    agent = await start_agent(
        exporters={"prom": {"type": "prometheus", "listen": f"127.0.0.1:{port}"}},
        stats={"enabled": False},
    )
    # A watcher that connects and then reads nothing.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /tap HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: bool(agent.runtime.state.tap.taps), 10, "the watcher")
    n = 60_000
    cid = await containers.run(numbered("flood", n, every=1000, pause_us=1000))
    await containers.wait(cid, timeout=120)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= n, 60, "every line")
    assert [r["message"] for r in agent.logs(cid)] == [f"flood {i}" for i in range(n)]
    assert agent.runtime.state.tap.dropped > 0  # its copies were lost, not the records
    # what it does read says how much it lost
    head = await asyncio.wait_for(reader.read(1 << 20), 10)
    while b'"tap_dropped"' not in head:
        more = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert more, "the stream ended without saying what was dropped"
        head += more
    writer.close()
    await until(lambda: not agent.runtime.state.tap.taps, 10, "the watcher to be forgotten")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_top_in_a_real_terminal(start_agent, containers, tmp_path) -> None:
    port = free_port()
    await start_agent(
        exporters={"prom": {"type": "prometheus", "listen": f"127.0.0.1:{port}"}},
        stats={"enabled": False},
    )
    session = f"ca-top-{uuid.uuid4().hex[:8]}"
    await containers.run(numbered("top", 1_000_000, every=10, pause_us=100_000), name=session)
    env = {**os.environ, "TERM": "xterm-256color"}
    command = " ".join([*AGENT, "top", "--endpoint", f"127.0.0.1:{port}"])
    tmux = ["tmux", "-L", session]
    await asyncio.to_thread(
        subprocess.run,
        [*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command],
        check=True,
        env=env,
    )
    try:

        def screen() -> str:
            out = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            )
            return out.stdout

        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = await asyncio.to_thread(screen)
            if session in text and "records" in text:
                break
            await asyncio.sleep(0.2)
        assert session in text and "records" in text, text
        # refreshed in place: the screen changes while the container prints
        first = text
        deadline = time.monotonic() + 15
        while text == first and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            text = await asyncio.to_thread(screen)
        assert text != first
        assert "Traceback" not in text
        # Ctrl-C leaves it cleanly: the session ends with the command
        await asyncio.to_thread(subprocess.run, [*tmux, "send-keys", "-t", session, "C-c"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = await asyncio.to_thread(
                subprocess.run, [*tmux, "has-session", "-t", session], capture_output=True
            )
            if alive.returncode != 0:
                break
            await asyncio.sleep(0.2)
        assert alive.returncode != 0, "top did not leave on Ctrl-C"
    finally:
        await asyncio.to_thread(subprocess.run, [*tmux, "kill-server"], capture_output=True)
