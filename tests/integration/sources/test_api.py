"""Log records from real containers: every line once, in order, with the right metadata."""

from __future__ import annotations

import asyncio
import collections
import time
from types import SimpleNamespace
from typing import Any

import pytest

from agent.engine.client import Engine
from agent.positions import Position, advance
from agent.record import ContainerMeta, Record
from agent.sources.api.source import FIRST_TAIL, RESUME_TAIL, ApiLogSource
from tests.integration.conftest import IMAGE

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web"}


async def test_every_line_once_in_order_with_metadata(start_agent, containers) -> None:
    agent = await start_agent()
    n = 3000
    cid = await containers.run(
        f'i=0; while [ $i -lt {n} ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done',
        name=f"lines-{containers.run_id}",
        labels=COMPOSE,
    )
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 2 * n, what="all lines")
    await containers.wait(cid)
    await asyncio.sleep(0.3)
    logs = agent.logs(cid)
    assert [r["message"] for r in logs if r["stream"] == "stdout"] == [f"out {i}" for i in range(n)]
    assert [r["message"] for r in logs if r["stream"] == "stderr"] == [f"err {i}" for i in range(n)]
    rec = logs[0]
    assert rec["container_name"] == f"lines-{containers.run_id}"
    assert rec["image"] == IMAGE
    assert rec["labels"]["com.docker.compose.service"] == "web"
    assert (rec["project"], rec["service"], rec["host"]) == ("shop", "web", "test-host")
    assert len(rec["timestamp"]) == 30 and rec["timestamp"].endswith("Z")
    stamps = [r["timestamp"] for r in logs if r["stream"] == "stdout"]
    assert stamps == sorted(stamps)


async def test_long_lines_are_joined_and_capped(start_agent, containers) -> None:
    agent = await start_agent(logs={"max_message_bytes": 65536})
    script = (
        'head -c 40000 /dev/zero | tr "\\0" a; echo; '
        'head -c 100000 /dev/zero | tr "\\0" b; echo; '
        'echo short; head -c 20000 /dev/zero | tr "\\0" c >&2; echo >&2'
    )
    cid = await containers.run(script)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 4, what="4 records")
    by_stream = {(r["stream"], r["message"][:1]): r for r in agent.logs(cid)}
    a, b = by_stream[("stdout", "a")], by_stream[("stdout", "b")]
    assert a["message"] == "a" * 40000 and "truncated" not in a
    assert b["message"] == "b" * 65536 and b["truncated"] is True
    assert by_stream[("stdout", "s")]["message"] == "short"
    assert by_stream[("stderr", "c")]["message"] == "c" * 20000
    assert len(agent.logs(cid)) == 4


async def test_invalid_utf8_json_and_unterminated_last_line(start_agent, containers) -> None:
    agent = await start_agent()
    cid = await containers.run(
        "printf '\\377\\376bad\\n'; echo '{\"level\":\"warn\",\"n\":2}'; echo '{broken'; "
        "printf 'no newline'"
    )
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 4, what="4 records")
    logs = agent.logs(cid)
    assert [r["message"] for r in logs] == [
        "\ufffd\ufffdbad",
        '{"level":"warn","n":2}',
        "{broken",
        "no newline",
    ]
    assert logs[1]["fields"] == {"level": "warn", "n": 2}
    assert "fields" not in logs[2]


async def test_tty_container(start_agent, containers) -> None:
    agent = await start_agent()
    cid = await containers.run(
        'echo one; head -c 20000 /dev/zero | tr "\\0" t; echo; echo three', tty=True
    )
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 3, what="3 TTY records")
    logs = agent.logs(cid)
    assert [r["message"] for r in logs] == ["one", "t" * 20000, "three"]
    assert {r["stream"] for r in logs} == {"stdout"}


async def test_containers_that_exit_at_once(start_agent, containers) -> None:
    agent = await start_agent()
    ids = [await containers.run(f"echo first {i}; echo second {i} >&2") for i in range(10)]
    for cid in ids:
        await agent.wait_for(lambda cid=cid: len(agent.logs(cid)) == 2, what="2 lines")
    await asyncio.sleep(0.5)
    assert all(len(agent.logs(cid)) == 2 for cid in ids)


async def test_auto_removed_container_that_lives_100ms(start_agent, containers) -> None:
    agent = await start_agent()
    ids = [
        await containers.run(f"echo a {i}; echo b {i}; sleep 0.1", auto_remove=True)
        for i in range(5)
    ]
    for cid in ids:
        await agent.wait_for(lambda cid=cid: len(agent.logs(cid)) == 2, what="2 lines")
        await agent.wait_for(
            lambda cid=cid: any(e["action"] == "destroy" for e in agent.events(cid)),
            what="destroy event",
        )


