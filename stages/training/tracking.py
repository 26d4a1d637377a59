"""Live tracking of a training run: TensorBoard (default, local, no account) and optional W&B.

The loop hands every record it writes to ``train_log.jsonl`` (loss terms, lr, λ, samples/s,
grad norm, validation top-1) to a ``Tracker``; each numeric field becomes a scalar named after
its key (``train/<key>``, or ``val/<key>`` for validation records) at the record's step.

- ``tensorboard``: event files under ``<run dir>/tb/`` (``tensorboard --logdir results/runs``).
- ``wandb``: project ``stages`` (or ``$WANDB_PROJECT``), run name from the run directory's slots;
  the W&B run id is kept in ``<run dir>/wandb_id.txt`` so a resumed run continues the same W&B
  run. ``WANDB_MODE=offline`` writes the run under ``<run dir>/wandb/`` for a later ``wandb sync``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from stages.errors import PipelineError
from stages.io import atomic_write_text
from stages.rundir import RunDir


class TrackingError(PipelineError, RuntimeError):
    """A requested tracker that cannot be started (e.g. wandb not installed)."""


class Tracker:
    """Scalars to TensorBoard and/or W&B; a tracker with no backends (or off rank 0) does nothing."""

    def __init__(self, run_dir: RunDir, backends: list[str], config: dict[str, Any], enabled: bool = True) -> None:
        self._tensorboard = self._wandb = None
        if not enabled:
            return
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir.tensorboard))
        if "wandb" in backends:
            self._wandb = _start_wandb(run_dir, config)

    def log(self, record: dict[str, Any]) -> None:
        """Log the numeric fields of one train_log.jsonl record at its ``step``."""
        step = int(record["step"])
        prefix = "val" if any(key.startswith("val_") for key in record) else "train"
        scalars = {f"{prefix}/{key}": float(value) for key, value in record.items()
                   if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)}
        scalars[f"{prefix}/epoch"] = float(record.get("epoch", 0))
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        """Flush and close every backend."""
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._tensorboard = self._wandb = None


def require_backends(backends: list[str]) -> None:
    """Fail before anything starts when a listed tracker cannot be (a `TrackingError` naming the setting and the fix)."""
    if "wandb" in backends:
        _import_wandb()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise TrackingError("tracking: wandb is listed but the wandb package is not installed; "
                            "pip install wandb, or drop wandb from tracking") from None
    return wandb


def _start_wandb(run_dir: RunDir, config: dict[str, Any]) -> Any:
    """Start (or resume, with the id stored in the run dir) the W&B run of `run_dir`."""
    wandb = _import_wandb()
    id_file = run_dir.wandb_id
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:8]
        atomic_write_text(id_file, run_id + "\n")
    # Run name: the run's slots (arch/train set/method/.../seed), joined.
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "stages"), name=run_dir.name, id=run_id, resume="allow",
                      dir=str(run_dir.path), config=config)
