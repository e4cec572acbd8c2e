"""The json-file source: a container's log read straight from ``<id>/<id>-json.log``.

Reading the files skips the engine (it costs it nothing) and the framing; the records are
the same as the logs API's for the same lines (``decoder``). One ``_Tail`` per read
(``tail``) follows one container's chain of files (``files``), woken by one shared inotify
watcher (``inotify``).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

import structlog

from agent.engine.client import Engine, EngineError, NotFound
from agent.positions import Position
from agent.sources.base import Emit, LogSource, StreamEnd
from agent.sources.jsonfile.inotify import WAKE_LINGER_SECONDS, Inotify
from agent.sources.jsonfile.tail import _Tail

if TYPE_CHECKING:
    from agent.sources.reader import ContainerReader

log = structlog.get_logger("agent.sources.jsonfile")

CHUNK_BYTES = 64 << 10  # one read, one orjson.loads, one batch (see _Tail.run on the size)
USE_INOTIFY = True  # else poll (the fallback when inotify fails; bench/files.py compares)
POLL_SECONDS = 0.1  # without inotify: how often an idle file is looked at
TRICKLE_SECONDS = 0.01  # a reader that just found data looks again after this (see _wait)


class JsonFileLogSource(LogSource):
    """Reads ``<containers_dir>/<id>/<id>-json.log`` (and its rotated files) directly."""

    name = "files"

    def __init__(
        self,
        engine: Engine,
        containers_dir: str,
        max_message_bytes: int,
        use_inotify: bool | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        poll_seconds: float = POLL_SECONDS,
        trickle_seconds: float = TRICKLE_SECONDS,
        linger_seconds: float = WAKE_LINGER_SECONDS,
    ) -> None:
        self.engine = engine
        self.containers_dir = containers_dir
        self.max_message_bytes = max_message_bytes
        self.use_inotify = USE_INOTIFY if use_inotify is None else use_inotify
        self.chunk_bytes = chunk_bytes
        self.poll_seconds = poll_seconds
        self.trickle_seconds = trickle_seconds
        self.linger_seconds = linger_seconds  # FileWatches' (see ``set_linger``)
        self.lost = 0  # lines lost to rotation or truncation (estimated), all containers
        self.in_place_reads = 0  # reads of new lines done in the inotify handler
        # Per container: lines/bytes of files finished (to estimate lines lost).
        self._lines: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._inotify: Inotify | None = None
        self._inotify_warned = False
        self._buf = bytearray()  # in-place reads land here

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.containers_dir, container_id, f"{container_id}-json.log")

    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        self._prune(reader)
        tail = _Tail(self, reader)
        try:
            return await tail.run(positions, emit)
        except FileNotFoundError as exc:
            raise NotFound(f"log file of {reader.meta.name}: {exc}") from exc
        except OSError as exc:
            # EMFILE, EACCES, EIO, …: a failed read, retried by the reader.
            raise EngineError(f"log file of {reader.meta.name}: {exc}") from exc
        finally:
            tail.close()

    def _prune(self, reader: ContainerReader) -> None:
        known = reader.followers.positions
        for table in (self._lines, self._bytes):
            for cid in [c for c in table if c not in known]:
                del table[cid]

    def _acquire_inotify(self) -> Inotify:
        if self._inotify is None or self._inotify.loop is not asyncio.get_running_loop():
            self._inotify = Inotify()
        self._inotify.files.linger = self.linger_seconds
        self._inotify.users += 1
        return self._inotify

    def set_linger(self, seconds: float) -> None:
        """``logs.files_linger_seconds`` (a reload): from the next read of the files'
        change notices."""
        self.linger_seconds = seconds
        if self._inotify is not None:
            self._inotify.files.linger = seconds

    def _release_inotify(self) -> None:
        ino = self._inotify
        if ino is None:
            return
        ino.users -= 1
        if ino.users <= 0:
            ino.close()
            self._inotify = None

    def _inotify_failed(self, exc: OSError) -> None:
        if not self._inotify_warned:
            self._inotify_warned = True
            log.warning(
                "inotify_unavailable",
                error=str(exc),
                fallback=f"polling every {self.poll_seconds} s",
                hint="raise fs.inotify.max_user_watches / max_user_instances",
            )
