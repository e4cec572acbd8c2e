"""The prometheus exporter's listener cannot starve the agent: a connection cap, header,
idle and write timeouts, descriptors kept for the core work, and failed accepts logged as
one JSON line per interval instead of a traceback each."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from agent.limits import open_descriptors
from exporters.prometheus import PrometheusConfig, PrometheusExporter
from tests.integration.conftest import read_ndjson
from tests.integration.helpers import free_port, numbered, until

BUSY = b"HTTP/1.1 503"


def _metrics_exporter(agent: Any) -> PrometheusExporter:
    (exporter,) = (r.exporter for r in agent.runtime.pipeline.runners if r.name == "metrics")
    assert isinstance(exporter, PrometheusExporter)
    return exporter


async def _read(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the server sent until it closed; None if it was still open after ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


async def _get(port: int, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.read()


async def test_connections_beyond_the_cap_are_refused_and_idle_ones_time_out(
    start_agent, tmp_path: Path
) -> None:
    port = free_port()
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "records-0.ndjson")},
            "metrics": {
                "type": "prometheus",
                "listen": f"127.0.0.1:{port}",
                "max_connections": 8,
                "header_timeout_seconds": 3.0,
                "idle_timeout_seconds": 4.0,
            },
        }
    )
    listener = _metrics_exporter(agent).listener
    assert listener is not None
    t0 = time.monotonic()
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    got = await asyncio.gather(*(_read(r, 0.5) for r, _ in conns))
    # In order of arrival: the first 8 are served (and wait for a request), the other 12
    # are answered 503 and closed at once.
    assert got[:8] == [None] * 8
    assert all(g is not None and g.startswith(BUSY) for g in got[8:]), got[8:]
    assert len(listener.connections) == 8
    assert listener.refused["max_connections"] == 12
    for _, w in conns[8:]:
        w.close()

    # Full: a scrape or a health check is refused too, at once.
    status, _ = await _get(port, "/healthz")
    assert status == 503
    # Freed: served again.
    for _, w in conns[:3]:
        w.close()
    await until(lambda: len(listener.connections) == 5, 2, "3 connections released")
    status, body = await _get(port, "/healthz")
    assert (status, body) == (200, b'{"alive":true}')
    assert time.monotonic() - t0 < 2.5, "too slow to see the header timeout apart"

    # The 5 that never sent a request are closed once header_timeout_seconds have passed.
    rest = await asyncio.gather(*(_read(r, 6) for r, _ in conns[3:8]))
    elapsed = time.monotonic() - t0
    assert rest == [b""] * 5
    assert 2.8 < elapsed < 5, elapsed
    assert listener.timeouts["header"] >= 5
    await until(lambda: not listener.connections, 2, "every connection closed")
    for _, w in conns[3:8]:
        w.close()

    # The listener's own counters are in /metrics; the build ran with a short switch
    # interval, the interpreter's is as it was.
    switch = sys.getswitchinterval()
    status, text = await _get(port, "/metrics")
    assert status == 200
    assert sys.getswitchinterval() == switch
    assert b'container_agent_http_connections_refused_total{exporter="metrics",' in text
    assert b'reason="max_connections"} 13.0' in text
    assert b'container_agent_http_timeouts_total{exporter="metrics",timeout="header"}' in text


async def test_keep_alive_idle_slow_heads_and_stalled_readers(start_agent, tmp_path: Path) -> None:
    port = free_port()
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "records-0.ndjson")},
            "metrics": {
                "type": "prometheus",
                "listen": f"127.0.0.1:{port}",
                "header_timeout_seconds": 1.0,
                "idle_timeout_seconds": 2.5,
            },
        }
    )
    listener = _metrics_exporter(agent).listener
    assert listener is not None
    request = b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n"

    # Kept alive after a request: idle_timeout_seconds applies, not the header timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readexactly(len(b'{"alive":true}'))
    t0 = time.monotonic()
    assert await _read(reader, 1.8) is None, "closed by the header timeout while idle"
    assert await _read(reader, 3) == b""
    assert 2.2 < time.monotonic() - t0 < 4
    writer.close()

    # A head that trickles in is cut at header_timeout_seconds, bytes or not.
    before = listener.timeouts["header"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    closed_at = None
    for i in range(20):
        writer.write(f"X-Slow-{i}: y\r\n".encode())
        if await _read(reader, 0.25) is not None:
            closed_at = time.monotonic() - t0
            break
    assert closed_at is not None and 0.9 < closed_at < 1.6, closed_at
    assert listener.timeouts["header"] == before + 1
    writer.close()

    # The next request's head on a kept-alive connection gets header_timeout_seconds from
    # its first byte.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(len(b'{"alive":true}'))
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    t0 = time.monotonic()
    assert await _read(reader, 3) == b""
    assert 0.9 < time.monotonic() - t0 < 1.6
    writer.close()

    # A client that asks and never reads: cut once its answers have filled the socket
    # buffers and nothing moved for idle_timeout_seconds.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n" * 400)
    await until(lambda: listener.timeouts["write"] == 1, 15, "the stalled reader cut")
    await until(lambda: not listener.connections, 2, "every connection closed")
    writer.close()


async def test_failed_accepts_are_one_json_line_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Out of descriptors (EMFILE) with no reserve to stop it first: accept() fails, the
    listener pauses 1 s and tries again; the first failure is logged, the next ones are
    counted into one line per interval, and asyncio logs no traceback."""
    port = free_port()
    config = PrometheusConfig(
        type="prometheus",
        listen=f"127.0.0.1:{port}",
        max_connections=1000,
        reserved_descriptors=0,
    )
    exporter = PrometheusExporter("metrics", config)
    await exporter.start()
    listener = exporter.listener
    assert listener is not None
    listener.budget.exhausted = lambda: False  # type: ignore[method-assign]
    listener.budget.reserved = lambda fd: False  # type: ignore[method-assign]
    clients = [socket.socket() for _ in range(40)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = open_descriptors()
    assert in_use is not None
    try:
        with capture_logs() as logs:
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 10, hard))
            try:
                for c in clients:
                    c.setblocking(False)
                    assert c.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
                await asyncio.sleep(2.6)  # three tries: now, +1 s, +2 s
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            failed = listener.accept_errors
            lines = [e for e in logs if e["event"] == "listener_accept_failed"]
            await exporter.close()
            closing = [e for e in logs if e["event"] == "listener_accept_failed"][len(lines) :]
    finally:
        for c in clients:
            c.close()
        await exporter.close()
    assert failed >= 3
    assert len(lines) == 1, lines
    assert lines[0]["count"] == 1 and lines[0]["error"].startswith("EMFILE")
    # The failures of the interval, in one line when it ends (here: at close).
    assert [e["count"] for e in closing] == [failed - 1]
    assert len(listener.connections) == 0
    assert not [r for r in caplog.records if r.name.startswith("asyncio")], caplog.text


