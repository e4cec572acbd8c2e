"""Micro benchmark: decoding the logs API's framed stream, the agent's way and aiodocker's.

A real payload is recorded once from the engine (a container writing lines of 100 bytes to
stdout and stderr at the same time; ``GET /logs?timestamps=1`` without follow); the timed
part needs no engine:

* agent: ``agent.sources.api.decoder.LogDecoder.feed()`` over 64 KiB chunks, giving Records;
* agent, bulk: ``LogDecoder.feed_parts()`` over lists of whole frames, 200 at a time, as
  the socket reader hands them on (the engine sends one frame per HTTP chunk);
* aiodocker: its own demultiplexing, ``MultiplexedResult.fetch`` (readexactly the 8-byte
  header, readexactly the payload) and ``_DecodeHelper`` (incremental UTF-8 decode), run
  on an aiohttp ``StreamReader`` holding the same bytes, giving one string per frame; and
  the same plus splitting each string into timestamp and message (what the agent's records
  carry; aiodocker drops the stream name, the agent keeps it).

The aiohttp reader is fed everything before the clock starts, so aiodocker never waits
for data: its best case. Both outputs are checked to hold the same lines.

    python -m bench.demux [--demux-lines 200000] [--demux-reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiodocker.multiplexed import MultiplexedResult
from aiodocker.utils import _DecodeHelper

from agent.record import ContainerMeta
from agent.sources.api.decoder import LogDecoder
from bench.common import (
    BenchEngine,
    CpuMeter,
    OthersMeter,
    add_quiet_argument,
    add_retries_argument,
    fmt,
    log,
    median,
    new_run_id,
    skewed,
    standalone,
    table,
    wait_quiet,
)

CHUNK = 64 * 1024
LINE_BYTES = 100


async def record_payload(engine: BenchEngine, lines: int) -> bytes:
    """The framed /logs answer of a container that wrote ``lines`` lines, half to stdout and
    half to stderr, concurrently (so that frames of both streams interleave)."""
    run_id = new_run_id()
    half = lines // 2
    env: dict[str, str] = {"F": "1000000000", "L": str(1_000_000_000 + half - 1)}
    for i in (0, 1):
        head = f"c{i} " + "x" * (LINE_BYTES - 3 - 1 - 10 - 1) + " "
        env[f"H{i}"] = head
        env[f"S{i}"] = "\n" + head
    script = (
        '(printf "%s" "$H0"; seq -s "$S0" "$F" "$L") & '
        '(printf "%s" "$H1"; seq -s "$S1" "$F" "$L") >&2 & wait'
    )
    cid = await engine.create(f"ca-bench-{run_id}-demux", ["sh", "-c", script], run_id, env)
    try:
        await engine.start(cid)
        status = await engine.wait_exit(cid, 120)
        if status != 0:
            raise RuntimeError(f"the demux payload container exited with {status}")
        return await engine.logs_bytes(cid)
    finally:
        await engine.remove([cid])
        await engine.cleanup(run_id)


def _meta() -> ContainerMeta:
    return ContainerMeta(
        id="0" * 64,
        name="/ca-bench-demux",
        image="ca-busybox:latest",
        labels={"ca-bench": "1"},
        host="bench",
    )


def chunks_of(data: bytes, size: int = CHUNK) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- the contenders -----------------------------------------------------------------------


def agent_decode(chunks: list[bytes]) -> tuple[float, int]:
    decoder = LogDecoder(_meta(), 1 << 20)
    n = 0
    t = time.perf_counter()
    for chunk in chunks:
        n += len(decoder.feed(chunk))
    n += len(decoder.finish())
    return time.perf_counter() - t, n


def frame_groups(data: bytes, per: int = 200) -> list[list[bytes]]:
    """``data`` cut into its frames, ``per`` frames to a list (outside the clock)."""
    frames = []
    pos = 0
    while pos + 8 <= len(data):
        end = pos + 8 + int.from_bytes(data[pos + 4 : pos + 8], "big")
        frames.append(data[pos:end])
        pos = end
    return [frames[i : i + per] for i in range(0, len(frames), per)]


def agent_bulk_decode(groups: list[list[bytes]]) -> tuple[float, int]:
    decoder = LogDecoder(_meta(), 1 << 20)
    decoder.tty = False  # told from the first bytes, as a stream's first read does
    n = 0
    t = time.perf_counter()
    for parts in groups:
        n += len(decoder.feed_parts(parts))
    n += len(decoder.finish())
    return time.perf_counter() - t, n


class _Protocol:
    """The least of aiohttp's protocol that a StreamReader touches."""

    _reading_paused = False
    connected = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


