"""Following one container's json-file log: read, decode, emit, wait.

A chunk (64 KiB) is read (in place when it is in the page cache, else in a thread), all its
whole lines are decoded with one ``orjson.loads`` call and turned into records in one loop,
and the batch is emitted: no await per line. At the end of the file the reader waits on
inotify (no wake-up while a container is idle); without inotify it polls. It stops once
the container has stopped and its file is read to the end: the engine closes the file when
the container stops (``IN_CLOSE_WRITE``), which is confirmed by one inspect. A file that
shrank was truncated: it is read again from the start. A container that is removed is read
to the end of what its open files hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from typing import TYPE_CHECKING, Any

import structlog

from agent.engine.client import EngineError, NotFound
from agent.eventloop import flowing
from agent.positions import FileMark, Position
from agent.record import Record
from agent.sources.base import Emit, StreamEnd
from agent.sources.jsonfile.decoder import JsonFileDecoder
from agent.sources.jsonfile.files import FileChain, _File, _parse_size
from agent.sources.jsonfile.inotify import TICK_SECONDS
from agent.sources.jsonfile.seek import (
    MAX_LINE_BYTES,
    _last_line,
    _line_before,
    _line_time,
    _minus_margin,
    first_offset_at_or_after,
)

if TYPE_CHECKING:
    from agent.sources.jsonfile.source import JsonFileLogSource
    from agent.sources.reader import ContainerReader

log = structlog.get_logger("agent.sources.jsonfile")

SAFETY_CHECK_SECONDS = 300.0  # an idle reader asks the engine anyway, in case an event was lost
POLL_CHECK_SECONDS = 2.0  # without inotify: how often an idle reader asks whether it runs
CLOSE_SETTLE_SECONDS = 0.05  # after the engine closed the file: time for a rotation to show
# A watch that fires sooner than this after it was set means a writer busy enough for the
# short sleep after data (``_wait``) to pay again.
TRICKLE_AGAIN_SECONDS = 0.05


class _Liveness:
    """When a reader at the end of its file asks the engine whether its container runs.

    One more look after 2 s catches a container that stopped between the engine closing
    its file and marking it stopped (the close came before the watch, the inspect before
    the stop); then every ``check_every`` when idle, and 1 s, 2 s, 4 s, … after a close
    that the engine did not confirm (a restart, a slow engine).
    """

    def __init__(self, running: bool | None, polling: bool) -> None:
        self.stopping = running is False  # the output ended: finish what is read
        self.why = "stopped"
        self.check_every = POLL_CHECK_SECONDS if polling else SAFETY_CHECK_SECONDS
        self.after_close = 1.0
        self.next_check = time.monotonic() + min(2.0, self.check_every)
        self.closed_since: float | None = None  # when the engine closed the file

    def closed(self, now: float) -> None:
        """The engine closed the file: ask it once the close has settled."""
        if self.closed_since is None:
            self.closed_since = now
        if now - self.closed_since >= CLOSE_SETTLE_SECONDS:
            self.next_check = now

    def due(self, now: float) -> bool:
        return now >= self.next_check

    def answered(self, running: bool | None, now: float) -> None:
        """The engine said whether the container runs (None: it could not say)."""
        by_close, self.closed_since = self.closed_since is not None, None
        if running is None:
            self.next_check = now + 2.0  # the engine cannot say: ask again soon
        elif by_close:
            self.next_check = now + self.after_close
            self.after_close = min(self.after_close * 2, self.check_every)
        else:
            self.next_check = now + self.check_every

    def timeout(self, now: float) -> float:
        """How long the reader may wait for its file before the next look."""
        timeout = self.next_check - now
        if self.closed_since is not None:
            timeout = min(timeout, self.closed_since + CLOSE_SETTLE_SECONDS - now)
        return timeout


class _Tail(FileChain):
    """One ``read()`` of one container: its chain of files (``FileChain``) read to the end
    of the container's output."""

    def __init__(self, source: JsonFileLogSource, reader: ContainerReader) -> None:
        super().__init__(source, reader)
        self.nowait = bool(_NOWAIT)
        self.live = _Liveness(None, polling=True)  # set by ``_start``
        self.trickle = True  # after data, look again after a short sleep before watching
        self._trickled = False  # the last wait was that short sleep
        # The file the reader waits for with a watch that stays, while it waits for long
        # (``_wait``): its writes are read in the inotify handler (``read_in_place``).
        self.parked: _File | None = None

    async def run(self, positions: dict[str, Position], emit: Emit) -> StreamEnd:
        decoder = await self._start(positions)
        live = self.live
        quiet = 0  # reads in a row that found nothing
        while True:
            f = self.files[0]
            newer_known = len(self.files) > 1
            # Before the read: a write after it sets the wake again (a watch that stays).
            self.wake.clear()
            data = await self._read(f)
            if data is None:
                await self._truncated(f, decoder, emit)
                continue
            cut = data.rfind(b"\n") + 1
            got = len(data)
            if cut:
                quiet = 0
                await self._consume(f, decoder, data, cut, emit)
                if got >= self.source.chunk_bytes:
                    self.unwatch_file()  # a burst: no event per write while it lasts
                    await asyncio.sleep(0)  # the next chunk may be read without a suspension
                    continue
                # A short read ended at the end of the file: its size says whether more
                # came since, without another read.
                got -= cut
            elif got >= self.source.chunk_bytes and await self._long_line(f, decoder, emit):
                continue
            # At the end of files[0] (or in a line still being written).
            if await self._more_to_read(f, got, newer_known):
                continue
            if live.stopping:
                tail = decoder.finish()
                if tail:
                    await emit(tail)
                log.debug("log_file_done", container=self.reader.meta.name, why=live.why)
                return StreamEnd.STOPPED
            quiet += 1
            await self._wait(f, f.offset + got, quiet, live.timeout(time.monotonic()))

    async def _start(self, positions: dict[str, Position]) -> JsonFileDecoder:
        """Opens the chain of files, learns the container's TTY and rotation size, finds
        where to start (the checkpointed mark, else the delivered stamps) and makes the
        decoder."""
        source = self.source
        if source.use_inotify:
            self._watch()
        await self.scan()
        if not self.files:
            raise NotFound(f"no json-file log at {self.path}")
        running, info = await self._inspect()
        if info:
            self.reader.inspected(info)
        tty = (info.get("Config") or {}).get("Tty") if info else None
        if tty is None:
            tty = self.reader.meta.tty
        log_config = ((info.get("HostConfig") or {}).get("LogConfig") or {}) if info else {}
        self.max_size = _parse_size((log_config.get("Config") or {}).get("max-size"))
        self.live = _Liveness(running, polling=self.inotify is None)

        since = min((p.timestamp for p in positions.values()), default=None)
        resume = positions
        mark = self.reader.followers.marks.get(self.cid)
        if mark is not None and await self._seek(mark):
            # Only the lines after the mark are read: nothing to search, nothing before it
            # to skip.
            resume, since, how = mark.resume(positions), None, "position"
        else:
            await self._seek_time(since)
            how = "timestamp" if since is not None else "start"
        if how != "start":
            log.info(
                "log_file_resumed",
                container=self.reader.meta.name,
                id=self.cid[:12],
                by=how,
                inode=self.files[0].ino,
                offset=self.files[0].offset,
            )
        decoder = JsonFileDecoder(
            self.reader.meta, source.max_message_bytes, resume=resume, since=since, tty=tty
        )
        self.reader.decoder = decoder
        return decoder

    async def _consume(
        self, f: _File, decoder: JsonFileDecoder, data: bytes, cut: int, emit: Emit
    ) -> None:
        """Decodes and emits the whole lines of a chunk (``data[:cut]``)."""
        await self._emit(f, decoder, self._decode(f, decoder, data, cut), emit)

    def _decode(self, f: _File, decoder: JsonFileDecoder, data: bytes, cut: int) -> list[Record]:
        """The records of the whole lines of a chunk (``data[:cut]``), read past."""
        flowing(cut)  # a flood: the loop must not gather its wake-ups
        records = decoder.feed_lines(data[:cut] if cut < len(data) else data)
        f.tail = data[max(0, cut - 64) : cut]
        f.seen = max(f.seen, f.offset + len(data))  # what a truncation could take
        f.offset += cut
        f.lines += len(records)
        f.bytes += cut
        return records

    def read_in_place(self) -> bool:
        """A write to the file the reader waits for, with a watch that stays (a slow
        writer: most containers), in the inotify handler on the loop: its new lines are
        read, decoded and handed to the pipeline right here, and the reader's task stays
        asleep (a task wake-up, its waits and its checks cost more than the line). Only
        when nothing else is due: the reader waits for this file alone, nothing closed or
        removed it, no liveness look is due, the bytes are in the page cache, they are no
        burst, and the batches go straight to a pipeline with room (no processing chain).
        Else False: the reader wakes and reads as usual."""
        f = self.parked
        reader = self.reader
        decoder = reader.decoder
        if (
            f is None
            or self.files[0] is not f
            or len(self.files) > 1
            or not self.watching(f.ino)
            or self.closed_by_writer
            or self.gone
            or not self.nowait
            or not isinstance(decoder, JsonFileDecoder)
            or self.live.due(time.monotonic())
            or not reader.emit_ready()
        ):
            return False
        try:
            data = _read(f.fd, self._buffer(), f.offset, f.tail, _NOWAIT)
        except OSError:
            return False
        if data is None or len(data) >= self.source.chunk_bytes:
            return False  # truncated, or a burst
        cut = data.rfind(b"\n") + 1
        if cut:
            records = self._decode(f, decoder, data, cut)
            if records:
                clean = self._mark(f, decoder, records)
                reader.emit_now(records)
                if clean:
                    self._marked(f, records)
            self.source.in_place_reads += 1
        return True

    async def _more_to_read(self, f: _File, got: int, newer_known: bool) -> bool:
        """At the end of ``f`` after a read of ``got`` bytes with no line end: True when
        there is more to read now (a newer file, new bytes, the last lines before a stop);
        else ``self.live`` says whether the container's output ended."""
        live = self.live
        if not self.closed_by_writer:
            live.closed_since = None
        if newer_known:
            # The writer had moved to a newer file before this read: this one is whole.
            self._retire(f)
            return True
        if self.inotify is None and self._rotated() and self.scan_now():
            return True
        if self.watching(f.ino):
            size = f.offset + got  # a write since the read has set the wake: no stat
        else:
            size = os.fstat(f.fd).st_size
            f.seen = max(f.seen, size)
        if size > f.offset + got or len(self.files) > 1:
            return True  # written, or rotated, since the read
        # With the directory's watch (and no overflow since), its removal is reported
        # (``gone``): no stat per read.
        if self.gone or ((self.inotify is None or not self.counted) and not self.dir_exists()):
            # Removed: the engine closed the files first; what they hold has been read.
            live.stopping, live.why = True, "removed"
        now = time.monotonic()
        if self.closed_by_writer and not live.stopping:
            # The engine closed the file: the container stopped, or a rotation is under
            # way (a new file follows within microseconds), or the engine restarts.
            live.closed(now)
        if not live.stopping and live.due(now):
            self.closed_by_writer = False
            running, _info = await self._inspect()
            live.answered(running, now)
            if running is False:
                live.stopping, live.why = True, "stopped"
                return True  # read once more: the last lines came before the close
        return False

    async def _wait(self, f: _File, end: int, quiet: int, limit: float) -> None:
        """Until the file may have grown past ``end`` (or rotated, or closed), at most
        ``limit`` s. A writer that just wrote usually writes on: right after data the reader
        only sleeps a little and looks again (one timer, and a bigger batch next time,
        rather than a watch, a wake-up and a small read per write); a file found quiet
        twice in a row is left to inotify. A writer for which that short sleep found
        nothing (one line now and then: most containers) goes straight to the watch after
        its data, until a watch fires within ``TRICKLE_AGAIN_SECONDS``; its watch then
        stays between its lines (``IN_MODIFY`` without ``IN_ONESHOT``): no watch to set
        and no stat per line, the wake cleared before each read (``run``) tells of any
        write since. A burst or a busier writer ends it (one-shot watches again)."""
        limit = max(limit, 0.0)
        if self.inotify is None:
            await asyncio.sleep(min(self.source.poll_seconds, limit))
            return
        if self._trickled and quiet > 1:
            self.trickle = False  # the look after a short sleep found nothing: a slow writer
        self._trickled = False
        if quiet == 1 and self.trickle:
            self.unwatch_file()
            self._trickled = True
            await asyncio.sleep(min(self.source.trickle_seconds, limit))
            return
        steady = not self.trickle
        if not (steady and self.watching(f.ino)):
            self.wake.clear()
            try:
                self.watch_file(f.ino, steady)
            except OSError:
                # No -json.log for now (a rotation in progress, a removal): the directory's
                # watch reports its creation; poll meanwhile, in case it does not come.
                limit = min(limit, self.source.poll_seconds)
            if os.fstat(f.fd).st_size > end:
                return  # written between the read and the watch
        armed = time.monotonic()
        if limit > TICK_SECONDS:
            # A long wait (an idle container): the watcher thread's tick ends it. The
            # request stays from one wait to the next while its deadline (the next
            # liveness look) stands: should it come while the reader reads, the next wait
            # is one pass shorter, and the look is due anyway.
            deadline = armed + limit
            asked = self.inotify.sleepers.get(self.wake)  # (gone once it was set)
            if asked is None or abs(deadline - asked) > 0.1:
                self.inotify.sleep_until(self.wake, deadline)
            if steady:
                self.parked = f  # its writes are read in place meanwhile
            try:
                await self.wake.wait()
            finally:
                self.parked = None
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await self.wake.wait()
        if time.monotonic() - armed < TRICKLE_AGAIN_SECONDS:
            self.trickle = True  # written again soon: a busy writer, worth the short sleep

    async def _read(self, f: _File) -> bytes | None:
        """The next chunk of ``f`` (see ``_read``). Read here when the bytes are in the page
        cache, as they are when the reader keeps up (a 64 KiB copy: ~19 µs of CPU), else in
        a thread (~60 µs of CPU a call for the hand-over), so that the loop never waits for
        the disk."""
        size = self.source.chunk_bytes + 64  # (+ the tail)
        if self.nowait:
            try:
                return _read(f.fd, self._buffer(), f.offset, f.tail, _NOWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.nowait = False  # a file system without it
        return await asyncio.to_thread(_read, f.fd, bytearray(size), f.offset, f.tail, 0)

    def _buffer(self) -> bytearray:
        """One buffer for the whole source: the reads in place never overlap (no await)."""
        size = self.source.chunk_bytes + 64  # (+ the tail)
        buf = self.source._buf
        if len(buf) != size:
            buf = self.source._buf = bytearray(size)
        return buf

    def _rotated(self) -> bool:
        """Without inotify: whether ``-json.log`` is another file than the newest held."""
        try:
            return os.stat(self.path).st_ino != self.files[-1].ino
        except FileNotFoundError:
            return True

    async def _truncated(self, f: _File, decoder: JsonFileDecoder, emit: Emit) -> None:
        """The file shrank (or was replaced in place): read it again from the start."""
        lost_bytes = max(0, f.seen - f.offset)
        log.info(
            "log_file_truncated",
            container=self.reader.meta.name,
            id=self.cid[:12],
            offset=f.offset,
            unread_bytes=lost_bytes,
        )
        if lost_bytes:
            lines = max(1, round(lost_bytes * self._lines_per_byte()))
            self._count_lost(lines)
            log.warning(
                "log_lines_lost",
                container=self.reader.meta.name,
                id=self.cid[:12],
                lines=lines,
                estimated=True,
                reason="the log file was truncated before it was read to its end",
            )
        tail = decoder.finish()  # a line cut by the truncation ends here
        if tail:
            await emit(tail)
        f.offset = 0
        f.seen = 0
        f.tail = b""
        self.reader.followers.marks.pop(self.cid, None)

    async def _long_line(self, f: _File, decoder: JsonFileDecoder, emit: Emit) -> bool:
        """A whole chunk without a line end (the engine never writes one: a message holds
        at most 16 KiB): reads the line whole up to MAX_LINE_BYTES, else skips it. False
        when nothing was consumed (the line is still being written)."""
        size = self.source.chunk_bytes
        while size < MAX_LINE_BYTES:
            size *= 4
            data = await asyncio.to_thread(os.pread, f.fd, size, f.offset)
            cut = data.rfind(b"\n") + 1
            if cut:
                records = decoder.feed_lines(data[:cut])
                f.tail = data[max(0, cut - 64) : cut]
                f.offset += cut
                await self._emit(f, decoder, records, emit)
                return True
            if len(data) < size:
                return False
        while True:
            data = await asyncio.to_thread(os.pread, f.fd, 1 << 20, f.offset)
            if not data:
                return False
            nl = data.find(b"\n")
            if nl >= 0:
                f.offset += nl + 1
                f.tail = data[max(0, nl - 63) : nl + 1]
                decoder.malformed += 1
                return True
            f.offset += len(data)
            f.tail = data[-64:]

    async def _emit(
        self, f: _File, decoder: JsonFileDecoder, records: list[Record], emit: Emit
    ) -> None:
        """Emits a chunk's records; when the chunk ended at a line boundary, its last
        record carries the file position (the exporters' acknowledgements turn it into the
        checkpoint), and the reader's own mark moves there."""
        if not records:
            return
        clean = self._mark(f, decoder, records)
        await emit(records)
        if clean:
            self._marked(f, records)

    def _mark(self, f: _File, decoder: JsonFileDecoder, records: list[Record]) -> bool:
        """Whether the chunk ended at a line boundary: then its last record carries the
        file position."""
        clean = not decoder._pending
        if clean:
            records[-1].mark = (f.ino, f.offset)
        return clean

    def _marked(self, f: _File, records: list[Record]) -> None:
        """The records are emitted: the reader's own mark moves to the position."""
        positions = self.reader.followers.positions.get(self.cid, {})
        self.reader.followers.marks[self.cid] = FileMark.after(records[-1], positions, f.tail)

    async def _seek(self, mark: FileMark) -> bool:
        """Starts reading at ``mark`` when its file is still here, at least that long, and
        the line before the offset is the one the mark names (an inode can be reused);
        older files are let go. False: the mark cannot be trusted."""
        for i, f in enumerate(self.files):
            if f.ino != mark.inode:
                continue
            tail = await asyncio.to_thread(_line_before, f.fd, mark.offset)
            if tail is None:
                return False
            if mark.tail:
                same = tail.endswith(mark.tail)
            else:
                same = not tail or _line_time(_last_line(tail)) == mark.timestamp
            if not same:
                return False
            for old in self.files[:i]:
                self._retire(old)
            f.offset = mark.offset
            f.tail = tail[-64:]
            return True
        return False

    async def _seek_time(self, since: str | None) -> None:
        """Starts reading at the first line at or after ``since`` (less a margin), else at
        the oldest file's start."""
        if since is None:
            return
        cut = _minus_margin(since)
        while self.files:
            f = self.files[0]
            size = os.fstat(f.fd).st_size
            offset = await asyncio.to_thread(first_offset_at_or_after, f.fd, size, cut)
            if offset >= size and len(self.files) > 1:
                self._retire(f)
                continue
            f.offset = offset
            return

    async def _inspect(self) -> tuple[bool | None, dict[str, Any] | None]:
        """(running, inspect answer); running None when the engine cannot be asked."""
        try:
            info = await self.source.engine.inspect(self.cid)
        except NotFound:
            return False, None
        except EngineError:
            return None, None
        return bool((info.get("State") or {}).get("Running")), info


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _read(fd: int, buf: bytearray, offset: int, tail: bytes, flags: int) -> bytes | None:
    """Up to ``len(buf) - 64`` bytes from ``offset``; None when the bytes before ``offset``
    are not ``tail`` any more: the file shrank (truncated), maybe then was written past
    ``offset`` again (the engine appends). ``tail`` holds the end of the last line read,
    with its time stamp, so new lines cannot match it. With ``RWF_NOWAIT`` it raises
    ``BlockingIOError`` unless the bytes are in the page cache."""
    expect = (tail or b"\n") if offset else b""
    n = os.preadv(fd, [buf], offset - len(expect), flags)
    data = bytes(memoryview(buf)[:n])
    if not data.startswith(expect):
        return None
    return data[len(expect) :] if expect else data
