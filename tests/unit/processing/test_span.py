"""The foundation: ``Record.extra`` in the record's JSON (the C encoder agrees once a
processed record is encoded), and positions that count the lines a record accounts for
(``extra.end``) rather than one line at its timestamp."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import speedups
from agent.positions import FileMark, Position, advance
from agent.processing.span import Carry, combine, end_of, end_of_all, extra_of, set_end
from agent.record import Record, encode_ndjson
from tests.unit.processing.conftest import meta, records, stamp


def test_plain_records_have_no_extra_and_encode_as_before() -> None:
    (r,) = records(["hello"])
    assert r.extra is None and r.level is None and r.lines == 1
    assert set(r.to_dict()) >= {"message", "timestamp"}
    assert not {"level", "lines", "fields"} & set(r.to_dict())


def test_extra_in_the_json() -> None:
    r, j = records(["a\nb", '{"x":1}'])
    extra = extra_of(r)
    extra.level, extra.lines = "error", 2
    extra.fields = {"k": [1, {"n": None}]}
    r.truncated = True
    doc = orjson.loads(r.json())
    assert doc["level"] == "error" and doc["lines"] == 2 and doc["truncated"] is True
    assert doc["fields"] == {"k": [1, {"n": None}]} and doc["message"] == "a\nb"
    extra_of(j).level = "info"  # no parsed fields: derived from the JSON message as before
    assert j.to_dict()["fields"] == {"x": 1} and j.fields == {"x": 1}
    bookkeeping = records(["z"])[0]
    extra_of(bookkeeping).end = (stamp(9), 3, False)
    assert not bookkeeping.extra.shown and "lines" not in bookkeeping.to_dict()


@pytest.mark.skipif(speedups.speedups is None, reason="the C extension is not built")
def test_c_encoder_agrees_on_encoded_processed_records_and_builds_plain_ones() -> None:
    recs = records(["plain", "joined\nlines", "lvl"])
    extra_of(recs[1]).lines = 2
    extra_of(recs[2]).level = "warning"
    for r in recs[1:]:
        r.json()  # what the chain does for records with something to show
    assert speedups.speedups.encode_ndjson(recs) == encode_ndjson(recs)
    frame = b"\x01\x00\x00\x00" + (31 + 6).to_bytes(4, "big") + stamp(1).encode() + b" hello\n"
    built = speedups.speedups.bulk_frames([frame] * 8, meta(), 1 << 20)
    assert built is not None and built[0].extra is None and built[0].message == "hello"


def test_advance_counts_what_each_record_accounts_for() -> None:
    m = meta()
    t1, t2 = stamp(1), stamp(2)
    joined = Record.log(t1, m, "stdout", "a\nb\nc", False)
    extra_of(joined).end = (t2, 2, False)  # lines stamped t1, t2, t2
    after = Record.log(t2, m, "stdout", "d", False)
    positions: dict[str, Position] = {}
    advance(positions, [joined])
    assert positions["stdout"] == Position(t2, 2)
    advance(positions, [after])  # continues the run of t2 across batches
    assert positions["stdout"] == Position(t2, 3)
    # a record accounting for dropped lines of its own stamp before it
    kept = Record.log(t2, m, "stdout", "e", False)
    set_end(kept, combine((t2, 2, True), end_of(kept)))
    advance(positions, [kept])
    assert positions["stdout"] == Position(t2, 6)
    # a joined record whose lines all share one stamp continues the count too
    same = Record.log(t2, m, "stderr", "x\ny", False)
    extra_of(same).end = (t2, 2, True)
    advance(positions, [Record.log(t2, m, "stderr", "w", False), same])
    assert positions["stderr"] == Position(t2, 3)


def test_file_mark_takes_the_last_lines_stamp() -> None:
    m = meta()
    r = Record.log(stamp(1), m, "stdout", "a\nb", False)
    extra_of(r).end = (stamp(4), 1, False)
    r.mark = (5, 600)
    assert FileMark.after(r, {}).timestamp == stamp(4)


def test_carry() -> None:
    c = Carry()
    m = meta()
    c.drop(Record.log(stamp(1), m, "stdout", "x", False))
    c.drop(Record.log(stamp(1), m, "stdout", "y", False))
    assert c and c.take("stderr") is None
    kept = c.attach(Record.log(stamp(1), m, "stdout", "z", False))
    assert kept.extra.end == (stamp(1), 3, True) and not c
    assert c.take("stdout") == (stamp(1), 0, True)  # nothing left: no line after the last


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["stdout", "stderr", None]), st.booleans()),
        min_size=1,
        max_size=8,
    ),
    split=st.integers(0, 8),
)
def test_one_record_batches_advance_like_the_whole_batch(
    lines: list[tuple[int, str | None, bool]], split: int
) -> None:
    """A batch advanced a record at a time (a quiet container's batches: the one-record
    path) ends where the whole batch does, whatever the streams (an event has none) and
    whichever records account for other lines (``extra.end``)."""
    m = meta()
    recs = []
    for i, (s, stream, ended) in enumerate(sorted(lines, key=lambda line: line[0])):
        r = Record.log(stamp(s), m, "stdout", str(i), False)
        r.stream = stream
        if ended:
            set_end(r, (stamp(s), 2, True))
        recs.append(r)
    want: dict[str, Position] = {"stdout": Position(stamp(0), 5)}
    got = dict(want)
    advance(want, recs[:split])
    advance(want, recs[split:])
    for r in recs:
        advance(got, [r])
    assert got == want


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), min_size=1, max_size=8),
    split=st.integers(0, 8),
)
def test_grouped_records_advance_like_their_lines(runs: list[list[int]], split: int) -> None:
    """Whatever grouping of lines into records, the positions equal those of the lines."""
    m = meta()
    lines: list[Record] = []
    stamps = sorted(s for run in runs for s in run)
    lines = [Record.log(stamp(s), m, "stdout", str(i), False) for i, s in enumerate(stamps)]
    grouped: list[Record] = []
    i = 0
    for run in runs:
        part = lines[i : i + len(run)]
        i += len(run)
        r = Record.log(part[0].timestamp, m, "stdout", "g", False)
        set_end(r, end_of_all(part))
        grouped.append(r)
    want: dict[str, Position] = {}
    advance(want, lines)
    got: dict[str, Position] = {}
    advance(got, grouped[:split])
    advance(got, grouped[split:])
    assert got == want
