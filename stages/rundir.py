"""The run directory: its path from a run's slots, every file in it, its run record and its weights.

With its evaluation requests (`EvalRequest`, stages/evalrequest.py), the only code that knows
run-directory paths and file names (docs/workflow.md, "Paths"; docs/evaluation.md; a test,
tests/test_rundir_owner.py, fails on a run's file name spelled anywhere else); training, evaluation,
export, plan, reports and the workflow's rules use it::

    results/runs/<arch>-<pretrained>/<train_set>/<method>/<variant>/<bank>-<concept>/lam<λ>/seed<s>/
        train.yaml            the run's config, execution settings aside (written by the workflow)
        run.json              the run record (`RunRecord`): config, provenance, classes, sizes
        train_log.jsonl       one row per log window: loss terms, lr, λ, speed, grad norm
        tb/                   TensorBoard events (wandb_id.txt: the W&B run id, to resume the same W&B run)
        ckpt/last.pt          resumable checkpoint (ckpt/prev.pt: the one before it); removed once best.pt is
                              written, unless keep_checkpoints
        ckpt/best_val.pt      best ID-validation weights (select: val); renamed to best.pt at the end
        best.pt               the result's weights, written last: its presence means the run is finished
        .writer.lock          held by the one process training the run (host, pid; .writer.json adds the job id)
        eval/<benchmark>[@alpha<α>].json   one metrics file per `EvalRequest` (``RunDir.metrics(request)``)
        eval/<benchmark>[@alpha<α>].items.npz   its per-item outcomes (``RunDir.items(request)``; bootstrap intervals)
        eval/index.json, eval/heads/       the evaluation job's index (its declared output), cached heads

``best.pt`` and ``ckpt/last.pt`` hold (``torch.load(weights_only=True)`` reads both)::

    {"state_dict": model state dict (fp32),
     "head": None | {"weight": Tensor[C, d], "classnames": [str, ...],   # head-based methods
                     "parameter": Tensor[C, d]},   # what trains: = weight, or W of Lipsum-FT's s·W
     "model_name": str, "pretrained": str | None, "method": str, "step": int}

A zero-shot run's ``best.pt`` holds ``"state_dict": None`` and the pretrained reference (``model_name``,
``pretrained``) instead of a copy of the pretrained weights. ``save_dtype: bf16`` stores best.pt's floating
tensors in bf16 (loading upcasts them to the model's fp32).

``last.pt`` adds optimiser, scheduler, scaler, loop counters, the teacher of a moving-teacher
method and every RNG state. A head maps L2-normalised image features to logits:
``normalize(f(x)) @ weight.T`` (the zero-shot scale is folded into the weight).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from stages.config import ConfigError, ModelConfig, TrainConfig, validation_message
from stages.errors import PipelineError, read_json
from stages.evalrequest import (  # noqa: F401  (re-exported)
    ALPHA, EVAL_DIR, INDEX, ITEMS_SUFFIX, EvalRequest, RequestError, heads_path, index_path, items_path)
from stages.io import LEASE_SECONDS, atomic_torch_save, atomic_write_json, lease_lock, lock_holder
from stages.methods import method_spec
from stages.strict import Strict

if TYPE_CHECKING:
    from filelock import SoftFileLease

    import torch

    from stages.models.factory import LoadedModel

log = logging.getLogger(__name__)

# The slots of a run directory, in path order; the workflow's wildcards carry the same names.
SLOTS = ("arch", "train_set", "method", "variant", "bank_concept", "lam", "seed")
PATTERN = "/".join(f"{{{slot}}}" for slot in SLOTS)
"""The run directory under ``<results>/runs`` as a snakemake wildcard pattern."""
RUNS = "runs"
"""The folder of run directories under a results root."""
BEST = "best.pt"
"""The result's weights file (in the run dir), the default checkpoint of evaluation and export."""
CHECKPOINTS, LAST, PREV, BEST_VAL = "ckpt", "last.pt", "prev.pt", "best_val.pt"
RECORD, LOG, TRAIN_YAML = "run.json", "train_log.jsonl", "train.yaml"


class RunLocked(ConfigError):
    """Another process is training this run directory."""


class Interruption(Strict):
    """One interruption of a run: why, at which step, and how many steps the resume redid."""

    reason: str
    """A signal's name (SIGTERM, SIGUSR1, SIGINT), ``parent exited``, or ``killed`` (the attempt ended without
    a signal: kill -9, a lost node, an error)."""
    step: int
    """The last step the interrupted attempt reached (for ``killed``: its last logged step, a lower bound)."""
    at: str
    resumed_from: int | None = None
    """The checkpoint step the next attempt resumed from (None until it has)."""
    steps_lost: int = 0
    """Steps the resume redid: ``step - resumed_from`` (0 after a signal: the checkpoint is at the signalled step)."""


