"""Record serialisation: the schema documented in docs/records.md."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.record import (
    ContainerMeta,
    Extra,
    Record,
    encode_ndjson,
    format_timestamp_ns,
    timestamp_to_unix,
)

LABELS = {"com.docker.compose.project": "shop", "com.docker.compose.service": "web", "x": "1"}


def meta() -> ContainerMeta:
    return ContainerMeta("abc123", "/shop-web-1", "nginx:1.27", LABELS, "node-7")


def test_log_record_schema() -> None:
    rec = Record.log("2026-11-28T10:11:45.589604852Z", meta(), "stderr", 'boom "q" é', False)
    assert orjson.loads(rec.json()) == {
        "kind": "log",
        "timestamp": "2026-11-28T10:11:45.589604852Z",
        "container_id": "abc123",
        "container_name": "shop-web-1",
        "image": "nginx:1.27",
        "labels": LABELS,
        "host": "node-7",
        "project": "shop",
        "service": "web",
        "stream": "stderr",
        "message": 'boom "q" é',
    }


def test_truncated_and_json_fields() -> None:
    rec = Record.log("t", meta(), "stdout", '{"level":"warn","n":[1,2]}', True)
    doc = rec.to_dict()
    assert doc["truncated"] is True
    assert doc["fields"] == {"level": "warn", "n": [1, 2]}
    assert doc["message"] == '{"level":"warn","n":[1,2]}'


def test_json_fields_only_for_objects() -> None:
    for message in ("[1,2]", "{not json}", "{", "", '"{}"', "plain"):
        assert "fields" not in Record.log("t", meta(), "stdout", message, False).to_dict()


def test_event_record_schema_without_compose_labels() -> None:
    m = ContainerMeta("id9", "/solo", "busybox", {}, "h")
    doc = Record.event("2026-01-01T00:00:00.000000001Z", m, "die", {"exitCode": "3"}).to_dict()
    assert doc == {
        "kind": "event",
        "timestamp": "2026-01-01T00:00:00.000000001Z",
        "container_id": "id9",
        "container_name": "solo",
        "image": "busybox",
        "labels": {},
        "host": "h",
        "project": None,
        "service": None,
        "action": "die",
        "attributes": {"exitCode": "3"},
    }


def test_event_meta_separates_labels_from_attributes() -> None:
    actor = {"ID": "id1", "Attributes": {"name": "web", "image": "img", "exitCode": "0", "l": "v"}}
    m = ContainerMeta.from_event(actor, "h")
    assert (m.name, m.image, m.labels) == ("web", "img", {"l": "v"})


def test_ndjson_is_one_object_per_line() -> None:
    recs = [Record.log("t", meta(), "stdout", f"line\n{i}", False) for i in range(3)]
    data = encode_ndjson(recs)
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert [orjson.loads(x)["message"] for x in lines[:-1]] == ["line\n0", "line\n1", "line\n2"]
    assert encode_ndjson([]) == b""


def test_timestamps() -> None:
    assert format_timestamp_ns(1795860662941112257) == "2026-11-28T10:11:02.941112257Z"
    assert timestamp_to_unix("2026-11-28T10:11:02.941112257Z") == "1795860662.941112257"
    assert timestamp_to_unix("2026-11-28T10:11:02Z") == "1795860662.000000000"
    assert timestamp_to_unix("2026-11-28T11:11:02.5+01:00") == "1795860662.500000000"


@settings(max_examples=500)
@given(st.datetimes())
def test_timestamp_seconds_are_strptimes(moment: Any) -> None:
    """The whole seconds of a stamp are what ``calendar.timegm(time.strptime(...))`` gave
    (before datetime.fromisoformat read them), from year 1 to 9999."""
    import calendar
    import time

    base = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    expected = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    assert timestamp_to_unix(base + ".5Z") == f"{expected}.500000000"
    assert timestamp_to_unix(base + "Z") == f"{expected}.000000000"


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-28 10:11:02Z",  # not T
        "2026-11-28T10:11:02+01:00",  # an offset without a fraction: strptime refused it too
        "2026-11-28T24:00:00Z",
        "2026-02-30T10:11:02Z",
        "2026-W48-6T10:11:0Z",
        "garbage",
    ],
)
def test_a_stamp_not_in_the_engines_form_is_a_value_error(stamp: str) -> None:
    with pytest.raises(ValueError):
        timestamp_to_unix(stamp)


def test_normalize_timestamp() -> None:
    from agent.record import normalize_timestamp

    assert normalize_timestamp("2026-11-28T11:11:02.5+01:00") == "2026-11-28T10:11:02.500000000Z"
    assert normalize_timestamp("2026-11-28T10:11:02Z") == "2026-11-28T10:11:02.000000000Z"


def _records(seed: int) -> list[Record]:
    """A fresh list of every kind of record the NDJSON encoders meet (fresh: encoding
    caches each record's JSON on it, which would hide the encoder's own work)."""
    import random

    rng = random.Random(seed)
    metas = [meta(), ContainerMeta("def456", "/other", "busybox", {"é": "ü"}, "node-7")]
    odd = [
        "".join(map(chr, range(128))),
        'quote " backslash \\ slash / tab \t',
        "é ü € 😀 \u2028 \u2029 \x7f",
        "",
        '{"level":"warn","n":[1,2]}',
        "{not json}",
        "{",
        "}",
        "x" * 5000,
    ]
    out: list[Record] = []
    for i in range(300):
        m = rng.choice(metas)
        ts = f"2026-11-28T10:11:45.{i:09d}Z"
        pick = rng.randrange(10)
        if pick == 0:
            out.append(Record.event(ts, m, "start", {"exitCode": "0", "é": "\n"}))
        elif pick == 1:
            out.append(Record.stats_sample(ts, m, {"cpu": 1.5, "mem": [1, 2]}))
        else:
            message = (
                rng.choice(odd)
                if pick < 5
                else "".join(
                    chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFF)]))
                    for _ in range(rng.randrange(60))
                )
            )
            out.append(Record.log(ts, m, rng.choice(["stdout", "stderr"]), message, pick == 2))
        if rng.random() < 0.1:
            out[-1].json()  # already encoded once (another exporter, say)
    return out


def test_c_encoder_writes_the_python_bytes(seed: int) -> None:
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    for case in range(5):
        want = encode_ndjson(_records(seed + case))
        note = f"seed={seed} case={case}"
        assert ext.encode_ndjson(_records(seed + case)) == want, note
        assert ext.encode_ndjson(tuple(_records(seed + case))) == want, note
    assert ext.encode_ndjson([]) == b"" == encode_ndjson([])
    for encode in (ext.encode_ndjson, encode_ndjson):
        m = meta()  # the first line builds the prefix; the second takes the C path
        bad = [Record.log("t", m, "stdout", "fine", False)]
        bad.append(Record.log("t", m, "stdout", "lone \ud800 surrogate", False))
        try:
            encode(bad)
        except orjson.JSONEncodeError:
            continue
        raise AssertionError(f"{encode} encoded a lone surrogate")


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    message=st.one_of(st.text(max_size=40), st.just('{"a":1,"b":"\\u0040"}'), st.just("{x}")),
    truncated=st.booleans(),
    fields=st.none() | st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4),
    level=st.sampled_from([None, "debug", "info", "warning", "error", "fatal"]),
    lines=st.integers(1, 4),
)
def test_processed_records_keep_their_bytes(
    message: str, truncated: bool, fields: dict | None, level: str | None, lines: int
) -> None:
    """A record with processing results: the keys after the stamp, each value encoded on
    its own and joined in the documented order (how they were written before one orjson
    call wrote them all)."""
    r = Record.log("2026-11-28T10:11:45.000000001Z", meta(), "stderr", message, truncated)
    extra = r.extra = Extra()
    extra.fields, extra.level, extra.lines = fields, level, lines
    if not extra.shown:
        return
    derived = None
    if message[:1] == "{" and message[-1:] == "}":
        try:
            derived = orjson.loads(message)
        except orjson.JSONDecodeError:
            derived = None
    shown = fields if fields is not None else derived if isinstance(derived, dict) else None
    want = orjson.dumps(r.meta.to_dict())[:-1]
    want = b'{"kind":"log",' + want[1:] + b',"stream":"stderr"'
    want += b',"timestamp":"2026-11-28T10:11:45.000000001Z","message":' + orjson.dumps(message)
    want += b',"truncated":true' if truncated else b""
    want += b',"fields":' + orjson.dumps(shown) if shown is not None else b""
    want += b',"level":' + orjson.dumps(level) if level is not None else b""
    want += b',"lines":%d' % lines if lines != 1 else b""
    assert r.json() == want + b"}"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.text(max_size=30),
                st.sampled_from(['{"a":1}', "{not json}", 'é 😀 \u2028 \x00\x1f"\\', "x" * 300]),
            ),
            st.booleans(),
            st.none() | st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4),
            st.sampled_from([None, "info", "error", "fatal", "niveau é"]),
            st.integers(1, 3) | st.just(2**70),
            st.sampled_from(["stdout", "stderr"]),
            st.booleans(),  # an Extra at all
        ),
        max_size=12,
    )
)
def test_c_encoder_writes_processed_records_as_python_does(
    rows: list[tuple[str, bool, dict | None, str | None, int, str, bool]],
) -> None:
    """Records with processing results (``Record.extra``), encoded fresh (no cached JSON)
    by the C encoder and by ``Record.json()``: the same bytes."""
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    m = meta()

    def made() -> list[Record]:
        out = []
        for i, (message, truncated, fields, level, lines, stream, has) in enumerate(rows):
            r = Record.log(f"2026-11-28T10:11:45.{i:09d}Z", m, stream, message, truncated)
            if has:
                extra = r.extra = Extra()
                extra.fields, extra.level, extra.lines = fields, level, lines
            out.append(r)
        return out

    try:
        want = encode_ndjson(made())
    except TypeError as e:  # orjson's error (a line count past 64 bits): the same one
        with pytest.raises(type(e)):
            ext.encode_ndjson(made())
        return
    assert ext.encode_ndjson(made()) == want
    assert ext.encode_ndjson(made()) == want  # with every prefix built (the C path)


def test_c_encoder_writes_processed_records_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    m = meta()
    Record.log("t", m, "stdout", "x", False).json()  # the stream's prefix, built once
    recs = []
    for fields, level, lines, truncated in [
        ({"a": [1, "é"]}, "info", 1, False),
        (None, "error", 3, True),
        ({}, None, 1, False),
    ]:
        r = Record.log("2026-11-28T10:11:45.000000001Z", m, "stdout", '{"a":1}', truncated)
        extra = r.extra = Extra()
        extra.fields, extra.level, extra.lines = fields, level, lines
        recs.append(r)
    recs[1].message = "plain"  # no fields: a JSON message's would be derived in Python
    want = b"".join(r.json() + b"\n" for r in recs)
    assert_encoded_without_record_json(ext, recs, want, monkeypatch)


JSON_MESSAGE = st.one_of(
    st.dictionaries(st.text(max_size=6), JSON_VALUE, max_size=4).map(
        lambda d: orjson.dumps(d).decode()
    ),
    st.sampled_from(
        [
            '{"a":1,"b":"\\u0040"}',
            '{"a":"\\ud800"}',  # a lone surrogate escaped: orjson refuses it
            '{"a":1}{"b":2}',
            '{"a":[1,2}',
            "{x}",
            "{}",
            '{"é":"😀 \u2028","n":1e400,"big":18446744073709551616}',
            '{"a":"lone \ud800 surrogate"}',  # not encodable at all: the same error
            "{" + '"k":' * 0 + '"v":"' + "x" * 3000 + '"}',
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            JSON_MESSAGE | st.text(max_size=20),
            st.booleans(),  # truncated
            st.none() | st.sampled_from(["info", "error"]),  # an Extra with this level
            st.sampled_from(["stdout", "stderr"]),
        ),
        max_size=10,
    ),
    st.integers(0, 3),  # records already encoded by Record.json() (cached)
)
def test_c_encoder_derives_json_fields_as_python_does(
    rows: list[tuple[str, bool, str | None, str]], cached: int
) -> None:
    """A message that is (or looks like) a JSON object, with no parsed fields: its fields
    are derived by the C encoder itself (orjson.loads), plain or with processing results,
    truncated or not: the same bytes, or the same error, as ``Record.json()``."""
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    m = meta()
    Record.log("t", m, "stdout", "x", False).json()  # both streams' prefixes: the C path
    Record.log("t", m, "stderr", "x", False).json()

    def made() -> list[Record]:
        out = []
        for i, (message, truncated, level, stream) in enumerate(rows):
            r = Record.log(f"2026-11-28T10:11:45.{i:09d}Z", m, stream, message, truncated)
            if level is not None:
                r.extra = Extra()
                r.extra.level = level
            out.append(r)
        for r in out[:cached]:
            with contextlib.suppress(orjson.JSONEncodeError):
                r.json()
        return out

    try:
        want = encode_ndjson(made())
    except orjson.JSONEncodeError:
        with pytest.raises(orjson.JSONEncodeError):
            ext.encode_ndjson(made())
        return
    assert ext.encode_ndjson(made()) == want


def test_c_encoder_writes_json_messages_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON message with no processing results, truncated or not, and one that only
    looks like one: written by the C encoder without ``Record.json()``."""
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    m = meta()
    Record.log("t", m, "stdout", "x", False).json()
    rows = [('{"level":"info","msg":"a \\"q\\"","n":[1,{"b":null}]}', False)]
    rows += [('{"a":1}', True), ("{not json}", False), ("{not json}", True), ("[1]", True)]
    recs = [Record.log("2026-11-28T10:11:45.000000001Z", m, "stdout", msg, t) for msg, t in rows]
    want = b"".join(r.json() + b"\n" for r in recs)
    assert b'"fields":{"level":"info"' in want
    assert b'"message":"{\\"a\\":1}","truncated":true,"fields":{"a":1}}' in want
    assert_encoded_without_record_json(ext, recs, want, monkeypatch)