async def test_container_started_later_is_followed_within_1s(start_agent, containers) -> None:
    agent = await start_agent()
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    cid = await containers.run("echo hello; sleep 30")
    await agent.wait_for(lambda: len(agent.logs(cid)) == 1, timeout=5, what="the first line")
    assert time.monotonic() - t0 < 1.0


async def test_running_containers_at_start_are_read_from_the_beginning(
    start_agent, containers
) -> None:
    cid = await containers.run("echo before; sleep 1.5; echo after; sleep 30")
    await asyncio.sleep(0.5)
    agent = await start_agent()
    await agent.wait_for(lambda: len(agent.logs(cid)) == 2, what="both lines")
    assert [r["message"] for r in agent.logs(cid)] == ["before", "after"]


async def test_start_at_now_skips_history(start_agent, containers) -> None:
    cid = await containers.run("echo before; sleep 1.5; echo after; sleep 30")
    await asyncio.sleep(0.5)
    agent = await start_agent(logs={"start_at": "now"})
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 1, what="the later line")
    await asyncio.sleep(0.3)
    assert [r["message"] for r in agent.logs(cid)] == ["after"]


async def test_restarted_container_resumes_without_duplicates(start_agent, containers) -> None:
    agent = await start_agent()
    cid = await containers.run("echo run-$(cat /tmp/n 2>/dev/null || echo 0); echo 1 > /tmp/n")
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) == 1, what="first run")
    await containers.docker.containers.container(cid).start()
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 2, what="second run")
    await asyncio.sleep(0.5)
    assert [r["message"] for r in agent.logs(cid)] == ["run-0", "run-1"]


async def test_include_exclude_filters(start_agent, containers) -> None:
    agent = await start_agent(
        containers={
            "include": {"label": [f"ca-test-run={containers.run_id}"]},
            "exclude": {"name": ["-skip$"], "label": ["quiet=yes"]},
        }
    )
    keep = await containers.run("echo keep", name=f"f-{containers.run_id}-keep")
    skip = await containers.run("echo skip", name=f"f-{containers.run_id}-skip")
    quiet = await containers.run("echo quiet", labels={"quiet": "yes"})
    await agent.wait_for(lambda: len(agent.logs(keep)) == 1, what="kept container")
    for cid in (keep, skip, quiet):
        await containers.wait(cid)
    await asyncio.sleep(0.5)
    assert agent.logs(skip) == [] and agent.logs(quiet) == []
    assert agent.events(skip) == [] and agent.events(quiet) == []


async def test_fan_out_to_two_exporters_with_their_own_filters(
    start_agent, containers, tmp_path
) -> None:
    only_db = tmp_path / "db.ndjson"
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "all.ndjson")},
            "db": {
                "type": "file",
                "path": str(only_db),
                "containers": {"include": {"name": ["-db$"]}},
            },
        }
    )
    agent.path = tmp_path / "all.ndjson"
    web = await containers.run("echo web line", name=f"fo-{containers.run_id}-web")
    db = await containers.run("echo db line", name=f"fo-{containers.run_id}-db")
    await agent.wait_for(lambda: len(agent.logs(web)) == 1 and len(agent.logs(db)) == 1)
    await agent.wait_for(lambda: only_db.exists() and b"db line" in only_db.read_bytes())
    assert b"web line" not in only_db.read_bytes()


