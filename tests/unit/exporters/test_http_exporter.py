"""The http exporter against a scripted receiver on 127.0.0.1: retries, Retry-After,
refused connections, dead letters, Elasticsearch per-item errors, 413 splits, auth and
secrets, lingering. No engine."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from agent.record import ContainerMeta, Record, format_timestamp_ns
from exporters.http.config import HttpConfig
from exporters.http.exporter import HttpExporter
from tests.http_receiver import Answer, Got, Receiver, bulk_items

META = ContainerMeta("c" * 64, "app", "busybox", {}, "h")
FAST = {"initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


def lines(start: int, n: int, meta: ContainerMeta = META) -> list[Record]:
    now = time.time_ns()
    return [
        Record.log(format_timestamp_ns(now + i), meta, "stdout", f"line {start + i}", False)
        for i in range(n)
    ]


def numbers(got: list[Got]) -> list[int]:
    return [int(r["message"].split()[1]) for g in got for r in g.ndjson()]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[HttpExporter] = []

    async def make(receiver: Receiver, **options: Any) -> HttpExporter:
        options.setdefault("retry", FAST)
        options.setdefault("dead_letter_path", str(tmp_path / "dead.ndjson"))
        options.setdefault("url", receiver.url)
        cfg = HttpConfig(type="http", **options)
        exp = HttpExporter("out", cfg)
        await exp.start()
        made.append(exp)
        return exp

    yield make
    for exp in made:
        await exp.close()


async def until(check: Any, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead.ndjson"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_splits_batches_by_records_and_bytes(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver, batch={"max_records": 100, "max_bytes": 8192})
    await exp.send(lines(0, 1000))
    assert numbers(receiver.accepted) == list(range(1000))
    assert all(len(g.body) <= 8192 for g in receiver.got)
    assert all(len(g.ndjson()) <= 100 for g in receiver.got)
    got = receiver.got[0]
    assert got.headers["Content-Encoding"] == "gzip"
    assert got.headers["Content-Type"] == "application/x-ndjson"
    assert got.headers["User-Agent"].startswith("container-agent/")
    assert got.wire_bytes < len(got.body)
    assert exp.records_sent == 1000 and exp.requests == len(receiver.got)
    assert exp.bytes_sent == sum(g.wire_bytes for g in receiver.got)
    assert exp.last_status == 200 and exp.health().ok


async def test_503_then_429_retry_after_then_refused_then_recovery(
    receiver: Receiver, make: Any
) -> None:
    exp = await make(receiver)
    receiver.script.extend([Answer(503, b"overloaded")] * 3)
    receiver.script.append(Answer(429, b"slow down", {"Retry-After": "1"}))
    send = asyncio.create_task(exp.send(lines(0, 50)))
    # After the 429, stop listening past its Retry-After: the retries meet refused connections.
    await until(lambda: any(g.status == 429 for g in receiver.got))
    t429 = time.monotonic()
    await receiver.stop()
    await asyncio.sleep(1.5)
    assert not send.done()
    health = exp.health()
    assert not health.ok and "retrying" in health.detail
    assert "Connect" in health.detail  # a connection error now
    await receiver.start()
    await asyncio.wait_for(send, 10)
    accepted = receiver.accepted
    assert numbers(accepted) == list(range(50))  # once, in order
    assert accepted[0].at - t429 >= 1.0
    assert [g.status for g in receiver.got] == [503, 503, 503, 429, 200]
    assert exp.retries >= 5  # 3 times 503, the 429, at least one refused connection
    assert exp.health().ok


async def test_retry_after_is_honoured(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver)
    receiver.script.append(Answer(429, b"", {"Retry-After": "1"}))
    await exp.send(lines(0, 3))
    first, second = receiver.got
    assert second.at - first.at >= 0.95  # not the 0.01-0.05 s back-off
    assert numbers(receiver.accepted) == [0, 1, 2]


async def test_retry_after_as_http_date(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver)
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    receiver.script.append(Answer(503, b"", {"Retry-After": when}))
    began = time.monotonic()
    await exp.send(lines(0, 3))
    assert time.monotonic() - began >= 0.9
    assert numbers(receiver.accepted) == [0, 1, 2]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "garbage", "Thu, 01 Jan 1970"])
async def test_bad_retry_after_does_not_flood_the_backend(
    receiver: Receiver, make: Any, value: str
) -> None:
    # A backend asking to slow down with a Retry-After of 0, negative, nan, inf or
    # garbage: the back-off still applies (about 20 requests a second with these
    # settings), an invalid value is logged once and ignored (not honoured: inf would
    # stop the exporter for max_retry_after_seconds).
    backoff = {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.1}
    window = 0.8
    began = time.monotonic()

    def answer(got: Got) -> Answer | None:
        if got.at - began < window:
            return Answer(429, b"slow down", {"Retry-After": value})
        return None

    receiver.default = answer
    exp = await make(receiver, retry=backoff)
    with capture_logs() as logs:
        await asyncio.wait_for(exp.send(lines(0, 3)), 10)
    throttled = [g for g in receiver.got if g.status == 429]
    assert 3 <= len(throttled) <= 40, len(throttled)
    assert numbers(receiver.accepted) == [0, 1, 2]
    invalid = [e for e in logs if e["event"] == "http_retry_after_invalid"]
    if value == "0":
        assert invalid == []  # valid: retry now, i.e. after the back-off
    else:
        assert len(invalid) == 1  # once per exporter, not per answer
        assert invalid[0]["exporter"] == "out" and invalid[0]["retry_after"] == value


async def test_timeouts_are_retried(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver, timeout_seconds=0.2)
    receiver.delay = 0.5
    task = asyncio.create_task(exp.send(lines(0, 5)))
    await asyncio.sleep(0.6)
    assert not task.done() and exp.retries >= 1
    assert "TimeoutError" in exp.health().detail or "Timeout" in exp.health().detail
    receiver.delay = 0
    await asyncio.wait_for(task, 10)
    assert exp.health().ok


async def test_400_is_dead_lettered_and_counted_and_the_rest_flows(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    exp = await make(receiver, batch={"max_records": 10})
    receiver.script.extend([Answer(200), Answer(400, b'{"error":"bad field"}')])
    with capture_logs() as logs:
        await exp.send(lines(0, 30))
    assert numbers(receiver.accepted) == list(range(10)) + list(range(20, 30))
    dead = dead_letters(tmp_path)
    assert [int(r["message"].split()[1]) for r in dead] == list(range(10, 20))
    assert dead[0]["dead_letter"]["status"] == 400
    assert dead[0]["dead_letter"]["response"] == '{"error":"bad field"}'
    assert dead[0]["kind"] == "log" and dead[0]["container_id"] == META.id
    assert exp.dead_lettered_records == 10 and exp.dead_lettered_batches == 1
    assert exp.retries == 0  # a 4xx is not retried
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["http_dead_lettered"]
    assert exp.health().ok  # a later request succeeded
    # A 403 is about the agent's credentials, not the records: retried, not parked.
    forbid = True
    receiver.default = lambda g: Answer(403, b"forbidden") if forbid else None
    task = asyncio.create_task(exp.send(lines(30, 1)))
    await until(lambda: sum(g.status == 403 for g in receiver.got) >= 2)
    assert not exp.health().ok and "403" in exp.health().detail
    forbid = False
    await asyncio.wait_for(task, 10)
    assert exp.dead_lettered_records == 10 and numbers(receiver.accepted)[-1] == 30


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_auth_and_routing_errors_are_retried_never_dead_lettered(
    receiver: Receiver, make: Any, tmp_path: Path, status: int
) -> None:
    # The backend refuses the agent (bad token, no permission, wrong path) and echoes the
    # token: not the records' fault. Retried with back-off until the operator fixes it,
    # unhealthy meanwhile with one clear (scrubbed) error line; nothing dead-lettered.
    refuse = True

    def answer(got: Got) -> Answer | None:
        if refuse:
            return Answer(status, f"denied: {got.headers['Authorization']}".encode())
        return None

    receiver.default = answer
    with capture_logs() as logs:
        exp = await make(receiver, auth={"bearer_token": "tok-4e4e4e-secret"})
        task = asyncio.create_task(exp.send(lines(0, 5)))
        await until(lambda: len(receiver.got) >= 6)
        health = exp.health()
        assert not task.done()
        refuse = False
        await asyncio.wait_for(task, 10)
    assert not health.ok and f"HTTP {status}" in health.detail and "retrying" in health.detail
    assert numbers(receiver.accepted) == list(range(5))
    assert exp.dead_lettered_records == 0 and dead_letters(tmp_path) == []
    assert exp.retries >= 5 and exp.health().ok
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [(e["event"], e["status"], e["exporter"]) for e in errors] == [
        ("http_misconfigured", status, "out")
    ]
    text = repr(logs) + health.detail
    assert "tok-4e4e4e-secret" not in text and "Bearer **********" in text
    # A new run of failures is told again.
    receiver.script.append(Answer(status, b"again"))
    with capture_logs() as logs:
        await exp.send(lines(5, 1))
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["http_misconfigured"]


async def test_bulk_items_refused_for_permissions_are_retried(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    # Elasticsearch answers 403 (security_exception) or 404 (index_not_found) item by
    # item when the user may not write to an index or it may not be created: the
    # agent's configuration, not the records. Retried; the 400 item is dead-lettered.
    allowed = False

    def status(source: dict[str, Any]) -> int:
        n = int(source["message"].split()[1])
        if n == 3:
            return 400
        if not allowed:
            return 403 if n % 2 else 404
        return 201

    receiver.default = lambda g: bulk_items(g, status)
    with capture_logs() as logs:
        exp = await make(receiver, format="elasticsearch")
        task = asyncio.create_task(exp.send(lines(0, 6)))
        await until(lambda: len(receiver.got) >= 3)
        health = exp.health()
        allowed = True
        await asyncio.wait_for(task, 10)
    assert not health.ok and "bulk item(s) answered" in health.detail
    assert [int(r["message"].split()[1]) for r in dead_letters(tmp_path)] == [3]
    assert exp.records_sent == 5 and exp.dead_lettered_records == 1
    last = receiver.got[-1].ndjson()[1::2]
    assert [r["message"] for r in last] == ["line 0", "line 1", "line 2", "line 4", "line 5"]
    assert [e["status"] for e in logs if e["event"] == "http_misconfigured"] == [404]
    assert exp.health().ok


async def test_a_run_of_rejections_slows_down(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    # A backend that rejects everything (400): each request is dead-lettered, but after 5
    # in a row the next ones wait the back-off instead of draining the backlog into the
    # dead-letter file at full speed. A 2xx ends the run.
    receiver.default = lambda g: Answer(400, b"bad")
    exp = await make(
        receiver,
        batch={"max_records": 1},
        retry={"initial_backoff_seconds": 0.1, "max_backoff_seconds": 0.1},
    )
    with capture_logs() as logs:
        await exp.send(lines(0, 15))
    assert exp.dead_lettered_records == 15 and len(dead_letters(tmp_path)) == 15
    at = [g.at for g in receiver.got]
    assert len(at) == 15
    assert at[14] - at[5] >= 0.1  # 10 pauses of up to 0.1 s each (full jitter)
    paced = [e for e in logs if e["event"] == "http_rejections_paced"]
    assert paced and paced[0]["rejected_in_row"] == 5
    receiver.default = None
    await exp.send(lines(15, 1))  # accepted: the run is over
    receiver.default = lambda g: Answer(400, b"bad")
    with capture_logs() as logs:
        await exp.send(lines(16, 4))
    assert not [e for e in logs if e["event"] == "http_rejections_paced"]


async def test_failures_count_every_failed_request(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    # The exporter retries inside send, so the pipeline never sees these failures: the
    # exporter counts them itself (answers other than 2xx, connection errors, timeouts),
    # and how many records were rejected for good (exported = accepted - rejected).
    exp = await make(receiver, timeout_seconds=0.3)
    receiver.script.extend([Answer(503), Answer(408), Answer(401), Answer(413)])
    await exp.send(lines(0, 2))  # 503, 408, 401: retried; 413: split in two, each 200
    assert exp.failures == 4 and exp.rejected_records == 0
    receiver.script.append(Answer(400, b"bad"))
    await exp.send(lines(2, 3))  # dead-lettered
    assert exp.failures == 5 and exp.rejected_records == 3
    assert numbers(receiver.accepted) == [0, 1]
    receiver.delay = 0.5  # a timeout
    task = asyncio.create_task(exp.send(lines(5, 1)))
    await until(lambda: exp.failures >= 6)
    receiver.delay = 0
    await receiver.stop()  # refused connections
    await until(lambda: exp.failures >= 8)
    await receiver.start()
    await asyncio.wait_for(task, 10)
    assert exp.counters()["failures"] == exp.failures >= 8
    assert exp.requests - exp.failures == 3  # the two halves, and the last one
    assert exp.counters()["rejected_records"] == 3


async def test_unwritable_dead_letter_file_is_retried(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    exp = await make(receiver, dead_letter_path=str(blocker / "dead.ndjson"))
    receiver.script.append(Answer(422, b"no"))
    task = asyncio.create_task(exp.send(lines(0, 2)))
    await asyncio.sleep(0.3)
    assert not task.done()  # the records are not accepted until they are on disk
    assert "dead-letter file" in exp.health().detail
    blocker.unlink()
    await asyncio.wait_for(task, 10)
    assert exp.dead_lettered_records == 2


async def test_dead_letter_file_is_capped(receiver: Receiver, make: Any, tmp_path: Path) -> None:
    # A backend rejecting everything must not fill the disk: past dead_letter_max_bytes
    # rejected records are dropped, counted and logged once; the sends still return (the
    # records are handled) so the pipeline moves on.
    assert HttpConfig(type="http", url=receiver.url).dead_letter_max_bytes == 100 * 1024**2
    receiver.default = lambda g: Answer(400, b"bad")
    cap = 4000
    exp = await make(receiver, batch={"max_records": 2}, dead_letter_max_bytes=cap)
    path = tmp_path / "dead.ndjson"
    with capture_logs() as logs:
        for k in range(10):
            await asyncio.wait_for(exp.send(lines(4 * k, 4)), 10)
    size = path.stat().st_size
    assert 0 < size <= cap
    written = exp.dead_lettered_records
    assert written == len(dead_letters(tmp_path)) and written < 40
    assert exp.dead_letter_dropped_records == 40 - written
    assert exp.counters()["dead_letter_dropped_records"] == 40 - written
    assert size + len(path.read_bytes().splitlines()[0]) + 1 > cap  # filled up, then dropped
    full = [e for e in logs if e["event"] == "http_dead_letter_full"]
    assert len(full) == 1 and full[0]["max_bytes"] == cap and full[0]["log_level"] == "error"
    lettered = [e for e in logs if e["event"] == "http_dead_lettered"]
    assert sum(e["records"] for e in lettered) == written  # no line per dropped batch
    # The operator moves the file away: room again, and a new run of drops is told again.
    path.rename(tmp_path / "dead.ndjson.1")
    with capture_logs() as logs:
        for k in range(10, 20):
            await asyncio.wait_for(exp.send(lines(4 * k, 4)), 10)
    assert exp.dead_lettered_records == 2 * written
    assert [e["event"] for e in logs].count("http_dead_letter_full") == 1


async def test_dead_letter_max_bytes_zero_drops_every_rejected_record(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    receiver.default = lambda g: Answer(422, b"no")
    exp = await make(receiver, dead_letter_max_bytes=0)
    await exp.send(lines(0, 3))
    assert exp.dead_letter_dropped_records == 3 and exp.dead_lettered_records == 0
    assert not (tmp_path / "dead.ndjson").exists()


async def test_413_splits_the_request(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver)
    receiver.default = lambda g: Answer(413) if len(g.ndjson()) > 3 else None
    await exp.send(lines(0, 10))
    assert numbers(receiver.accepted) == list(range(10))
    assert exp.dead_lettered_records == 0
    receiver.default = lambda g: Answer(413)
    await exp.send(lines(10, 1))  # a single record too large for the backend: parked
    assert exp.dead_lettered_records == 1


async def test_elasticsearch_items_retried_or_dead_lettered_one_by_one(
    receiver: Receiver, make: Any, tmp_path: Path
) -> None:
    decided: list[tuple[int, int]] = []  # (line number, status answered), in order

    def status(source: dict[str, Any]) -> int:
        n = int(source["message"].split()[1])
        if n % 10 == 3:
            st = 400  # e.g. a mapping conflict: never
        elif n % 10 == 7 and all(m != n for m, _ in decided):
            st = 429  # overloaded, the first time
        else:
            st = 201
        decided.append((n, st))
        return st

    receiver.default = lambda g: bulk_items(g, status)
    exp = await make(receiver, format="elasticsearch", elasticsearch={"pipeline": "logs"})
    await exp.send(lines(0, 40))
    assert receiver.got[0].path == "/_bulk" and receiver.got[0].query == {"pipeline": "logs"}
    stored = [n for n, st in decided if st == 201]
    assert sorted(stored) == [n for n in range(40) if n % 10 != 3]
    assert len(stored) == len(set(stored))  # each stored once
    assert len(receiver.got) == 2  # the retry carried only the 429 items
    assert [n for n, _ in decided[40:]] == [7, 17, 27, 37]
    dead = dead_letters(tmp_path)
    assert [int(r["message"].split()[1]) for r in dead] == [3, 13, 23, 33]
    assert dead[0]["dead_letter"]["status"] == 400
    assert "mapper_parsing_exception" in dead[0]["dead_letter"]["response"]
    assert exp.dead_lettered_records == 4 and exp.records_sent == 36


class FakeElasticsearch:
    """A ``_bulk`` endpoint that keeps documents by index and ``_id`` as Elasticsearch
    does: ``create`` of an existing id is a 409 version conflict, ``index`` overwrites, an
    action without an id gets a new one. ``fail_after_storing``: answers that many
    requests with a 504 after storing their documents (a gateway timeout)."""

    def __init__(self) -> None:
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.made = 0
        self.fail_after_storing = 0

    def __call__(self, got: Got) -> Answer:
        lines = got.ndjson()
        items = []
        for action, source in zip(lines[0::2], lines[1::2], strict=True):
            [(op, meta)] = action.items()
            doc_id = meta.get("_id")
            if doc_id is None:
                self.made += 1
                doc_id = f"made-{self.made}"
            key = (meta["_index"], doc_id)
            item: dict[str, Any] = {"_index": meta["_index"], "_id": doc_id}
            if op == "create" and key in self.docs:
                item["status"] = 409
                item["error"] = {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{doc_id}]: version conflict, document already exists",
                }
            else:
                item["status"] = 200 if key in self.docs else 201
                self.docs[key] = source
            items.append({op: item})
        if self.fail_after_storing:
            self.fail_after_storing -= 1
            return Answer(504, b"gateway timeout")
        errors = any(next(iter(i.values()))["status"] >= 300 for i in items)
        body = orjson.dumps({"took": 1, "errors": errors, "items": items})
        return Answer(200, body, {"Content-Type": "application/json"})

    def messages(self) -> list[str]:
        return sorted(d["message"] for d in self.docs.values())


@pytest.mark.parametrize("action", ["create", "index"])
async def test_elasticsearch_records_sent_again_are_stored_once(
    receiver: Receiver, make: Any, tmp_path: Path, action: str
) -> None:
    es = FakeElasticsearch()
    receiver.default = es
    options = {"format": "elasticsearch", "elasticsearch": {"action": action}}

    def batch(start: int, n: int) -> list[Record]:
        recs = lines(start, n)
        # Two lines with the same stamp and message (blank lines in a burst, say).
        recs.insert(3, Record.log(recs[2].timestamp, META, "stdout", recs[2].message, False))
        return recs

    records = batch(0, 20)
    exp = await make(receiver, **options)
    # The backend stores the first request but the answer is lost (504): sent again.
    es.fail_after_storing = 1
    await exp.send(records)
    assert len(es.docs) == 21 and len(receiver.got) == 2
    assert exp.records_sent == 21 and exp.dead_lettered_records == 0
    assert exp.already_stored_records == (21 if action == "create" else 0)
    # The agent crashed before its checkpoint: another exporter reads them again (new
    # objects, the same lines), with some new ones.
    again = [Record.log(r.timestamp, META, "stdout", r.message, False) for r in records]
    replay = await make(receiver, **options)
    await replay.send(again + lines(100, 5))
    assert len(es.docs) == 26
    assert es.messages() == sorted([r.message for r in records] + numbered_lines(100, 5))
    assert replay.records_sent == 26 and replay.dead_lettered_records == 0
    assert replay.already_stored_records == (21 if action == "create" else 0)
    assert replay.health().ok and dead_letters(tmp_path) == []
    # Without ids every copy is a new document.
    es.docs.clear()
    plain = await make(receiver, format="elasticsearch", elasticsearch={"id": "none"})
    await plain.send(records)
    await plain.send(again)
    assert len(es.docs) == 42


def numbered_lines(start: int, n: int) -> list[str]:
    return [f"line {start + i}" for i in range(n)]


async def test_auth_headers_arrive_and_secrets_never_show(
    receiver: Receiver, make: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CA_TEST_TOKEN", "tok-3f9a1c-secret")
    monkeypatch.setenv("CA_TEST_ORG", "team-a")
    monkeypatch.setenv("CA_TEST_KEY", "key-77aa-secret")
    # A backend that echoes the request's headers in its error answers.
    receiver.script.extend(
        [
            Answer(503, b"Authorization: Bearer tok-3f9a1c-secret"),
            Answer(400, b"bad request, key key-77aa-secret"),
        ]
    )
    with capture_logs() as logs:
        exp = await make(
            receiver,
            auth={"bearer_token_env": "CA_TEST_TOKEN"},
            headers={"X-Scope-OrgID": "${CA_TEST_ORG}", "X-Api-Key": "${CA_TEST_KEY}"},
        )
        await exp.send(lines(0, 2))
        await exp.send(lines(2, 2))
    got = receiver.got[-1]
    assert got.headers["Authorization"] == "Bearer tok-3f9a1c-secret"
    assert got.headers["X-Scope-OrgID"] == "team-a"
    assert got.headers["X-Api-Key"] == "key-77aa-secret"
    events = [e["event"] for e in logs]
    assert "http_send_failed" in events and "http_dead_lettered" in events
    text = repr(logs) + exp.target() + exp.health().detail + repr(exp.counters())
    text += (tmp_path / "dead.ndjson").read_text()
    assert "tok-3f9a1c-secret" not in text and "key-77aa-secret" not in text
    assert "**********" in text  # the echoed secrets were scrubbed


async def test_echoed_headers_and_query_are_scrubbed_everywhere(
    receiver: Receiver, make: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Secrets in headers whose names do not look secret, and in the url's query: a
    # backend that echoes them in its answers must not get them into the log, /readyz
    # or the dead-letter file.
    monkeypatch.setenv("CA_TEST_INSERT_KEY", "insert-7d1f0e-secret")
    headers = {
        "X-Access-Key": "access-5b2c9a-secret",
        "X-Private-Key": "private-e4e4e4-secret",
        "X-Session-Id": "s3ss",  # short: scrubbed where it stands alone
        "Ocp-Apim-Subscription-Key": "apim-a1a1a1-secret",
        "X-Honeycomb-Team": "honeycomb-c0ffee-secret",
        "X-Insert-Key": "${CA_TEST_INSERT_KEY}",
        "X-Scope-OrgID": "team-a",
    }
    query = {"api_key": "qapi-0f0f0f-secret", "dd-api-key": "qdd-9e9e9e-secret", "token": "q/t+k"}
    secrets = [v for k, v in headers.items() if k not in ("X-Insert-Key", "X-Scope-OrgID")]
    secrets += ["insert-7d1f0e-secret", *query.values()]

    def echo(got: Got, status: int) -> Answer:
        echoed = {str(k): v for k, v in got.headers.items()}
        body = orjson.dumps({"query": got.query, "headers": echoed})
        return Answer(status, body)

    answers = iter([503, 400])
    receiver.default = lambda g: echo(g, next(answers, 200))
    url = receiver.url + "/ingest?" + urllib.parse.urlencode(query)
    with capture_logs() as logs:
        exp = await make(receiver, url=url, headers=headers)
        await exp.send(lines(0, 2))
        detail = exp.health().detail  # after the 400, before the next success
        await exp.send(lines(2, 1))
    assert receiver.got[0].query == query  # the backend got them
    assert receiver.got[0].headers["X-Insert-Key"] == "insert-7d1f0e-secret"
    events = [e["event"] for e in logs]
    assert "http_send_failed" in events and "http_dead_lettered" in events
    dead = (tmp_path / "dead.ndjson").read_text()
    assert "**********" in dead and "team-a" in dead
    text = repr(logs) + dead + detail + exp.target() + repr(exp.counters())
    for secret in secrets:
        assert secret not in text, secret
        assert urllib.parse.quote(secret, safe="") not in text, secret
    assert "/ingest" in exp.target() and "?" not in exp.target()
    assert all("?" not in e.get("url", "") for e in logs)


async def test_basic_auth_from_environment(
    receiver: Receiver, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CA_TEST_PASSWORD", "pw-secret")
    exp = await make(
        receiver, auth={"basic": {"user": "agent", "password_env": "CA_TEST_PASSWORD"}}
    )
    await exp.send(lines(0, 1))
    expected = base64.b64encode(b"agent:pw-secret").decode()
    assert receiver.got[0].headers["Authorization"] == f"Basic {expected}"
    # Credentials in the url become the same header and stay out of target().
    user_url = receiver.url.replace("http://", "http://agent:pw-secret@")
    cfg = HttpConfig(type="http", url=user_url, retry=FAST)
    exp = HttpExporter("out", cfg)
    await exp.start()
    await exp.send(lines(1, 1))
    assert receiver.got[1].headers["Authorization"] == f"Basic {expected}"
    assert "pw-secret" not in exp.target()
    await exp.close()


async def test_missing_environment_variable_fails_start(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CA_TEST_NOPE", raising=False)
    cfg = HttpConfig(type="http", url=receiver.url, auth={"bearer_token_env": "CA_TEST_NOPE"})
    with pytest.raises(ValueError, match="CA_TEST_NOPE"):
        await HttpExporter("out", cfg).start()


class _Queue:
    def __init__(self) -> None:
        self.size = 0


class _Runner:
    def __init__(self, exporter: HttpExporter) -> None:
        self.exporter = exporter
        self.queue = _Queue()
        self.buffer = None


class _Pipeline:
    def __init__(self, runner: _Runner) -> None:
        self.runners = [runner]
        self.accepting = True


def bound(exp: HttpExporter) -> _Pipeline:
    """Binds the exporter to a stand-in pipeline whose queue size the test controls."""
    pipeline = _Pipeline(_Runner(exp))
    exp.bind(SimpleNamespace(pipeline=pipeline))
    return pipeline


async def test_linger_while_records_trickle(receiver: Receiver, make: Any) -> None:
    exp = await make(receiver, batch={"max_records": 100, "max_seconds": 0.5})
    pipeline = bound(exp)
    queue = pipeline.runners[0].queue
    began = time.monotonic()
    await exp.send(lines(0, 5))  # sent at once, then holds the worker
    assert len(receiver.got) == 1 and receiver.got[0].at - began < 0.2
    assert time.monotonic() - began >= 0.45
    # A full request's worth waiting in the queue ends the hold.
    task = asyncio.create_task(exp.send(lines(5, 5)))
    await asyncio.sleep(0.1)
    assert not task.done()
    queue.size = 100
    await asyncio.wait_for(task, 0.2)
    # So do flush() and a pipeline that stops accepting (shutdown).
    queue.size = 0
    task = asyncio.create_task(exp.send(lines(10, 5)))
    await asyncio.sleep(0.05)
    await exp.flush()
    await asyncio.wait_for(task, 0.2)
    task = asyncio.create_task(exp.send(lines(15, 5)))
    await asyncio.sleep(0.05)
    pipeline.accepting = False
    await asyncio.wait_for(task, 0.2)
    # A batch of max_records or more is not held.
    pipeline.accepting = True
    began = time.monotonic()
    await exp.send(lines(20, 100))
    assert time.monotonic() - began < 0.3
    assert numbers(receiver.accepted) == list(range(120))


@pytest.mark.parametrize(
    ("fmt", "path", "ctype"),
    [
        ("loki", "/loki/api/v1/push", "application/json"),
        ("otlp", "/v1/logs", "application/json"),
        ("ndjson", "/", "application/x-ndjson"),
    ],
)
async def test_default_paths_and_content_types(
    receiver: Receiver, make: Any, fmt: str, path: str, ctype: str
) -> None:
    exp = await make(receiver, format=fmt, compression="none")
    await exp.send(lines(0, 3))
    got = receiver.got[0]
    assert (got.path, got.headers["Content-Type"]) == (path, ctype)
    assert "Content-Encoding" not in got.headers and got.wire_bytes == len(got.body)


async def test_redirects_are_not_followed(receiver: Receiver, make: Any, tmp_path: Path) -> None:
    exp = await make(receiver)
    receiver.script.append(Answer(308, b"", {"Location": "https://elsewhere.invalid/"}))
    await exp.send(lines(0, 1))
    assert len(receiver.got) == 1
    assert (
        "redirected to https://elsewhere.invalid/"
        in dead_letters(tmp_path)[0]["dead_letter"]["response"]
    )
