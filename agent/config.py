"""The one declaration of every option: type, default and doc.

Validation (``load``), ``container-agent check-config`` and the config reference
(``reference_markdown``) all come from these models; nothing reads options by hand.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

import exporters
from agent.engine.client import DEFAULT_HOST
from agent.engine.tls import TlsConfig
from agent.eventloop import DEFAULT_WINDOW_SECONDS
from agent.filters import ContainerFilter
from agent.processing.config import ProcessingConfig
from agent.section import Section, empty_list
from exporters.base import REGISTRY, ExporterConfig


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, key or path."""


def _default_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class EngineConfig(Section):
    host: str = Field(
        default_factory=_default_host,
        description="Engine address (`unix://…` or `tcp://host:port`, over TLS as `tls` says; "
        f"`http://host:port` is always plain); default `$DOCKER_HOST`, else `{DEFAULT_HOST}`.",
    )
    tls: TlsConfig = Field(
        default_factory=TlsConfig,
        description="TLS to a `tcp://` engine, used when `verify` is true or a file is set; "
        "the defaults come from `$DOCKER_TLS_VERIFY` and `$DOCKER_CERT_PATH` as for the "
        "Docker CLI (no port in `host`: 2376 over TLS, else 2375).",
    )
    reconnect_min_seconds: float = Field(
        0.5, gt=0, description="First back-off before reconnecting to a lost engine."
    )
    reconnect_max_seconds: float = Field(
        30.0, gt=0, description="Cap of the back-off (full jitter) between reconnect attempts."
    )
    skip_own_container: bool = Field(
        True,
        description="When the agent runs in a container of this engine, never follow that "
        "container (its logs, events and stats), so that the agent does not read its own "
        "output in a loop. The container is found from `/proc/self/cgroup` (cgroup v1), "
        "`/proc/self/mountinfo` (cgroup v2: the engine's `/etc/hostname` mount), else "
        "`$HOSTNAME` as a 12-digit id prefix; outside a container nothing is skipped.",
    )


class LogsConfig(Section):
    start_at: Literal["beginning", "now"] = Field(
        "beginning",
        description="Where reading starts for containers already running when the agent "
        "starts: their whole log, or only lines written from now on.",
    )
    max_message_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Longest message kept in one record; longer lines are cut and marked "
        "`truncated`.",
    )
    source: Literal["auto", "api", "files"] = Field(
        "auto",
        description="Where logs are read: `files` reads the json-file driver's files under "
        "`containers_dir` (cheap, costs the engine nothing), `api` the engine's logs API; "
        "`auto` reads a container's file when `containers_dir` is readable and the container "
        "uses the json-file driver, else the API (`files` does the same but warns, once per "
        "container, when it falls back).",
    )
    containers_dir: str = Field(
        "/var/lib/docker/containers",
        description="The engine's container directory (`<DockerRootDir>/containers`) as the "
        "agent sees it, e.g. a read-only host mount.",
    )
    files_linger_seconds: float = Field(
        0.25,  # inotify.WAKE_LINGER_SECONDS (not imported: API mode does not load it)
        ge=0,
        le=5,
        description="json-file source: after the files' change notices are read, the next "
        "ones are read this much later, so that the new lines of many quiet containers are "
        "read in one pass: up to this much delay, for less CPU on hosts of many containers.",
    )


class StatsConfig(Section):
    enabled: bool = Field(True, description="Collect CPU, memory, network, I/O and pids stats.")
    source: Literal["auto", "api", "cgroup"] = Field(
        "auto",
        description="`cgroup` reads cgroup files (cheap; needs `cgroup_root`), `api` the "
        "engine's stats API; `auto` uses cgroup files where the container's cgroup is found, "
        "else the API.",
    )
    cgroup_root: str = Field(
        "/sys/fs/cgroup", description="Where the host's cgroup hierarchy is (a host mount)."
    )
    interval_seconds: float = Field(10.0, ge=0.5, description="Time between two readings.")
    records: bool = Field(
        False, description="Also send each reading as a `kind: stats` record to the exporters."
    )


class CheckpointsConfig(Section):
    interval_seconds: float = Field(
        1.0,
        gt=0,
        description="Most time between two checkpoint writes: after a SIGKILL, lines "
        "delivered in the last interval are delivered again.",
    )
    on_corrupt: Literal["beginning", "now"] = Field(
        "beginning",
        description="An unreadable checkpoint file is moved aside; then read running "
        "containers from the beginning of their logs (duplicates) or from now (a gap).",
    )


class AgentConfig(Section):
    hostname: str | None = Field(
        default_factory=lambda: os.environ.get("CONTAINER_AGENT_HOSTNAME") or None,
        description="The `host` field of every record; default `$CONTAINER_AGENT_HOSTNAME`, "
        "else the engine's host name.",
    )
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="How long SIGTERM/SIGINT waits for the exporters to drain."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Level of the agent's own log."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="The agent's own log: JSON, or console when stderr is a terminal."
    )
    wake_window_seconds: float = Field(
        DEFAULT_WINDOW_SECONDS,
        ge=0,
        le=1,
        description="While the agent is lightly loaded, its event loop wakes at most about "
        "once per this long and handles everything that arrived meanwhile together (each "
        "wake of a thread costs CPU of its own: on a host of many quiet containers, more than "
        "their lines). Events wait up to this long; a busy loop is never held. 0: wake for "
        "every event.",
    )


def _default_exporters() -> dict[str, Any]:
    return {
        "records": {"type": "file", "path": "./var/records.ndjson"},
        "metrics": {"type": "prometheus", "listen": "127.0.0.1:9811"},
    }


