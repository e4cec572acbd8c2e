"""Agent restarts: SIGKILL loses nothing (duplicates only inside the checkpoint window),
SIGTERM neither loses nor duplicates; unusable state files are reported, never fatal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from agent.record import normalize_timestamp, timestamp_to_unix
from tests.integration.conftest import read_ndjson

N = 20000  # lines per container


def agent_config(
    tmp: Path, engine_host: str, run_id: str, out: str, logs: dict | None = None
) -> Path:
    cfg = tmp / f"{out}.yaml"
    cfg.write_bytes(
        orjson.dumps(
            {
                "engine": {"host": engine_host},
                "logs": logs or {"source": "api"},
                "state_dir": str(tmp / "state"),
                "checkpoints": {"interval_seconds": 1},
                "containers": {"include": {"label": [f"ca-test-run={run_id}"]}},
                "exporters": {"records": {"type": "file", "path": str(tmp / f"{out}.ndjson")}},
                "agent": {"log_format": "json"},
            }
        )
    )
    return cfg


def start(cfg: Path, tmp: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
        stderr=open(tmp / f"{cfg.stem}.stderr", "wb"),
        env=env,
        cwd=tmp,
    )


def logs(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_ndjson(path) if r["kind"] == "log"]


async def wait_lines(path: Path, n: int, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.1)):
        if len(logs(path)) >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path.name}: fewer than {n} lines after {timeout}s")


async def wait_checkpoint(path: Path, ids: list[str], timeout: float = 20) -> None:
    """Until the checkpoint file holds a delivered position of every container (a
    followed container with nothing delivered yet has an empty entry), and its file mark
    once the stdout position is there: the restart then resumes from it."""
    for _ in range(int(timeout / 0.1)):
        if path.exists():
            saved = orjson.loads(path.read_bytes())["containers"]
            if all(saved.get(c, {}).get("stdout") for c in ids):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} does not name all of {ids} after {timeout}s")


async def run_restart(
    tmp: Path,
    engine_host: str,
    containers,
    sig: int,
    sources: tuple[dict | None, dict | None] = (None, None),
    between: Callable[[list[str]], None] | None = None,
) -> dict:
    script = (
        f'i=0; while [ $i -lt {N} ]; do echo "seq $i"; i=$((i+1)); '
        "[ $((i % 100)) -eq 0 ] && usleep 20000; done"
    )
    first = start(agent_config(tmp, engine_host, containers.run_id, "run1", sources[0]), tmp)
    try:
        await asyncio.sleep(1.0)
        ids = [await containers.run(script) for _ in range(3)]
        await wait_lines(tmp / "run1.ndjson", 6000)
        await wait_checkpoint(tmp / "state" / "checkpoints.json", ids)
        first.send_signal(sig)
        assert await asyncio.to_thread(first.wait, 30) == (0 if sig == signal.SIGTERM else -9)
    finally:
        if first.poll() is None:
            first.kill()
    if between is not None:
        between(ids)
    second = start(agent_config(tmp, engine_host, containers.run_id, "run2", sources[1]), tmp)
    try:
        for cid in ids:
            await containers.wait(cid, timeout=120)
        await wait_lines(tmp / "run2.ndjson", 1)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            got = logs(tmp / "run1.ndjson") + logs(tmp / "run2.ndjson")
            per = {cid: {r["message"] for r in got if r["container_id"] == cid} for cid in ids}
            if all(len(v) == N for v in per.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, {
                c[:12]: N - len(v) for c, v in per.items()
            }
            await asyncio.sleep(0.2)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    one, two = logs(tmp / "run1.ndjson"), logs(tmp / "run2.ndjson")
    result = {}
    for cid in ids:
        a = [r for r in one if r["container_id"] == cid]
        b = [r for r in two if r["container_id"] == cid]
        seq = [int(r["message"].split()[1]) for r in a + b]
        assert sorted(set(seq)) == list(range(N)), "lines lost"
        assert [int(r["message"].split()[1]) for r in a] == list(range(len(a))), "run 1 order"
        if b:
            second_seq = [int(r["message"].split()[1]) for r in b]
            assert second_seq == list(range(second_seq[0], N)), "run 2 order"
        dups = [r for r in b if int(r["message"].split()[1]) < len(a)]
        result[cid] = (a, dups)
    return result


async def test_sigkill_loses_nothing_and_duplicates_only_the_last_interval(
    engine_host, containers, tmp_path
) -> None:
    result = await run_restart(tmp_path, engine_host, containers, signal.SIGKILL)
    for first_run, dups in result.values():
        if dups and first_run:
            last = float(timestamp_to_unix(first_run[-1]["timestamp"]))
            earliest_dup = float(timestamp_to_unix(dups[0]["timestamp"]))
            # the window: one checkpoint interval (1 s) plus the write's own latency
            assert last - earliest_dup <= 2.0, (last - earliest_dup, len(dups))


async def test_sigterm_restart_neither_loses_nor_duplicates(
    engine_host, containers, tmp_path
) -> None:
    result = await run_restart(tmp_path, engine_host, containers, signal.SIGTERM)
    for _, dups in result.values():
        assert dups == []


async def test_corrupt_checkpoint_file_is_reported_and_moved_aside(
    engine_host, containers, tmp_path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "checkpoints.json").write_bytes(b'{"version": 1, "containers": {"abc": {"std')
    cid = await containers.run("echo hello; sleep 30")
    cfg = agent_config(tmp_path, engine_host, containers.run_id, "out")
    proc = start(cfg, tmp_path)
    try:
        await wait_lines(tmp_path / "out.ndjson", 1)
        assert [r["message"] for r in logs(tmp_path / "out.ndjson")] == ["hello"]
        assert logs(tmp_path / "out.ndjson")[0]["container_id"] == cid
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "out.stderr").read_text()
    event = next(orjson.loads(x) for x in err.splitlines() if "checkpoint_unreadable" in x)
    assert event["policy"] == "beginning" and "not JSON" in event["error"]
    assert list(state.glob("checkpoints.json.corrupt-*"))
    assert "Traceback" not in err
    # the new file is valid and names the container
    saved = orjson.loads((state / "checkpoints.json").read_bytes())
    assert cid in saved["containers"]


@pytest.mark.parametrize(
    ("first", "then"), [("files", "files"), ("files", "api"), ("api", "files")]
)
async def test_sigkill_mid_stream_reading_files(
    engine_host, containers, tmp_path, first, then
) -> None:
    """SIGKILL while reading the json-file logs (or the API), then read from disk again or
    through the other source. A file-read container's checkpoint is (inode, offset) plus
    the stamps: the files source resumes at the offset, and the stamps bridge sources."""
    info = await containers.docker.system.info()
    root = f"{info['DockerRootDir']}/containers"
    files = {"source": "files", "containers_dir": root}
    pick = {"files": files, "api": {"source": "api"}}
    marks: dict[str, dict] = {}

    def check_checkpoint(ids: list[str]) -> None:
        saved = orjson.loads((tmp_path / "state" / "checkpoints.json").read_bytes())
        for cid in ids:
            entry = saved["containers"][cid]
            if first == "api":
                assert "file" not in entry  # the API knows no file positions
                continue
            mark = marks[cid] = entry["file"]
            log = Path(root) / cid / f"{cid}-json.log"
            assert mark["inode"] == log.stat().st_ino
            assert 0 < mark["offset"] <= log.stat().st_size
            # The offset is just past a line, and that line is the one the mark names.
            with log.open("rb") as fh:
                head = fh.read(mark["offset"])
            assert head.endswith(b"\n")
            last = orjson.loads(head[head.rfind(b"\n", 0, len(head) - 1) + 1 :])
            assert normalize_timestamp(last["time"]) == mark["timestamp"]
            assert entry["stdout"]["timestamp"] >= mark["timestamp"]

    result = await run_restart(
        tmp_path,
        engine_host,
        containers,
        signal.SIGKILL,
        (pick[first], pick[then]),
        between=check_checkpoint,
    )
    for first_run, dups in result.values():
        if dups and first_run:
            last = float(timestamp_to_unix(first_run[-1]["timestamp"]))
            assert last - float(timestamp_to_unix(dups[0]["timestamp"])) <= 2.0
    resumed = [
        orjson.loads(x)
        for x in (tmp_path / "run2.stderr").read_text().splitlines()
        if "log_file_resumed" in x
    ]
    if then == "files":
        by = {e["id"]: e for e in resumed}
        for cid in result:
            if first == "files":
                # Straight to the checkpoint's offset, no search through the file.
                assert by[cid[:12]]["by"] == "position"
                assert by[cid[:12]]["offset"] == marks[cid]["offset"]
            else:
                assert by[cid[:12]]["by"] == "timestamp"
    else:
        assert resumed == []


async def test_each_run_checkpoints_promptly_and_a_restart_resends_only_what_followed(
    engine_host, containers, tmp_path
) -> None:
    """SIGKILL soon after each start, while containers print. Every run writes a
    checkpoint as soon as it has delivered something (a run used to write its first one
    only an interval after it started, so a run killed early wrote none and the next one
    delivered its whole output again); and each restart re-delivers exactly the lines
    after the checkpoint it found: the lines the killed run delivered after its last
    write (at most one interval of delivery)."""
    per_container = 12_000  # ~13 s of output at 100 lines per ~110 ms
    script = (
        f'i=0; while [ $i -lt {per_container} ]; do echo "seq $i"; i=$((i+1)); '
        "[ $((i % 100)) -eq 0 ] && usleep 100000; done"
    )
    ids = [await containers.run(script) for _ in range(2)]
    state = tmp_path / "state" / "checkpoints.json"
    runs: list[Path] = []
    found: list[dict] = []  # the checkpoint each run found at its start
    for k in range(5):
        found.append(orjson.loads(state.read_bytes())["containers"] if state.exists() else {})
        started = time.time()
        proc = start(agent_config(tmp_path, engine_host, containers.run_id, f"storm{k}"), tmp_path)
        runs.append(tmp_path / f"storm{k}.ndjson")
        try:
            await wait_lines(runs[-1], 1)
            if k < 4:
                await asyncio.sleep(0.4)
                doc = orjson.loads(state.read_bytes())
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 30)
                assert doc["written_at"] >= started, f"run {k} wrote no checkpoint in 0.4 s"
                continue
            for cid in ids:
                await containers.wait(cid, timeout=120)
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                got = [r for path in runs for r in logs(path)]
                if all(
                    len({r["message"] for r in got if r["container_id"] == c}) == per_container
                    for c in ids
                ):
                    break
                assert asyncio.get_running_loop().time() < deadline, "lines lost"
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    for cid in ids:
        seen: set[int] = set()
        for k, path in enumerate(runs):
            mine = [r for r in logs(path) if r["container_id"] == cid]
            if not mine:
                continue
            first = int(mine[0]["message"].split()[1])
            pos = found[k].get(cid, {}).get("stdout")
            if pos is not None:
                # Resumed right after the checkpointed line: the first line this run
                # delivered is the first one stamped after it (lines here have unique
                # stamps per 100-line burst at most; the count says how many shared it).
                before = [
                    r
                    for p in runs[:k]
                    for r in logs(p)
                    if r["container_id"] == cid and r["timestamp"] <= pos["timestamp"]
                ]
                assert first == max(int(r["message"].split()[1]) for r in before) + 1
            seen.update(int(r["message"].split()[1]) for r in mine)
        assert sorted(seen) == list(range(per_container)), "lines lost"
