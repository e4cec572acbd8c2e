"""The raw HTTP reader of log streams: chunked framing removed in bulk or piece by piece,
bodies split anywhere by the network, errors as the engine gives them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.engine import httpstream
from agent.engine.httpstream import HttpStatusError, HttpStreamError, dechunk, open_stream


def chunked(*datas: bytes, end: bool = True) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in datas)
    return body + (b"0\r\n\r\n" if end else b"")


def test_bulk_path_takes_whole_chunks_and_leaves_a_partial_one(impl: str) -> None:
    raw = chunked(b"one\n", b"two\n", end=False) + b"5\r\nthr"
    datas, consumed, last = dechunk(raw)
    assert datas == [b"one\n", b"two\n"] and not last
    assert raw[consumed:] == b"5\r\nthr"


@pytest.mark.parametrize(
    "datas",
    [
        [b"tty line\r\n", b"another\r\n"],  # CRLF inside the data: the sequential path
        [b"\r\n\r\n", b"x"],
        [b"a" * 70000],
    ],
)
def test_data_holding_crlf_is_still_cut_right(datas: list[bytes], impl: str) -> None:
    raw = chunked(*datas)
    got, consumed, last = dechunk(raw)
    assert got == datas and last and consumed == len(raw)


def test_last_chunk_ends_the_body(impl: str) -> None:
    got, consumed, last = dechunk(chunked(b"x\n") + b"garbage after")
    assert got == [b"x\n"] and last and consumed == len(chunked(b"x\n"))


def test_malformed_size_line_is_an_error(impl: str) -> None:
    with pytest.raises(HttpStreamError, match="chunk size"):
        dechunk(b"zz\r\nabc\r\n")


def _outcome(parse: Callable[[bytes], object], data: bytes) -> object:
    """What a de-chunker makes of ``data``: its result, or that it refused it."""
    try:
        return parse(data)
    except HttpStreamError:
        return HttpStreamError


@pytest.mark.parametrize("case", range(30))
def test_dechunk_fuzzed_against_the_sequential_parser(case: int, seed: int, impl: str) -> None:
    """Any mix of plain chunks, chunks holding CRLF, extensions, odd sizes and the last
    chunk, cut anywhere: the same datas as one chunk at a time, or the same error."""
    rng = random.Random(seed + case)
    datas = [
        rng.choice([b"line\n", b"a\r\nb", b"\r\n", rng.randbytes(rng.randrange(1, 300))])
        for _ in range(rng.randrange(1, 40))
    ]
    pieces = [b"%x\r\n%s\r\n" % (len(d), d) for d in datas]
    for _ in range(rng.randrange(3)):
        at = rng.randrange(len(pieces))
        d = datas[at]
        pieces[at] = rng.choice(
            [
                b"%X\r\n%s\r\n" % (len(d), d),
                b"%x;ext=1\r\n%s\r\n" % (len(d), d),
                b"%x \r\n%s\r\n" % (len(d), d),
                b"0%x\r\n%s\r\n" % (len(d), d),
            ]
        )
    raw = b"".join(pieces) + rng.choice([b"0\r\n\r\n", b"", b"1f\r\nabc", b"zz\r\n"])
    cut = rng.randrange(len(raw) + 1)
    for data in (raw, raw[:cut]):
        want = _outcome(httpstream._dechunk_each, data)
        note = f"seed={seed} case={case} ({'whole' if data is raw else f'cut at {cut}'})"
        assert _outcome(dechunk, data) == want, note


async def serve(
    tmp_path: Path, response: bytes, pieces: int = 1, rng: random.Random | None = None
) -> tuple[str, asyncio.Server]:
    """A unix-socket server answering every request with ``response``, written in
    ``pieces`` cuts drawn by ``rng`` (as a network may deliver it)."""
    assert pieces == 1 or rng is not None, "cuts are drawn from the test's seed"
    path = str(tmp_path / "engine.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        cuts = sorted(rng.sample(range(1, len(response)), pieces - 1)) if rng else []
        last = 0
        for cut in [*cuts, len(response)]:
            writer.write(response[last:cut])
            await writer.drain()
            await asyncio.sleep(0)
            last = cut
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    return path, server


@pytest.mark.parametrize("pieces", [1, 7, 300])
async def test_reads_a_chunked_body_however_it_is_cut(
    tmp_path: Path, pieces: int, seed: int
) -> None:
    lines = [b"%d %s\n" % (i, b"x" * (i % 50)) for i in range(500)] + [b"tty\r\n", b"\r\n"]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    rng = random.Random(seed + pieces)
    path, server = await serve(tmp_path, head + chunked(*lines), pieces, rng)
    async with server:
        stream = await open_stream(path, "/v1.41/containers/x/logs", {"follow": "1"})
        got = b""
        while more := await stream.read():
            got += more
        stream.close()
    assert got == b"".join(lines), f"seed={seed}"


async def test_chunks_that_arrive_while_the_reader_waits_are_taken_in_place(
    tmp_path: Path, seed: int
) -> None:
    """``read_in_place``: whole chunks received while the reader waits go to ``take``
    where they arrive; a chunk cut across receives, or one ``take`` refuses, waits for
    ``read_parts`` as before; the order of everything is the body's."""
    lines = [b"line %d\n" % i for i in range(60)]
    body = chunked(*lines)
    rng = random.Random(seed)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    path = str(tmp_path / "engine.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        at = 0
        for line in lines:
            size = len(chunked(line, end=False))
            cut = at + (rng.randrange(1, size) if rng.random() < 0.3 else size)
            for piece in (body[at:cut], body[cut : at + size]):
                if piece:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.002)  # the reader waits again
            at += size
        writer.write(body[at:])
        writer.close()

    got: list[bytes] = []
    taken = refused = 0

    def take(datas: list[bytes]) -> bool:
        nonlocal taken, refused
        if rng.random() < 0.3:
            refused += 1
            return False
        taken += 1
        got.extend(datas)
        return True

    server = await asyncio.start_unix_server(handle, path)
    async with server:
        stream = await open_stream(path, "/v1.41/containers/x/logs", {"follow": "1"})
        stream.read_in_place(take)
        while parts := await stream.read_parts():
            got.extend(parts)
        stream.close()
    assert got == lines, f"seed={seed}"
    assert taken and refused, f"seed={seed}"