class Config(Section):
    engine: EngineConfig = Field(default_factory=EngineConfig, description="The Docker engine.")
    state_dir: str = Field("./var/state", description="Checkpoints and disk buffers live here.")
    checkpoints: CheckpointsConfig = Field(
        default_factory=CheckpointsConfig, description="Delivered positions kept on disk."
    )
    agent: AgentConfig = Field(default_factory=AgentConfig, description="The agent itself.")
    logs: LogsConfig = Field(default_factory=LogsConfig, description="Log reading.")
    stats: StatsConfig = Field(default_factory=StatsConfig, description="Container stats.")
    containers: ContainerFilter = Field(
        default_factory=ContainerFilter,
        description="Which containers are followed at all (logs and events).",
    )
    processing: ProcessingConfig = Field(
        default_factory=ProcessingConfig,
        description="Log processing per container: multiline, parsers, filters, redaction, "
        "rate limits; by config rule and by container label (docs/processing.md).",
    )
    exporters: dict[str, ExporterConfig] = Field(
        default_factory=_default_exporters,
        validate_default=True,
        description="Exporters by a name of your choosing (it labels their metrics).",
    )

    @field_validator("exporters", mode="before")
    @classmethod
    def _typed_exporters(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # the declared type reports the error
        out = {}
        errors = []
        for name, item in value.items():
            if not isinstance(item, dict) or "type" not in item:
                errors.append(f"exporters.{name}.type: required (one of {_type_names()})")
                continue
            kind = exporters.load(item["type"]) if isinstance(item["type"], str) else None
            if kind is None:
                errors.append(
                    f"exporters.{name}.type: unknown exporter type {item['type']!r} "
                    f"(known: {_type_names()})"
                )
                continue
            try:
                out[name] = kind.config_class.model_validate(item)
            except ValidationError as exc:
                errors.extend(_format_errors(exc, prefix=f"exporters.{name}"))
        errors += _shared_paths(out)
        if errors:
            raise ValueError("; ".join(errors))
        if not out:
            raise ValueError("at least one exporter is needed")
        return out


def _shared_paths(exporters: dict[str, Any]) -> list[str]:
    """Two exporters writing one file would interleave and each undo the other's
    recovery after a crash: an error naming both."""
    owner: dict[str, str] = {}
    errors = []
    for name, ec in exporters.items():
        path = getattr(ec, "path", None)
        if ec.type != "file" or not isinstance(path, str):
            continue
        key = os.path.normpath(os.path.abspath(path))
        if key in owner:
            errors.append(
                f"exporters.{name}.path: the same file as exporters.{owner[key]}.path ({key})"
            )
        else:
            owner[key] = name
    return errors


def _type_names() -> str:
    return ", ".join(exporters.names())


def _format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        key = ".".join(x for x in [prefix, loc] if x)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
            if key == "exporters":  # the exporters validator names its keys itself
                out.append(msg)
                continue
        out.append(f"{key}: {msg}" if key else msg)
    return out


def parse(data: Any, source: str = "<config>") -> Config:
    """Validates a decoded YAML document; raises ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_format_errors(exc))) from None


class _DuplicateKey(Exception):
    def __init__(self, key: Any, node: yaml.Node, first: yaml.Node) -> None:
        super().__init__(
            f"duplicate key {key!r} (first at line {first.start_mark.line + 1}); "
            "YAML would silently keep the last one"
        )
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key given twice in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<": merged keys are checked where they are written
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(key, key_node, seen[key])
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def load(path: str | os.PathLike[str] | None) -> Config:
    """Reads and validates the config file; ``None`` means built-in defaults."""
    if path is None:
        return parse({}, "<defaults>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{p}: cannot read the config file: {reason}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKey as exc:
        raise ConfigError(f"{p}:{exc.line}:{exc.column}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}{where}: YAML syntax error: {problem}") from None
    return parse(data, str(p))


# -- the config reference (docs/configuration.md) ---------------------------------------


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args) + (
            " \\| null" if type(None) in typing.get_args(annotation) else ""
        )
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        if info.default_factory in (list, empty_list):
            return "`[]`"
        if info.default_factory is dict:
            return "`{}`"
        return "see doc"
    if info.default is None:
        return "null"
    return f"`{info.default}`"


def _rows(
    model: type[BaseModel], prefix: str, skip: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        key = f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.append(f"| `{key}` | section | | {info.description or ''} |")
            rows.extend(_rows(ann, key + "."))
            continue
        rows.append(
            f"| `{key}` | {_type_name(ann)} | {_default_text(info)} | {info.description or ''} |"
        )
    return rows


def reference_markdown() -> str:
    """The config reference table, generated from the models (kept in docs/configuration.md)."""
    exporters.load_all()
    head = ["| key | type | default | doc |", "|---|---|---|---|"]
    lines = ["## Top level", "", *head]
    lines += _rows(Config, "", skip={"exporters"})
    lines += [
        "| `exporters` | mapping | `records: {type: file, path: ./var/records.ndjson}`, "
        "`metrics: {type: prometheus, listen: 127.0.0.1:9811}` | "
        f"{Config.model_fields['exporters'].description} |",
        "",
        "## Every exporter",
        "",
        *head,
        *_rows(ExporterConfig, "exporters.NAME."),
    ]
    shared = set(ExporterConfig.model_fields) - {"type"}
    for type_name, cls in sorted(REGISTRY.items()):
        lines += ["", f"## `type: {type_name}`", "", *head]
        lines += _rows(cls.config_class, "exporters.NAME.", skip=shared | {"type"})
    return "\n".join(lines) + "\n"