# -- the agent as a process with a low descriptor limit ----------------------------------------


async def _hold_connections(port: int, n: int, stop: asyncio.Event) -> list[int]:
    """``n`` clients that connect, send nothing, and connect again once closed."""
    stats = [0, 0]  # connections made, refused with 503

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            stats[0] += 1
            try:
                stopped = asyncio.ensure_future(stop.wait())
                read = asyncio.ensure_future(reader.read())
                await asyncio.wait({stopped, read}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if read.done() and not read.cancelled() and read.exception() is None:
                    stats[1] += read.result().startswith(BUSY)
                else:
                    read.cancel()
            finally:
                writer.close()
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def _agent_command(limit: int) -> tuple[list[str], Any]:
    agent = [sys.executable, "-m", "agent"]
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, f"--nofile={limit}:{limit}", *agent], None

    def lower() -> None:  # pragma: no cover - machines without util-linux
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return agent, lower


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@pytest.mark.parametrize(
    ("max_connections", "held_at_most"),
    [(32, 32 + 40), (1000, 256 - 64)],
    ids=["capped", "reserve"],
)
async def test_a_flood_of_idle_connections_under_a_low_descriptor_limit(
    engine_host: str, containers, tmp_path: Path, max_connections: int, held_at_most: int
) -> None:
    """RLIMIT_NOFILE 256 and 400 clients holding idle connections (reconnecting when
    closed): the agent stays below its cap (``capped``) or keeps its reserve of
    descriptors (``reserve``, the cap out of the way), a container started meanwhile gets
    all its lines delivered, and stderr stays a few JSON lines."""
    port = free_port()
    out = tmp_path / "records.ndjson"
    config = {
        "engine": {"host": engine_host},
        "agent": {"log_format": "json", "shutdown_timeout_seconds": 10},
        "state_dir": str(tmp_path / "state"),
        "containers": {"include": {"label": [f"ca-test-run={containers.run_id}"]}},
        "checkpoints": {"interval_seconds": 0.5},
        "exporters": {
            "records": {"type": "file", "path": str(out)},
            "metrics": {
                "type": "prometheus",
                "listen": f"127.0.0.1:{port}",
                "max_connections": max_connections,
            },
        },
    }
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    command, preexec = _agent_command(256)
    err_path = tmp_path / "agent.stderr"
    stop = asyncio.Event()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(  # noqa: ASYNC220 - the agent under test is a child process
            [*command, "run", "--config", str(tmp_path / "agent.yaml")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"},
            preexec_fn=preexec,  # only without prlimit
        )
    try:
        await until(
            lambda: b'"agent_started"' in err_path.read_bytes() or proc.poll() is not None,
            30,
            "the agent's start-up line",
        )
        assert proc.poll() is None, err_path.read_text()[-3000:]
        pressure = asyncio.create_task(_hold_connections(port, 400, stop))
        peak = 0
        for _ in range(30):  # 3 s of flood before the container starts
            await asyncio.sleep(0.1)
            peak = max(peak, _fds(proc.pid))
        n = 3000
        cid = await containers.run(numbered("line", n, every=100, pause_us=20_000))
        deadline = time.monotonic() + 60
        while True:
            peak = max(peak, _fds(proc.pid))
            logs = [r for r in read_ndjson(out) if r["kind"] == "log"] if out.exists() else []
            if len(logs) >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert [r["message"] for r in logs if r["container_id"] == cid] == [
            f"line {i}" for i in range(n)
        ], f"{len(logs)} of {n} lines delivered"
        status, text = await _get_while_flooded(port)
        stop.set()
        made, refused = await pressure
        assert proc.poll() is None, "the agent died"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert made > 400, "the flood did not reconnect"
    assert peak <= held_at_most + 40, f"{peak} descriptors open at the peak"
    if max_connections == 32:
        assert refused > 100, "no connection beyond the cap was refused"
    stderr = err_path.read_bytes()
    assert len(stderr) < 64 * 1024, f"{len(stderr)} bytes of stderr"
    events = [orjson.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert all(e.get("event") for e in events)
    troubles = [
        e
        for e in events
        if e.get("level") == "error" or e["event"].endswith(("_failed", "_crashed", "_lost"))
    ]
    assert not troubles, troubles
    assert events[-1]["event"] == "agent_stopped"
    if status == 200:  # a scrape that got through the flood shows it
        assert "container_agent_http_connections_refused_total" in text


async def _get_while_flooded(port: int) -> tuple[int, str]:
    """One scrape amid the flood (it may be refused: every slot taken)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            return resp.status, await resp.text()
    return 0, ""