async def test_sized_and_close_delimited_bodies(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for head, body in [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"until the end"),
    ]:
        path, server = await serve(tmp_path, head + body, 3, rng)
        async with server:
            stream = await open_stream(path, "/x", {})
            got = b""
            while more := await stream.read():
                got += more
            stream.close()
        assert got == body, f"seed={seed}"
        (tmp_path / "engine.sock").unlink()


async def test_a_body_cut_short_is_an_error(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    path, server = await serve(tmp_path, head + chunked(b"first\n", end=False) + b"10\r\npart")
    async with server:
        stream = await open_stream(path, "/x", {})
        assert await stream.read() == b"first\n"
        with pytest.raises(HttpStreamError, match="middle of the response"):
            await stream.read()
        stream.close()


async def test_an_error_status_carries_the_engines_message(tmp_path: Path) -> None:
    body = b'{"message":"No such container: abc"}'
    head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
    path, server = await serve(tmp_path, head + body)
    async with server:
        with pytest.raises(HttpStatusError) as info:
            await open_stream(path, "/x", {})
    assert info.value.status == 404 and info.value.message == "No such container: abc"


async def test_no_engine_at_the_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HttpStreamError, match="connecting"):
        await open_stream(str(tmp_path / "nothing.sock"), "/x", {})


async def test_not_http_is_an_error(tmp_path: Path) -> None:
    path, server = await serve(tmp_path, b"SSH-2.0-OpenSSH\r\n\r\n")
    async with server:
        with pytest.raises(HttpStreamError, match="not an HTTP"):
            await open_stream(path, "/x", {})


@pytest.mark.parametrize("size", [b"-6", b"-2", b"+5", b"0x5", b"1_0", b"-0"])
def test_a_signed_or_prefixed_chunk_size_is_malformed_not_a_loop(size: bytes, impl: str) -> None:
    """A broken engine or a proxy in front of it must not hang the agent: a chunk size
    line of ``-6`` once made the de-chunking loop forever on the event loop."""
    raw = chunked(b"ok\n", end=False) + size + b"\r\nXXXXXX\r\n" + chunked(b"next\n")
    with pytest.raises(HttpStreamError, match="chunk size"):
        dechunk(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"+5\r\nhello\r\n",
        b"0x5\r\nhello\r\n",
        b"1_0\r\n0123456789abcdef\r\n",  # int(b"1_0", 16) == 16
        b"5\r\nhello\r\nzz\r\n",  # a whole size line, malformed, at the end
    ],
    ids=["plus", "0x", "underscore", "bad-last-line"],
)
def test_a_malformed_size_line_is_refused_whatever_the_path(raw: bytes, impl: str) -> None:
    """Found by the fuzz test with other seeds (CA_TEST_SEED=540, case 20, python):
    sizes whose data length matches, and a complete bad size line at the end."""
    with pytest.raises(HttpStreamError, match="chunk size"):
        httpstream._dechunk_each(raw)
    with pytest.raises(HttpStreamError, match="chunk size"):
        dechunk(raw)


def test_a_chunk_larger_than_the_bound_is_an_error(impl: str) -> None:
    raw = b"%x\r\n" % (httpstream.MAX_CHUNK_BYTES + 1) + b"x" * 100
    with pytest.raises(HttpStreamError, match="larger than"):
        httpstream._chunk_need(raw)
    with pytest.raises(HttpStreamError, match="larger than"):
        httpstream._dechunk_each(raw + b"\r\n0\r\n\r\n")


async def test_a_negative_chunk_size_from_the_socket_ends_the_stream(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    path, server = await serve(tmp_path, head + chunked(b"first\n", end=False) + b"-6\r\nabc\r\n")
    async with server:
        stream = await open_stream(path, "/x", {})
        got = b""
        async with asyncio.timeout(5):
            with pytest.raises(HttpStreamError, match="chunk size"):
                while more := await stream.read():
                    got += more
        stream.close()
    assert got in (b"", b"first\n")  # the chunks before the bad one may come first


async def test_a_large_chunk_in_many_receives_is_joined_once(tmp_path: Path, seed: int) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB in one chunk, delivered in 400 pieces
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    rng = random.Random(seed)
    path, server = await serve(tmp_path, head + chunked(b"a\n", big, b"z\n"), 400, rng)
    async with server:
        stream = await open_stream(path, "/x", {})
        got = []
        while parts := await stream.read_parts():
            got += parts
        stream.close()
    assert got == [b"a\n", big, b"z\n"], f"seed={seed}"


async def test_an_engine_that_never_answers_does_not_hang_the_reader(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(30)  # accepted, never answered

    server = await asyncio.start_unix_server(handle, path)
    async with server:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(HttpStreamError, match="no response within"):
            await open_stream(path, "/x", {}, header_timeout=0.2)
        assert asyncio.get_running_loop().time() - t0 < 2
