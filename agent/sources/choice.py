"""``logs.source``: which source reads each container (the logs API or its json-file log)."""

from __future__ import annotations

import os

import structlog

from agent.record import ContainerMeta
from agent.sources.api.source import ApiLogSource
from agent.sources.base import LogSource
from agent.sources.jsonfile.source import JsonFileLogSource

log = structlog.get_logger("agent.sources")


def _isdir(path: str) -> bool:
    return os.path.isdir(path)


def _dir_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as the containers directory, or None if it can."""
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class SourceChooser:
    """``logs.source``: which source reads each container.

    ``auto`` reads a container's file when the containers directory is readable and the
    container has a ``<id>-json.log`` (the json-file driver writes exactly that file, so
    this needs no inspect before a short-lived container's logs are asked for), else the
    API; ``files`` does the same but says, once per container, why one falls back to the
    API; ``api`` always uses the API.
    """

    def __init__(self, mode: str, api: ApiLogSource, files: JsonFileLogSource) -> None:
        self.api = api
        self.files = files
        self.reconfigure(mode)

    def reconfigure(self, mode: str) -> None:
        """``logs.source`` set (again): for readers started from now on."""
        self.mode = mode
        self.dir_problem = _dir_problem(self.files.containers_dir) if mode != "api" else None
        if self.dir_problem is not None:
            files = self.files
            (log.warning if mode == "files" else log.info)(
                "log_files_unreadable",
                containers_dir=files.containers_dir,
                error=self.dir_problem,
                fallback="every container's logs are read through the engine's logs API",
                hint="mount the host's container directory read-only and set "
                "logs.containers_dir (see docs/jsonfile.md)",
            )

    async def __call__(self, meta: ContainerMeta) -> LogSource:
        if self.mode == "api" or self.dir_problem is not None:
            return self.api
        path = self.files.log_path(meta.id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if _isdir(os.path.dirname(path)):
                reason = "no json-file log (the container uses another log driver)"
            else:
                reason = f"no directory {os.path.dirname(path)} (gone, or another engine's)"
        except OSError as exc:
            reason = f"{path}: {exc.strerror or exc}"
        else:
            os.close(fd)
            return self.files
        (log.warning if self.mode == "files" else log.debug)(
            "log_source_fallback",
            container=meta.name,
            id=meta.id[:12],
            source="api",
            reason=reason,
        )
        return self.api
