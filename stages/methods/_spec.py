"""What the rest of the pipeline knows of a method: its spec (torch-free), registered with its class.

Config validation, planning, run-directory slots, the workflow's bank inputs, reports' display
names and the training loop read a method's `MethodSpec`; only the training loop builds its class.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stages.strict import Strict

if TYPE_CHECKING:
    from stages.config import TrainConfig


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison, as planning and reports see it.

    - ``trains``: False for a method whose result is the pretrained model itself (evaluated, never
      trained: one "run" per model and train set, seed 0, no WiSE-FT α).
    - ``uses_lambda``: the top-level ``lam`` weighs one of its terms (a run-dir slot, swept by a
      table's ``lams``).
    - ``uses_spurious``: its captions come from the ``spurious`` settings (the Table 6 variant, the
      descriptor bank and concept are run-dir slots; the bank is a workflow input when
      ``spurious.suffix`` is ``spurious``).
    - ``has_head``: it trains a linear head over image features (checkpointed; evaluation scores
      the train set's classes with it).
    - ``moving_teacher``: its teacher changes during training (CaRot's EMA), so the resumable
      checkpoint carries the teacher's weights too (a frozen teacher is rebuilt from the pretrained
      weights); the disk plan (``python -m stages.plan``) counts it.
    - ``couples_samples``: its loss of a batch is not a sum of per-sample losses (contrastive
      negatives, Star's columns, shared random texts), so accumulating micro-batches independently
      changes the loss: ``optim.accum: auto`` accumulates it exactly (gradient caching).
    - ``options``: the model of its ``options.<name>`` config block, or None.
    - ``check``: warnings about a config that is valid but probably not what was meant.
    """

    name: str
    display: str
    summary: str
    trains: bool = True
    uses_lambda: bool = False
    uses_spurious: bool = False
    has_head: bool = False
    moving_teacher: bool = False
    couples_samples: bool = False
    options: type[Strict] | None = None
    check: Callable[[TrainConfig], list[str]] | None = None


_SPECS: dict[str, MethodSpec] = {}
_CLASSES: dict[str, type] = {}
_discovered = False


def _discover() -> None:
    """Import every method module of the package once (registering each), on the registry's first use.

    Deferred so that importing the config schema (every CLI's ``--help``) does not import torch.
    """
    global _discovered
    if _discovered:
        return
    _discovered = True
    import stages.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def register_method(spec: MethodSpec) -> Callable[[type], type]:
    """Class decorator: register a method's class under its spec (one call per method module)."""

    def decorate(cls: type) -> type:
        if spec.name in _SPECS:
            raise ValueError(f"method {spec.name!r} is registered twice")
        cls.spec = spec
        _SPECS[spec.name] = spec
        _CLASSES[spec.name] = cls
        return cls

    return decorate


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    _discover()
    return list(_SPECS)


def method_spec(name: str) -> MethodSpec:
    """The spec registered as `name` (a ValueError lists the registered ones)."""
    _discover()
    if name not in _SPECS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_SPECS)}")
    return _SPECS[name]


def method_class(name: str) -> type:
    """The class registered as `name`."""
    method_spec(name)
    return _CLASSES[name]


def option_models() -> dict[str, type[Strict]]:
    """Method name -> the model of its ``options.<name>`` block, for the methods that have options."""
    _discover()
    return {name: spec.options for name, spec in _SPECS.items() if spec.options is not None}


def build_method(name: str, context: Any) -> Any:
    """Instantiate the method `name` from a ``MethodContext``."""
    return method_class(name)(context)
