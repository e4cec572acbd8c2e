"""The batch tests of the filter and multiline stages in C (agent/_speedups.c
``find_any``): ``find_any`` against Python's substring tests, ``literal_start`` against
``re``, and each stage's output with and without the C test."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent import speedups
from agent.processing.config import MultilineConfig
from agent.processing.filter import Filter, literal_start
from agent.processing.multiline import Multiline
from agent.record import Record
from tests.unit.processing.conftest import meta, stamp, traces


@pytest.fixture(scope="module")
def find_any(built: Any) -> Any:
    return built.find_any


TEXT = st.text(alphabet="DEBUG xErorTwabl\r\x1b\né-", max_size=12)


def _records(messages: list[str | None], streams: list[str] | None = None) -> list[Record]:
    out = []
    for i, m in enumerate(messages):
        stream = streams[i % len(streams)] if streams else "stdout"
        r = Record.log(stamp(i // 2), meta(), stream, m or "", False)
        r.message = m  # type: ignore[assignment]  (None: counted as an empty message)
        out.append(r)
    return out


@settings(max_examples=500, deadline=None)
@given(
    messages=st.lists(st.one_of(TEXT, st.none()), max_size=8),
    needles=st.lists(st.text(alphabet="DEBUG xEr\r\x1bé", min_size=1, max_size=4), max_size=4),
    at_start=st.booleans(),
)
def test_find_any_is_pythons_test(
    find_any: Any, messages: list[str | None], needles: list[str], at_start: bool
) -> None:
    got = find_any(_records(messages), tuple(needles), at_start)
    texts = [m or "" for m in messages]
    if at_start:
        want = any(t.startswith(n) for t in texts for n in needles)
    else:
        want = any(n in t for t in texts for n in needles)
    if got is None:  # only when something met was not ASCII
        assert not all(n.isascii() for n in needles) or not all(t.isascii() for t in texts)
    else:
        assert got is want


PATTERN_PIECE = st.sampled_from(
    ["^", "D", "E", "B", "x", " ", "-", "#", "?", "*", "+", "{2}", "{1,2}", "|", "(", ")"]
) | st.sampled_from(["(?:", "[DE]", "\\d", ".", "$", "\\b", "(?i)", "(?m)", "{", "}", "\\|", "[|]"])


@settings(max_examples=1000, deadline=None)
@given(pieces=st.lists(PATTERN_PIECE, min_size=1, max_size=7), texts=st.lists(TEXT, max_size=6))
def test_a_literal_start_is_in_every_line_the_pattern_finds(
    pieces: list[str], texts: list[str]
) -> None:
    pattern = "".join(pieces)
    try:
        search = re.compile(pattern).search
    except re.error:
        assume(False)
        return
    start = literal_start(pattern)
    if start is None:
        return
    literal, anchored = start
    for t in texts + [literal + t for t in texts] + [t + literal for t in texts]:
        if search(t) is not None:
            assert t.startswith(literal) if anchored else literal in t, (pattern, t)


def test_literal_start_examples() -> None:
    assert literal_start("^DEBUG ") == ("DEBUG ", True)
    assert literal_start("healthz") == ("healthz", False)
    assert literal_start("^DEBUGS?") == ("DEBUG", True)
    for pattern in ("^a|b", "(?i)^x", "^\\d+", "^[A]x", "^", "x*"):
        assert literal_start(pattern) is None


LINES = st.lists(
    st.one_of(
        TEXT,
        st.sampled_from(
            ["DEBUG x", "DEBUG", "xDEBUG y", "java.lang.Error: x", "\tat A.b(A.java:1)"]
        ),
    ),
    max_size=10,
)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(LINES, min_size=1, max_size=4),
    exclude=st.sampled_from(["^DEBUG ", "^DEBUG", "DEBUG", "^x", "rr", "^DEBUG\\b"]),
)
def test_the_filter_drops_the_same_lines_either_way(
    find_any: Any, batches: list[list[str]], exclude: str
) -> None:
    got = []
    for find in (find_any, None):
        counters: Counter[str] = Counter()
        f = Filter(None, exclude, counters)
        assert f._find is (find_any if speedups.speedups is not None else None)
        assert f._needles  # (the pattern has a literal start)
        f._find = find
        out = []
        for i, b in enumerate(batches):
            recs = _records(b, ["stdout", "stderr"] if i % 2 else ["stderr"])
            out.append(
                [(r.message, r.stream, r.extra.end if r.extra else None) for r in f.process(recs)]
            )
        got.append((out, counters, dict(f.carry.ends)))
    assert got[0] == got[1]


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(LINES, min_size=1, max_size=4),
    with_trace=st.booleans(),
)
def test_multiline_groups_the_same_lines_either_way(
    find_any: Any, batches: list[list[str]], with_trace: bool
) -> None:
    if with_trace:
        batches = [*batches, traces()["java"][sorted(traces()["java"])[0]].split("\n")]
    got = []
    for find in (find_any, None):
        stage = Multiline(MultilineConfig.model_validate({"preset": "java"}), clock=lambda: 0.0)
        assert stage._find is (find_any if speedups.speedups is not None else None)
        stage._find = find
        out = []
        for b in batches:
            done = stage.process(_records(b))
            out.append([(r.message, r.extra.lines if r.extra else 1) for r in done])
        out.append([(r.message, r.extra.lines if r.extra else 1) for r in stage.flush(0.0, True)])
        got.append(out)
    assert got[0] == got[1]
