"""``Runtime`` against a fake engine: start-up failures, a start and a stop, and the
checkpoint file it loads (or quarantines) and writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from agent.config import Config, parse
from agent.delivery.checkpoint import CheckpointStore
from agent.engine.client import EngineError
from agent.positions import FileMark, Position
from agent.runtime import EXIT_OK, EXIT_USAGE, Runtime

A, B, C = "a" * 64, "b" * 64, "c" * 64
SYSTEM_TIME = "2026-01-01T00:01:00.000000000Z"  # the engine's clock: after every line below


def ts(i: int) -> str:
    return f"2026-01-01T00:00:{i:02d}.000000000Z"


def frame(stream: int, stamp: str, message: str) -> bytes:
    payload = f"{stamp} {message}\n".encode()
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class FakeStream:
    def __init__(self, data: bytes, endless: bool) -> None:
        self.parts = [data] if data else []
        self.endless = endless  # a followed stream of a container that keeps running

    async def read_parts(self) -> list[bytes]:
        if not self.parts and self.endless:
            await asyncio.Event().wait()  # no more lines until cancelled
        return [self.parts.pop(0)] if self.parts else []

    def read_in_place(self, take: object) -> bool:
        return False  # everything comes through read_parts


class FakeEngine:
    """What the runtime, discovery and the logs-API source ask of the engine. Every
    container's log is whole in one answer (``since`` and ``tail`` are left to the
    decoder's skipping of what was delivered) and no container runs any more once read,
    so a reader reads to the end and stops; but the followed stream of a container in
    ``endless`` never ends."""

    def __init__(
        self,
        containers: list[dict[str, Any]] | None = None,
        logs: dict[str, list[bytes]] | None = None,
        fail: str | None = None,
        endless: frozenset[str] = frozenset(),
    ) -> None:
        self.host = "unix:///fake/docker.sock"
        self.containers = containers or []
        self.log_frames = logs or {}
        self.fail = fail  # "version" or "info": that call fails
        self.endless = endless
        self.calls: list[str] = []
        self.log_calls: list[tuple[str, str | None, bool, int | None]] = []
        self.closed = False

    async def version(self) -> dict[str, Any]:
        self.calls.append("version")
        if self.fail == "version":
            raise EngineError("GET /version: ClientConnectorError: connection refused")
        return {"Version": "27.3.1", "ApiVersion": "1.47"}

    async def info(self) -> dict[str, Any]:
        self.calls.append("info")
        if self.fail == "info":
            raise EngineError("GET /info: 500 internal error", 500)
        return {"Name": "node-1", "SystemTime": SYSTEM_TIME}

    async def list_containers(self, all: bool = False) -> list[dict[str, Any]]:
        self.calls.append(f"list all={all}")
        return [c for c in self.containers if all or c["State"] == "running"]

    async def events(
        self, since: str | None = None, filters: Any = None
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append("events")
        await asyncio.Event().wait()  # no event until cancelled
        yield {}

    async def inspect(self, cid: str) -> dict[str, Any]:
        return {"Id": cid, "State": {"Running": False}, "Config": {}}

    @contextlib.asynccontextmanager
    async def logs(
        self, cid: str, since: str | None = None, follow: bool = True, tail: int | None = None
    ) -> AsyncIterator[FakeStream]:
        self.log_calls.append((cid, since, follow, tail))
        yield FakeStream(b"".join(self.log_frames.get(cid, [])), follow and cid in self.endless)

    async def close(self) -> None:
        self.closed = True


def container(cid: str, name: str, state: str = "running") -> dict[str, Any]:
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Image": "busybox",
        "Labels": {},
        "State": state,
        "Created": 1,
    }


def config(tmp_path: Path, **sections: Any) -> Config:
    doc: dict[str, Any] = {
        "engine": {"host": "unix:///fake/docker.sock"},
        "state_dir": str(tmp_path / "state"),
        "stats": {"enabled": False},
        "logs": {"source": "api"},
        "agent": {"hostname": "node-1", "shutdown_timeout_seconds": 2},
        "exporters": {
            "records": {"type": "file", "path": str(tmp_path / "out" / "records.ndjson")}
        },
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return parse(doc)


def make(cfg: Config, engine: FakeEngine) -> Runtime:
    runtime = Runtime(cfg)
    runtime.engine = engine  # type: ignore[assignment]
    return runtime


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


async def until(condition: Callable[[], object], timeout: float = 1.0) -> None:
    """Polls agent state that has no event to wait on (a reader's progress, a log line)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def started(runtime: Runtime) -> AsyncIterator[tuple[asyncio.Task[int], list[dict]]]:
    """``Runtime.run()`` as a task, once it logged ``agent_started``; cancelled at the end
    if the test did not stop it."""
    with capture_logs() as logs:
        task = asyncio.create_task(runtime.run())
        try:
            await until(lambda: task.done() or "agent_started" in events(logs))
            assert not task.done(), f"run() ended at start: {logs}"
            yield task, logs
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def stop(runtime: Runtime, task: asyncio.Task[int]) -> int:
    runtime.request_stop()
    return await asyncio.wait_for(task, 2)


def records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "out" / "records.ndjson"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def checkpoint(tmp_path: Path) -> dict[str, Any]:
    return orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


@pytest.mark.parametrize("failing", ["version", "info"])
async def test_engine_unreachable_at_start_exits_2(tmp_path: Path, failing: str) -> None:
    engine = FakeEngine(fail=failing)
    runtime = make(config(tmp_path), engine)
    with capture_logs() as logs:
        assert await asyncio.wait_for(runtime.run(), 2) == EXIT_USAGE == 2
    [err] = [e for e in logs if e["event"] == "engine_unreachable"]
    assert err["log_level"] == "error" and err["host"] == "unix:///fake/docker.sock"
    assert failing in err["error"]
    assert engine.closed
    assert "list all=False" not in engine.calls and "list all=True" not in engine.calls
    assert not (tmp_path / "out").exists()  # no exporter was opened
    assert not (tmp_path / "state" / "checkpoints.json").exists()
    assert "agent_started" not in events(logs)
    assert other_tasks() == set()


async def test_an_exporter_that_cannot_start_exits_2(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a regular file, not a directory\n")
    cfg = config(
        tmp_path,
        exporters={"records": {"type": "file", "path": str(tmp_path / "blocker" / "r.ndjson")}},
    )
    engine = FakeEngine([container(A, "web")], {A: [frame(1, ts(1), "hello")]})
    runtime = make(cfg, engine)
    with capture_logs() as logs:
        assert await asyncio.wait_for(runtime.run(), 2) == EXIT_USAGE
    [err] = [e for e in logs if e["event"] == "exporter_start_failed"]
    assert err["log_level"] == "error" and "blocker" in err["error"]
    assert engine.closed
    assert "events" not in engine.calls and engine.log_calls == []  # nothing was read
    assert "agent_started" not in events(logs)
    assert other_tasks() == set()


async def test_a_start_and_a_stop(tmp_path: Path) -> None:
    """A is read to its end, B (exited, no checkpoint) not at all, C still runs at the
    stop: its reader is cancelled, what it read is out and in the checkpoint."""
    engine = FakeEngine(
        [container(A, "web"), container(B, "old", state="exited"), container(C, "live")],
        {
            A: [frame(1, ts(1), "hello"), frame(2, ts(2), "oops"), frame(1, ts(2), "bye")],
            B: [frame(1, ts(1), "never read: not running, no checkpoint")],
            C: [frame(1, ts(3), "still running")],
        },
        endless=frozenset({C}),
    )
    runtime = make(config(tmp_path), engine)
    async with started(runtime) as (task, logs):
        [up] = [e for e in logs if e["event"] == "agent_started"]
        assert up["engine_version"] == "27.3.1" and up["host"] == "node-1"
        assert up["exporters"] == {"records": f"file:{tmp_path / 'out' / 'records.ndjson'}"}
        assert runtime.discovery is not None and runtime.discovery.connected.is_set()
        assert runtime.followers is not None
        followers = runtime.followers
        await until(lambda: followers.positions.get(C) and A not in followers.readers)
        assert runtime.followers.followed == 1  # C's reader waits for more
        assert await stop(runtime, task) == EXIT_OK == 0
    assert events(logs).count("agent_stopping") == 1
    [down] = [e for e in logs if e["event"] == "agent_stopped"]
    assert down["exported"] == {"records": 4} and down["dropped"] == {}
    assert engine.closed
    got = [(r["container_name"], r["stream"], r["message"]) for r in records(tmp_path)]
    assert sorted(got) == [
        ("live", "stdout", "still running"),
        ("web", "stderr", "oops"),
        ("web", "stdout", "bye"),
        ("web", "stdout", "hello"),
    ]
    assert [m for n, _, m in got if n == "web"] == ["hello", "oops", "bye"]
    assert {c[0] for c in engine.log_calls} == {A, C}
    saved = checkpoint(tmp_path)
    assert saved["version"] == 1
    assert saved["containers"] == {
        A: {
            "stdout": {"timestamp": ts(2), "count": 1},
            "stderr": {"timestamp": ts(2), "count": 1},
        },
        C: {"stdout": {"timestamp": ts(3), "count": 1}},
    }
    assert other_tasks() == set()  # every task of the agent ended


async def test_a_stop_with_nothing_followed_still_writes_the_checkpoint(tmp_path: Path) -> None:
    runtime = make(config(tmp_path), FakeEngine())
    async with started(runtime) as (task, logs):
        assert await stop(runtime, task) == EXIT_OK
    assert "agent_stopped" in events(logs)
    assert checkpoint(tmp_path)["containers"] == {}
    assert records(tmp_path) == []


async def test_checkpoints_loaded_at_start_seed_the_positions(tmp_path: Path) -> None:
    """A's checkpoint says two lines at ts(5) went out: only the line after them is read
    again. B is excluded, so it is not read: its loaded position is kept as it was."""
    b_mark = FileMark(4242, 1000, ts(3), {"stdout": Position(ts(3), 1)})
    CheckpointStore(str(tmp_path / "state"), 1).write(
        {A: {"stdout": Position(ts(5), 2)}, B: {"stdout": Position(ts(3), 1)}}, {B: b_mark}
    )
    engine = FakeEngine(
        [container(A, "web", state="exited"), container(B, "skipped")],
        {
            A: [
                frame(1, ts(1), "a"),
                frame(1, ts(5), "b"),
                frame(1, ts(5), "c"),
                frame(1, ts(6), "d"),
            ],
            B: [frame(1, ts(9), "excluded")],
        },
    )
    cfg = config(tmp_path, containers={"exclude": {"name": ["^skipped$"]}})
    runtime = make(cfg, engine)
    async with started(runtime) as (task, logs):
        assert runtime.followers is not None and runtime.discovery is not None
        assert runtime.followers.positions[B] == {"stdout": Position(ts(3), 1)}
        assert runtime.followers.marks == {B: b_mark}
        assert runtime.discovery.start_at == "beginning"
        assert runtime.discovery.resume_since > 0  # the loaded file's written_at
        # A exited, but has a checkpoint: it is read to its end from there.
        followers = runtime.followers
        await until(lambda: followers.positions[A]["stdout"].timestamp == ts(6))
        assert await stop(runtime, task) == EXIT_OK
    loaded = [e for e in logs if e["event"] == "checkpoints_loaded"]
    assert loaded and loaded[0]["containers"] == 2
    assert "list all=True" in engine.calls  # resumed: stopped containers are listed too
    assert [r["message"] for r in records(tmp_path)] == ["d"]
    assert engine.log_calls and engine.log_calls[0][0] == A and engine.log_calls[0][3]  # tail
    assert checkpoint(tmp_path)["containers"] == {
        A: {"stdout": {"timestamp": ts(6), "count": 1}},
        B: {"stdout": {"timestamp": ts(3), "count": 1}, "file": b_mark.to_dict()},
    }


@pytest.mark.parametrize("on_corrupt", ["beginning", "now"])
async def test_an_unreadable_checkpoint_is_quarantined_and_on_corrupt_decides(
    tmp_path: Path, on_corrupt: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = b'{"version": 1, "containers": {"x": {"stdout": {"timest'
    (state / "checkpoints.json").write_bytes(garbage)
    engine = FakeEngine([container(A, "web")], {A: [frame(1, ts(1), "old line")]})
    # logs.start_at says the opposite: on_corrupt, not start_at, applies.
    other = "now" if on_corrupt == "beginning" else "beginning"
    cfg = config(tmp_path, checkpoints={"on_corrupt": on_corrupt}, logs={"start_at": other})
    runtime = make(cfg, engine)
    async with started(runtime) as (task, logs):
        assert runtime.discovery is not None and runtime.followers is not None
        assert runtime.discovery.start_at == on_corrupt
        followers = runtime.followers
        await until(lambda: engine.log_calls and not followers.followed)
        assert await stop(runtime, task) == EXIT_OK
    [moved] = list(state.glob("checkpoints.json.corrupt-*"))
    assert moved.read_bytes() == garbage
    [err] = [e for e in logs if e["event"] == "checkpoint_unreadable"]
    assert err["log_level"] == "error" and err["policy"] == on_corrupt
    assert err["moved_to"] == str(moved) and err["path"] == str(state / "checkpoints.json")
    # "now": the running container's line, older than the engine's clock, counts as read.
    expected = ["old line"] if on_corrupt == "beginning" else []
    assert [r["message"] for r in records(tmp_path)] == expected
    assert "checkpoints_loaded" not in events(logs)
    assert checkpoint(tmp_path)["version"] == 1  # a new, readable file replaced it


def test_a_socket_the_agent_may_not_open_names_its_owner_and_the_agents_ids(
    tmp_path: Path,
) -> None:
    from agent.runtime import _unreachable_hint

    sock = tmp_path / "docker.sock"
    sock.write_bytes(b"")
    os.chmod(sock, 0o660)
    error = "GET /version: Cannot connect: [Errno 13] Permission denied"
    hint = _unreachable_hint(f"unix://{sock}", error)
    st = os.stat(sock)
    assert f"group {st.st_gid}" in hint and f"uid {os.getuid()}" in hint and "660" in hint
    assert "--group-add" in hint
    tls = _unreachable_hint("tcp://127.0.0.1:2376", "the engine's certificate was not accepted")
    assert "engine.tls" in tls and "DOCKER_CERT_PATH" in tls
    other = _unreachable_hint("unix:///nowhere.sock", "No such file or directory")
    assert "DOCKER_HOST" in other and "engine.host" in other


async def test_a_slow_first_engine_call_is_reported_while_it_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine that accepts the connection but does not answer (a wedged dockerd answers
    /version, not /info) is named in the log while the agent waits, not only at the
    call's timeout."""
    from agent import runtime

    monkeypatch.setattr(runtime, "SLOW_ENGINE_SECONDS", 0.05)

    async def answer(after: float, value: str) -> str:
        await asyncio.sleep(after)
        return value

    with capture_logs() as logs:
        assert await runtime._noting_slow(answer(0, "v"), "GET /version", "unix:///e") == "v"
        assert await runtime._noting_slow(answer(0.3, "i"), "GET /info", "unix:///e") == "i"
    slow = [e for e in logs if e["event"] == "engine_slow"]
    assert [(e["call"], e["host"], e["log_level"]) for e in slow] == [
        ("GET /info", "unix:///e", "warning")
    ]
