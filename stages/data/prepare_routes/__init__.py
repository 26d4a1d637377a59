"""The prepare routes of every dataset family: importing this package registers them all.

Each public module of this folder (``cifar``, ``transfer``, ``group_shift``, ``wilds``, ``imagenet``,
...) declares its datasets' published files and ``arrange`` functions with ``register_route``.
Modules are found by listing the folder, not named here, so a family's module is added without
touching this file (and branches adding different families merge without conflict); modules
starting with ``_`` are shared helpers.
"""

from __future__ import annotations

import importlib
import pkgutil

from stages.data.routes import PrepareRoute, prepare_routes


def _import_all() -> None:
    """Import every public module of this package (each registers its routes once, at import)."""
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")):
        importlib.import_module(f"{__name__}.{module}")


_import_all()

__all__ = ["PrepareRoute", "prepare_routes"]
