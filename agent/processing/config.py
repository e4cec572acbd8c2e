"""The ``processing`` section: every processing option, declared once.

Settings (``Settings``) are given globally (the section's own keys), in named
``profiles``, in ``rules`` by container match, and in container labels under
``container-agent.logs.`` (``agent.processing.resolve``). The reference is in
docs/processing.md; ``agent/config.py`` only adds this section to ``Config``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from agent.filters import Match
from agent.secrets import MASK
from agent.section import Section, empty_list

MULTILINE_PRESETS = ("java", "python", "go", "node")
REDACT_PRESETS = ("bearer", "aws", "card", "email", "jwt", "url_password")
# Settings a label may set, and the config may lock against labels.
SETTINGS = (
    "enabled",
    "multiline",
    "parser",
    "include",
    "exclude",
    "redact",
    "rate_limit",
    "detect_level",
    "profile",
)


def _check_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


class MultilineConfig(Section):
    """Joining continuation lines into one record. A string is a preset's name."""

    preset: Literal["java", "python", "go", "node", "none"] | None = Field(
        None,
        description="A built-in rule (`java`, `python`, `go`, `node`), or `none` (off: "
        "overrides a multiline setting given elsewhere).",
    )
    start: str | None = Field(
        None, description="Custom rule: a line matching this regex starts a new record."
    )
    continuation: str | None = Field(
        None, description="Custom rule: a line matching this regex continues the record."
    )
    negate: bool = Field(False, description="Custom rule: a line NOT matching counts.")
    max_lines: int = Field(500, ge=2, description="Most lines in one record.")
    max_bytes: int = Field(
        256 * 1024, ge=1024, description="Most bytes of message in one joined record."
    )
    flush_timeout_seconds: float = Field(
        1.0, gt=0, description="A record waits this long for its next line, then goes."
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_name(cls, value: Any) -> Any:
        return {"preset": value} if isinstance(value, str) else value

    @field_validator("start", "continuation")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @model_validator(mode="after")
    def _one_rule(self) -> MultilineConfig:
        given = [k for k in ("preset", "start", "continuation") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of preset, start, continuation")
        return self

    @property
    def off(self) -> bool:
        return self.preset == "none"


class ParserConfig(Section):
    """Parsing a line into fields. A string is a type's name."""

    type: Literal["json", "logfmt", "regex", "none"] = Field(
        description="`json` (object lines), `logfmt` (`key=value …`), `regex` (named "
        "groups of `pattern`), or `none` (off)."
    )
    pattern: str | None = Field(
        None, description="`regex`: searched in the line; its named groups are the fields."
    )
    level_field: str | None = Field(
        None,
        description="Field holding the level (dots reach into nested JSON); default: the "
        "first of `level`, `lvl`, `severity`, `loglevel`, `log.level`.",
    )
    level_from_text: bool = Field(
        True,
        description="Without a level field, take the level from a leading `ERROR`, "
        "`WARN`, … token of the line.",
    )
    time_field: str | None = Field(
        None, description="Field holding the record's time (else the engine's stamp)."
    )
    time_format: str = Field(
        "rfc3339",
        description="How `time_field` is written: `rfc3339`, `unix`, `unix_ms`, `unix_us`, "
        "`unix_ns`, or a `strptime` format (UTC unless it has `%z`).",
    )
    keep_message: bool = Field(
        True,
        description="Keep the raw line as `message`; false: the message field's value "
        "becomes `message` (and leaves `fields`).",
    )
    message_field: str | None = Field(
        None, description="With `keep_message: false`: the field; default `message`, `msg`."
    )

    @model_validator(mode="before")
    @classmethod
    def _type_name(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @model_validator(mode="after")
    def _pattern_for_regex(self) -> ParserConfig:
        if self.type == "regex":
            if not self.pattern:
                raise ValueError("type regex needs a pattern")
            if not re.compile(self.pattern).groupindex:
                raise ValueError("the pattern has no named group (?P<name>…)")
        return self

    @property
    def off(self) -> bool:
        return self.type == "none"


class RateLimitConfig(Section):
    """A container's rate limit. A number is `lines_per_second`."""

    lines_per_second: float | None = Field(None, gt=0, description="Lines per second.")
    bytes_per_second: float | None = Field(None, gt=0, description="Message bytes per second.")
    burst_lines: int | None = Field(
        None, ge=1, description="Lines allowed at once; default one second's worth."
    )
    burst_bytes: int | None = Field(
        None, ge=1, description="Bytes allowed at once; default one second's worth."
    )
    mode: Literal["delay", "drop"] = Field(
        "delay",
        description="`delay`: the container's reader slows down (the engine keeps the "
        "lines); `drop`: lines over the limit are dropped and counted.",
    )
    summary_interval_seconds: float = Field(
        10.0, gt=0, description="`drop`: one record per interval says how many were dropped."
    )

    @model_validator(mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"lines_per_second": value}
        return value

    @property
    def off(self) -> bool:
        return self.lines_per_second is None and self.bytes_per_second is None


class CustomRedaction(Section):
    pattern: str = Field(description="Regex of what to mask.")
    replacement: str = Field(
        MASK, description="What replaces each match (`\\1`, `\\g<name>` refer to groups)."
    )

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        _check_regex(value)
        return value


class Settings(Section):
    """Per-container settings; a key not given leaves the one from before (global, then
    rules in order, then labels)."""

    enabled: bool | None = Field(None, description="false: collect no logs of the container.")
    multiline: MultilineConfig | None = Field(
        None,
        description="Join continuation lines: a preset (`java`, `python`, `go`, `node`, "
        "`none`) or a rule (docs/processing.md#multiline).",
    )
    parser: ParserConfig | None = Field(
        None,
        description="Parse lines into fields: `json`, `logfmt`, `none`, or a parser "
        "(docs/processing.md#parsers).",
    )
    include: str | None = Field(
        None, description='Keep only lines matching this regex (`""`: every line).'
    )
    exclude: str | None = Field(None, description='Drop lines matching this regex (`""`: none).')
    redact: list[str] = Field(
        default_factory=empty_list,
        description=f"Redaction presets ({', '.join(REDACT_PRESETS)}) or names of "
        "`redactions`; added to those given before, never removed.",
    )
    rate_limit: RateLimitConfig | None = Field(
        None,
        description="Per-container rate limit: lines per second, or a limit "
        "(docs/processing.md#rate-limits).",
    )
    detect_level: bool | None = Field(
        None, description="Without a parser: a `level` from a leading `ERROR`, `WARN`, … token."
    )
    profile: str | None = Field(None, description="Apply a profile first (`profiles`).")

    @field_validator("include", "exclude")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return _check_regex(value)


class Rule(Settings):
    match: Match = Field(description="Containers it applies to (name, image, label).")


class ProcessingConfig(Settings):
    """Log processing (docs/processing.md). The section's own keys are the global
    settings."""

    labels: bool = Field(True, description="Honour `container-agent.logs.*` labels of containers.")
    locked: list[str] = Field(
        default_factory=empty_list, description="Settings that labels may not change."
    )
    profiles: dict[str, Settings] = Field(
        default_factory=dict, description="Named settings (rules and labels pick them)."
    )
    rules: list[Rule] = Field(
        default_factory=empty_list,
        description="Settings by container match; every matching rule applies, in order.",
    )
    redactions: dict[str, CustomRedaction] = Field(
        default_factory=dict, description="Custom redactions by name (for `redact`)."
    )

    @model_validator(mode="after")
    def _references(self) -> ProcessingConfig:
        errors = []
        for name in self.locked:
            if name not in SETTINGS:
                errors.append(f"locked: unknown setting {name!r} (one of {', '.join(SETTINGS)})")
        for name in self.redactions:
            if name in REDACT_PRESETS:
                errors.append(f"redactions.{name}: the name of a preset")
        where: list[tuple[str, Settings]] = [("", self)]
        where += [(f"profiles.{k}.", v) for k, v in self.profiles.items()]
        where += [(f"rules.{i}.", r) for i, r in enumerate(self.rules)]
        for prefix, s in where:
            if s.profile is not None and s.profile not in self.profiles:
                errors.append(f"{prefix}profile: no profile {s.profile!r} in profiles")
            if prefix.startswith("profiles.") and s.profile is not None:
                errors.append(f"{prefix}profile: a profile cannot name another")
            for name in s.redact:
                if name not in REDACT_PRESETS and name not in self.redactions:
                    errors.append(
                        f"{prefix}redact: {name!r} is neither a preset "
                        f"({', '.join(REDACT_PRESETS)}) nor in redactions"
                    )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def configured(self) -> bool:
        """Whether anything may need a chain (labels count: any container may set some)."""
        return self.labels or bool(self.rules) or self.nonempty(self)

    @staticmethod
    def nonempty(s: Settings) -> bool:
        return (
            any(getattr(s, k) not in (None, []) for k in SETTINGS if k != "enabled")
            or s.enabled is False
        )
