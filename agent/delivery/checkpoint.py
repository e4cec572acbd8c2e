"""Checkpoints: per container and stream, the position every durable exporter has accepted.

The file (``<state_dir>/checkpoints.json``) is rewritten atomically (temp file, fsync,
rename, fsync of the directory) at most once per interval and once more at shutdown. A
position is the engine timestamp of the last delivered line plus how many lines carried
that timestamp, the same resume key the logs API readers use after a reconnect; after a
SIGKILL, lines accepted since the last write are read again (the at-least-once window is
one interval), and nothing is lost. An unreadable file is moved aside and reported.

A container read from its json-file log also has a ``file`` entry (``FileMark``): the
inode and offset where its delivered lines end, with the stamps at that point, so that the
files source resumes there without a search, and the API source (or the files source once
the file is gone) still resumes from the stamps.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.fsutil import atomic_write
from agent.positions import FileMark, Position

log = structlog.get_logger("agent.checkpoint")

FILE_NAME = "checkpoints.json"
VERSION = 1

Positions = dict[str, dict[str, Position]]  # container id → stream → position
Marks = dict[str, FileMark]  # container id → where its delivered lines end in its file
STREAMS = ("stdout", "stderr")


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be used."""


def _parse(data: bytes) -> tuple[Positions, Marks, float]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise CheckpointError(
            f"unknown format (version {doc.get('version')!r})"
            if isinstance(doc, dict)
            else "not an object"
        )
    containers = doc.get("containers")
    if not isinstance(containers, dict):
        raise CheckpointError("no containers mapping")
    out: Positions = {}
    marks: Marks = {}
    for cid, streams in containers.items():
        if not isinstance(streams, dict):
            raise CheckpointError(f"container {cid[:12]}: not a mapping")
        per: dict[str, Position] = {}
        for key, value in streams.items():
            try:
                if key == "file":
                    mark = marks[cid] = FileMark.from_dict(value)
                    if not set(mark.streams) <= set(STREAMS):
                        raise ValueError("bad stream in file position")
                elif key in STREAMS:
                    per[key] = Position.from_dict(value)
                else:
                    raise ValueError("unknown stream")
            except ValueError as exc:
                raise CheckpointError(f"container {cid[:12]} {key!r}: {exc}") from None
        out[cid] = per
    written = doc.get("written_at")
    return out, marks, float(written) if isinstance(written, int | float) else 0.0


class CheckpointStore:
    """Loads and writes the checkpoint file; all disk I/O runs in a thread."""

    def __init__(self, state_dir: str, interval: float) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME
        self.interval = interval
        self.written_at = 0.0  # of the loaded file: containers created later are new
        self.writes = 0
        self.write_seconds = 0.0
        self.last_error = ""
        self._last = b""  # the ``containers`` bytes of the file on disk

    def load(self) -> tuple[Positions, Marks]:
        """The saved positions and file marks; empty when there is no file. Raises
        CheckpointError."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}, {}
        except OSError as exc:
            raise CheckpointError(f"cannot read: {exc.strerror or exc}") from None
        positions, marks, self.written_at = _parse(data)
        # (as ``write`` encodes it: a first write with no position moved is skipped)
        self._last = self.encode_containers(positions, marks)
        return positions, marks

    def quarantine(self) -> Path | None:
        """Moves an unusable file aside (kept for inspection), so it is not read again."""
        target = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
        try:
            self.path.rename(target)
        except OSError:
            return None
        return target

    @staticmethod
    def encode_containers(positions: Positions, marks: Marks | None = None) -> bytes:
        """The file's ``containers`` mapping."""
        # ``Position`` is a dataclass: orjson writes it as ``to_dict`` would, at C speed.
        containers: dict[str, dict[str, Any]] = {}
        marks = marks or {}
        for cid, streams in positions.items():
            # A container with nothing delivered yet is kept too (an empty entry): after a
            # restart it is read from the start of its log, not forgotten.
            mark = marks.get(cid)
            containers[cid] = streams if mark is None else {**streams, "file": mark.to_dict()}
        return orjson.dumps(containers)

    def write(self, positions: Positions, marks: Marks | None = None) -> bool:
        """Atomically replaces the file; False when nothing changed since the last write
        (the ``containers`` bytes compared: the write time alone is no change)."""
        containers = self.encode_containers(positions, marks)
        if containers == self._last:
            return False
        body = b'{"version":%d,"written_at":%s,"containers":%s}' % (
            VERSION,
            orjson.dumps(time.time()),
            containers,
        )
        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, body)
        self._last = containers
        self.writes += 1
        self.write_seconds += time.perf_counter() - t0
        return True

    async def write_async(self, positions: Positions, marks: Marks | None = None) -> None:
        """``write`` in a thread; never raises for a disk that is full or out of file
        descriptors (ENOSPC, EMFILE): the previous file stays whole (``atomic_write``), the
        failure is logged once (``checkpoint_write_failed``) and kept in ``last_error``
        until a write succeeds again (``checkpoint_write_recovered``)."""
        try:
            await asyncio.to_thread(self.write, positions, marks)
        except OSError as exc:
            if not self.last_error:
                log.error("checkpoint_write_failed", path=str(self.path), error=str(exc))
            self.last_error = str(exc)
            return
        if self.last_error:
            log.info("checkpoint_write_recovered", path=str(self.path))
            self.last_error = ""
