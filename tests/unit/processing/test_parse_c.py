"""The json parser's C loop (agent/_speedups.c ``json_fields``) against the Python loop:
the same records (fields, level, message, lines, end), counters and encoded bytes, for
lines it takes and lines it hands back."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import record as record_module
from agent import speedups
from agent.processing import parse as parse_module
from agent.processing.config import ParserConfig
from agent.processing.parse import _SPELLED, Parse
from agent.record import Extra, Record
from tests.unit.processing.conftest import records, stamp


@pytest.fixture(scope="module")
def c_loop(built: Any) -> Any:
    return built.json_fields


LEVEL_VALUE = st.one_of(
    st.sampled_from(sorted(_SPELLED)),
    st.sampled_from([" INFO", "Warn ", "WARNING", "wArN", "nope", "", "30"]),
    st.sampled_from([10, 30, 50, 60, 7, True, 1.5]),
    st.none(),
    st.text(max_size=6),
    st.dictionaries(st.sampled_from(["level", "x"]), st.sampled_from(["error", 50, None])),
    st.lists(st.integers(0, 3), max_size=2),
)
FIELDS = st.dictionaries(
    st.sampled_from(["level", "lvl", "severity", "loglevel", "log.level", "log", "msg", "x"]),
    st.one_of(LEVEL_VALUE, st.text(max_size=10)),
    max_size=5,
)
OTHER = st.sampled_from(
    [
        "",
        "plain",
        "ERROR boom",
        "[warn] x",
        "Traceback (most recent call last):",
        "{",
        "}",
        "{}",
        "{x}",
        "[{}]",
        ' {"level":"info"}',
        '{"level":"info"}\r',
        '{"level":"info"} ',
        '{"level":"info"}{"a":1}',
        '{"msg":"a\\u0040b.c","level":"ERROR"}',
        '{"msg":"\\ud800","level":"info"}',
        '{"level":"info","a":"é€𝄞"}',
        '{"level":"info","level":"error"}',
        '{"a":1e999}',
        '{"n":18446744073709551616}',
    ]
)
MESSAGE = st.one_of(FIELDS.map(lambda d: orjson.dumps(d).decode()), OTHER)
CONFIG = st.sampled_from(
    [
        {"type": "json"},
        {"type": "json", "level_from_text": False},
        {"type": "json", "level_field": "severity"},
        {"type": "json", "level_field": "log.level"},
        {"type": "json", "level_field": "lvl", "level_from_text": False},
    ]
)
# Some records come with an Extra already (a multiline group: lines, end, a level).
HELD = st.lists(st.booleans(), max_size=30)


def _run(
    cfg: dict[str, Any], messages: list[str], held: list[bool], loop: Any
) -> tuple[list[Record], Counter[str]]:
    recs = records(messages)
    for r, h in zip(recs, held, strict=False):
        if h:
            x = r.extra = Extra()
            x.lines, x.end, x.level = 3, (stamp(99), 2, False), "fatal"
    counters: Counter[str] = Counter()
    stage = Parse(ParserConfig.model_validate(cfg), counters)
    stage._fast = loop
    assert stage.process(recs) is recs
    return recs, counters


def _state(r: Record) -> tuple[Any, ...]:
    x = r.extra
    shown = None if x is None else (x.level, x.fields, x.lines, x.end)
    return (r.message, r.timestamp, r.stream, shown)


@settings(max_examples=400, deadline=None)
@given(cfg=CONFIG, messages=st.lists(MESSAGE, max_size=30), held=HELD)
def test_the_c_loop_gives_what_the_python_loop_gives(
    c_loop: Any, cfg: dict[str, Any], messages: list[str], held: list[bool]
) -> None:
    got, got_counts = _run(cfg, messages, held, c_loop)
    want, want_counts = _run(cfg, messages, held, None)
    assert [_state(r) for r in got] == [_state(r) for r in want]
    assert got_counts == want_counts
    encode = record_module.encode_ndjson
    assert encode(got) == encode(want)
    module = speedups.speedups or speedups._load_extension()
    assert module is not None
    assert module.encode_ndjson(got) == encode(want)


def test_the_c_loop_takes_the_common_line_and_hands_back_the_rest(c_loop: Any) -> None:
    messages = [
        '{"level":"info","msg":"a"}',  # taken
        '{"level":"INFO ","msg":"b"}',  # a spelling the table lacks: normalise_level's
        "ERROR plain",  # not an object
        '{"msg":"c"}',  # no level field: the level from the text (none)
        '{"level":50}',  # a number: normalise_level's
    ]
    recs = records(messages)
    rest, parsed = c_loop(
        recs,
        orjson.loads,
        orjson.JSONDecodeError,
        ("level", "log.level"),
        _SPELLED,
        parse_module.level_from_text,
    )
    assert parsed == 1
    assert rest == [recs[1], recs[2], recs[3], recs[4]]
    assert recs[0].extra is not None and recs[0].extra.level == "info"
    assert recs[0].extra.fields == {"level": "info", "msg": "a"} and recs[0].extra.lines == 1
    assert recs[0].extra.end is None
    assert all(r.extra is None for r in rest)  # handed back untouched
    rest, parsed = c_loop(
        records(['{"msg":"c"}']), orjson.loads, orjson.JSONDecodeError, ("level",), {}, None
    )
    assert (rest, parsed) == ([], 1)


def test_parse_uses_the_c_loop_when_built(c_loop: Any) -> None:
    if speedups.speedups is None:
        pytest.skip("the pure-Python run: the C loop is tested above")
    assert Parse(ParserConfig.model_validate({"type": "json"}))._fast is c_loop
    for cfg in (
        {"type": "logfmt"},
        {"type": "json", "time_field": "ts"},
        {"type": "json", "keep_message": False},
    ):
        assert Parse(ParserConfig.model_validate(cfg))._fast is None


def test_an_extra_the_c_loop_makes_starts_as_extra_makes_it() -> None:
    x = Extra()
    assert {s: getattr(x, s) for s in Extra.__slots__} == speedups._EXTRA_DEFAULTS
