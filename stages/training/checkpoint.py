"""Run-directory checkpoints: what training writes and what evaluation reads.

``<run_dir>/best.pt`` (weights only, written last) and ``<run_dir>/ckpt/last.pt`` (resumable)
both hold::

    {"state_dict": model state dict (fp32),
     "head": None | {"weight": Tensor[C, d], "classnames": [str, ...],   # head-based methods
                     "parameter": Tensor[C, d]},   # what trains: = weight, or W of Lipsum-FT's s·W
     "model_name": str, "pretrained": str | None, "method": str, "step": int}

``last.pt`` adds optimiser, scheduler, loop counters and every RNG state. A head maps
L2-normalised image features to logits: ``normalize(f(x)) @ weight.T`` (the zero-shot scale is
folded into the weight: FT and CAR-FT train that weight, as WiSE-FT; Lipsum-FT trains W with the
weight = s·W, as its code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stages.models.factory import ClipBundle, ModelLoadError, create_clip, read_checkpoint

BEST = "best.pt"
LAST = Path("ckpt") / "last.pt"
PREV = Path("ckpt") / "prev.pt"
"""The checkpoint before ``last.pt``: moved aside just before a new ``last.pt`` is written."""


@dataclass
class TrainedModel:
    """A model restored from a run directory, with its trained head if the method has one."""

    bundle: ClipBundle
    head_weight: torch.Tensor | None
    head_classnames: list[str] | None
    run_config: dict[str, Any]
    checkpoint_path: Path


def load_trained(run_dir: Path, checkpoint: str = BEST, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a finished run: architecture from ``run.json``, weights from `checkpoint`."""
    run_dir = Path(run_dir)
    run_json, ckpt_path = run_dir / "run.json", run_dir / checkpoint
    for required in (run_json, ckpt_path):
        if not required.is_file():
            raise ModelLoadError(
                f"{required} is missing: {run_dir} is not a finished training run "
                "(train it with `python -m stages.training --config CONFIG --out RUN_DIR`)"
            )
    run_config = json.loads(run_json.read_text())
    payload = read_checkpoint(ckpt_path)
    bundle = create_clip(payload["model_name"], None, device="cpu")
    bundle.model.load_state_dict(payload["state_dict"])
    bundle.model.to(device)
    bundle.pretrained = payload["pretrained"]
    head = payload.get("head")
    return TrainedModel(
        bundle=bundle,
        head_weight=None if head is None else head["weight"].to(device),
        head_classnames=None if head is None else list(head["classnames"]),
        run_config=run_config,
        checkpoint_path=ckpt_path,
    )


def load_resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The resumable state of `run_dir`: ``ckpt/last.pt``, else ``ckpt/prev.pt`` (with a warning), else None.

    A corrupt or truncated ``last.pt`` (full disk, copy cut short) falls back to ``prev.pt``; when
    a checkpoint exists but none loads, `ModelLoadError` names the files and the fix.
    """
    run_dir = Path(run_dir)
    problems = []
    for relative in (LAST, PREV):
        path = run_dir / relative
        if not path.is_file():
            continue
        try:
            state = read_checkpoint(path)  # RNG states are tensors and plain types: weights_only loads them
        except ModelLoadError as error:
            problems.append(str(error).split("; accepted:")[0])
            continue
        if not isinstance(state, dict) or "optimizer" not in state:
            problems.append(f"{path} is not a resumable checkpoint (no optimiser state)")
            continue
        if problems:
            print(f"warning: {problems[0]}; resuming from the previous checkpoint {path} instead")
        return state
    if problems:
        raise ModelLoadError(f"cannot resume {run_dir}: {'; '.join(problems)}. Fix: delete {run_dir / LAST.parent} "
                             "to restart this run from scratch (or restore the file)")
    return None