class RunRecord(Strict):
    """``run.json``: what a run was (its config) and what it saw (provenance, classes, sizes)."""

    config: TrainConfig
    model: ModelConfig
    method: str
    code_version: str
    provenance: dict[str, Any]
    bank_sha256: str | None = None
    num_descriptors: int = 0
    classnames: list[str]
    train_size: int
    steps_per_epoch: int
    total_steps: int
    device: str
    world_size: int = 1
    interruptions: list[Interruption] = []
    nonfinite_steps: list[int] = []
    """Steps whose loss or gradient norm was not finite: not applied (their data consumed, the weights untouched)."""
    finished: str | None = None


OPTIONS_MARK = "opts"
"""Starts the part of a variant slot that spells a run's swept options (``opts_<key>-<value>_...``)."""


def option_values(config: TrainConfig) -> dict[str, str]:
    """The run's swept options (``swept_options``), key -> its value as the run dir spells it, in the
    options model's field order; empty for a run with the workflow's options."""
    if not config.swept_options:
        return {}
    block = config.options[config.method]
    return {key: _slot_text(getattr(block, key)) for key in type(block).model_fields if key in config.swept_options}


def _slot_text(value: Any) -> str:
    """An option value in a path: on/off, none, a number's shortest exact form (``1.0`` -> ``1``), so that
    distinct values get distinct run dirs (λ's ``:g`` would merge close values of a sweep)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    return repr(value).removesuffix(".0") if isinstance(value, float) else str(value)


def run_slots(config: TrainConfig) -> dict[str, str]:
    """The run-dir slot values of `config` (``-`` for a slot its method does not use).

    The variant slot spells the spurious-caption switches of a method that uses them and, after them,
    the run's swept options (`option_values`); a run with neither holds ``-``.
    """
    spec = method_spec(config.method)
    pretrained = Path(config.model.pretrained).stem if "/" in config.model.pretrained else config.model.pretrained
    spurious = config.spurious
    parts: list[str] = []
    if spec.uses_spurious:
        parts.append(f"suffix-{spurious.suffix}_mask-{_slot_text(spurious.mask)}_decay-{spurious.decay}")
    swept = option_values(config)
    if swept:
        parts.append("_".join([OPTIONS_MARK, *(f"{key}-{value}" for key, value in swept.items())]))
    variant = "_".join(parts) or "-"
    return {"arch": f"{config.model.name}-{pretrained}", "train_set": config.data.train_set, "method": config.method,
            "variant": variant, "bank_concept": f"{spurious.bank.stem}-{spurious.concept}" if uses_bank(config) else "-",
            "lam": f"lam{config.lam:g}" if spec.uses_lambda else "-", "seed": f"seed{config.seed}"}


def uses_bank(config: TrainConfig) -> bool:
    """Whether the run reads a descriptor bank (a method using spurious captions, drawn from the bank)."""
    return method_spec(config.method).uses_spurious and config.spurious.suffix == "spurious"


class NonFiniteCheckpoint(PipelineError, ValueError):
    """A checkpoint about to be written holds NaN or inf: it is never written."""


def _nonfinite_tensors(payload: Any, name: str = "") -> list[str]:
    """The dotted names of the floating tensors in `payload` holding NaN or inf (RNG states aside)."""
    import torch  # here, not at the top: a plan that reads paths starts without torch

    if isinstance(payload, torch.Tensor):
        return [name] if payload.is_floating_point() and not bool(torch.isfinite(payload).all()) else []
    if isinstance(payload, dict):
        items = [(key, value) for key, value in payload.items() if key != "rng"]
    elif isinstance(payload, (list, tuple)):
        items = list(enumerate(payload))
    else:
        return []
    return [bad for key, value in items for bad in _nonfinite_tensors(value, f"{name}.{key}" if name else str(key))]


@dataclass(frozen=True)
class RunDir:
    """One run directory: every path in it, its record and its checkpoints."""

    path: Path

    @classmethod
    def of(cls, config: TrainConfig, results: Path = Path("results")) -> RunDir:
        """The run directory of `config` under `results`."""
        return cls.at(results, run_slots(config))

    @classmethod
    def at(cls, results: Path, slots: dict[str, str]) -> RunDir:
        """The run directory of these slot values under `results` (snakemake's wildcards are such a mapping)."""
        return cls(Path(results) / RUNS / PATTERN.format(**{slot: slots[slot] for slot in SLOTS}))

    @classmethod
    def pattern(cls, results: Path) -> RunDir:
        """The run directory as a snakemake pattern under `results`: every path of it holds the slots' wildcards."""
        return cls(Path(results) / RUNS / PATTERN)

    @property
    def name(self) -> str:
        """The run's slots joined by ``/`` (its path below ``<results>/runs``; its folder name outside one)."""
        parts = self.path.resolve().parts
        return "/".join(parts[parts.index(RUNS) + 1:]) if RUNS in parts else self.path.name

    @property
    def train_yaml(self) -> Path:
        return self.path / TRAIN_YAML

    @property
    def record_path(self) -> Path:
        return self.path / RECORD

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def wandb_id(self) -> Path:
        return self.path / "wandb_id.txt"

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def prev(self) -> Path:
        """The checkpoint before ``last.pt``: moved aside just before a new ``last.pt`` is written."""
        return self.checkpoints / PREV

    @property
    def best_val(self) -> Path:
        return self.checkpoints / BEST_VAL

    @property
    def checkpoints(self) -> Path:
        """The resumable state's folder (last.pt, prev.pt, best_val.pt)."""
        return self.path / CHECKPOINTS

    @property
    def lock_path(self) -> Path:
        return self.path / ".writer.lock"

    @property
    def writer_path(self) -> Path:
        """Who holds the writer lock (host, pid, SLURM job id), for the message a second writer prints."""
        return self.path / ".writer.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def eval_index(self) -> Path:
        """Written by the run's evaluation job once all its metrics files are."""
        return index_path(self.eval_dir)

    @property
    def heads(self) -> Path:
        """Cached zero-shot heads of the run's evaluation."""
        return heads_path(self.eval_dir)

    def metrics(self, request: EvalRequest | str) -> Path:
        """The metrics JSON of one evaluation request (an `EvalRequest`, or its text ``<benchmark>[@alpha<α>]``)."""
        return EvalRequest.coerce(request).path(self.eval_dir)

    def items(self, request: EvalRequest | str) -> Path:
        """The per-item outcomes (predictions, labels, groups) behind the metrics JSON of `request`."""
        return EvalRequest.coerce(request).items_path(self.eval_dir)

    def metrics_files(self) -> dict[EvalRequest, Path]:
        """The metrics files in the run's eval dir, by request (the index and other files aside), sorted."""
        found = {request: path for path in self.eval_dir.glob("*") if (request := EvalRequest.of_file(path))}
        return dict(sorted(found.items(), key=lambda item: item[0].sort_key()))

    def training_files(self) -> tuple[Path, ...]:
        """What training writes (and ``--force`` clears): weights, checkpoints, log."""
        return self.best, self.last, self.prev, self.best_val, self.log

    # --- one writer -------------------------------------------------------------------------
    @contextmanager
    def writer(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the run's writer lock for the block: one process trains a run directory at a time.

        A lease marker (`stages.io.lease_lock`: an exclusive create, which network filesystems
        honour, refreshed by a heartbeat thread), so it works where ``fcntl`` locks do not; released
        on any exit of the block, taken over at once when its holder on this host is dead, and after
        ``LEASE_SECONDS`` of silence when the holder's host is gone. A second writer waits up to
        `wait_s` seconds, then `RunLocked` names the holder. Leftovers of a dead writer (temporary
        files of an interrupted atomic write) are removed once the lock is held.
        """
        from filelock import Timeout

        lease = lease_lock(self.lock_path)
        try:
            lease.acquire(timeout=wait_s, poll_interval=min(1.0, max(wait_s, 0.05)))
        except Timeout:
            raise RunLocked(f"{self.path} is being trained by {self._holder(lease)}: one writer per run. Wait for it "
                            f"to finish, or stop it; if it is gone, its lock ({self.lock_path}) expires within "
                            f"{LEASE_SECONDS:.0f} s") from None
        try:
            atomic_write_json(self.writer_path, {"host": socket.gethostname(), "pid": os.getpid(),
                                                 "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            self.remove_leftovers()
            yield
        finally:
            self.writer_path.unlink(missing_ok=True)
            lease.release()

    def _holder(self, lease: SoftFileLease) -> str:
        """The lock holder in words, from .writer.json (or the lock's own record)."""
        try:
            holder = json.loads(self.writer_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return lock_holder(lease)
        job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
        return f"pid {holder['pid']} on {holder['host']}{job}, since {holder['since']}"

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files an atomic write left when its writer died (call with the lock held)."""
        leftovers = [path for folder in (self.path, self.checkpoints) if folder.is_dir()
                     for path in folder.glob(".*.tmp") if path.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    # --- the run record ---------------------------------------------------------------------
    def read_record(self) -> RunRecord | None:
        """The run record, or None before training wrote one; a record that does not validate is a `ConfigError`."""
        if not self.record_path.is_file():
            return None
        try:
            return RunRecord.model_validate(self._record_json())
        except ValidationError as error:
            raise ConfigError(f"{self.record_path}: not a run record of this pipeline version "
                              f"({validation_message(error)}); retrain the run (or rewrite its {RECORD})") from error

    def _record_json(self) -> Any:
        return read_json(self.record_path, "run record",
                         f"; it is damaged: retrain the run (--force), or delete {self.record_path} if {self.best} "
                         "is known to be good")

    def saved_config(self) -> dict[str, Any] | None:
        """The config of the run record as written (None without a record): an older schema still yields its fields."""
        if not self.record_path.is_file():
            return None
        saved = self._record_json()
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ConfigError(f"{self.record_path}: not a run record (no config mapping); retrain the run (--force)")
        return saved["config"]

    def write_record(self, record: RunRecord) -> None:
        atomic_write_json(self.record_path, json.loads(record.model_dump_json()))

    # --- weights ----------------------------------------------------------------------------
    @staticmethod
    def weights_payload(student: torch.nn.Module | None, head: dict[str, Any] | None, config: TrainConfig,
                        step: int, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """The weights part of a checkpoint (see the module docstring): the state dict on the CPU in `dtype`
        (default fp32; None for `student`: a reference to the pretrained weights, which are not copied)."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        state = None if student is None else {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.cpu()
                                              for k, v in student.state_dict().items()}
        return {"state_dict": state, "head": head, "model_name": config.model.name,
                "pretrained": config.model.pretrained, "method": config.method, "step": step}

    @staticmethod
    def save(path: Path, payload: dict[str, Any]) -> None:
        """Write a checkpoint atomically (a reader never sees half a file); a non-finite tensor is refused."""
        bad = _nonfinite_tensors(payload)
        if bad:
            raise NonFiniteCheckpoint(f"refusing to write {path}: non-finite values in {', '.join(bad[:5])}"
                                      f"{f' (and {len(bad) - 5} more)' if len(bad) > 5 else ''}")
        atomic_torch_save(path, payload)

    def load_model(self, checkpoint: str = BEST, device: str | torch.device = "cpu") -> LoadedModel:
        """The model of a finished run: architecture and weights from `checkpoint` (a file in the run dir)."""
        # open_clip (~4 s to import) only when a model is built, not when a plan reads paths.
        from stages.models.factory import LoadedModel, ModelLoadError, create_clip, read_checkpoint

        path = self.path / checkpoint
        for required in (self.record_path, path):
            if not required.is_file():
                raise ModelLoadError(
                    f"{required} is missing: {self.path} is not a finished training run "
                    "(train it with `python -m stages.training --config CONFIG --out RUN_DIR`)"
                )
        payload = read_checkpoint(path)
        if payload["state_dict"] is None:  # a zero-shot run: a reference to the pretrained weights
            bundle = create_clip(payload["model_name"], payload["pretrained"], device="cpu")
        else:
            bundle = create_clip(payload["model_name"], None, device="cpu")
            bundle.model.load_state_dict(payload["state_dict"])  # copies (and upcasts bf16) into the fp32 model
        bundle.model.to(device)
        bundle.pretrained = payload["pretrained"]
        head = payload.get("head")
        return LoadedModel(bundle=bundle, head_weight=None if head is None else head["weight"].to(device),
                           head_classnames=None if head is None else list(head["classnames"]),
                           identity={"name": bundle.name, "pretrained": bundle.pretrained, "run_dir": str(self.path),
                                     "checkpoint": checkpoint, "checkpoint_sha256": None, "alpha": None})

    def load_resume_state(self) -> dict[str, Any] | None:
        """The resumable state: ``ckpt/last.pt``, else ``ckpt/prev.pt`` (with a warning), else None.

        A corrupt or truncated ``last.pt`` (full disk, copy cut short) falls back to ``prev.pt``; when
        a checkpoint exists but none loads, `ModelLoadError` names the files and the fix.
        """
        from stages.models.factory import ModelLoadError, read_checkpoint

        problems = []
        for path in (self.last, self.prev):
            if not path.is_file():
                continue
            try:
                state = read_checkpoint(path)  # RNG states are tensors and plain types: weights_only loads them
            except ModelLoadError as error:
                problems.append(str(error).split("; accepted:")[0])
                continue
            except Exception as error:  # noqa: BLE001  any failure to read a checkpoint means "unreadable"
                # torch's unpickler meets damaged bytes with IndexError, KeyError, ... as well.
                problems.append(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})"[:240])
                continue
            if not isinstance(state, dict) or "optimizer" not in state:
                problems.append(f"{path} is not a resumable checkpoint (no optimiser state)")
                continue
            if problems:
                log.warning("warning: %s; resuming from the previous checkpoint %s instead", problems[0], path)
            return state
        if problems:
            raise ModelLoadError(f"cannot resume {self.path}: {'; '.join(problems)}. Fix: delete {self.last.parent} "
                                 "to restart this run from scratch (or restore the file)")
        return None
