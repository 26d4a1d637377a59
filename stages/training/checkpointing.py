"""What a resumable checkpoint restores beyond the weights: RNG states, config changes, the log and the run's history."""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stages.config import ConfigError, TrainConfig, without_execution
from stages.io import atomic_write_text
from stages.provenance import now
from stages.rundir import Interruption, RunDir

if TYPE_CHECKING:
    from stages.training.loop import Training


def _rng_states() -> dict[str, Any]:
    """Every RNG state as tensors and plain types, so ckpt/last.pt loads with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    random.setstate(states["python"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"optim.lr: 0.001 -> 0.0005"`` for every field (dotted) where the runs differ (config.EXECUTION_FIELDS aside)."""
    old, new = _flatten(without_execution(saved)), _flatten(without_execution(current))
    return [f"{key}: {old.get(key, '<unset>')} -> {new.get(key, '<unset>')}" for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)]



def _history(run_dir: RunDir, config: TrainConfig) -> dict[str, Any]:
    """What the run record of an earlier attempt of this same run says about it (interruptions, skipped steps)."""
    try:
        previous = run_dir.read_record()
    except ConfigError:  # a record of another pipeline version: its history is not this run's
        return {}
    if previous is None or config_changes(previous.config.model_dump(mode="json"), config.model_dump(mode="json")):
        return {}
    return {"interruptions": previous.interruptions, "nonfinite_steps": previous.nonfinite_steps}


def restore(run: Training) -> None:
    """Continue from ckpt/last.pt (or prev.pt) when it was written by this config; drop log rows after it."""
    state = run.run_dir.load_resume_state()
    current = run.record.config.model_dump(mode="json")
    if state is not None and (state.get("config") is None or config_changes(state["config"], current)):
        # Resuming someone else's optimiser state would silently mix two runs.
        print(f"{run.run_dir.last} was written by a different config: starting this run from scratch")
        state = None
    if state is not None:
        method, parts = run.method, run.parts
        method.student.load_state_dict(state["state_dict"])
        if state["head"] is not None:
            method.load_head_state(state["head"])
        if state.get("teacher") is not None:
            method.load_teacher_state(state["teacher"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        run.step, run.best_val = state["step"], state["best_val"]
        _set_rng_states(state["rng"])
        print(f"resuming {run.run_dir.path} from step {run.step}/{run.total_steps}")
    # Drop log lines written after the checkpoint we resume from (they will be redone); a line cut off
    # by a kill mid-write is dropped too.
    log_path = run.run_dir.log
    if run.writes and log_path.is_file():
        rows = [(line, _log_row(line)) for line in log_path.read_text(encoding="utf-8").splitlines()]
        reached = max((row.get("step", 0) for _, row in rows if row is not None), default=0)
        kept = [line for line, row in rows if row is not None and row.get("step", 0) <= run.step]
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        if state is not None:
            _record_resume(run, reached)
    if state is None:  # from scratch: an earlier attempt's history is not this one's
        run.record.interruptions = []
    run.record.nonfinite_steps = [step for step in run.record.nonfinite_steps if step < run.step]


def _log_row(line: str) -> dict[str, Any] | None:
    """One train_log.jsonl row, or None for a line that is not one (cut off by a kill mid-write)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _record_resume(run: Training, reached: int) -> None:
    """Complete the run record's interruption entry for this resume: the signalled one written when the last
    attempt stopped, or, when it stopped without a signal (kill -9, node lost), a ``killed`` entry whose step is
    its last logged step (a lower bound of where it was)."""
    pending = run.record.interruptions[-1] if run.record.interruptions else None
    if pending is None or pending.resumed_from is not None:
        pending = Interruption(reason="killed", step=max(reached, run.step), at=now())
        run.record.interruptions.append(pending)
    pending.resumed_from = run.step
    pending.steps_lost = max(0, pending.step - run.step)
    run.run_dir.write_record(run.record)

