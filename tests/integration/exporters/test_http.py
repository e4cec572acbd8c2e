"""The http exporter with the agent against real containers and a receiver on 127.0.0.1:
a backend outage (503, 429 with Retry-After, refused connections) loses and duplicates
nothing; a rejected batch is dead-lettered and the rest flows; every format is parsed the
way its backend parses it; auth headers arrive and no secret reaches the agent's log."""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from exporters.http import HttpExporter
from tests.http_receiver import Answer, Got, Receiver, bulk_items
from tests.integration.conftest import IMAGE
from tests.integration.helpers import FAST_RETRY, numbered, until
from tests.unit.exporters.test_http_exporter import FakeElasticsearch

COMPOSE = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web"}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def http_exporter(agent: Any) -> HttpExporter:
    [runner] = [r for r in agent.runtime.pipeline.runners if r.name == "records"]
    assert isinstance(runner.exporter, HttpExporter)
    return runner.exporter


def ndjson_records(got: list[Got]) -> list[dict[str, Any]]:
    return [r for g in got for r in g.ndjson()]


def messages_by_container(records: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for r in records:
        if r["kind"] == "log":
            out[r["container_id"]].append(r["message"])
    return out


@pytest.mark.parametrize("buffer", ["memory", "disk"])
async def test_backend_outage_loses_and_duplicates_nothing(
    start_agent: Any, containers: Any, receiver: Receiver, buffer: str
) -> None:
    n = 2000
    receiver.default = lambda g: Answer(503, b"unavailable")
    agent = await start_agent(
        exporters={
            "records": {
                "type": "http",
                "url": receiver.url,
                "retry": FAST_RETRY,
                "queue_records": 500,  # small: the readers feel back-pressure
                "batch": {"max_records": 200, "max_seconds": 0.2},
                "buffer": {"type": buffer},
            }
        }
    )
    exp = http_exporter(agent)
    ids = [await containers.run(numbered(f"c{k}", n)) for k in range(3)]
    # 503s, then 429 with Retry-After, then the backend stops listening, then it is back.
    await until(lambda: len(receiver.got) >= 4, 30, "503 answers")
    assert not exp.health().ok and "503" in exp.health().detail
    receiver.default = lambda g: Answer(429, b"slow down", {"Retry-After": "1"})
    await until(lambda: sum(g.status == 429 for g in receiver.got) >= 2, 30, "429 answers")
    await receiver.stop()
    await asyncio.sleep(2)
    assert not exp.health().ok
    [runner] = agent.runtime.pipeline.runners
    if buffer == "memory":
        assert runner.queue.size >= 500  # full: the readers wait (policy block)
    else:
        assert runner.buffered > 0  # the records went to disk meanwhile
    receiver.default = None
    await receiver.start()
    await until(
        lambda: (
            sum(len(v) for v in messages_by_container(ndjson_records(receiver.accepted)).values())
            >= 3 * n
        ),
        90,
        "every line",
    )
    for cid in ids:
        await containers.wait(cid)
    await asyncio.sleep(0.5)
    got = messages_by_container(ndjson_records(receiver.accepted))
    for k, cid in enumerate(ids):
        assert got[cid] == [f"c{k} {i}" for i in range(n)]  # every line, once, in order
    statuses = collections.Counter(g.status for g in receiver.got)
    assert statuses[503] >= 4 and statuses[429] >= 2
    assert exp.retries >= 6 and exp.health().ok
    # Retry-After was honoured: nothing came within 0.9 s after a 429.
    times = [(g.at, g.status) for g in receiver.got]
    for (t, status), (t_next, _) in itertools.pairwise(times):
        if status == 429:
            assert t_next - t >= 0.9


async def test_rejected_batch_is_dead_lettered_and_the_rest_flows(
    start_agent: Any, containers: Any, receiver: Receiver, tmp_path: Path
) -> None:
    n = 3000
    rejected: list[Got] = []

    def answer(got: Got) -> Answer | None:
        if not rejected and b'"message":"x 1500"' in got.body:
            rejected.append(got)
            return Answer(400, b'{"error":"field limit exceeded"}')
        return None

    receiver.default = answer
    dead = tmp_path / "dead" / "records.ndjson"
    agent = await start_agent(
        exporters={
            "records": {
                "type": "http",
                "url": receiver.url,
                "batch": {"max_records": 100},
                "dead_letter_path": str(dead),
                "retry": FAST_RETRY,
            }
        }
    )
    exp = http_exporter(agent)
    cid = await containers.run(numbered("x", n, every=500))
    await containers.wait(cid)
    await until(lambda: bool(rejected) and exp.dead_lettered_records > 0, 30, "the 400")
    rejected_lines = [r["message"] for r in rejected[0].ndjson() if r["kind"] == "log"]
    assert "x 1500" in rejected_lines
    await until(
        lambda: (
            len(messages_by_container(ndjson_records(receiver.accepted))[cid])
            >= n - len(rejected_lines)
        ),
        30,
        "the other lines",
    )
    await asyncio.sleep(0.3)
    accepted = messages_by_container(ndjson_records(receiver.accepted))[cid]
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert [r["message"] for r in letters if r["kind"] == "log"] == rejected_lines
    assert all(r["dead_letter"]["status"] == 400 for r in letters)
    assert letters[0]["dead_letter"]["response"] == '{"error":"field limit exceeded"}'
    assert exp.dead_lettered_records == len(rejected[0].ndjson())
    assert exp.dead_lettered_batches == 1
    assert sorted(accepted + rejected_lines, key=lambda m: int(m.split()[1])) == [
        f"x {i}" for i in range(n)
    ]
    assert len(set(accepted)) == len(accepted)  # the rest once each
    assert exp.retries == 0


def loki_lines(got: list[Got]) -> dict[tuple[tuple[str, str], ...], list[tuple[int, str]]]:
    out: dict[tuple[tuple[str, str], ...], list[tuple[int, str]]] = collections.defaultdict(list)
    for g in got:
        for stream in g.json()["streams"]:
            ns = [int(ts) for ts, _ in stream["values"]]
            assert ns == sorted(ns), "Loki needs each stream's entries in time order"
            key = tuple(sorted(stream["stream"].items()))
            out[key] += [(int(ts), line) for ts, line in stream["values"]]
    return out


def bulk_pairs(got: list[Got]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pairs = []
    for g in got:
        assert g.body.endswith(b"\n")
        lines = g.ndjson()
        assert len(lines) % 2 == 0
        pairs += list(zip(lines[0::2], lines[1::2], strict=True))
    return pairs


def otlp_logs(got: list[Got]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(resource attributes, log record) of every OTLP log record received."""
    out = []
    for g in got:
        for rl in g.json()["resourceLogs"]:
            res = {a["key"]: a["value"] for a in rl["resource"]["attributes"]}
            for sl in rl["scopeLogs"]:
                assert sl["scope"]["name"] == "container-agent"
                out += [(res, lr) for lr in sl["logRecords"]]
    return out


@pytest.mark.parametrize("fmt", ["ndjson", "loki", "elasticsearch", "otlp"])
async def test_each_format_as_its_backend_reads_it(
    start_agent: Any, containers: Any, receiver: Receiver, fmt: str
) -> None:
    n = 400
    if fmt == "elasticsearch":
        receiver.default = lambda g: bulk_items(g)
    await start_agent(
        exporters={
            "records": {
                "type": "http",
                "url": receiver.url,
                "format": fmt,
                "batch": {"max_records": 150, "max_seconds": 0.1},
                "retry": FAST_RETRY,
            }
        }
    )
    name = f"fmt-{fmt}-{containers.run_id}"
    cid = await containers.run(
        f'{numbered("out", n, every=200, pause_us=1000)}; echo "to stderr" >&2',
        name=name,
        labels=COMPOSE,
    )
    await containers.wait(cid)
    assert all(g.headers["Content-Encoding"] == "gzip" for g in receiver.got)
    expected = [f"out {i}" for i in range(n)]

    if fmt == "ndjson":

        def lines() -> list[str]:
            return messages_by_container(ndjson_records(receiver.accepted)).get(cid, [])

        await until(lambda: len(lines()) >= n + 1, 30, "every line")
        # Each stream in order; across streams the engine's two copiers (stdout, stderr)
        # may write to the log in either order, so the last stdout lines can follow.
        got = lines()
        assert [m for m in got if m != "to stderr"] == expected and got.count("to stderr") == 1
        await until(
            lambda: any(r.get("action") == "die" for r in ndjson_records(receiver.accepted)),
            30,
            "the die event",
        )
    elif fmt == "loki":
        assert receiver.got[0].path == "/loki/api/v1/push"
        labels = {"container_name": name, "host": "test-host", "project": "shop", "service": "web"}
        out_key = tuple(sorted({**labels, "stream": "stdout"}.items()))
        err_key = tuple(sorted({**labels, "stream": "stderr"}.items()))
        event_key = tuple(sorted(labels.items()))
        await until(lambda: len(loki_lines(receiver.accepted)[out_key]) >= n, 30, "every line")
        await until(lambda: loki_lines(receiver.accepted)[err_key] != [], 30, "stderr")
        streams = loki_lines(receiver.accepted)
        assert [line for _, line in streams[out_key]] == expected
        assert [line for _, line in streams[err_key]] == ["to stderr"]

        def actions() -> set[str]:
            lines = loki_lines(receiver.accepted)[event_key]
            return {orjson.loads(line)["action"] for _, line in lines}

        # The die event is batched after the container's last lines: wait for it, do not race it.
        await until(lambda: {"start", "die"} <= actions(), 30, "the start and die events")
        first_ns = streams[out_key][0][0]
        assert abs(first_ns / 1e9 - time.time()) < 120  # nanoseconds since the epoch
    elif fmt == "elasticsearch":
        assert receiver.got[0].path == "/_bulk"
        await until(
            lambda: sum(s.get("stream") == "stdout" for _, s in bulk_pairs(receiver.accepted)) >= n,
            30,
            "every line",
        )
        pairs = bulk_pairs(receiver.accepted)
        day = time.strftime("%Y.%m.%d", time.gmtime())
        for action, source in pairs:
            assert list(action) == ["create"]
            assert action["create"]["_index"].startswith("container-logs-")
            assert source["@timestamp"] == source["timestamp"]
        assert any(a["create"]["_index"] == f"container-logs-{day}" for a, _ in pairs)
        logs = [s for _, s in pairs if s["kind"] == "log" and s["container_id"] == cid]
        assert [s["message"] for s in logs if s["stream"] == "stdout"] == expected
        assert logs[0]["project"] == "shop" and logs[0]["container_name"] == name
    else:
        assert receiver.got[0].path == "/v1/logs"

        def bodies(stream: str) -> list[str]:
            return [
                lr["body"]["stringValue"]
                for res, lr in otlp_logs(receiver.accepted)
                if res["container.id"] == {"stringValue": cid}
                and {"key": "log.iostream", "value": {"stringValue": stream}} in lr["attributes"]
            ]

        await until(lambda: len(bodies("stdout")) >= n, 30, "every line")
        await until(lambda: bodies("stderr") == ["to stderr"], 30, "stderr")
        assert bodies("stdout") == expected
        res, lr = otlp_logs(receiver.accepted)[0]
        assert res["container.name"] == {"stringValue": name}
        assert res["container.image.name"] == {"stringValue": IMAGE.split(":")[0]}
        assert res["container.image.tags"] == {
            "arrayValue": {"values": [{"stringValue": "latest"}]}
        }
        assert res["host.name"] == {"stringValue": "test-host"}
        assert res["docker.compose.project"] == {"stringValue": "shop"}
        assert res["docker.compose.service"] == {"stringValue": "web"}
        assert isinstance(lr["timeUnixNano"], str) and int(lr["timeUnixNano"]) > 0
        assert isinstance(lr["observedTimeUnixNano"], str)
        assert "severityText" not in lr


@pytest.mark.parametrize("ids", ["deterministic", "none"])
async def test_elasticsearch_replay_after_restart_is_a_no_op(
    start_agent: Any, containers: Any, receiver: Receiver, tmp_path: Path, ids: str
) -> None:
    # The agent delivers at least once: a second agent without the first one's checkpoints
    # reads a running container's whole log again. With deterministic ids the index still
    # holds each line once (the copies are 409s, counted as delivered); without, twice.
    n = 400
    es = FakeElasticsearch()
    receiver.default = es
    exporters = {
        "records": {
            "type": "http",
            "url": receiver.url,
            "format": "elasticsearch",
            "elasticsearch": {"id": ids},
            "batch": {"max_records": 150, "max_seconds": 0.1},
            "dead_letter_path": str(tmp_path / "dead.ndjson"),
            "retry": FAST_RETRY,
        }
    }
    cid = await containers.run(f"{numbered('r', n, every=200, pause_us=1000)}; sleep 120")

    def stored() -> list[str]:
        return [
            d["message"]
            for d in es.docs.values()
            if d["kind"] == "log" and d["container_id"] == cid
        ]

    first = await start_agent(exporters=exporters)
    await until(lambda: len(stored()) >= n, 30, "every line")
    await first.stop()
    assert sorted(stored()) == sorted(f"r {i}" for i in range(n))
    second = await start_agent(exporters=exporters)
    exp = http_exporter(second)
    if ids == "deterministic":
        await until(lambda: exp.already_stored_records >= n, 30, "the lines read again")
        await asyncio.sleep(0.3)
        assert sorted(stored()) == sorted(f"r {i}" for i in range(n))  # once each
        assert exp.dead_lettered_records == 0 and exp.health().ok
        assert not (tmp_path / "dead.ndjson").exists()
    else:
        await until(lambda: len(stored()) >= 2 * n, 30, "the lines read again")
        assert sorted(stored()) == sorted(f"r {i}" for i in range(n) for _ in range(2))
    await second.stop()


async def test_auth_arrives_and_secrets_stay_out_of_the_log(
    start_agent: Any,
    containers: Any,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = "tok-9c1e55-very-secret"
    monkeypatch.setenv("CA_TEST_HTTP_TOKEN", token)
    failed: collections.Counter[str] = collections.Counter()

    def echo(got: Got) -> Answer | None:
        # The backend first fails, echoing the credentials it got (as some proxies do).
        if failed[got.path] < 2:
            failed[got.path] += 1
            return Answer(503, f"Authorization: {got.headers['Authorization']}".encode())
        return None

    receiver.default = echo
    with capture_logs() as logs:
        agent = await start_agent(
            exporters={
                "records": {
                    "type": "http",
                    "url": receiver.url.replace("http://", "http://u:url-secret-7@"),
                    "headers": {"X-Scope-OrgID": "tenant-1"},
                    "retry": FAST_RETRY,
                },
                "other": {
                    "type": "http",
                    "url": receiver.url + "/other",
                    "auth": {"bearer_token_env": "CA_TEST_HTTP_TOKEN"},
                    "retry": FAST_RETRY,
                },
            }
        )
        cid = await containers.run("echo hello")
        await containers.wait(cid)
        await until(
            lambda: (
                any(r.get("message") == "hello" for g in receiver.accepted for r in g.ndjson())
                and sum(g.path == "/other" and g.status == 200 for g in receiver.got) >= 1
            ),
            30,
            "the line through both exporters",
        )
        await agent.stop()
    other = [g for g in receiver.got if g.path == "/other"]
    assert all(g.headers["Authorization"] == f"Bearer {token}" for g in other)
    basic = [g for g in receiver.got if g.path == "/"]
    assert all(g.headers["Authorization"].startswith("Basic ") for g in basic)
    assert all(g.headers["X-Scope-OrgID"] == "tenant-1" for g in basic)
    text = repr(logs) + "".join(capsys.readouterr())
    assert "http_send_failed" in text and "agent_started" in text
    assert "Authorization: Bearer **********" in text  # the echo was scrubbed
    assert "Authorization: Basic **********" in text
    for secret in (token, "url-secret-7"):
        assert secret not in text
