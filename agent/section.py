"""The base of every config section, kept apart so that exporters can use it too."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def empty_list() -> list[Any]:
    """A new empty list: the default factory of the sections' list fields. Not ``list``
    itself: pydantic asks each default factory's signature whether it takes the validated
    data, and ``inspect.signature(list)`` parses list's text signature (~0.1 ms; ~2.5 ms of
    every start over the config's fields), a function's is read in a few microseconds."""
    return []
