"""One container's processing settings: global, then config rules, then its labels.

Precedence: a container label under ``container-agent.logs.`` over a config rule that
matches the container (every matching rule, in order, a later one over an earlier) over
the section's global keys. A ``profile`` is applied where it is named, before that
layer's own keys. ``redact`` only ever adds presets, so a label can never remove one the
config requires; settings named in ``locked`` cannot be set by labels at all.

A label whose value is invalid (or that names an unknown setting, a locked one, an
unknown profile or preset) is a ``Problem``: reported once per container by the caller
and ignored; the container's other settings still apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.processing.config import (
    MULTILINE_PRESETS,
    REDACT_PRESETS,
    SETTINGS,
    MultilineConfig,
    ParserConfig,
    ProcessingConfig,
    RateLimitConfig,
    Settings,
)
from agent.record import ContainerMeta

LABEL_PREFIX = "container-agent.logs."
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


@dataclass
class Problem:
    label: str
    problem: str


@dataclass
class Resolved:
    """What one container's chain is built from."""

    enabled: bool = True
    multiline: MultilineConfig | None = None
    parser: ParserConfig | None = None
    include: str | None = None
    exclude: str | None = None
    redact: list[str] = field(default_factory=list)
    rate_limit: RateLimitConfig | None = None
    detect_level: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to do: the reader skips the chain entirely."""
        return not (
            self.multiline
            or self.parser
            or self.include
            or self.exclude
            or self.redact
            or self.rate_limit
            or self.detect_level
        )

    def apply(self, s: Settings | dict[str, Any]) -> None:
        get = s.get if isinstance(s, dict) else lambda k: getattr(s, k)
        for key in SETTINGS:
            value = get(key)
            if key == "profile" or value is None:
                continue
            if key == "redact":
                self.redact += [n for n in value if n not in self.redact]
            elif key == "multiline":
                self.multiline = None if value.off else value
            elif key == "parser":
                self.parser = None if value.off else value
            elif key == "rate_limit":
                self.rate_limit = None if value.off else value
            elif key in ("include", "exclude"):
                setattr(self, key, value or None)
            else:
                setattr(self, key, value)


def _layer(out: Resolved, s: Settings, config: ProcessingConfig) -> None:
    if s.profile is not None:
        out.apply(config.profiles[s.profile])
    out.apply(s)


def resolve(config: ProcessingConfig, meta: ContainerMeta) -> tuple[Resolved, list[Problem]]:
    out = Resolved()
    _layer(out, config, config)
    for rule in config.rules:
        if rule.match.matches(meta):
            _layer(out, rule, config)
    problems: list[Problem] = []
    if config.labels:
        settings = label_settings(meta.labels, config, problems)
        profile = settings.pop("profile", None)
        if profile is not None:
            p = config.profiles[profile]
            out.apply({k: None if k in config.locked else getattr(p, k) for k in SETTINGS})
        rate = settings.pop("rate_limit", None)
        out.apply({k: settings.get(k) for k in SETTINGS})
        if rate is not None:  # a number of lines/s; the rest of the limit as configured
            base = out.rate_limit or RateLimitConfig()
            out.rate_limit = base.model_copy(update={"lines_per_second": rate}) if rate else None
    return out, problems


def label_settings(
    labels: dict[str, str], config: ProcessingConfig, problems: list[Problem]
) -> dict[str, Any]:
    """The settings the container's labels give, each checked; problems appended."""
    out: dict[str, Any] = {}
    for label, raw in labels.items():
        if not label.startswith(LABEL_PREFIX):
            continue
        key = label[len(LABEL_PREFIX) :]
        value = raw.strip()
        if key not in SETTINGS:
            known = ", ".join(SETTINGS)
            problems.append(Problem(label, f"unknown setting {key!r} (one of {known})"))
            continue
        if key in config.locked:
            problems.append(Problem(label, "locked by the agent's config (processing.locked)"))
            continue
        try:
            out[key] = _parse(key, value, config)
        except ValueError as exc:
            problems.append(Problem(label, str(exc)))
    return out


def _parse(key: str, value: str, config: ProcessingConfig) -> Any:
    low = value.lower()
    if key in ("enabled", "detect_level"):
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true or false")
    if key == "multiline":
        if low not in (*MULTILINE_PRESETS, "none"):
            raise ValueError(
                f"{value!r} is not a multiline preset ({', '.join(MULTILINE_PRESETS)}, none); "
                "custom rules go in a profile of the agent's config"
            )
        return MultilineConfig(preset=low)
    if key == "parser":
        if low not in ("json", "logfmt", "none"):
            raise ValueError(
                f"{value!r} is not a parser (json, logfmt, none); regex parsers go in a "
                "profile of the agent's config"
            )
        return ParserConfig(type=low)
    if key in ("include", "exclude"):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value
    if key == "redact":
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in REDACT_PRESETS and n not in config.redactions]
        if unknown:
            raise ValueError(
                f"unknown redaction {', '.join(map(repr, unknown))} (presets: "
                f"{', '.join(REDACT_PRESETS)}; or a name in the config's redactions)"
            )
        return names
    if key == "rate_limit":
        if low in ("none", "off"):
            return 0.0
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number of lines per second") from None
        if not 0 <= rate < float("inf"):
            raise ValueError(f"{value!r} is not a number of lines per second (0: off)")
        return rate
    if key == "profile":
        if value not in config.profiles:
            raise ValueError(f"no profile {value!r} in the agent's config")
        return value
    raise ValueError(f"unknown setting {key!r}")  # pragma: no cover
