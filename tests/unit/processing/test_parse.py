"""Parsers: json, logfmt, regex; levels; time; keep/drop message; unparsed lines pass
untouched and are counted. Property tests: logfmt and json round trips."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.positions import Position, advance
from agent.processing.config import ParserConfig
from agent.processing.parse import (
    Parse,
    level_from_text,
    normalise_level,
    parse_json,
    parse_logfmt,
    parse_time,
)
from agent.record import Record
from agent.speedups import speedups
from tests.unit.processing.conftest import records, stamp


def parse(cfg: str | dict, messages: list[str]) -> tuple[list[Record], Counter[str]]:
    counters: Counter[str] = Counter()
    stage = Parse(ParserConfig.model_validate(cfg), counters)
    return stage.process(records(messages)), counters


def test_json_objects_become_fields_nested_values_kept() -> None:
    msg = '{"level":"WARN","msg":"disk","n":[1,{"a":null}],"ctx":{"log":{"level":"x"}}}'
    (r,), c = parse("json", [msg])
    doc = r.to_dict()
    assert doc["fields"] == orjson.loads(msg) and doc["message"] == msg
    assert doc["level"] == "warning" and c == Counter({"parsed": 1})


@pytest.mark.parametrize(
    "msg", ["[1,2]", "3", '"{}"', "null", "{not json}", "{", "", "plain text", '{"a":1}x']
)
def test_json_arrays_scalars_invalid_and_empty_pass_untouched_and_are_counted(msg: str) -> None:
    (r,), c = parse("json", [msg])
    assert (r.message == msg and r.extra is None) or r.extra.fields is None
    assert "fields" not in r.to_dict() and c == Counter({"unparsed": 1})


def test_json_with_crlf_and_leading_space() -> None:
    (a, b), _c = parse("json", ['{"a":1}\r', '  {"b":2}'])
    assert a.fields == {"a": 1} and b.fields == {"b": 2}
    assert a.message == '{"a":1}\r'  # the raw message is kept as it was


def test_level_field_choice_nested_and_numbers() -> None:
    recs, _ = parse(
        {"type": "json", "level_field": "log.level"},
        ['{"log":{"level":"Error"},"level":"info"}', '{"level":"info"}'],
    )
    assert [r.level for r in recs] == ["error", None]
    recs, _ = parse("json", ['{"level":50}', '{"lvl":"dbg"}', '{"severity":"CRITICAL"}'])
    assert [r.level for r in recs] == ["error", "debug", "fatal"]
    assert normalise_level(True) is None and normalise_level("chatty") is None


@pytest.mark.parametrize(
    "value",
    [
        "warn",
        "WARN",
        "Warn",
        " warn ",
        "wArN",
        "Information",
        "CRIT",
        30,
        30.0,
        True,
        None,
        "chatty",
        "",
        [1],
        {"a": 1},
    ],
)
def test_a_level_fields_value_as_normalise_level_says(value: object) -> None:
    """The parser's table of common spellings agrees with ``normalise_level``, and a
    field that is null falls through to the next level field."""
    (r,), _ = parse("json", [orjson.dumps({"level": value, "lvl": "debug"}).decode()])
    want = normalise_level(value) if value is not None else "debug"
    assert r.level == want


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("ERROR something broke", "error"),
        ("WARN: low disk", "warning"),
        ("2026-01-02T03:04:05.123Z INFO started", "info"),
        ("2026-01-02 03:04:05,123 DEBUG x", "debug"),
        ("[warning] careful", "warning"),
        ("[Error] x", "error"),
        ("error: bad flag", "error"),
        ("ERROR:root:failed", "error"),
        ("\x1b[31mFATAL\x1b[0m out of memory", "fatal"),
        ("Traceback (most recent call last):\n  File", "error"),
        ('Exception in thread "main" java.lang.Error', "error"),
        ("panic: boom\n\ngoroutine 1", "fatal"),
        ("INFORMATION is power", None),
        ("Errors happen", None),
        ("an ERROR later in the line", None),
        ("Debug mode on", None),
        ("", None),
    ],
)
def test_level_from_a_leading_token(text: str, level: str | None) -> None:
    assert level_from_text(text) == level


def test_text_level_for_unparsed_lines_and_detect_level_without_parser() -> None:
    (r,), c = parse("json", ["ERROR not json"])
    assert r.level == "error" and c == Counter({"unparsed": 1})
    assert r.to_dict()["level"] == "error"
    stage = Parse(None)
    (r, q) = stage.process(records(["WARN x", "quiet"]))
    assert (r.level, q.level, q.extra) == ("warning", None, None)
    assert "level" not in q.to_dict()


def test_logfmt() -> None:
    line = 'ts=2026-01-01T00:00:00Z level=warn msg="disk \\"full\\"" path=/var n=3 empty= k=v'
    (r,), c = parse("logfmt", [line])
    assert r.fields == {
        "ts": "2026-01-01T00:00:00Z",
        "level": "warn",
        "msg": 'disk "full"',
        "path": "/var",
        "n": "3",
        "empty": "",
        "k": "v",
    }
    assert r.level == "warning" and c == Counter({"parsed": 1})


@pytest.mark.parametrize(
    "line", ["plain text", "Starting server at port=8080", 'a="unterminated', "=x", "", "a=b c"]
)
def test_logfmt_rejects_what_is_not_only_pairs(line: str) -> None:
    (r,), c = parse("logfmt", [line])
    assert r.message == line and (r.extra is None or r.extra.fields is None)
    assert c == Counter({"unparsed": 1})


def test_regex_named_groups() -> None:
    cfg = {
        "type": "regex",
        "pattern": r"^(?P<ip>\S+) \S+ \S+ \[(?P<when>[^\]]+)\] "
        r"\"(?P<req>[^\"]*)\" (?P<status>\d{3})(?: (?P<size>\d+))?",
    }
    line = '10.0.0.1 - - [10/Oct/2026:13:55:36 +0000] "GET / HTTP/1.1" 200'
    (r, bad), c = parse(cfg, [line, "garbage"])
    assert r.fields == {
        "ip": "10.0.0.1",
        "when": "10/Oct/2026:13:55:36 +0000",
        "req": "GET / HTTP/1.1",
        "status": "200",
    }
    assert bad.message == "garbage" and c == Counter({"parsed": 1, "unparsed": 1})
    with pytest.raises(ValueError, match="named group"):
        ParserConfig.model_validate({"type": "regex", "pattern": "(a)"})


def test_time_from_a_field_keeps_positions_on_the_engine_stamp() -> None:
    recs = records(['{"t":"2026-03-04T05:06:07.5+01:00","m":1}', '{"t":"bad"}'])
    engine = recs[0].timestamp
    stage = Parse(ParserConfig(type="json", time_field="t"), c := Counter())
    out = stage.process(recs)
    assert out[0].timestamp == "2026-03-04T04:06:07.500000000Z"
    assert out[1].timestamp == recs[1].timestamp and c["time_unparsed"] == 1
    positions: dict[str, Position] = {}
    advance(positions, out[:1])
    assert positions["stdout"] == Position(engine, 1)


@pytest.mark.parametrize(
    ("value", "fmt", "want"),
    [
        (1767225600, "unix", "2026-01-01T00:00:00.000000000Z"),
        ("1767225600.25", "unix", "2026-01-01T00:00:00.250000000Z"),
        (1767225600123, "unix_ms", "2026-01-01T00:00:00.123000000Z"),
        (1767225600123456789, "unix_ns", "2026-01-01T00:00:00.123456789Z"),
        ("2026-01-01 00:00:00", "rfc3339", "2026-01-01T00:00:00.000000000Z"),
        ("01/Jan/2026:01:00:00 +0100", "%d/%b/%Y:%H:%M:%S %z", "2026-01-01T00:00:00.000000000Z"),
        ("2026-01-01 00:00:00.5", "%Y-%m-%d %H:%M:%S.%f", "2026-01-01T00:00:00.500000000Z"),
        ("x", "unix", None),
        ([1], "rfc3339", None),
        (True, "unix", None),
        ("nope", "%Y", None),
    ],
)
def test_time_formats(value: object, fmt: str, want: str | None) -> None:
    assert parse_time(value, fmt) == want


def test_drop_raw_message() -> None:
    (a, b, c), _ = parse(
        {"type": "json", "keep_message": False},
        ['{"msg":"hello","x":1}', '{"message":{"nested":true}}', '{"x":2}'],
    )
    assert (a.message, a.fields) == ("hello", {"x": 1})
    assert (b.message, b.fields) == ('{"nested":true}', {})
    assert (c.message, c.fields) == ("", {"x": 2})
    (d,), _ = parse(
        {"type": "logfmt", "keep_message": False, "message_field": "text"}, ["text=hi a=b"]
    )
    assert d.to_dict()["message"] == "hi" and d.fields == {"a": "b"}


def test_records_encode_the_same_with_the_c_encoder() -> None:
    if speedups is None:
        pytest.skip("the C extension is not built")
    recs, _ = parse("logfmt", ["a=1 level=error", "plain"])
    for r in recs:
        r.json()
    assert speedups.encode_ndjson(recs) == b"".join(r.json() + b"\n" for r in recs)


KEY = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='="\\'),
    min_size=1,
    max_size=8,
)
VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=12
)


def _logfmt_value(v: str) -> str:
    if v and not any(ch.isspace() or ch in '"=\\' for ch in v):
        return v
    return orjson.dumps(v).decode()


@settings(max_examples=300, deadline=None)
@given(pairs=st.dictionaries(KEY, VALUE, min_size=1, max_size=6))
def test_logfmt_round_trip(pairs: dict[str, str]) -> None:
    line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs.items())
    assert parse_logfmt(line) == pairs


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON)
def test_json_parser_takes_objects_only_and_loses_nothing(value: object) -> None:
    text = orjson.dumps(value).decode()
    got = parse_json(text)
    assert got == (value if isinstance(value, dict) else None)
    (r,), c = parse("json", [text])
    assert r.message == text and r.timestamp == stamp(0)
    assert c == Counter({"parsed": 1} if isinstance(value, dict) else {"unparsed": 1})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                ['{"a":1}', '{"a":1}\r', ' {"a":1} ', "{}", "{x}", '{"a":{}}x', "[{}]", "{", "}"]
            ),
            st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1) | st.text()).map(
                lambda d: orjson.dumps(d).decode()
            ),
            st.text(max_size=12),
        ),
        max_size=20,
    )
)
def test_the_json_parser_takes_what_parse_json_takes(messages: list[str]) -> None:
    """Lines that are one object brace to brace take a shorter way: the same fields."""
    recs, c = parse("json", messages)
    want = [parse_json(m[:-1] if m[-1:] == "\r" else m) for m in messages]
    assert [r.extra.fields if r.extra is not None else None for r in recs] == want
    assert c["parsed"] == sum(w is not None for w in want)
