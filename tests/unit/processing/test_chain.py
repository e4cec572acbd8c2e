"""The chain skeleton: settings by config and label, invalid labels, the reader's hook
(no chain when nothing is configured), and exactness: positions, re-reads behind a
pending group, file marks, flushes at timeout, stop and shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import parse
from agent.positions import FileMark, Position, advance
from agent.processing.build import Processing, build
from agent.processing.chain import Chain, ChainDriver
from agent.processing.config import ProcessingConfig
from agent.processing.resolve import resolve
from agent.record import Record
from agent.sources.base import StreamEnd
from tests.unit.processing.conftest import CID, meta, records
from tests.unit.sources.test_reader import Harness, ScriptedSource

P = "container-agent.logs."
JAVA = ["java.lang.IllegalStateException: x", "\tat A.b(A.java:1)", "\tat A.c(A.java:2)"]


def cfg(**kw: Any) -> ProcessingConfig:
    return ProcessingConfig.model_validate(kw)


# -- settings: global < config rule < label; locks; redaction only added ----------------


def test_nothing_configured_means_no_chain() -> None:
    proc = Processing(cfg())
    assert proc.chain(meta()) is None
    assert proc.chain(meta({"other.label": "x"})) is None
    assert parse({}).processing == ProcessingConfig()


def test_label_over_rule_over_global() -> None:
    c = cfg(
        multiline="java",
        parser="json",
        rules=[
            {"match": {"image": ["^img"]}, "multiline": "python", "redact": ["email"]},
            {"match": {"name": ["nomatch"]}, "parser": "logfmt"},
        ],
    )
    r, problems = resolve(c, meta())
    assert (r.multiline.preset, r.parser.type, r.redact) == ("python", "json", ["email"])
    r, problems = resolve(c, meta({P + "multiline": "go", P + "parser": "none"}))
    assert (r.multiline.preset, r.parser, problems) == ("go", None, [])


def test_labels_add_redactions_but_never_remove_them_and_locks_hold() -> None:
    c = cfg(
        redact=["bearer"],
        locked=["enabled", "rate_limit"],
        rate_limit={"lines_per_second": 100, "mode": "drop"},
    )
    r, problems = resolve(
        c,
        meta({P + "redact": "email,jwt", P + "enabled": "false", P + "rate_limit": "none"}),
    )
    assert r.redact == ["bearer", "email", "jwt"]
    assert r.enabled is True and r.rate_limit is not None
    assert sorted(p.label for p in problems) == [P + "enabled", P + "rate_limit"]
    assert all("locked" in p.problem for p in problems)


def test_rate_limit_label_keeps_the_configured_mode() -> None:
    c = cfg(rate_limit={"lines_per_second": 100, "mode": "drop"})
    r, _ = resolve(c, meta({P + "rate_limit": "5"}))
    assert (r.rate_limit.lines_per_second, r.rate_limit.mode) == (5.0, "drop")
    r, _ = resolve(cfg(), meta({P + "rate_limit": "7.5"}))
    assert (r.rate_limit.lines_per_second, r.rate_limit.mode) == (7.5, "delay")


def test_profiles_by_rule_and_label() -> None:
    c = cfg(
        profiles={
            "app": {
                "multiline": {"start": r"^\[\d+\]"},
                "parser": {"type": "regex", "pattern": r"(?P<a>\w+)"},
            },
            "quiet": {"exclude": "healthz", "enabled": False},
        },
        locked=["enabled"],
        rules=[{"match": {"label": ["team=a"]}, "profile": "app"}],
    )
    r, _ = resolve(c, meta({"team": "a"}))
    assert r.multiline.start == r"^\[\d+\]" and r.parser.type == "regex"
    r, problems = resolve(c, meta({P + "profile": "quiet"}))
    assert r.exclude == "healthz" and r.enabled is True and problems == []  # enabled locked


@pytest.mark.parametrize(
    ("label", "value", "problem"),
    [
        ("multiline", "cobol", "not a multiline preset"),
        ("parser", "xml", "not a parser"),
        ("include", "(", "invalid regular expression"),
        ("redact", "bearer,ssn", "unknown redaction 'ssn'"),
        ("rate_limit", "fast", "not a number"),
        ("rate_limit", "-3", "not a number"),
        ("enabled", "maybe", "not true or false"),
        ("profile", "nope", "no profile 'nope'"),
        ("colour", "red", "unknown setting 'colour'"),
    ],
)
def test_invalid_label_reported_once_and_ignored(label: str, value: str, problem: str) -> None:
    proc = Processing(cfg(multiline="java"))
    m = meta({P + label: value, P + "exclude": "noise"})
    with capture_logs() as logs:
        for _ in range(3):  # the reader asks at every (re)start: reported once
            assert proc.enabled(m)
            chain = proc.chain(m)
    bad = [e for e in logs if e["event"] == "processing_label_invalid"]
    assert len(bad) == 1 and proc.invalid_labels == 1
    assert bad[0]["label"] == P + label and problem in bad[0]["problem"]
    assert bad[0]["container"] == "app" and bad[0]["action"] == "ignored"
    assert chain is not None  # the rest still applies: multiline + the exclude filter
    assert [s.name for s in chain.stages][:1] == ["multiline"]
    assert "filter" in [s.name for s in chain.stages]
    assert proc.totals()["invalid_labels"] == 1


def test_config_references_are_checked() -> None:
    with pytest.raises(ValueError, match="no profile 'x'"):
        cfg(rules=[{"match": {"name": ["a"]}, "profile": "x"}])
    with pytest.raises(ValueError, match="neither a preset"):
        cfg(redact=["ssn"])
    with pytest.raises(ValueError, match="unknown setting"):
        cfg(locked=["colour"])
    assert cfg(redact=["ssn"], redactions={"ssn": {"pattern": r"\d{3}-\d\d-\d{4}"}})


def test_stage_order() -> None:
    c = cfg(
        multiline="java",
        parser="json",
        include="x",
        rate_limit=10,
        redact=["email"],
    )
    chain = build(resolve(c, meta())[0], c, meta())
    assert [s.name for s in chain.stages] == [
        "multiline",
        "parse",
        "filter",
        "rate_limit",
        "redact",
    ]


# -- the reader's hook ------------------------------------------------------------------


async def test_reader_without_processing_emits_straight_and_with_chain_through_it() -> None:
    b1 = records(["a", "b"])
    source = ScriptedSource([b1, StreamEnd.STOPPED])
    h = Harness(source)
    h.followers.processing = Processing(cfg())
    reader = await h.run(source)
    assert reader.chain is None and h.batches[0] is b1  # the same list: no chain call

    seen: list[Any] = []

    class Spy(ScriptedSource):
        async def read(self, reader: Any, positions: Any, emit: Any) -> StreamEnd:
            seen.append(emit)
            return await super().read(reader, positions, emit)

    source = Spy([records(["x"]), StreamEnd.STOPPED])
    h = Harness(source)
    h.followers.processing = Processing(cfg())
    reader = await h.run(source)
    assert seen == [reader._emit]


async def test_enabled_false_collects_nothing() -> None:
    source = ScriptedSource()  # a read would fail: none is scripted
    h = Harness(source)
    h.followers.processing = Processing(cfg())
    with capture_logs() as logs:
        await h.run(source, meta({P + "enabled": "false"}))
    assert h.batches == [] and source.given == []
    assert [e["event"] for e in logs] == ["container_logs_disabled"]


async def test_a_pending_group_is_not_delivered_and_a_reread_resumes_after_it() -> None:
    """While a group is pending the read positions are past it (a re-read does not
    deliver its lines again) but nothing of it was delivered: the acknowledgements (the
    checkpoint) only move with the joined record, to its last line."""
    lines = records(["before", *JAVA, "after", "later"])
    source = ScriptedSource(
        [lines[:3], StreamEnd.REOPEN],  # the group is pending when the stream ends
        [lines[3:], StreamEnd.STOPPED],  # read again: from the last line taken in
    )
    h = Harness(source)
    h.followers.processing = Processing(cfg(multiline="java"))
    reader = await h.run(source)
    assert source.given[1] == {"stdout": Position(lines[2].timestamp, 1)}
    out = [r.message for b in h.batches for r in b]
    assert out == ["before", "\n".join(JAVA), "after", "later"]
    delivered: dict[str, Position] = {}
    advance(delivered, h.batches[0])
    assert delivered == {"stdout": Position(lines[0].timestamp, 1)}  # not into the group
    for b in h.batches[1:]:
        advance(delivered, b)
    assert delivered == h.followers.positions[CID] == {"stdout": Position(lines[-1].timestamp, 1)}
    assert reader.chain is not None and reader.chain.queued() is None


async def test_stop_flushes_what_is_held() -> None:
    lines = records(JAVA)
    source = ScriptedSource([lines, StreamEnd.STOPPED])
    h = Harness(source)
    h.followers.processing = Processing(cfg(multiline="java"))
    await h.run(source)
    assert [[r.message for r in b] for b in h.batches] == [["\n".join(JAVA)]]
    assert h.followers.positions[CID]["stdout"] == Position(lines[-1].timestamp, 1)


async def test_shutdown_flushes_what_is_held_within_the_drain() -> None:
    lines = records(JAVA)
    gate = asyncio.Event()

    async def wait_forever(reader: Any) -> None:
        await gate.wait()

    class Blocking(ScriptedSource):
        async def read(self, reader: Any, positions: Any, emit: Any) -> StreamEnd:
            await emit(lines)
            await gate.wait()
            return StreamEnd.STOPPED

    source = Blocking()
    h = Harness(source)
    h.followers.processing = Processing(cfg(multiline="java"))
    h.followers.follow(meta())
    await asyncio.sleep(0.05)
    assert h.batches == []
    await h.followers.close()  # the agent stops: readers cancelled
    assert [[r.message for r in b] for b in h.batches] == [["\n".join(JAVA)]]


async def test_flush_timeout_sends_a_group_that_waits() -> None:
    lines = records(JAVA)
    gate = asyncio.Event()

    class Slow(ScriptedSource):
        async def read(self, reader: Any, positions: Any, emit: Any) -> StreamEnd:
            await emit(lines)
            await gate.wait()
            return StreamEnd.STOPPED

    source = Slow()
    h = Harness(source)
    h.followers.processing = Processing(
        cfg(multiline={"preset": "java", "flush_timeout_seconds": 0.05})
    )
    h.followers.follow(meta())
    await asyncio.sleep(0.02)
    assert h.batches == []
    await asyncio.sleep(0.1)
    assert [[r.message for r in b] for b in h.batches] == [["\n".join(JAVA)]]
    gate.set()
    await asyncio.sleep(0.01)
    await h.followers.close()


async def test_file_marks_never_pass_a_line_held_back() -> None:
    """A files-source batch's last record carries (inode, offset) for the checkpoint:
    kept only when the chain holds nothing back after it."""
    m = meta()
    chain = build(resolve(cfg(multiline="java"), m)[0], cfg(multiline="java"), m)
    sent: list[list[Record]] = []

    async def send(batch: list[Record]) -> None:
        sent.append(batch)

    read: dict[str, Position] = {}
    driver = ChainDriver(chain, send, read, CID)
    b1 = records(["plain", JAVA[0]], "stderr") + records(["out"], "stdout", start=5)
    b1[-1].mark = (7, 100)
    await driver.emit(b1)
    assert sent[0][-1].message == "out" and sent[0][-1].mark is None  # a copy, no mark
    assert b1[-1].mark == (7, 100)  # the source's own record keeps it
    assert read["stderr"] == Position(b1[1].timestamp, 1)  # read past the pending line
    assert driver.queued() == {
        "stderr": Position(b1[0].timestamp, 1),
        "stdout": Position(b1[2].timestamp, 1),
    }
    b2 = records(JAVA[1:], "stderr", start=2) + records(["end"], "stderr", start=9)
    b2[-1].mark = (7, 300)
    await driver.emit(b2)
    assert [r.message for r in sent[1]] == ["\n".join(JAVA), "end"]
    assert sent[1][-1].mark == (7, 300)  # settled: the mark goes with the batch's end
    assert driver.queued() is None
    positions: dict[str, Position] = {}
    for b in sent:
        advance(positions, b)
    mark = FileMark.after(sent[1][-1], positions)
    assert mark.timestamp == b2[-1].timestamp
    await driver.close()


async def test_a_line_held_in_an_earlier_batch_loses_its_stale_mark() -> None:
    m = meta()
    c = cfg(multiline="java")
    chain = build(resolve(c, m)[0], c, m)
    b1 = records(["x", "Error: one"])
    b1[-1].mark = (1, 10)
    assert [r.message for r in chain.process(b1)] == ["x"]
    b2 = records(["Error: two"], "stderr", start=3)  # the other stream: not settled
    assert chain.process(b2) == []
    b3 = records(["y"], start=5)
    out = chain.process(b3)
    assert [r.message for r in out] == ["Error: one", "y"]
    assert out[0].mark is None  # b1's mark: the stderr line is still held


def test_chain_counts_per_container() -> None:
    proc = Processing(cfg(multiline="java", exclude="^noise"))
    chain = proc.chain(meta())
    assert isinstance(chain, Chain)
    chain.process(records(["noise 1", *JAVA, "ok"]))
    assert proc.counters[CID] == Counter(
        {"filtered": 1, "multiline_records": 1, "multiline_lines": 3}
    )
