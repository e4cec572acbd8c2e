"""Exporters, one module each; every module in this package registers itself on import.

Adding an exporter means adding a module here: ``load_all`` finds it, the config accepts its
``type``, and the config reference (docs/configuration.md) lists its options.
"""

from __future__ import annotations

import importlib
import pkgutil

_loaded = False


def load_all() -> None:
    """Imports every exporter module once, so that each registers its type."""
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True