class _Response:
    """What MultiplexedResult uses of an aiohttp ClientResponse."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content

    async def release(self) -> None:
        pass


def _fed_reader(chunks: list[bytes]) -> aiohttp.StreamReader:
    reader = aiohttp.StreamReader(_Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


async def aiodocker_decode(chunks: list[bytes], split: bool) -> tuple[float, int]:
    reader = _fed_reader(chunks)
    frames = _DecodeHelper(MultiplexedResult(_Response(reader), raw=False), encoding="utf-8")
    n = 0
    t = time.perf_counter()
    if split:
        line = ("", "")
        async for text in frames:
            ts, _, message = text.partition(" ")
            if message.endswith("\n"):
                message = message[:-1]
            line = (ts, message)
            n += 1
        del line
    else:
        async for _text in frames:
            n += 1
    return time.perf_counter() - t, n


async def _same_lines(chunks: list[bytes]) -> None:
    """Both decoders give the same (timestamp, message) lines, in the same order."""
    decoder = LogDecoder(_meta(), 1 << 20)
    ours = [(r.timestamp, r.message) for c in chunks for r in decoder.feed(c)]
    ours += [(r.timestamp, r.message) for r in decoder.finish()]
    theirs = []
    frames = _DecodeHelper(
        MultiplexedResult(_Response(_fed_reader(chunks)), raw=False), encoding="utf-8"
    )
    async for text in frames:
        ts, _, message = text.partition(" ")
        theirs.append((ts, message.removesuffix("\n")))
    if ours != theirs:
        diff = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), -1)
        raise AssertionError(
            f"the decoders disagree: {len(ours)} vs {len(theirs)} lines, first difference at "
            f"line {diff}"
        )


async def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        gc.collect()
        result = fn()
        if asyncio.iscoroutine(result):
            result = await result
        seconds, n = result
        out.append(seconds / n * 1e6)
    return out


def _load(path: str | None) -> bytes | None:
    if path and Path(path).exists():
        return Path(path).read_bytes()
    return None


def _save(path: str | None, data: bytes) -> None:
    if path:
        Path(path).write_bytes(data)


async def run(args: argparse.Namespace, engine: BenchEngine | None) -> dict[str, Any]:
    data = _load(args.demux_payload)
    if data is None:
        assert engine is not None
        log(f"demux: recording a {args.demux_lines:,}-line payload from the engine")
        data = await record_payload(engine, args.demux_lines)
        _save(args.demux_payload, data)
    chunks = chunks_of(data)
    groups = frame_groups(data)
    await _same_lines(chunks)
    _, lines = agent_decode(chunks)
    _, bulk_lines = agent_bulk_decode(groups)
    assert bulk_lines == lines, (bulk_lines, lines)
    reps = args.demux_reps
    log(f"demux: {lines:,} lines, {len(data):,} bytes; {reps} repetitions each")
    for attempt in range(args.retries + 1):
        if engine is not None:
            await wait_quiet(engine, args.quiet_wait, busy_below=15)
        others = OthersMeter().start()
        meter = CpuMeter().start()
        t0 = time.perf_counter()
        agent_us = await _timed(lambda: agent_decode(chunks), reps)
        bulk_us = await _timed(lambda: agent_bulk_decode(groups), reps)
        raw_us = await _timed(lambda: aiodocker_decode(chunks, split=False), reps)
        split_us = await _timed(lambda: aiodocker_decode(chunks, split=True), reps)
        wall = time.perf_counter() - t0
        busy = meter.stop().get("machine_busy_pct")
        others.stop()
        # Single-threaded: others on the spare core(s) hardly matter below a quarter of them.
        bad = skewed(others.cpu_s, wall, 0, share=0.25 * (1 - 1 / (os.cpu_count() or 1)))
        if not bad:
            break
        log(
            f"  demux: others used {others.cpu_s:.1f} CPU s"
            + ("; measuring again" if attempt < args.retries else "; kept")
        )
    result = {
        "params": {"lines": lines, "bytes": len(data), "chunk": CHUNK, "reps": reps},
        "agent_us_per_line": median(agent_us),
        "agent_bulk_us_per_line": median(bulk_us),
        "aiodocker_us_per_line": median(raw_us),
        "aiodocker_split_us_per_line": median(split_us),
        "all": {
            "agent": agent_us,
            "agent_bulk": bulk_us,
            "aiodocker": raw_us,
            "aiodocker_split": split_us,
        },
        # One busy core is 100 / nproc: more means something else ran meanwhile.
        "machine_busy_pct": busy,
        "others_cpu_s": others.cpu_s,
        "others_top": others.top,
        "skewed": bad,
        "discarded_attempts": attempt,
    }
    result["speedup_vs_aiodocker_split"] = (
        result["aiodocker_split_us_per_line"] / result["agent_us_per_line"]
    )
    return result


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    return "\n".join(
        [
            f"demux: {p['lines']:,} framed lines ({p['bytes'] / 1e6:.1f} MB) in "
            f"{p['chunk'] // 1024} KiB chunks, median of {p['reps']}",
            table(
                ["decoder", "µs/line", "output"],
                [
                    ["agent LogDecoder.feed", result["agent_us_per_line"], "Records"],
                    [
                        "agent LogDecoder.feed_parts",
                        result.get("agent_bulk_us_per_line"),
                        "Records (whole frames)",
                    ],
                    ["aiodocker fetch+decode", result["aiodocker_us_per_line"], "'ts msg\\n' str"],
                    [
                        "aiodocker + split",
                        result["aiodocker_split_us_per_line"],
                        "(ts, msg) str pairs",
                    ],
                ],
            ),
            f"agent speed-up over aiodocker + split: {result['speedup_vs_aiodocker_split']:.1f}x",
            f"machine CPU busy while timing: {fmt(result.get('machine_busy_pct'), 0)} % "
            f"(this benchmark alone: {100 / (os.cpu_count() or 1):.0f} %)",
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("demux")
    g.add_argument(
        "--demux-lines", type=int, default=200_000, help="lines in the recorded payload (200000)"
    )
    g.add_argument("--demux-reps", type=int, default=5, help="repetitions; median reported (5)")
    g.add_argument(
        "--demux-payload",
        help="file to reuse the payload from (recorded into it when missing)",
    )
    add_quiet_argument(parser)
    add_retries_argument(parser)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
