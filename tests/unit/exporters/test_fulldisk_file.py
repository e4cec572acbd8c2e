"""The file exporter on a real full disk (a 2 MB tmpfs): batches sent until ENOSPC, sent
again while the disk is still full, then once a filler file is removed. The output must
parse line by line as JSON and hold every record exactly once, in order; a gzip of a
rotated file that fails for want of space leaves the rotated file and is tried again."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from agent.record import ContainerMeta, Record, format_timestamp_ns
from exporters.file import FileExporter, gzip_file, rotated_files
from exporters.file import rotation as file_rotation
from tests.unit.delivery.test_fulldisk_buffer import fill, small_tmpfs
from tests.unit.exporters.test_file import all_files, exporter, numbers, recs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def parse(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON: fails on a cut record or two glued together."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    assert not data or data.endswith(b"\n"), f"{path.name}: a cut record at the end"
    return [orjson.loads(line) for line in data.splitlines()]


async def send_through_a_full_disk(
    exp: FileExporter, batches: list[list[Record]], filler: Path, check: Any
) -> int:
    """Sends the batches in order the way the pipeline does (a failed batch is sent again,
    the same list); frees the disk after the third failure. Returns the failures."""
    failures = i = 0
    while i < len(batches):
        try:
            await exp.send(batches[i])
        except OSError as exc:
            assert exc.errno == 28, exc  # ENOSPC
            failures += 1
            check(i)  # the output as it is now: whole records, none twice
            assert not exp.health().ok
            if failures == 3:
                filler.unlink()
            assert failures < 50
            continue
        i += 1
    assert exp.health().ok
    return failures


async def test_plain_file_on_a_full_disk(disk: Path) -> None:
    path = disk / "out" / "records.ndjson"
    exp = await exporter(path=str(path))
    filler = fill(disk, leave=300 * 1024)
    batches = [recs(i * 500, 500) for i in range(10)]  # ~170 KB each, 1.7 MB in all

    def check(sent: int) -> None:
        assert numbers(parse(path)) == list(range(sent * 500))

    try:
        assert await send_through_a_full_disk(exp, batches, filler, check) >= 3
    finally:
        await exp.close()
    assert numbers(parse(path)) == list(range(5000))


@pytest.mark.parametrize("fsync", [False, True])
async def test_templated_rotating_files_on_a_full_disk(disk: Path, fsync: bool) -> None:
    metas = [ContainerMeta(f"{k:064x}", f"c{k}", "img", {}, "h") for k in range(2)]
    template = disk / "logs" / "{container_name}.ndjson"
    exp = await exporter(
        path=str(template), fsync=fsync, rotate={"max_bytes": 48 * 1024, "max_files": None}
    )
    filler = fill(disk, leave=250 * 1024)
    # Each batch mixes both containers and is split between files by rotation.
    batches = [[*recs(i * 150, 150, metas[0]), *recs(i * 150, 150, metas[1])] for i in range(12)]

    def check(sent: int) -> None:
        for meta in metas:
            path = Path(str(template).replace("{container_name}", meta.name))
            got = numbers([r for f in all_files(path) if f.exists() for r in parse(f)])
            # Whole records only, each once, in order: those of the batches sent, and a
            # prefix of the failed batch's (the files it went to before the disk filled).
            assert got == list(range(len(got)))
            assert sent * 150 <= len(got) <= (sent + 1) * 150

    try:
        assert await send_through_a_full_disk(exp, batches, filler, check) >= 3
    finally:
        await exp.close()
    for meta in metas:
        path = Path(str(template).replace("{container_name}", meta.name))
        files = all_files(path)
        assert len(files) > 3
        assert numbers([r for f in files for r in parse(f)]) == list(range(1800))


def incompressible(start: int, n: int) -> list[Record]:
    meta = ContainerMeta("e" * 64, "noise", "img", {}, "h")
    return [
        Record.log(format_timestamp_ns(1_800_000_000_000_000_000 + start + i), meta, "stdout",
                   f"{start + i} {os.urandom(150).hex()}", False)
        for i in range(n)
    ]  # fmt: skip


def test_gzip_on_a_full_disk_leaves_the_rotated_file(disk: Path) -> None:
    rotated = disk / "records.ndjson.20261128T101040.123456Z"
    data = b"".join(r.json() + b"\n" for r in incompressible(0, 1500))  # ~500 KB
    rotated.write_bytes(data)
    filler = fill(disk, leave=64 * 1024)
    with pytest.raises(OSError):
        gzip_file(str(rotated))
    assert rotated.read_bytes() == data
    assert sorted(p.name for p in disk.iterdir()) == sorted([rotated.name, filler.name])  # no temp
    filler.unlink()
    gzip_file(str(rotated))
    assert gzip.decompress(Path(str(rotated) + ".gz").read_bytes()) == data
    assert not rotated.exists()


async def test_a_gzip_that_failed_for_want_of_space_is_tried_again(
    disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_rotation, "COMPRESS_RETRY_SECONDS", 0.05)
    path = disk / "records.ndjson"
    exp = await exporter(
        path=str(path), rotate={"max_bytes": 300 * 1024, "max_files": None, "compress": True}
    )
    try:
        batch = incompressible(0, 1500)  # ~750 KB: rotated at 300 KB
        # Just enough room for the records: none for the gzip of the rotated file.
        filler = fill(disk, leave=sum(len(r.json()) + 1 for r in batch) + 32 * 1024)
        with capture_logs() as logs:
            await exp.send(batch)
            await asyncio.sleep(0.3)  # the gzip runs, fails, waits, fails again
        assert [e for e in logs if e["event"] == "file_compress_failed"]
        # The rotated files stay plain (a retry in progress may have its temp file).
        left = [(p, gz) for p, gz, tmp in rotated_files(str(path)) if not tmp]
        assert left and not any(gz for _, gz in left)
        filler.unlink()  # space comes back: the next try compresses it
        done = []
        for _ in range(100):
            done = [(gz, tmp) for _, gz, tmp in rotated_files(str(path))]
            if done and all(gz and not tmp for gz, tmp in done):
                break
            await asyncio.sleep(0.05)
        assert done and all(gz and not tmp for gz, tmp in done)  # no temp file left
    finally:
        await exp.close()
    assert numbers([r for f in all_files(path) for r in parse(f)]) == list(range(1500))
