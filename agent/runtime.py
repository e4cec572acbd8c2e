"""The supervisor: start-up, the main wait, and a bounded, draining shutdown.

Startup checks the engine and opens every exporter before any log is read; the first
SIGTERM/SIGINT stops intake and drains the exporters' queues within
``agent.shutdown_timeout_seconds``; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

import exporters
from agent import __version__
from agent.config import Config
from agent.delivery.checkpoint import CheckpointError, CheckpointStore
from agent.delivery.pipeline import ExporterStartError, Pipeline
from agent.delivery.runner import ExporterRunner
from agent.engine.client import Engine, EngineError
from agent.engine.discovery import Discovery
from agent.fsutil import atomic_write
from agent.metrics.inventory import Inventory
from agent.metrics.stats import StatsCollector
from agent.positions import FileMark, Position
from agent.processing.build import Processing
from agent.reload import Reloader
from agent.retry import Backoff
from agent.sources.api.source import ApiLogSource
from agent.sources.choice import SourceChooser
from agent.sources.followers import LogFollowers
from agent.sources.jsonfile.source import JsonFileLogSource
from agent.speedups import speedups, trim_heap
from agent.state import AgentState
from agent.supervisor import Supervisor
from exporters.base import ExporterConfig

if TYPE_CHECKING:
    from agent.delivery.buffer import DiskBuffer

log = structlog.get_logger("agent.runtime")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config, engine unreachable at start: something the operator must fix
FIRST_CHECKPOINT_POLL_SECONDS = 0.05  # after a start: how soon a first delivery is noticed


PID_FILE = "agent.pid"  # under state_dir: `container-agent reload` signals this process
# A first call to the engine that takes longer is reported while the agent waits on (up
# to the call's own timeout): a wedged engine answers /version but not /info, for one.
SLOW_ENGINE_SECONDS = 5.0

T = TypeVar("T")


def write_pid_file(state_dir: str) -> Path:
    path = Path(state_dir) / PID_FILE
    atomic_write(path, f"{os.getpid()}\n".encode(), fsync=False)
    return path


def _unreachable_hint(host: str, error: str) -> str:
    """What to do about an engine that did not answer: a socket the agent may not open
    names its owner and the agent's own ids (a wrong group is the usual cause)."""
    if host.startswith("unix://") and "ermission denied" in error:
        path = host.removeprefix("unix://")
        try:
            st = os.stat(path)
        except OSError:
            return f"the agent may not open {path}"
        return (
            f"the agent (uid {os.getuid()}, groups {sorted(set(os.getgroups()))}) may not "
            f"open {path} (owner {st.st_uid}, group {st.st_gid}, mode {st.st_mode & 0o777:o}): "
            f"run it with group {st.st_gid} (docker run --group-add {st.st_gid}; the Helm "
            "chart's engineSocket.groupId)"
        )
    if "certificate" in error or "SSL" in error or "TLS" in error:
        return (
            "check engine.tls (verify, ca_file, cert_file, key_file) or the DOCKER_TLS_VERIFY "
            "and DOCKER_CERT_PATH environment variables: the TLS handshake failed"
        )
    return "set engine.host in the config file or the DOCKER_HOST environment variable"


def _state_dir_problem(state_dir: str) -> tuple[str, str] | None:
    """(its absolute path, why) when checkpoints and buffers cannot be written under
    ``state_dir``; None when they can."""
    path = Path(state_dir).absolute()
    probe = path / ".write-probe"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return str(path), f"{exc.strerror or exc} ({exc.filename or path})"
    return None


