"""The multiline stage on genuine traces (recorded from the runtimes, and Python run at
test time), the corner cases of the issue, and property tests of the joiner."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.positions import Position, advance
from agent.processing.config import MultilineConfig
from agent.processing.multiline import Multiline
from agent.record import Record
from agent.sources.jsonfile.decoder import JsonFileDecoder
from agent.sources.lines import PARTIAL_SIZE
from tests.unit.processing.conftest import meta, records, stamp, traces

NORMAL = [
    "2026-01-01 10:00:00 INFO starting",
    "GET /health 200 1ms",
    "plain text line",
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stage(preset: str | dict, clock: Clock | None = None) -> Multiline:
    cfg = MultilineConfig.model_validate(preset)
    return Multiline(cfg, clock=clock or Clock())


def run(ml: Multiline, recs: list[Record], batch: int = 7) -> list[Record]:
    out: list[Record] = []
    for i in range(0, len(recs), batch):
        out += ml.process(recs[i : i + batch])
    return out + ml.flush(0, force=True)


def interleaved(events: list[str]) -> tuple[list[str], list[str]]:
    """Normal lines around each event; returns (lines, the records expected)."""
    lines: list[str] = []
    expected: list[str] = []
    for i, event in enumerate(events):
        normal = NORMAL[i % len(NORMAL)]
        lines += [normal, *event.split("\n")]
        expected += [normal, event]
    lines.append("done")
    expected.append("done")
    return lines, expected


@pytest.mark.parametrize("preset", ["python", "java", "node", "go"])
def test_recorded_traces_become_one_record_each(preset: str) -> None:
    events = list(traces()[preset].values())
    assert events
    lines, expected = interleaved(events)
    for batch in (1, 3, 50):
        out = run(stage(preset), records(lines, "stderr"), batch)
        assert [r.message for r in out] == expected, batch
        for r, want in zip(out, expected, strict=True):
            assert r.lines == want.count("\n") + 1


def test_python_traceback_produced_now(tmp_path) -> None:
    """A traceback from the interpreter running this test, not a recording."""
    script = tmp_path / "t.py"
    script.write_text(
        "import sys\nprint('before', file=sys.stderr, flush=True)\n"
        "def f(x):\n    return {}[x]\n"
        "try:\n    f('k')\nexcept KeyError as e:\n    raise RuntimeError('wrapped') from e\n"
    )
    err = subprocess.run([sys.executable, str(script)], capture_output=True, text=True).stderr
    lines = err.rstrip("\n").split("\n")
    out = run(stage("python"), records([*lines, "after"], "stderr"))
    assert [r.message for r in out] == ["before", "\n".join(lines[1:]), "after"]
    assert out[1].lines == len(lines) - 1
    assert out[1].message.endswith("RuntimeError: wrapped")


def test_interleaved_streams_are_never_joined() -> None:
    py = traces()["python"]["simple"].split("\n")
    out_lines = ["out 0", "out 1", "out 2", "out 3", "out 4", "out 5", "out 6"]
    mixed: list[Record] = []
    err = records(py, "stderr")
    out = records(out_lines, "stdout", start=100)
    for i in range(max(len(err), len(out))):  # one of each, alternately
        mixed += err[i : i + 1] + out[i : i + 1]
    result = run(stage("python"), mixed, batch=4)
    assert [r.message for r in result if r.stream == "stdout"] == out_lines
    assert [r.message for r in result if r.stream == "stderr"] == ["\n".join(py)]


def test_first_timestamp_and_last_lines_position() -> None:
    lines = traces()["java"]["Uncaught"].split("\n")
    recs = records(["x", *lines, "y"])
    out = run(stage("java"), recs)
    joined = out[1]
    assert joined.timestamp == recs[1].timestamp
    assert joined.extra is not None and joined.extra.end == (recs[-2].timestamp, 1, False)
    positions: dict[str, Position] = {}
    advance(positions, out[:2])
    assert positions["stdout"] == Position(recs[-2].timestamp, 1)  # its LAST line


def test_lines_sharing_one_stamp_are_all_counted() -> None:
    m = meta()
    ts = stamp(5)
    recs = [Record.log(ts, m, "stdout", msg, False) for msg in ["a", "Error: x", "    at f", "b"]]
    ml = stage("node")
    out = ml.process(recs)
    positions: dict[str, Position] = {"stdout": Position(ts, 2)}  # two earlier lines
    advance(positions, out)
    assert [r.message for r in out] == ["a", "Error: x\n    at f", "b"]
    assert positions["stdout"] == Position(ts, 6)


def test_crlf_and_ansi_colour_codes() -> None:
    lines = [
        "\x1b[31mError: boom\x1b[0m\r",
        "    at f (/app/x.js:1:2)\r",
        "\x1b[2m    at g (/app/x.js:3:4)\x1b[0m\r",
        "next\r",
    ]
    out = run(stage("node"), records(lines))
    assert [r.message for r in out] == ["\n".join(lines[:3]), "next\r"]


def test_python_traceback_in_colour() -> None:
    lines = ["\x1b[31mTraceback (most recent call last):", '  File "x.py", line 1', "E: x\x1b[0m"]
    out = run(stage("python"), records([*lines, "next"]))
    assert [r.message for r in out] == ["\n".join(lines), "next"]


def test_empty_lines_and_empty_messages() -> None:
    out = run(stage("java"), records(["", "", "java.io.IOException: x", "\tat A.b(A.java:1)", ""]))
    assert [r.message for r in out] == ["", "", "java.io.IOException: x\n\tat A.b(A.java:1)", ""]


def test_trace_line_split_across_two_16k_partials() -> None:
    """The json-file driver splits a long line into 16 KiB partials: reassembled first,
    then joined into its trace."""
    long_frame = "\tat " + "x" * (PARTIAL_SIZE + 5000) + "(A.java:1)"
    first, second = long_frame[:PARTIAL_SIZE], long_frame[PARTIAL_SIZE:]

    def line(log: str, i: int) -> bytes:
        return orjson.dumps({"log": log, "stream": "stderr", "time": stamp(i)}) + b"\n"

    data = (
        line("java.lang.IllegalStateException: long\n", 1)
        + line(first, 2)  # a partial: no newline
        + line(second + "\n", 2)
        + line("\tat B.c(B.java:2)\n", 3)
        + line("after\n", 4)
    )
    dec = JsonFileDecoder(meta(), 1024 * 1024)
    ml = stage("java")
    cut = data.index(b"\n", data.index(b"\n") + 1) + 1  # after the first partial
    out = ml.process(dec.feed_lines(data[:cut]))  # the first partial alone: held back
    assert out == []
    out += ml.process(dec.feed_lines(data[cut:])) + ml.flush(0, force=True)
    assert [r.message for r in out] == [
        "java.lang.IllegalStateException: long\n" + long_frame + "\n\tat B.c(B.java:2)",
        "after",
    ]
    assert out[0].lines == 3


def test_flush_timeout_and_force() -> None:
    clock = Clock()
    ml = stage("java", clock)
    assert ml.process(records(["java.io.IOException: x", "\tat A.b(A.java:1)"])) == []
    assert ml.deadline() == pytest.approx(101.0)
    assert ml.flush(100.5, force=False) == []
    out = ml.flush(101.0, force=False)
    assert [r.message for r in out] == ["java.io.IOException: x\n\tat A.b(A.java:1)"]
    assert ml.settled and ml.deadline() is None
    ml.process(records(["Error: y"], start=10))
    assert [r.message for r in ml.flush(0, force=True)] == ["Error: y"]


def test_tentative_blank_line_is_split_off_when_nothing_confirms_it() -> None:
    py = traces()["python"]["simple"].split("\n")
    out = run(stage("python"), records([*py, "", "INFO next"]))
    assert [r.message for r in out] == ["\n".join(py), "", "INFO next"]
    # at a timeout too, the unconfirmed blank line is a record of its own
    ml = stage("python")
    ml.process(records([*py, ""]))
    assert [r.message for r in ml.flush(10**9, force=False)] == ["\n".join(py), ""]


def test_max_lines_and_max_bytes_split_the_event_without_losing_lines() -> None:
    frames = [f"\tat F.f{i}(F.java:{i})" for i in range(12)]
    lines = ["java.lang.Error: deep", *frames, "after"]
    out = run(stage({"preset": "java", "max_lines": 5}), records(lines))
    assert [r.lines for r in out] == [5, 5, 3, 1]
    assert "\n".join(r.message for r in out) == "\n".join(lines)
    big = ["java.lang.Error: big", *[f"\tat {'y' * 600}.f(F.java:{i})" for i in range(5)]]
    out = run(stage({"preset": "java", "max_bytes": 1024}), records(big))
    assert all(len(r.message.encode()) <= 1024 for r in out)
    assert "\n".join(r.message for r in out) == "\n".join(big)


def test_truncated_line_marks_the_joined_record() -> None:
    recs = records(["java.lang.Error: x", "\tat A.b(A.java:1)"])
    recs[1].truncated = True
    (out,) = run(stage("java"), recs)
    assert out.truncated and out.to_dict()["truncated"] is True
    assert out.to_dict()["lines"] == 2


@pytest.mark.parametrize(
    ("rule", "lines", "groups"),
    [
        (
            {"start": r"^\d{4}-\d\d-\d\d "},
            ["junk", "2026-01-01 a", "  more", "more", "2026-01-02 b", "2026-01-03 c", "x"],
            [["junk"], ["2026-01-01 a", "  more", "more"], ["2026-01-02 b"], ["2026-01-03 c", "x"]],
        ),
        (
            {"start": r"^\s", "negate": True},
            ["a", " b", " c", "d", "e", " f"],
            [["a", " b", " c"], ["d"], ["e", " f"]],
        ),
        (
            {"continuation": r"\\$"},  # the pattern is about the continuing line itself
            ["a \\", "b \\", "c", "d", "e \\", "f"],
            [["a \\", "b \\"], ["c"], ["d", "e \\"], ["f"]],
        ),
        (
            {"continuation": r"^\s"},
            ["a", " b", " c", "d", "e", " f"],
            [["a", " b", " c"], ["d"], ["e", " f"]],
        ),
        (
            {"continuation": r"^[A-Z]", "negate": True},
            ["Head", "tail", "Next", "Last", "x"],
            [["Head", "tail"], ["Next"], ["Last", "x"]],
        ),
    ],
)
def test_custom_rules(rule: dict, lines: list[str], groups: list[list[str]]) -> None:
    out = run(stage(rule), records(lines))
    assert [r.message for r in out] == ["\n".join(g) for g in groups]


def test_custom_rule_config_is_checked() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        MultilineConfig.model_validate({"start": "a", "continuation": "b"})
    with pytest.raises(ValueError, match="invalid regular expression"):
        MultilineConfig.model_validate({"start": "("})
    assert MultilineConfig.model_validate("go").preset == "go"


LINE = st.one_of(
    st.sampled_from(
        [
            "",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in f',
            "    code()",
            "ValueError: v",
            "During handling of the above exception, another exception occurred:",
            "java.lang.RuntimeException: r",
            "\tat A.b(A.java:1)",
            "Caused by: java.io.IOException: io",
            "\t... 3 more",
            "panic: p",
            "goroutine 1 [running]:",
            "main.main()",
            "Error: e",
            "    at f (x.js:1:1)",
            "/app/x.js:3",
            "  ^",
            "Node.js v20.1.0",
            "plain",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(
    preset=st.sampled_from(["python", "java", "go", "node"]),
    lines=st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), LINE), max_size=60),
    batch=st.integers(1, 20),
    max_lines=st.integers(2, 8),
)
def test_no_line_lost_or_reordered_and_groups_split_back(
    preset: str, lines: list[tuple[str, str]], batch: int, max_lines: int
) -> None:
    m = meta()
    recs = [Record.log(stamp(i // 3), m, s, msg, False) for i, (s, msg) in enumerate(lines)]
    out = run(stage({"preset": preset, "max_lines": max_lines}), recs, batch)
    for stream in ("stdout", "stderr"):
        want = [r.message for r in recs if r.stream == stream]
        got = [r for r in out if r.stream == stream]
        assert "\n".join(r.message for r in got).split("\n") == want if want else not got
        assert sum(r.lines for r in got) == len(want)
        assert all(r.lines <= max_lines for r in got)
        positions: dict[str, Position] = {}
        advance(positions, got)
        if want:  # the positions end at the stream's last line, counted exactly
            last = [r for r in recs if r.stream == stream]
            ts = last[-1].timestamp
            assert positions[stream] == Position(ts, sum(r.timestamp == ts for r in last))


SWEEP_LINE = st.one_of(
    LINE,
    st.sampled_from(
        [
            "plain\r",
            "\x1b[31mjava.lang.IllegalStateException: colour\x1b[0m",
            "Exce\x1b[0mption in thread main",
            " indented",
            "Throwable",
            "SIGSEGV: segmentation violation",
            "fatal error: all goroutines are asleep",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    preset=st.sampled_from(["python", "java", "go"]),
    lines=st.lists(SWEEP_LINE, min_size=1, max_size=30),
    batch=st.integers(1, 30),
)
def test_the_batch_sweep_changes_nothing(preset: str, lines: list[str], batch: int) -> None:
    """A batch let through whole by ``Rules.sweep`` comes out as it does line by line:
    the sweep passes whenever one of the lines passes ``quick``."""
    swept = stage(preset)
    rules = swept.rules
    assert rules.sweep is not None and rules.quick is not None
    joined = "\n" + "\n".join(lines) + "\n"
    assert rules.sweep(joined) or not any(rules.quick(t) for t in lines)
    plain = stage(preset)
    plain.rules.sweep = None  # the line-by-line path
    got = run(swept, records(lines), batch)
    want = run(plain, records(lines), batch)

    def shape(r: Record) -> tuple[object, ...]:
        end = r.extra.end if r.extra is not None else None
        return (r.stream, r.timestamp, r.message, r.lines, r.truncated, end)

    assert [shape(r) for r in got] == [shape(r) for r in want]


def test_a_batch_without_an_event_is_let_through_whole() -> None:
    ml = stage("java")
    batch = records(["plain one", "GET / 200", "no trace here"])
    assert ml.process(batch) is batch and ml.settled
    opened = records(["x", "java.lang.RuntimeException: r", "\tat A.b(A.java:1)"])
    assert [r.message for r in ml.process(opened)] == ["x"] and not ml.settled


def test_the_sweep_looks_through_colours() -> None:
    ml = stage("java")
    out = run(ml, records(["Excep\x1b[0mtion in thread main", "\tat A.b(A.java:1)"]), 2)
    assert [r.lines for r in out] == [2]
