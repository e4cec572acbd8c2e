"""Which containers the agent (or one exporter) takes: include/exclude by name, image, label."""

from __future__ import annotations

import re
from functools import cached_property

from pydantic import Field, field_validator

from agent.record import ContainerMeta
from agent.section import Section, empty_list


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


class Match(Section):
    """Regular expressions (searched, not anchored; use ^…$ to anchor); any one matching counts."""

    name: list[str] = Field(default_factory=empty_list, description="Container name patterns.")
    image: list[str] = Field(default_factory=empty_list, description="Image name patterns.")
    label: list[str] = Field(
        default_factory=empty_list,
        description="`key` (label present) or `key=regex` (label value matches).",
    )

    @field_validator("name", "image")
    @classmethod
    def _valid_regex(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return value

    @field_validator("label")
    @classmethod
    def _valid_label(cls, value: list[str]) -> list[str]:
        for item in value:
            key, _, pattern = item.partition("=")
            if not key:
                raise ValueError(f"label matcher {item!r} has no key")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression in {item!r}: {exc}") from exc
        return value

    @property
    def empty(self) -> bool:
        return not (self.name or self.image or self.label)

    @cached_property
    def _compiled(self) -> tuple[list[re.Pattern[str]], list[re.Pattern[str]], list[tuple]]:
        labels = []
        for item in self.label:
            key, eq, pattern = item.partition("=")
            labels.append((key, re.compile(pattern) if eq else None))
        return _compile(self.name), _compile(self.image), labels

    def matches(self, meta: ContainerMeta) -> bool:
        names, images, labels = self._compiled
        if any(p.search(meta.name) for p in names):
            return True
        if any(p.search(meta.image) for p in images):
            return True
        for key, pattern in labels:
            value = meta.labels.get(key)
            if value is not None and (pattern is None or pattern.search(value)):
                return True
        return False


class ContainerFilter(Section):
    """A container is taken when `include` is empty or matches, and `exclude` does not match."""

    include: Match = Field(default_factory=Match, description="Take only matching containers.")
    exclude: Match = Field(default_factory=Match, description="Never take matching containers.")

    def accepts(self, meta: ContainerMeta) -> bool:
        if not self.include.empty and not self.include.matches(meta):
            return False
        return self.exclude.empty or not self.exclude.matches(meta)

    @property
    def everything(self) -> bool:
        return self.include.empty and self.exclude.empty