class Runtime:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # what a reload (SIGHUP) reads again
        self.engine = Engine(config.engine.host, config.engine.tls)
        self.stopping = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self.followers: LogFollowers | None = None
        self.discovery: Discovery | None = None
        self.stats: StatsCollector | None = None
        self.checkpoints: CheckpointStore | None = None
        self._checkpoint: dict[str, dict[str, Position]] = {}
        self._marks: dict[str, FileMark] = {}
        self.state: AgentState | None = None
        self.supervisor = Supervisor(self._backoff())
        self.chooser: SourceChooser | None = None
        self.reloader = Reloader(self, config_path)
        self._reloads: set[asyncio.Task[bool]] = set()
        self._signals = 0

    def _backoff(self) -> Backoff:
        eng = self.config.engine
        return Backoff(eng.reconnect_min_seconds, eng.reconnect_max_seconds)

    def make_buffer(self, name: str, ec: ExporterConfig) -> DiskBuffer:
        from agent.delivery.buffer import DiskBuffer  # only a config with a disk buffer

        return DiskBuffer(
            Path(self.config.state_dir) / "buffers" / name,
            ec.buffer.max_bytes,
            ec.buffer.when_full,
            ec.buffer.fsync,
        )

    def make_runner(self, name: str, ec: ExporterConfig, buffer: bool = True) -> ExporterRunner:
        """The exporter ``name`` with its runner (and its disk buffer unless ``buffer`` is
        False: a reload that keeps the running one), bound to the agent's state."""
        disk = self.make_buffer(name, ec) if buffer and ec.buffer.type == "disk" else None
        cls = exporters.load(ec.type)
        assert cls is not None, ec.type  # the config's validation loaded it
        runner = ExporterRunner(cls(name, ec), ec, self._backoff(), disk)
        runner.exporter.place(Path(self.config.state_dir))
        if self.state is not None:
            runner.exporter.bind(self.state)
        return runner

    def _load_checkpoints(self) -> str:
        """Seeds the readers' positions from the checkpoint file; returns the start policy
        for containers without one."""
        assert self.checkpoints is not None and self.followers is not None
        try:
            saved, marks = self.checkpoints.load()
        except CheckpointError as exc:
            moved = self.checkpoints.quarantine()
            log.error(
                "checkpoint_unreadable",
                path=str(self.checkpoints.path),
                error=str(exc),
                moved_to=str(moved) if moved else None,
                policy=self.config.checkpoints.on_corrupt,
            )
            return self.config.checkpoints.on_corrupt
        for cid, streams in saved.items():
            self.followers.positions[cid] = dict(streams)
            self._checkpoint[cid] = dict(streams)
        self.followers.marks.update(marks)
        self._marks.update(marks)
        if saved:
            log.info("checkpoints_loaded", containers=len(saved), path=str(self.checkpoints.path))
        return self.config.logs.start_at

    def checkpoint_positions(self) -> tuple[dict[str, dict[str, Position]], dict[str, FileMark]]:
        """What the checkpoint says now: the positions (and file marks) every durable
        exporter accepted."""
        assert self.pipeline is not None and self.followers is not None
        known = set(self.followers.positions)
        delivered = self.pipeline.delivered(self.followers.metas)
        if delivered is None:  # no exporter must hold lines back: what was read counts
            delivered = dict(self.followers.positions), dict(self.followers.marks)
            for cid, reader in self.followers.readers.items():  # not lines a chain holds
                held = reader.chain.queued() if reader.chain is not None else None
                if held is not None:
                    delivered[0][cid] = held
                    delivered[1].pop(cid, None)
        positions, marks = delivered
        for cid in known:
            self._checkpoint.setdefault(cid, {})  # followed, maybe nothing delivered yet
        for cid, streams in positions.items():
            self._checkpoint.setdefault(cid, {}).update(streams)
        self._marks.update(marks)
        for table in (self._checkpoint, self._marks):
            for cid in [c for c in table if c not in known]:
                del table[cid]
        self.pipeline.forget(known)
        return self._checkpoint, self._marks

    async def _checkpoint_loop(self) -> None:
        """Writes the checkpoint at most once per interval when a position moved. The
        first write comes as soon as anything is delivered after a (re)start, not an
        interval later: an agent killed again before its first write would have its
        whole run's output delivered again after the next start. (Polled, cheaply, until
        the first acknowledgement: a send, or an append to a disk buffer.)"""
        assert self.checkpoints is not None and self.pipeline is not None
        pipeline = self.pipeline
        at_start = sum(r.acknowledged for r in pipeline.runners)
        # (runners read afresh: a reload may replace them)
        while sum(r.acknowledged for r in pipeline.runners) == at_start:  # noqa: ASYNC110
            await asyncio.sleep(FIRST_CHECKPOINT_POLL_SECONDS)
        while True:
            await self.checkpoints.write_async(*self.checkpoint_positions())
            await asyncio.sleep(self.checkpoints.interval)

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("agent_stopping", reason="signal")
            self.stopping.set()
        else:
            log.warning("agent_forced_exit")
            os._exit(1)

    def request_reload(self) -> None:
        """SIGHUP: reads and applies the config file again (one reload at a time)."""
        log.info("config_reload_requested", path=self.config_path)
        task = asyncio.create_task(self.reloader.reload(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def run(self) -> int:
        cfg = self.config
        try:
            version = await _noting_slow(self.engine.version(), "GET /version", cfg.engine.host)
            info = await _noting_slow(self.engine.info(), "GET /info", cfg.engine.host)
        except EngineError as exc:
            await self.engine.close()
            log.error(
                "engine_unreachable",
                host=cfg.engine.host,
                error=str(exc),
                hint=_unreachable_hint(cfg.engine.host, str(exc)),
            )
            return EXIT_USAGE
        host = cfg.agent.hostname or info.get("Name") or socket.gethostname()
        problem = _state_dir_problem(cfg.state_dir)
        if problem is not None:
            await self.engine.close()
            log.error(
                "state_dir_unusable",
                key="state_dir",
                path=problem[0],
                error=problem[1],
                hint="the agent keeps checkpoints and disk buffers there: make it a writable "
                "directory (a volume when the root file system is read-only)",
            )
            return EXIT_USAGE
        pipeline, followers, discovery = self._build(host)
        try:
            await pipeline.start()
        except ExporterStartError as exc:
            await pipeline.close(0)
            await self.engine.close()
            log.error(
                "exporter_start_failed",
                exporter=exc.exporter,
                key=f"exporters.{exc.exporter}",
                error=exc.reason,
            )
            return EXIT_USAGE

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        pid_file = write_pid_file(cfg.state_dir)
        first: list[dict[str, Any]] = [info]  # the /info answer, for discovery's first run
        self.supervisor.start(
            "discovery", lambda: discovery.run(first=first.pop() if first else None)
        )
        self.supervisor.start("checkpoints", self._checkpoint_loop)
        if self.stats is not None:
            self.supervisor.start("stats", self.stats.run)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await discovery.connected.wait()
            log.info(
                "agent_started",
                version=__version__,
                engine=cfg.engine.host,
                engine_version=version.get("Version"),
                api_version=version.get("ApiVersion"),
                containers=followers.followed,
                host=host,
                exporters={r.name: r.exporter.target() for r in pipeline.runners},
                # Whether the C loops of the logs-API read path were built (a compiler at
                # install time); the Python ones give the same records, at more CPU.
                speedups="c" if speedups is not None else "python",
            )
            # The pages freed while the exporters, sources and servers started (imports,
            # first connections), handed back as at the command line's start (tune_gc).
            trim_heap()
            await self.stopping.wait()
        finally:
            for task in list(self._reloads):  # a reload under way ends before the drain
                task.cancel()
            await asyncio.gather(*self._reloads, return_exceptions=True)
            await self._shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            with contextlib.suppress(OSError):
                pid_file.unlink()
        return EXIT_OK

    def _build(self, host: str) -> tuple[Pipeline, LogFollowers, Discovery]:
        """Wires the parts: exporters behind the pipeline, the log sources and their
        readers, discovery, checkpoints (loaded), stats, and the state the exporters see."""
        cfg = self.config
        runners = [self.make_runner(name, ec) for name, ec in cfg.exporters.items()]
        self.pipeline = Pipeline(runners)
        backoff = self._backoff()
        api_source = ApiLogSource(self.engine, cfg.logs.max_message_bytes)
        files_source = JsonFileLogSource(
            self.engine,
            cfg.logs.containers_dir,
            cfg.logs.max_message_bytes,
            linger_seconds=cfg.logs.files_linger_seconds,
        )
        self.chooser = SourceChooser(cfg.logs.source, api_source, files_source)
        self.followers = LogFollowers(
            self.engine,
            api_source,
            self.pipeline.send,
            cfg.containers,
            host,
            backoff,
            choose_source=self.chooser,
        )
        self.followers.queue_now = self.pipeline
        self.followers.processing = Processing(cfg.processing, cfg.agent.shutdown_timeout_seconds)
        inventory = Inventory()
        self.followers.inventory = inventory
        self.discovery = Discovery(
            self.engine,
            self.followers,
            self.pipeline.send,
            cfg.containers,
            backoff,
            host,
            cfg.logs.start_at,
            inventory,
            skip_own_container=cfg.engine.skip_own_container,
        )
        self.checkpoints = CheckpointStore(cfg.state_dir, cfg.checkpoints.interval_seconds)
        self.discovery.start_at = self._load_checkpoints()
        self.discovery.resume_since = self.checkpoints.written_at
        if cfg.stats.enabled:
            self.stats = StatsCollector(
                self.engine,
                inventory,
                cfg.stats.source,
                cfg.stats.cgroup_root,
                cfg.stats.interval_seconds,
                self.pipeline.send if cfg.stats.records else None,
            )
        self.state = AgentState(
            inventory,
            self.pipeline,
            self.discovery,
            self.followers,
            self.stats,
            self.supervisor,
            self.reloader,
            host=host,
        )
        self.pipeline.tap = self.state.tap
        for runner in runners:
            runner.exporter.bind(self.state)
        return self.pipeline, self.followers, self.discovery

    async def _shutdown(self) -> None:
        """Stops intake, drains the exporters within the bound, writes the last
        checkpoint and closes the engine client."""
        assert self.pipeline is not None and self.followers is not None
        assert self.checkpoints is not None
        await self.supervisor.stop()
        await self.followers.close()
        await self.pipeline.close(self.config.agent.shutdown_timeout_seconds)
        # After the drain, the checkpoint covers everything that was delivered.
        await self.checkpoints.write_async(*self.checkpoint_positions())
        await self.engine.close()
        runners = self.pipeline.runners
        dropped = {r.name: dict(r.dropped) for r in runners if r.dropped}
        log.info("agent_stopped", exported={r.name: r.exported for r in runners}, dropped=dropped)


async def _noting_slow(call: Awaitable[T], what: str, host: str) -> T:
    """``call``'s answer; when it takes longer than ``SLOW_ENGINE_SECONDS``, the wait goes
    on (the call's own timeout ends it) and ``engine_slow`` says what the agent waits for:
    an engine that accepts connections but does not answer leaves no other trace."""
    task = asyncio.ensure_future(call)
    try:
        done, _pending = await asyncio.wait({task}, timeout=SLOW_ENGINE_SECONDS)
        if not done:
            log.warning(
                "engine_slow",
                host=host,
                call=what,
                waited_seconds=SLOW_ENGINE_SECONDS,
                hint="the engine accepted the connection but has not answered yet; the agent "
                "waits up to the call's timeout (30 s), then exits (engine_unreachable)",
            )
        return await task
    finally:
        if not task.done():
            task.cancel()  # (the start itself was cancelled)
