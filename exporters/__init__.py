"""Exporters, one module each, named as its ``type``; every module in this package
registers itself on import.

Adding an exporter means adding a module here: ``names`` finds it, the config accepts its
``type``, and the config reference (docs/configuration.md) lists its options. The agent
imports only the exporters its config names (``load``): an http exporter's modules cost
nothing to an agent that writes files.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporters.base import Exporter

_loaded = False


@functools.cache
def names() -> tuple[str, ...]:
    """Every exporter type there is, without importing any."""
    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules(__path__)
            if m.name != "base" and not m.name.startswith("_")
        )
    )


def load(type_name: str) -> type[Exporter] | None:
    """The exporter class of ``type_name``, importing its module only; None if there is
    no such type."""
    from exporters.base import REGISTRY

    if type_name not in REGISTRY and type_name in names():
        importlib.import_module(f"{__name__}.{type_name}")
    return REGISTRY.get(type_name)


def load_all() -> None:
    """Imports every exporter module once, so that each registers its type."""
    global _loaded
    if _loaded:
        return
    for name in names():
        importlib.import_module(f"{__name__}.{name}")
    _loaded = True