async def test_reads_from_positions_take_the_log_tail_or_fall_back_to_since(
    engine_host: str, containers
) -> None:
    """A read from delivered positions (exit re-read, reconnect, agent restart) asks for
    the log's last FIRST_TAIL lines, then its last RESUME_TAIL, and takes the first that
    reaches back to the last line delivered (json-file answers ``since`` by decoding the
    whole log), else asks with ``since`` as before. Positions are set behind here, as if a
    stream had ended early."""
    n = 3000
    cid = await containers.run(
        f'i=0; while [ $i -lt {n} ]; do echo "out $i"; '
        f'[ $((i % 400)) -eq 0 ] && echo "err $i" >&2; i=$((i+1)); done; true'
    )
    await containers.wait(cid)
    engine = Engine(engine_host)
    requests: list[dict[str, Any]] = []
    logs = engine.logs

    def spied(container_id: str, **kw: Any) -> Any:
        requests.append(kw)
        return logs(container_id, **kw)

    engine.logs = spied  # type: ignore[method-assign]
    try:
        info = await engine.inspect(cid)
        reader = SimpleNamespace(meta=ContainerMeta.from_inspect(info, "h"), decoder=None)
        source = ApiLogSource(engine, 1 << 20)
        everything: list[Record] = []

        async def collect(batch: list[Record]) -> None:
            everything.extend(batch)

        await source._stream(reader, {}, collect, follow=False)  # type: ignore[arg-type]
        assert len(everything) == n + len(range(0, n, 400))
        messages = [r.message for r in everything]

        async def read_from(delivered: int) -> tuple[list[str], list[str]]:
            positions: dict[str, Position] = {}
            advance(positions, everything[:delivered])
            got: list[Record] = []

            async def keep(batch: list[Record]) -> None:
                got.extend(batch)

            requests.clear()
            await source._stream(reader, positions, keep, follow=False)  # type: ignore[arg-type]
            asked = ["tail" if kw["tail"] else "since" for kw in requests]
            return asked, [r.message for r in got]

        nearest = len(everything) - FIRST_TAIL // 2  # the first, short tail is enough
        assert await read_from(nearest) == (["tail"], messages[nearest:])
        assert await read_from(len(everything)) == (["tail"], [])  # nothing was missing
        near = len(everything) - RESUME_TAIL // 2  # within the last lines: the second tail
        assert await read_from(near) == (["tail", "tail"], messages[near:])
        far = len(everything) - 2 * RESUME_TAIL  # further back: since, after all
        assert await read_from(far) == (["tail", "tail", "since"], messages[far:])
    finally:
        await engine.close()


@pytest.mark.parametrize("impl", ["c", "python"])
async def test_c_and_python_paths_give_the_same_records(
    start_agent, containers, monkeypatch: pytest.MonkeyPatch, impl: str
) -> None:
    """The agent with its C extension and with the Python code it mirrors, on the same
    kinds of output from a real engine: plenty of plain lines (the bulk paths), stderr,
    invalid UTF-8, control characters, non-ASCII, JSON, a line over 16 KiB."""
    import exporters.file.exporter
    from agent import record, speedups
    from agent.engine import httpstream
    from agent.sources.api import decoder as logstream

    ext = speedups._load_extension()
    assert ext is not None, "agent._speedups is not built"
    calls: collections.Counter[str] = collections.Counter()

    def counted(name: str) -> Any:
        def call(*args: Any) -> Any:
            calls[name] += 1
            return getattr(ext, name)(*args)

        return call

    if impl == "python":
        monkeypatch.setattr(logstream, "speedups", None)
        monkeypatch.setattr(httpstream, "speedups", None)
        monkeypatch.setattr(exporters.file.exporter, "encode_ndjson", record.encode_ndjson)
    else:  # the extension, its calls counted: this test must go through it
        spy = SimpleNamespace(bulk_frames=counted("bulk_frames"), dechunk=counted("dechunk"))
        monkeypatch.setattr(logstream, "speedups", spy)
        monkeypatch.setattr(httpstream, "speedups", spy)
        monkeypatch.setattr(exporters.file.exporter, "encode_ndjson", counted("encode_ndjson"))
    agent = await start_agent(logs={"source": "api"})
    n = 2000
    cid = await containers.run(
        f"seq 1 {n}; echo 'to stderr' >&2; printf '\\377 bad\\n'; "
        "printf 'tab\\there \\033[1m \\\\ \"q\" \\303\\251\\n'; "
        "echo '{\"level\":\"info\"}'; head -c 20000 /dev/zero | tr '\\0' z; echo; "
        f"seq {n + 1} {2 * n}"
    )
    await containers.wait(cid)
    want = [
        *map(str, range(1, n + 1)),
        "\ufffd bad",
        'tab\there \x1b[1m \\ "q" é',
        '{"level":"info"}',
        "z" * 20000,
        *map(str, range(n + 1, 2 * n + 1)),
    ]
    await agent.wait_for(lambda: len(agent.logs(cid)) >= len(want) + 1, what="every line")
    logs = agent.logs(cid)
    assert [r["message"] for r in logs if r["stream"] == "stdout"] == want
    assert [r["message"] for r in logs if r["stream"] == "stderr"] == ["to stderr"]
    assert next(r for r in logs if r["message"] == '{"level":"info"}')["fields"] == {
        "level": "info"
    }
    if impl == "c":
        assert calls["bulk_frames"] and calls["dechunk"] and calls["encode_ndjson"], calls