def test_c_encoder_output_buffer_sizes() -> None:
    """The C encoder sizes its output from the previous batch's bytes per record and keeps
    a nearly full buffer as it is: batches of very different record sizes one after the
    other still give exactly the Python bytes, as ordinary bytes objects."""
    from agent.speedups import _load_extension

    ext = _load_extension()
    assert ext is not None, "agent._speedups is not built"
    m = meta()
    Record.log("t", m, "stdout", "x", False).json()
    for size, count in [(0, 1), (5000, 3), (1, 2000), (20_000, 1), (10, 500), (10, 500)]:
        for extra in range(3):
            recs = [
                Record.log("2026-11-28T10:11:45.000000001Z", m, "stdout", "y" * size, False)
                for _ in range(count + extra)
            ]
            got = ext.encode_ndjson(recs)
            want = encode_ndjson(recs)
            assert got == want and len(got) == len(want) and hash(got) == hash(want)
            assert bytes(got) == want and got[-1:] == b"\n" and got + b"" == want


def assert_encoded_without_record_json(
    ext: Any, recs: list[Record], want: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C encoder writes ``want`` for ``recs`` without calling ``Record.json()`` (nor
    caching its bytes on the records)."""
    for r in recs:
        r._json = None

    def refuse(self: Record) -> bytes:
        raise AssertionError("Record.json() called")

    monkeypatch.setattr(Record, "json", refuse)
    assert ext.encode_ndjson(recs) == want
    assert all(r._json is None for r in recs)
