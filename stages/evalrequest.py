""""Evaluate benchmark B of a run at WiSE-FT α": an `EvalRequest`, spelled ``B`` or ``B@alphaA``.

Owned by stages/rundir.py (which re-exports it): with `RunDir`, the only code that knows a run's
file names. A request prints as ``imagenet`` or ``imagenet@alpha0.5`` (α with ``:g``), parses back
from that text, and knows its metrics file: ``<eval dir>/<request>.json``, the eval dir of a run
being ``<run dir>/eval`` (`RunDir.eval_dir`), and the per-item outcomes beside it:
``<eval dir>/<request>.items.npz`` (`items_path`; stages/evaluation/items.py reads and writes it).
The layout is docs/evaluation.md's and docs/workflow.md's. Torch-free, so that the Snakefile and
the plan import it for free.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from stages.errors import ConfigError

EVAL_DIR = "eval"
"""A run's evaluation folder, under the run dir."""
INDEX = "index.json"
"""The evaluation job's index of the metrics files it wrote (its declared output), in the eval dir."""
HEADS = "heads"
"""Cached zero-shot heads, in the eval dir."""
SUFFIX = ".json"
"""A metrics file is ``<request><SUFFIX>``."""
ITEMS_SUFFIX = ".items.npz"
"""The per-item outcomes behind a metrics file ``<request>.json`` are ``<request><ITEMS_SUFFIX>`` beside it."""
ALPHA = "@alpha"
"""Between a request's benchmark and its WiSE-FT α."""


class RequestError(ConfigError):
    """A request that is not ``<benchmark>`` or ``<benchmark>@alpha<α>`` (or names an unknown benchmark)."""


@dataclass(frozen=True)
class EvalRequest:
    """One evaluation: `benchmark` scored by a run as trained (`alpha` None) or WiSE-FT-interpolated at `alpha`."""

    benchmark: str
    alpha: float | None = None

    def __post_init__(self) -> None:
        if not self.benchmark or any(mark in self.benchmark for mark in "@/\\") or self.benchmark == INDEX[:-len(SUFFIX)]:
            raise RequestError(f"request {self.benchmark!r}: not a benchmark name")
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise RequestError(f"request {self.benchmark}{ALPHA}{self.alpha}: α must be a finite number")

    def __str__(self) -> str:
        return self.benchmark if self.alpha is None else f"{self.benchmark}{ALPHA}{self.alpha:g}"

    @classmethod
    def parse(cls, text: str, known: Collection[str] | None = None) -> EvalRequest:
        """The request `text` spells (``B`` or ``B@alphaA``); with `known`, B must be one of them (`RequestError`)."""
        benchmark, separator, alpha = str(text).partition(ALPHA)
        if "@" in benchmark or (separator and not alpha):
            raise RequestError(f"request {text!r}: expected <benchmark> or <benchmark>{ALPHA}<α>, "
                               f"e.g. imagenet{ALPHA}0.5")
        if known is not None and benchmark not in known:
            raise RequestError(f"request {text!r}: unknown benchmark {benchmark!r}; known: {', '.join(sorted(known))}")
        try:
            value = float(alpha) if separator else None
        except ValueError:
            raise RequestError(f"request {text!r}: {alpha!r} is not a number (expected <benchmark>{ALPHA}<α>)") from None
        return cls(benchmark, value)

    @classmethod
    def coerce(cls, request: EvalRequest | str) -> EvalRequest:
        """`request` as an `EvalRequest` (parsed when given as text)."""
        return request if isinstance(request, EvalRequest) else cls.parse(request)

    @property
    def filename(self) -> str:
        """The metrics file's name: ``<request>.json``."""
        return f"{self}{SUFFIX}"

    def path(self, eval_dir: Path) -> Path:
        """The metrics file of this request in `eval_dir` (a run's: ``RunDir.metrics(request)``)."""
        return Path(eval_dir) / self.filename

    def items_path(self, eval_dir: Path) -> Path:
        """The per-item outcomes of this request in `eval_dir` (a run's: ``RunDir.items(request)``)."""
        return items_path(self.path(eval_dir))

    @classmethod
    def of_file(cls, path: Path) -> EvalRequest | None:
        """The request whose metrics file `path` is (None for the index and for any other file)."""
        path = Path(path)
        if path.suffix != SUFFIX or path.name == INDEX:
            return None
        try:
            return cls.parse(path.stem)
        except RequestError:
            return None

    def sort_key(self) -> str:
        """Requests sort by their text (the order of the evaluation job's command line)."""
        return str(self)


def items_path(metrics: Path) -> Path:
    """The per-item outcomes file beside the metrics file `metrics` (``m.json`` -> ``m.items.npz``)."""
    metrics = Path(metrics)
    return metrics.with_name(metrics.stem + ITEMS_SUFFIX)


def index_path(eval_dir: Path) -> Path:
    """The evaluation index in `eval_dir`."""
    return Path(eval_dir) / INDEX


def heads_path(eval_dir: Path) -> Path:
    """The cached zero-shot heads in `eval_dir`."""
    return Path(eval_dir) / HEADS


__all__ = ["ALPHA", "EVAL_DIR", "EvalRequest", "HEADS", "INDEX", "ITEMS_SUFFIX", "RequestError", "heads_path", "index_path",
           "items_path"]
