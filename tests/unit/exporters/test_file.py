"""The file exporter's rotation (size, time, max files, gzip), path templates and open-file
bound, plus its plain behaviour. No engine."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config import parse
from agent.record import ContainerMeta, Record, format_timestamp_ns
from exporters.file import FileConfig, FileExporter, rotated_files

META = ContainerMeta("d" * 64, "app", "busybox", {}, "h")


def recs(start: int, n: int, meta: ContainerMeta = META, size: int = 60) -> list[Record]:
    now = time.time_ns()
    pad = "x" * size
    return [
        Record.log(format_timestamp_ns(now + i), meta, "stdout", f"{start + i} {pad}", False)
        for i in range(n)
    ]


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    assert not data or data.endswith(b"\n")  # whole records only
    return [orjson.loads(line) for line in data.splitlines()]


def numbers(records: list[dict[str, Any]]) -> list[int]:
    return [int(r["message"].split()[0]) for r in records]


def all_files(path: Path) -> list[Path]:
    """Rotated files oldest first, then the current one."""
    return [Path(p) for p, _, _ in rotated_files(str(path))] + [path]


async def exporter(**options: Any) -> FileExporter:
    cfg = parse({"exporters": {"f": {"type": "file", **options}}}).exporters["f"]
    assert isinstance(cfg, FileConfig)
    exp = FileExporter("f", cfg)
    await exp.start()
    return exp


async def test_size_rotation_splits_batches_at_records(tmp_path: Path) -> None:
    path = tmp_path / "out" / "records.ndjson"
    exp = await exporter(path=str(path), rotate={"max_bytes": 4096, "max_files": None})
    for i in range(20):
        await exp.send(recs(i * 50, 50))
    await exp.close()
    files = all_files(path)
    assert len(files) > 20  # 50 records of ~300 bytes do not fit in 4 KiB
    for f in files:
        assert f.stat().st_size <= 4096
    assert numbers([r for f in files for r in read_ndjson(f)]) == list(range(1000))
    assert exp.rotations == len(files) - 1


async def test_max_files_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    exp = await exporter(
        path=str(path), rotate={"max_bytes": 8192, "max_files": 3, "compress": True}
    )
    for i in range(30):
        await exp.send(recs(i * 20, 20))
        await asyncio.sleep(0.01)  # lets the background gzip keep up
    await exp.close()  # waits for the compression in progress
    rotated = rotated_files(str(path))
    assert len(rotated) == 3
    assert not [p for p, _, tmp in rotated if tmp]
    assert [p for p, gz, _ in rotated if gz]
    # The newest files hold the newest records, contiguous up to the last one.
    kept = [r for f in all_files(path) for r in read_ndjson(f)]
    assert numbers(kept) == list(range(600 - len(kept), 600))
    # A restart compresses what was left uncompressed, then prunes.
    exp = await exporter(
        path=str(path), rotate={"max_bytes": 8192, "max_files": 3, "compress": True}
    )
    for _ in range(100):
        left = [p for p, gz, _ in rotated_files(str(path)) if not gz]
        if not left:
            break
        await asyncio.sleep(0.02)
    assert not left
    await exp.close()
    assert len(rotated_files(str(path))) <= 3


async def test_leftovers_of_an_interrupted_compression(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    rotated = tmp_path / "records.ndjson.20261128T101040.123456Z"
    rotated.write_bytes(b'{"a":1}\n')
    (tmp_path / "records.ndjson.20261128T101040.123456Z.gz.tmp").write_bytes(b"\x1f\x8b torn")
    exp = await exporter(path=str(path), rotate={"max_bytes": 4096, "compress": True})
    for _ in range(100):
        if not rotated.exists():
            break
        await asyncio.sleep(0.02)
    await exp.close()
    assert [Path(p).name for p, _, _ in rotated_files(str(path))] == [rotated.name + ".gz"]
    assert gzip.decompress(Path(str(rotated) + ".gz").read_bytes()) == b'{"a":1}\n'


async def test_a_record_larger_than_max_bytes_goes_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    exp = await exporter(path=str(path), rotate={"max_bytes": 1024, "max_files": None})
    await exp.send([*recs(0, 1), *recs(1, 1, size=3000), *recs(2, 1)])
    await exp.close()
    per_file = [numbers(read_ndjson(f)) for f in all_files(path)]
    assert per_file == [[0], [1], [2]]


async def test_time_rotation(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    exp = await exporter(path=str(path), rotate={"max_seconds": 0.2})
    await exp.send(recs(0, 5))
    await exp.send(recs(5, 5))
    await asyncio.sleep(0.25)
    await exp.send(recs(10, 5))
    await exp.close()
    per_file = [numbers(read_ndjson(f)) for f in all_files(path)]
    assert per_file == [list(range(10)), list(range(10, 15))]


async def test_path_template_per_container_and_date(tmp_path: Path) -> None:
    web = ContainerMeta("1" * 64, "web", "nginx", {}, "h")
    db = ContainerMeta("2" * 64, "db", "postgres", {}, "h")
    late = Record.log("2026-11-27T23:59:59.999999999Z", web, "stdout", "0 late", False)
    early = Record.log("2026-11-28T00:00:00.000000001Z", web, "stdout", "1 early", False)
    other = Record.log("2026-11-28T00:00:01.000000000Z", db, "stderr", "2 db", False)
    event = Record.event("2026-11-28T00:00:02.000000000Z", db, "die", {"exitCode": "0"})
    template = str(tmp_path / "logs" / "%Y-%m-%d" / "{container_name}.ndjson")
    exp = await exporter(path=template)
    await exp.send([late, early, other, event])
    await exp.close()
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ndjson"))
    assert found == [
        "logs/2026-11-27/web.ndjson",
        "logs/2026-11-28/db.ndjson",
        "logs/2026-11-28/web.ndjson",
    ]
    db_file = read_ndjson(tmp_path / "logs" / "2026-11-28" / "db.ndjson")
    assert [r["kind"] for r in db_file] == ["log", "event"]
    assert exp.target() == f"file:{template}"


async def test_open_files_are_bounded(tmp_path: Path) -> None:
    metas = [ContainerMeta(f"{i:064x}", f"c{i}", "img", {}, "h") for i in range(6)]
    exp = await exporter(path=str(tmp_path / "{container_name}.ndjson"), max_open_files=2)
    for round_ in range(3):
        for i, meta in enumerate(metas):
            await exp.send(recs(round_ * 10 + i, 1, meta))
            assert len(exp._files) <= 2
    await exp.close()
    for i in range(6):
        got = numbers(read_ndjson(tmp_path / f"c{i}.ndjson"))
        assert got == [i, 10 + i, 20 + i]


async def test_rotation_with_a_template(tmp_path: Path) -> None:
    metas = [ContainerMeta(f"{i:064x}", f"c{i}", "img", {}, "h") for i in range(2)]
    exp = await exporter(
        path=str(tmp_path / "{container_name}.ndjson"),
        rotate={"max_bytes": 2048, "max_files": 2},
    )
    for i in range(10):
        await exp.send([*recs(i * 10, 10, metas[0]), *recs(i * 10, 10, metas[1])])
    await exp.close()
    for meta in metas:
        path = tmp_path / f"{meta.name}.ndjson"
        assert len(rotated_files(str(path))) == 2
        kept = numbers([r for f in all_files(path) for r in read_ndjson(f)])
        assert kept == list(range(100 - len(kept), 100))


async def test_plain_file_keeps_its_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "records.ndjson"
    exp = await exporter(path=str(path), fsync=True)
    assert path.exists()  # opened (and its directory made) at start
    await exp.send(recs(0, 3))
    await exp.flush()
    assert numbers(read_ndjson(path)) == [0, 1, 2]
    assert exp.health().ok and exp.target() == f"file:{path}"
    await exp.close()
    exp = await exporter(path=str(path))  # appends
    await exp.send(recs(3, 1))
    await exp.close()
    assert numbers(read_ndjson(path)) == [0, 1, 2, 3]


async def test_write_failure_is_reported_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    exp = await exporter(path=str(blocker / "{container_name}.ndjson"))
    with pytest.raises(OSError):
        await exp.send(recs(0, 1))
    assert not exp.health().ok and "blocker" in exp.health().detail
    blocker.unlink()
    await exp.send(recs(0, 1))
    assert exp.health().ok
    await exp.close()
    assert numbers(read_ndjson(blocker / "app.ndjson")) == [0]


async def test_a_retried_batch_is_not_written_twice(tmp_path: Path) -> None:
    ok = ContainerMeta("1" * 64, "ok", "img", {}, "h")
    bad = ContainerMeta("2" * 64, "bad", "img", {}, "h")
    (tmp_path / "bad").write_text("")  # a file where the directory should be
    exp = await exporter(path=str(tmp_path / "{container_name}" / "out.ndjson"))
    batch = [*recs(0, 3, ok), *recs(0, 3, bad)]
    with pytest.raises(OSError):
        await exp.send(batch)
    (tmp_path / "bad").unlink()
    await exp.send(batch)  # the pipeline retries the same batch
    await exp.send(recs(3, 1, ok))
    await exp.close()
    assert numbers(read_ndjson(tmp_path / "ok" / "out.ndjson")) == [0, 1, 2, 3]
    assert numbers(read_ndjson(tmp_path / "bad" / "out.ndjson")) == [0, 1, 2]
