"""The logs-API decoder on recorded byte streams from the test engine and on built ones."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.positions import Position, advance
from agent.record import ContainerMeta, Record
from agent.sources.api.decoder import LogDecoder

DATA = Path(__file__).parents[1] / "data"
TS = "2026-11-28T10:11:45.589604852Z"


def meta(tty: bool | None = None) -> ContainerMeta:
    return ContainerMeta("c" * 64, "/web", "busybox", {"a": "b"}, "host1", tty)


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def decode_all(data: bytes, chunk: int, **kw) -> tuple[LogDecoder, list]:
    dec = LogDecoder(kw.pop("m", meta()), kw.pop("max_bytes", 1 << 20), **kw)
    out = []
    for i in range(0, len(data), chunk):
        out += dec.feed(data[i : i + chunk])
    return dec, out


@pytest.mark.parametrize("chunk", [1, 7, 8, 9, 100, 4096, 1 << 20])
def test_recorded_framed_stream_any_chunking(chunk: int) -> None:
    data = (DATA / "framed.bin").read_bytes()
    dec, out = decode_all(data, chunk)
    out += dec.finish()
    assert [(r.stream, r.message[:20]) for r in out] == [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "a" * 20),
        ("stdout", "\ufffd\ufffdbad utf8"),
        ("stdout", '{"level":"info","n":'),
        ("stdout", "no newline at end"),
    ]
    long = out[2]
    assert long.message == "a" * 40000 and not long.truncated
    # All three partial frames carried one timestamp; the record keeps it.
    assert long.timestamp == "2026-11-28T10:11:45.591161125Z"
    assert out[4].fields == {"level": "info", "n": 3}
    assert dec.buffered == 0


def test_recorded_tty_stream_joins_partials_and_strips_crlf() -> None:
    data = (DATA / "tty.bin").read_bytes()
    for chunk in (3, 1000, 1 << 20):
        dec, out = decode_all(data, chunk)
        out += dec.finish()
        assert dec.tty is True
        assert [r.message for r in out] == ["tty one", "b" * 20000, "tty two"]
        assert {r.stream for r in out} == {"stdout"}


def test_finish_without_trailing_partial_is_empty() -> None:
    dec, out = decode_all(frame(1, f"{TS} x\n".encode()), 5)
    assert [r.message for r in out] == ["x"]
    assert dec.finish() == []


def test_truncation_marks_and_caps_joined_partials() -> None:
    parts = [frame(1, f"{TS} ".encode() + b"z" * 16384) for _ in range(4)]
    parts.append(frame(1, f"{TS} ".encode() + b"tail\n"))
    parts.append(frame(1, f"{TS} next\n".encode()))
    dec, out = decode_all(b"".join(parts), 1000, max_bytes=20000)
    assert [len(r.message) for r in out] == [20000, 4]
    assert out[0].truncated and not out[1].truncated
    assert dec.truncated == 1


def test_truncation_of_single_frame_keeps_utf8_whole() -> None:
    body = ("é" * 1000).encode()  # 2 bytes a character
    _dec, out = decode_all(frame(2, f"{TS} ".encode() + body + b"\n"), 64, max_bytes=1025)
    assert out[0].truncated
    assert out[0].message == "é" * 512  # cut back to a character boundary, no U+FFFD
    assert out[0].stream == "stderr"


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    _dec, out = decode_all(frame(1, f"{TS} ".encode() + b"\xff\xfeok\xc3\n"), 4)
    assert out[0].message == "\ufffd\ufffdok\ufffd"


def test_partials_of_two_streams_do_not_mix() -> None:
    data = (
        frame(1, f"{TS} out-a".encode())
        + frame(2, f"{TS} err-a".encode())
        + frame(1, f"{TS} out-b\n".encode())
        + frame(2, f"{TS} err-b\n".encode())
    )
    _, out = decode_all(data, 3)
    assert [(r.stream, r.message) for r in out] == [
        ("stdout", "out-aout-b"),
        ("stderr", "err-aerr-b"),
    ]


def test_garbage_frames_are_counted_not_fatal() -> None:
    data = frame(1, b"no-timestamp-here") + frame(1, f"{TS} ok\n".encode()) + frame(1, b"")
    dec, out = decode_all(data, 1 << 20)
    assert [r.message for r in out] == ["ok"]
    assert dec.malformed == 1


def test_resume_skips_exactly_what_was_delivered() -> None:
    t1, t2, t3 = (f"2026-01-01T00:00:0{i}.000000000Z" for i in (1, 2, 3))
    lines = [(1, t1, "a"), (1, t2, "b"), (2, t2, "e1"), (1, t2, "c"), (1, t3, "d"), (2, t3, "e2")]
    data = b"".join(frame(s, f"{t} {m}\n".encode()) for s, t, m in lines)
    # Delivered before: stdout up to the first line at t2 (1 line at t2), stderr up to t2.
    resume = {"stdout": Position(t2, 1), "stderr": Position(t2, 1)}
    dec, out = decode_all(data, 1 << 20, resume=resume)
    assert [r.message for r in out] == ["c", "d", "e2"]
    assert dec.skipped == 3


def test_advance_counts_lines_at_last_timestamp_across_batches() -> None:
    t1, t2 = "2026-01-01T00:00:01.000000000Z", "2026-01-01T00:00:02.000000000Z"
    data = b"".join(frame(1, f"{t} m\n".encode()) for t in (t1, t2, t2))
    _, out = decode_all(data, 1 << 20)
    positions: dict[str, Position] = {}
    advance(positions, out)
    assert positions == {"stdout": Position(t2, 2)}
    _, more = decode_all(frame(1, f"{t2} m\n".encode()), 100)
    advance(positions, more)
    assert positions == {"stdout": Position(t2, 3)}
    _, err = decode_all(frame(2, f"{t1} e\n".encode()), 100)
    advance(positions, err)
    assert positions["stderr"] == Position(t1, 1) and positions["stdout"] == Position(t2, 3)


class _FakeStream:
    def __init__(self, data: bytes) -> None:
        self.chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]

    async def read_parts(self) -> list[bytes]:
        return [self.chunks.pop(0)] if self.chunks else []

    def read_in_place(self, take: object) -> bool:
        return False  # as aiohttp's streams


class _FakeEngine:
    """A followed stream that ends early (as engines do at exit), then the whole log or,
    with ``tail``, its last frames (``since`` is left to the decoder's skipping)."""

    def __init__(self, frames: list[bytes], cut: int) -> None:
        self.frames, self.cut = frames, cut
        self.calls: list[tuple[str | None, bool, int | None]] = []

    def logs(self, cid: str, since: str | None = None, follow: bool = True, tail=None):
        import contextlib

        self.calls.append((since, follow, tail))
        frames = self.frames[: self.cut] if follow else self.frames
        data = b"".join(frames[-tail:] if tail else frames)

        @contextlib.asynccontextmanager
        async def cm():
            yield _FakeStream(data)

        return cm()

    async def inspect(self, cid: str) -> dict:
        return {"State": {"Running": False}}


@pytest.mark.parametrize(("missing", "tail"), [(10, 1000), (80, 1000), (80, 50)])
async def test_api_source_rereads_when_the_followed_stream_ends_early(
    missing: int, tail: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-read at exit takes the log's last FIRST_TAIL lines when they reach back to
    what was delivered, else its last RESUME_TAIL lines when they do, else everything
    since the position."""
    from agent.sources.api import source as logs
    from agent.sources.api.source import FIRST_TAIL, ApiLogSource
    from agent.sources.base import StreamEnd

    monkeypatch.setattr(logs, "RESUME_TAIL", tail)
    lines = [
        frame(1 + i % 2, f"2026-01-01T00:00:00.{i:09d}Z line {i}\n".encode()) for i in range(200)
    ]
    engine = _FakeEngine(lines, 200 - missing)  # the follow stream stops early
    source = ApiLogSource(engine, 1 << 20)  # type: ignore[arg-type]
    got: list = []
    positions: dict[str, Position] = {}

    async def emit(batch: list) -> None:
        got.extend(batch)
        advance(positions, batch)

    class Reader:
        meta = meta()
        decoder = None

    end = await source.read(Reader(), positions, emit)  # type: ignore[arg-type]
    assert end is StreamEnd.STOPPED
    assert [r.message for r in got] == [f"line {i}" for i in range(200)]
    assert engine.calls[0] == (None, True, None)
    assert engine.calls[1] == (None, False, FIRST_TAIL)
    if missing < FIRST_TAIL:  # the last 20 lines reach back to line 189: enough
        assert len(engine.calls) == 2
    elif tail == 50:  # lines 150..199 do not reach back to line 119: from the position
        assert engine.calls[2] == (None, False, tail)
        assert len(engine.calls) == 4
        assert engine.calls[3][0] is not None and engine.calls[3][1:] == (False, None)
    else:
        assert engine.calls[2] == (None, False, tail)
        assert len(engine.calls) == 3


def _stamp(i: int) -> bytes:
    return b"2026-11-28T10:21:02.%09dZ" % i


def slots(record: Record) -> dict[str, object]:
    """Every attribute of a record, so that records built in C are checked whole."""
    out = {name: getattr(record, name) for name in Record.__slots__}
    out["meta"] = record.meta.fragment  # each decoder here has its own, equal, metadata
    return out


def _frames_alike(
    parts: list[bytes], resume: dict[str, Position] | None = None, note: str = ""
) -> None:
    """feed_parts (bulk when it can) and feed (per frame) give the same records; ``note``
    (a randomised test's seed) is added to a failure's message."""
    bulk = LogDecoder(meta(), 1000, resume=resume)
    bulk.tty = False
    each = LogDecoder(meta(), 1000, resume=resume)
    each.tty = False
    got = bulk.feed_parts(parts) + bulk.finish()
    want = each.feed(b"".join(parts)) + each.finish()
    assert [r.json() for r in got] == [r.json() for r in want], note
    assert list(map(slots, got)) == list(map(slots, want)), note
    assert (bulk.skipped, bulk.truncated, bulk.malformed) == (
        each.skipped,
        each.truncated,
        each.malformed,
    ), note


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "stderr",
        "invalid utf-8",
        "too long",
        "partial",
        "stdin",
        "short stamp",
        "no space",
        "empty frame",
        "two in one",
        "resume",
    ],
)
def test_bulk_frames_decode_like_the_per_frame_path(case: str, impl: str) -> None:
    lines = [frame(1 + i % 2, _stamp(i) + b" line %d\n" % i) for i in range(20)]
    resume = None
    if case == "stderr":
        lines = [frame(2, _stamp(i) + b" err %d\n" % i) for i in range(20)]
    elif case == "invalid utf-8":
        lines[3] = frame(1, _stamp(3) + b" bad \xff\xfe \xe2\x82\n")
        lines[4] = frame(1, _stamp(4) + b" split \xe2\x82\xac ok\n")
    elif case == "too long":
        lines[5] = frame(1, _stamp(5) + b" " + b"x" * 1500 + b"\n")
    elif case == "partial":
        lines[7] = frame(1, _stamp(7) + b" no newline yet")
    elif case == "stdin":
        lines[2] = frame(0, _stamp(2) + b" from stdin\n")
    elif case == "short stamp":
        lines = [frame(1, b"2026-11-28T10:21:02.1Z line %d\n" % i) for i in range(20)]
    elif case == "no space":
        lines[9] = frame(1, _stamp(9) + b"\n")
    elif case == "empty frame":
        lines[1] = frame(1, b"")
    elif case == "two in one":
        lines[6] = lines[6] + lines[7]
        del lines[7]
    elif case == "resume":
        resume = {"stdout": Position(_stamp(4).decode(), 1)}
    _frames_alike(lines, resume)


def test_bulk_frames_are_taken_when_every_frame_is_plain(impl: str) -> None:
    dec = LogDecoder(meta(), 1000)
    dec.tty = False
    parts = [frame(1, _stamp(i) + b" line %d\n" % i) for i in range(20)]
    called = []
    original = dec._bulk_frames
    dec._bulk_frames = lambda p: called.append(len(p)) or original(p)  # type: ignore[method-assign]
    records = dec.feed_parts(parts)
    assert called == [20] and [r.message for r in records] == [f"line {i}" for i in range(20)]
    assert records[0].timestamp == _stamp(0).decode() and records[0].stream == "stdout"


def _mutated(rng: random.Random, i: int) -> bytes:
    """One frame, plain or bent in one of the ways a bulk decoder must notice."""
    payload = _stamp(i) + b" line %d " % i + rng.randbytes(rng.randrange(0, 40)) + b"\n"
    stream = 1 + i % 2
    kind = rng.randrange(14)
    if kind == 0:
        payload = payload[:-1]  # a partial line
    elif kind == 1:
        stream = rng.choice([0, 3, 255])
    elif kind == 2:
        at = rng.randrange(31)
        payload = payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1 :]
    elif kind == 3:
        payload = payload[:40] + b"\n" + payload[40:]
    elif kind == 4:
        payload = _stamp(i) + b" " + b"y" * rng.choice([998, 999, 1000, 1001]) + b"\n"
    elif kind == 5:
        payload = payload[: rng.randrange(33)]
    data = frame(stream, payload)
    if kind == 6:  # a size field that does not match
        data = data[:7] + bytes([(data[7] + rng.choice([1, 255])) % 256]) + data[8:]
    elif kind == 7:
        data = data[:1] + b"\x01" + data[2:]
    return data


@pytest.mark.parametrize("case", range(40))
def test_bulk_frames_fuzzed_like_the_per_frame_path(case: int, seed: int, impl: str) -> None:
    rng = random.Random(seed + case)
    parts = [
        _mutated(rng, i) if rng.random() < 0.1 else frame(1, _stamp(i) + b" ok\n")
        for i in range(rng.randrange(8, 60))
    ]
    _frames_alike(parts, note=f"seed={seed} case={case}")
    # And split anywhere, as the network may cut them.
    joined = b"".join(parts)
    cuts = sorted(rng.sample(range(1, len(joined)), 10))
    pieces = [joined[a:b] for a, b in zip([0, *cuts], [*cuts, len(joined)], strict=True)]
    _frames_alike(pieces, note=f"seed={seed} case={case} cut at {cuts}")
