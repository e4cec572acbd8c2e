"""Finds containers and follows the engine's event stream, reconnecting when it goes away.

On (re)connect: read the engine's clock, list containers and follow them, then stream
events from that clock on (the engine replays what happened in between, so no start is
missed; replays already seen are skipped). Each container event also becomes a record.
When the stream ends or fails the engine is gone: log it once, back off with jitter, retry.

When the agent runs in a container of the engine it follows, that container is skipped
(``engine.skip_own_container``): its logs are the agent's own log, which it would read,
send, log about and read again. ``own_container_id`` finds it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from agent.engine.client import Engine, EngineError
from agent.filters import ContainerFilter
from agent.metrics.inventory import Inventory
from agent.positions import Position
from agent.record import (
    ContainerMeta,
    Record,
    format_timestamp_ns,
    normalize_timestamp,
    timestamp_to_unix,
)
from agent.retry import Backoff, Retry

if TYPE_CHECKING:
    from agent.sources.followers import LogFollowers

log = structlog.get_logger("agent.engine.discovery")

_RECENT_EVENTS = 20_000
_REPLAY_MARGIN_NS = 2_000_000_000

# Actions whose event carries a detail after ": " ("health_status: healthy", "exec_start: sh").
_DETAIL_KEYS = {"health_status": "health_status"}


_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
# The files the engine bind-mounts into every container from its container directory:
# <root>/containers/<id>/hostname (podman: …/overlay-containers/<id>/userdata/hostname).
_OWN_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_MOUNTED_FILE = re.compile(
    r"(?<![0-9a-f])([0-9a-f]{64})/(?:userdata/)?(?:hostname|hosts|resolv\.conf)$"
)
_HOSTNAME_ID = re.compile(r"[0-9a-f]{12}")


def own_container_id(
    proc: str | os.PathLike[str] = "/proc",
    environ: Mapping[str, str] | None = None,
    root: str | os.PathLike[str] = "/",
) -> tuple[str, str] | None:
    """The container this process runs in, as (id, how it was found), or None outside a
    container (or when nothing tells). The id is the full 64 hex digits, except from
    ``$HOSTNAME``: the 12-digit prefix that the engine uses as a container's host name.

    * ``cgroup``: ``/proc/self/cgroup`` names the container's cgroup with cgroup v1, and
      with v2 in the host's cgroup namespace (``/docker/<id>``,
      ``/system.slice/docker-<id>.scope``; nested: the innermost);
    * ``mountinfo``: with cgroup v2 a container has a cgroup namespace of its own (its
      cgroup reads ``0::/``), but the engine still bind-mounts ``/etc/hostname``,
      ``/etc/hosts`` and ``/etc/resolv.conf`` from ``<data-root>/containers/<id>/``;
    * ``hostname``: else ``$HOSTNAME`` when it is 12 hex digits and ``/.dockerenv`` (or
      podman's ``/run/.containerenv``) says this is a container.
    """
    env = os.environ if environ is None else environ
    base = Path(proc) / "self"
    try:
        cgroup = (base / "cgroup").read_text(errors="replace")
    except OSError:
        cgroup = ""
    for line in reversed(cgroup.splitlines()):
        path = line.split(":", 2)[-1]
        found = _ID.findall(path)
        if found:
            return found[-1], "cgroup"
    try:
        mountinfo = (base / "mountinfo").read_text(errors="replace")
    except OSError:
        mountinfo = ""
    by_target: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in _OWN_FILES:
            match = _MOUNTED_FILE.search(fields[3])
            if match:
                by_target.setdefault(fields[4], match.group(1))
    for target in _OWN_FILES:
        if target in by_target:
            return by_target[target], "mountinfo"
    hostname = env.get("HOSTNAME", "")
    marked = any((Path(root) / f).exists() for f in (".dockerenv", "run/.containerenv"))
    if marked and _HOSTNAME_ID.fullmatch(hostname):
        return hostname, "hostname"
    return None


class Discovery:
    def __init__(
        self,
        engine: Engine,
        followers: LogFollowers,
        send: Callable[[list[Record]], Awaitable[None]],
        containers: ContainerFilter,
        backoff: Backoff,
        host: str,
        start_at: str = "beginning",
        inventory: Inventory | None = None,
        skip_own_container: bool = True,
    ) -> None:
        self.engine = engine
        self.followers = followers
        self.send = send
        self.containers = containers
        self.backoff = backoff
        self.host = host
        self.start_at = start_at
        self.resume_since = 0.0  # unix time of the last checkpoint before this start
        self.inventory = inventory if inventory is not None else Inventory()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.events_seen = 0
        self.last_error = ""
        # The agent's own container: (id or 12-digit prefix, how it was found), or None.
        self.own = own_container_id() if skip_own_container else None
        self._own_seen = False
        self._last_event_ns = 0
        # Keys of recent events: a reconnect asks the engine to replay from a little before
        # the newest event seen, and these say which of the replayed ones were handled.
        # (Events can arrive slightly out of timestamp order, so no "older than" cut-off.)
        self._recent: set[tuple[int, str, str]] = set()
        self._recent_order: collections.deque[tuple[int, str, str]] = collections.deque()

    async def run(self, first: dict[str, Any] | None = None) -> None:
        """Runs until cancelled. ``first`` is the ``/info`` answer the runtime already got."""
        retry = Retry(self.backoff)
        lost_at: float | None = None
        while True:
            try:
                info = first if first is not None else await self.engine.info()
                first = None
                await self._connect(info, initial=lost_at is None and self.reconnects == 0)
                if lost_at is not None:
                    self.reconnects += 1
                    log.info(
                        "engine_reconnected",
                        host=self.engine.host,
                        down_seconds=round(time.monotonic() - lost_at, 2),
                        containers=self.followers.followed,
                    )
                    lost_at = None
                retry.reset()
                await self._events()
                raise EngineError("event stream ended")
            except EngineError as exc:
                self.connected.clear()
                self.last_error = str(exc)
                if lost_at is None:
                    lost_at = time.monotonic()
                    log.warning("engine_lost", host=self.engine.host, error=str(exc))
                await retry.wait()

    async def _connect(self, info: dict[str, Any], initial: bool) -> None:
        if not self._last_event_ns:
            since = info.get("SystemTime")
            self._since = timestamp_to_unix(since) if since else f"{time.time():.9f}"
        else:
            seconds, frac = divmod(max(0, self._last_event_ns - _REPLAY_MARGIN_NS), 1_000_000_000)
            self._since = f"{seconds}.{frac:09d}"
        # After an outage (or an agent restart with checkpoints), also read to their end the
        # containers that stopped meanwhile, and those created since the last checkpoint.
        list_all = not initial or bool(self.followers.positions) or bool(self.resume_since)
        listed = await self.engine.list_containers(all=list_all)
        existing = {c["Id"] for c in listed}
        now = normalize_timestamp(info["SystemTime"]) if info.get("SystemTime") else None
        for c in listed:
            if self._is_own(c["Id"], c):
                continue
            meta = ContainerMeta.from_list(c, self.host)
            if self.containers.accepts(meta) and (
                c.get("State") == "running" or meta.id in self.inventory.containers
            ):
                self.inventory.seen_in_listing(meta, c.get("State") or "created")
            created_while_away = (
                initial and self.resume_since and (c.get("Created") or 0) >= self.resume_since
            )
            if (
                c.get("State") == "running"
                or c["Id"] in self.followers.positions
                or created_while_away
            ):
                if initial and self.start_at == "now" and now and not created_while_away:
                    # Lines at or before the engine's clock count as delivered.
                    self.followers.positions.setdefault(
                        c["Id"], {s: Position(now, 1 << 62) for s in ("stdout", "stderr")}
                    )
                self.followers.follow(meta)
        if list_all:
            self.followers.prune(existing)
            for cid in list(self.inventory.containers):
                if cid not in existing:
                    del self.inventory.containers[cid]
        self.connected.set()

    async def refollow(self) -> None:
        """Follows every running container the (new) filter takes (a reload); readers
        already running are left alone."""
        try:
            listed = await self.engine.list_containers(all=False)
        except EngineError as exc:
            log.warning("refollow_failed", error=str(exc))  # the next reconnect lists again
            return
        for c in listed:
            if self._is_own(c["Id"], c):
                continue
            meta = ContainerMeta.from_list(c, self.host)
            if self.containers.accepts(meta):
                self.inventory.seen_in_listing(meta, c.get("State") or "running")
                self.followers.follow(meta)

    def _is_own(self, cid: str, listed: dict[str, Any] | None = None) -> bool:
        """Whether ``cid`` is the agent's own container (logged the first time it is)."""
        if self.own is None or not cid.startswith(self.own[0]):
            return False
        if not self._own_seen:
            self._own_seen = True
            names = (listed or {}).get("Names") or []
            log.info(
                "own_container_skipped",
                id=cid[:12],
                container=names[0].lstrip("/") if names else None,
                found_by=self.own[1],
                hint="the agent's own container is never followed "
                "(engine.skip_own_container: false follows it)",
            )
        return True

    async def _events(self) -> None:
        async for event in self.engine.events(since=self._since, filters={"type": ["container"]}):
            await self._handle(event)

    async def _handle(self, event: dict[str, Any]) -> None:
        time_ns = int(event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000)
        actor = event.get("Actor") or {}
        cid = actor.get("ID") or event.get("id") or ""
        raw_action = event.get("Action") or event.get("status") or ""
        key = (time_ns, cid, raw_action)
        if key in self._recent:
            return  # replayed after a reconnect: handled already
        self._recent.add(key)
        self._recent_order.append(key)
        if len(self._recent_order) > _RECENT_EVENTS:
            self._recent.discard(self._recent_order.popleft())
        self._last_event_ns = max(self._last_event_ns, time_ns)
        self.events_seen += 1
        if self._is_own(cid):
            return

        action, _, detail = raw_action.partition(": ")
        attributes = dict(actor.get("Attributes") or {})
        if detail:
            attributes[_DETAIL_KEYS.get(action, "detail")] = detail

        meta = self.followers.metas.get(cid)
        if meta is None or action == "rename":
            meta = ContainerMeta.from_event(actor, self.host)
            if action == "rename":
                self.followers.rename(cid, meta)
        if action == "start":
            self.followers.follow(meta)
        elif action == "destroy":
            self.followers.forget(cid)
        if not self.containers.accepts(meta):
            return
        self.inventory.on_event(meta, action, attributes, time_ns)
        await self.send([Record.event(format_timestamp_ns(time_ns), meta, action, attributes)])
