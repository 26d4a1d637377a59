"""The one training loop every method shares, top to bottom.

``train``: finished already? -> the run directory's writer lock -> `setup` (model, data, method,
optimiser, schedule, run record) -> `restore` (ckpt/last.pt, if any) -> for each epoch, for each
optimiser step: `optimizer_step` over its micro-batches (a step with a non-finite loss or gradient
norm is not applied), a log row every ``log_every`` steps, a checkpoint every ``checkpoint_every``
steps or ``checkpoint_minutes`` -> `end_of_epoch` (validation, checkpoint) -> `finalise` (best.pt,
written last; ckpt/ removed). A stop signal (SIGTERM, SIGUSR1, SIGINT) ends the step in flight,
writes the checkpoint and raises `RunInterrupted` (the CLI exits 75: resumable).

The parts it calls live one module each below it: `sampling` (samples, per-sample seeds, epoch
order, loader), `schedule` (warm-up + cosine), `step` (one optimiser step over its micro-batches),
`checkpointing` (RNG states, config changes, restore, the run's history); their names stay
importable from here.

Resuming is exact on CPU: every random draw of a sample (crop, a method's per-sample draw) is
seeded by (seed, epoch, sample index), the epoch's order by (seed, epoch), and the model-side RNG
states (torch, numpy, python) are saved with the optimiser and scheduler.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from stages.collectives import any_rank
from stages.config import ConfigError, TrainConfig
from stages.data.check import check_images_once
from stages.data.source import DatasetError, ImageDataset, LabeledImages, build_dataset
from stages.errors import PipelineError
from stages.methods import Method, MethodContext, Progress, build_method
from stages.models.factory import create_clip, read_checkpoint
from stages.provenance import code_version, now, provenance
from stages.rundir import Interruption, RunDir, RunRecord
from stages.training.distributed import DistInfo, init_distributed, resolve_launch
from stages.training.interrupt import CheckpointClock, RunInterrupted, StopRequests, ignore_stop_signals
from stages.training.tracking import Tracker
from stages.training.checkpointing import _history, _rng_states, config_changes, restore  # noqa: F401  (config_changes: re-exported)
from stages.training.sampling import EpochSampler, TrainingSamples, collate_samples, train_loader  # noqa: F401  (re-exported)
from stages.training.schedule import warmup_cosine  # noqa: F401  (re-exported)
from stages.training.step import (Optimisation, StepResult, autocast_dtype, optimizer_step,  # noqa: F401  (re-exported)
                                  resolve_accumulation)


def _resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":  # init_distributed made this rank's GPU the current one
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(config.device)


@dataclass
class LogWindow:
    """Loss terms summed on the device over the steps since the last row; read (one host-device
    sync) only when a row is written: every `log_every` steps and at each checkpoint, so a resumed
    run's rows are the uninterrupted run's."""

    device: torch.device
    world_size: int
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_norm: torch.Tensor | None = None
    steps: int = 0
    samples: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: StepResult, samples: int) -> None:
        for name, value in result.terms.items():
            self.terms[name] = self.terms[name] + value if name in self.terms else value
        self.grad_norm = result.grad_norm if self.grad_norm is None else self.grad_norm + result.grad_norm
        self.steps += 1
        self.samples += samples

    def row(self, step: int, epoch: int, lr: float, method_values: dict[str, float]) -> dict[str, Any] | None:
        """The train_log.jsonl row of the window (None when empty), and a fresh window."""
        if not self.steps:
            return None
        names = list(self.terms)
        values = (torch.stack([self.terms[name] for name in names] + [self.grad_norm]) / self.steps).tolist()
        means = dict(zip(names, values))
        record = {"step": step, "epoch": epoch, "lr": lr, **method_values, "steps": self.steps,
                  "loss": sum(means.values()), **{f"loss_{name}": value for name, value in means.items()},
                  "samples_per_s": self.world_size * self.samples / (time.perf_counter() - self.started),
                  "grad_norm": values[-1]}
        self.terms, self.grad_norm, self.steps, self.samples, self.started = {}, None, 0, 0, time.perf_counter()
        return record


# --- a run ------------------------------------------------------------------------------------

@dataclass
class Training:
    """A run being trained: its config and directory, data, method, optimisation and counters."""

    config: TrainConfig
    run_dir: RunDir
    dist: DistInfo
    device: torch.device
    method: Method
    parts: Optimisation
    samples: TrainingSamples
    val_loader: DataLoader | None
    record: RunRecord
    micro_batch: int
    steps_per_epoch: int
    total_steps: int
    step: int = 0
    best_val: float = -1.0
    skipped: list[str] = field(default_factory=list)
    nonfinite_streak: int = 0

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files."""
        return self.dist.is_main

    def progress(self) -> Progress:
        """Where the step about to be taken stands."""
        return Progress(step=self.step, epoch=self.step // self.steps_per_epoch, total_steps=self.total_steps,
                        epochs=self.config.optim.epochs)

    def weights(self, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
        """The student's weights (a zero-shot run: a reference to the pretrained ones, not a copy)."""
        student = self.method.student if self.method.spec.trains else None
        return RunDir.weights_payload(student, self.method.head_state(), self.config, self.step, dtype)

    def result_weights(self) -> dict[str, Any]:
        """The weights as best.pt stores them (save_dtype)."""
        return self.weights(torch.bfloat16 if self.config.save_dtype == "bf16" else torch.float32)

    def save_last(self) -> None:
        """The resumable checkpoint; the previous one is kept as ckpt/prev.pt (a corrupt last.pt falls back to it).

        The prev.pt before it is deleted first, so that the disk never holds more than one resumable
        checkpoint beside the one being written (a write that fails for want of space leaves prev.pt,
        which the resume reads).
        """
        if not self.writes:
            return
        payload = self.weights()
        payload.update(optimizer=self.parts.optimizer.state_dict(), scheduler=self.parts.scheduler.state_dict(),
                       best_val=self.best_val, teacher=self.method.teacher_state(), rng=_rng_states(),
                       config=self.record.config.model_dump(mode="json"), scaler=self.parts.scaler.state_dict())
        self.run_dir.prev.unlink(missing_ok=True)
        if self.run_dir.last.is_file():
            os.replace(self.run_dir.last, self.run_dir.prev)
        RunDir.save(self.run_dir.last, payload)
        self.run_dir.write_record(self.record)  # its interruptions and non-finite steps up to this checkpoint


def _finished(run_dir: RunDir, config: TrainConfig, force: bool) -> bool:
    """Whether `run_dir` already holds this run's best.pt; refuse another config's; clear it all under `force`."""
    if not run_dir.best.is_file():
        return False
    if force:
        print(f"--force: retraining {run_dir.path} from scratch")
        for path in run_dir.training_files():
            path.unlink(missing_ok=True)
        return False
    # The saved config as written (a record of an older schema still yields the fields that differ).
    saved = run_dir.saved_config()
    changes = [] if saved is None else config_changes(saved, config.model_dump(mode="json"))
    if changes:
        raise ConfigError(f"{run_dir.path} holds a finished run of another config ({'; '.join(changes)}): pass "
                          "another --out for the new config, or --force to retrain this directory with it")
    print(f"{run_dir.best} exists: run already finished, nothing to do")
    if not config.keep_checkpoints:  # a run killed between writing best.pt and removing ckpt/
        shutil.rmtree(run_dir.checkpoints, ignore_errors=True)
    return True


def _check_train_images(source: LabeledImages, config: TrainConfig) -> None:
    """The pre-training image check (data.check); unreadable files stop the run unless data.skip_corrupt."""
    bad = check_images_once(source, decode=config.data.check == "decode")  # once per dataset version
    if not bad:
        return
    listing = f"{len(bad)} unreadable training image(s), e.g. {bad[0][0]} ({bad[0][1]})"
    if config.data.skip_corrupt:
        print(f"warning: {listing}: data.skip_corrupt is set, each is replaced by the next readable image")
        return
    raise DatasetError(
        f"{listing}. Fix: replace them (list all with `python -m stages.data check --dataset {config.data.train_set} "
        f"--data-root {config.data.data_root} --split {config.data.train_split}`), or set data.skip_corrupt: true"
    )


def _count_skipped(group: list[dict[str, Any]], skipped: list[str]) -> None:
    """Record the unreadable images the samples replaced (data.skip_corrupt); a `DatasetError` for one that was not."""
    for batch in group:
        corrupt = batch.pop("corrupt")
        if corrupt:
            raise DatasetError(f"{corrupt[0]} (or set data.skip_corrupt: true to replace and count unreadable images)")
        skipped += batch.pop("skipped")


@torch.no_grad()
def _validate(method: Method, loader: DataLoader, device: torch.device) -> float:
    """ID top-1 of the method's classifier (built once per pass); one host-device sync at the end."""
    method.eval()
    head = method.class_head()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for batch in loader:
        logits = method.class_logits(batch["image"].to(device, non_blocking=True), head)
        correct += (logits.argmax(dim=-1) == batch["label"].to(device, non_blocking=True)).sum()
        total += len(batch["label"])
    method.train()
    return int(correct) / max(1, total)


def setup(config: TrainConfig, run_dir: RunDir) -> Training:
    """Model, data, method, optimisation and the run record (written by rank 0)."""
    dist_info = init_distributed()
    device = _resolve_device(config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    bundle = create_clip(config.model.name, config.model.pretrained, device=device)
    train_source = build_dataset(config.data.train_set, config.data.data_root, config.data.train_split,
                                 **config.data.dataset_options())
    if config.data.check != "none" and dist_info.is_main:
        _check_train_images(train_source, config)
    optim = config.optim
    if optim.batch_size % (optim.accum_steps * dist_info.world_size):
        raise ValueError(f"optim.batch_size {optim.batch_size} must be divisible by accum_steps x world size "
                         f"({optim.accum_steps} x {dist_info.world_size})")
    micro_batch = optim.batch_size // (optim.accum_steps * dist_info.world_size)
    # Every rank gets an equal shard of each global batch (EpochSampler drops the last size % W samples).
    steps_per_epoch = math.ceil((len(train_source) - len(train_source) % dist_info.world_size) / optim.batch_size)
    if optim.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, optim.max_steps_per_epoch)
    total_steps = steps_per_epoch * optim.epochs

    context = MethodContext.from_config(bundle, train_source.classnames, config, total_steps)
    method = build_method(config.method, context).to(device)
    if config.grad_checkpointing:
        method.student.set_grad_checkpointing(True)  # open_clip: both towers recompute activations in backward
    if config.compile:
        method.compile_towers()  # compiled lazily, on the first step that calls each tower
    val_loader = None
    if config.select == "val":
        val_source = build_dataset(config.data.train_set, config.data.data_root, config.data.val_split,
                                   **config.data.dataset_options())
        val_loader = DataLoader(ImageDataset(val_source, bundle.preprocess_val), batch_size=micro_batch,
                                num_workers=config.data.workers, worker_init_fn=ignore_stop_signals)
    facts = provenance()
    history = _history(run_dir, config)
    record = RunRecord(config=config, model=config.model, method=config.method, code_version=code_version(facts["git"]),
                       provenance=facts, **method.record(), classnames=train_source.classnames,
                       train_size=len(train_source), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                       device=str(device), world_size=dist_info.world_size, **history)
    if dist_info.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_record(record)
    parts = Optimisation.build(method, config, total_steps, device, dist_info) if method.spec.trains else None
    return Training(config, run_dir, dist_info, device, method, parts,
                    TrainingSamples(train_source, bundle.preprocess_train, config.seed, method.sample_draw(),
                                    skip_corrupt=config.data.skip_corrupt),
                    val_loader, record, micro_batch, steps_per_epoch, total_steps)


def end_of_epoch(run: Training, epoch: int, log: IO[str], tracker: Tracker) -> None:
    """Validation (select: val keeps the best epoch's weights) and the epoch's checkpoint."""
    if run.val_loader is not None:
        top1 = _validate(run.method, run.val_loader, run.device)
        row = {"step": run.step, "epoch": epoch, "val_top1": top1}
        log.write(json.dumps(row) + "\n")
        log.flush()
        tracker.log(row)
        if top1 > run.best_val:
            run.best_val = top1
            if run.writes:  # already as best.pt stores them: finalise renames it, no second copy
                RunDir.save(run.run_dir.best_val, run.result_weights())
    run.save_last()


def finalise(run: Training) -> None:
    """best.pt (the last epoch's or the best validation epoch's weights), written last: the run is complete.

    Then the resumable state (ckpt/) goes, unless keep_checkpoints: nothing reads it again.
    """
    if run.skipped:
        print(f"data.skip_corrupt: replaced {len(run.skipped)} unreadable training image loads")
    if not run.writes:
        return
    run.run_dir.write_record(run.record.model_copy(update={"finished": now()}))
    if run.config.select == "val" and run.config.keep_checkpoints:
        RunDir.save(run.run_dir.best, read_checkpoint(run.run_dir.best_val))
    elif run.config.select == "val":
        os.replace(run.run_dir.best_val, run.run_dir.best)
    else:
        RunDir.save(run.run_dir.best, run.result_weights())
    if not run.config.keep_checkpoints:
        shutil.rmtree(run.run_dir.checkpoints, ignore_errors=True)


class NonFiniteLoss(PipelineError, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm: the run stops (nothing non-finite saved)."""


def _account_nonfinite(run: Training, result: StepResult, log: IO[str]) -> None:
    """Count a step that was not applied (logged with its step and terms); stop after max_nonfinite_steps in a row."""
    if result.applied:
        run.nonfinite_streak = 0
        return
    names = result.nonfinite() or ["another rank's loss terms"]
    run.nonfinite_streak += 1
    run.record.nonfinite_steps.append(run.step)
    log.write(json.dumps({"step": run.step, "nonfinite": names, "applied": False}) + "\n")
    log.flush()
    print(f"warning: step {run.step}: {', '.join(names)} not finite; the step is not applied", flush=True)
    if run.nonfinite_streak >= run.config.max_nonfinite_steps:
        last = run.run_dir.last if run.run_dir.last.is_file() else None
        raise NonFiniteLoss(
            f"step {run.step}: {', '.join(names)} not finite for {run.nonfinite_streak} consecutive steps (none "
            f"applied); last good checkpoint: {last or 'none (a rerun starts from scratch)'}. Fix: lower optim.lr or "
            "set optim.grad_clip (or precision: fp32), check the data, then rerun (it resumes from that checkpoint)")


def run_steps(run: Training, stops: StopRequests) -> str | None:
    """Train from `run.step` to the end (or to a stop request); return the stop's reason, None when finished."""
    config, optim, method = run.config, run.config.optim, run.method
    method.train()
    progress_bar = tqdm(total=run.total_steps, initial=run.step, desc=f"{config.method} {run.run_dir.path.name}",
                        unit="step", disable=not run.writes)
    tracker = Tracker(run.run_dir, config.tracking, run.record.config.model_dump(mode="json"), enabled=run.writes)
    window = LogWindow(run.device, run.dist.world_size)
    clock = CheckpointClock(config.checkpoint_minutes)
    stop = False
    with open(run.run_dir.log if run.writes else os.devnull, "a", encoding="utf-8") as log:

        def write_row(epoch: int, lr: float, progress: Progress) -> None:
            row = window.row(run.step, epoch, lr, method.log_values(progress))
            if row is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
                tracker.log(row)
                progress_bar.set_postfix(loss=f"{row['loss']:.4f}")

        while run.step < run.total_steps and not stop:
            epoch, step_in_epoch = divmod(run.step, run.steps_per_epoch)
            sampler = EpochSampler(len(run.samples), config.seed, epoch, start=step_in_epoch * optim.batch_size,
                                   rank=run.dist.rank, world_size=run.dist.world_size)
            micro_batches = iter(train_loader(run.samples, run.micro_batch, sampler, config.data.workers, run.device))
            for _ in range(step_in_epoch, run.steps_per_epoch):
                group = [batch for _, batch in zip(range(optim.accum_steps), micro_batches)]
                if not group:
                    break
                _count_skipped(group, run.skipped)
                progress = run.progress()
                result = optimizer_step(run.parts, group, progress)
                run.step += 1
                _account_nonfinite(run, result, log)
                if result.applied:
                    window.add(result, sum(len(batch["label"]) for batch in group))
                progress_bar.update()
                # Every rank stops (or checkpoints on time) at the same step: a rank alone in a collective hangs.
                stop, due = any_rank([stops.requested() is not None, clock.due()], run.device)
                epoch_done = run.step % run.steps_per_epoch == 0
                checkpoint = run.step % config.checkpoint_every == 0 or epoch_done or due or stop
                if run.step % config.log_every == 0 or checkpoint:
                    write_row(epoch, result.lr, progress)
                # The epoch's last step is checkpointed after validation, so a resume never skips it.
                if checkpoint and not epoch_done:
                    run.save_last()
                    clock.reset()
                if stop:
                    break
            if not stop or run.step % run.steps_per_epoch == 0:
                end_of_epoch(run, epoch, log, tracker)
                clock.reset()
    progress_bar.close()
    tracker.close()
    return (stops.requested() or "another rank's stop signal") if stop else None


def train(config: TrainConfig, run_dir: RunDir | Path, force: bool = False, watch_parent: bool = False) -> Path:
    """Run (or resume, or skip if finished) one training run into `run_dir`; return its best.pt.

    One writer per run: rank 0 holds the run directory's writer lock throughout. A finished run of
    another config (execution-only settings aside) is refused with the differing fields, unless
    `force` (retrain from scratch). SIGTERM, SIGUSR1 or SIGINT (or, with `watch_parent`, the death of
    the process that started this one) stops the run at the next step boundary with a checkpoint:
    `RunInterrupted`. Under torchrun every rank runs this function on its shard of each global batch;
    only rank 0 writes files.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    writer = run_dir.writer(config.lock_wait_s) if resolve_launch(os.environ).info.is_main else nullcontext()
    with writer, StopRequests(watch_parent) as stops:
        if _finished(run_dir, config, force):
            return run_dir.best
        run = setup(config, run_dir)
        if run.method.spec.trains:
            restore(run)
            reason = run_steps(run, stops)
            if reason is not None:
                if run.writes:
                    run.record.interruptions.append(Interruption(reason=reason, step=run.step, at=now()))
                    run.run_dir.write_record(run.record)
                raise RunInterrupted(reason, run.step, str(run_dir.last))
        finalise(run)  # zero-shot: best.pt refers to the pretrained weights
    return run_dir.best
