"""The one training loop every method shares, top to bottom.

``train``: finished already? -> `setup` (model, data, method, optimiser, schedule, run record) ->
`restore` (ckpt/last.pt, if any) -> for each epoch, for each optimiser step: `optimizer_step` over
its micro-batches, a log row every ``log_every`` steps, a checkpoint every ``checkpoint_every`` ->
`end_of_epoch` (validation, checkpoint) -> `finalise` (best.pt, written last).

Resuming is exact on CPU: every random draw of a sample (crop, a method's per-sample draw) is
seeded by (seed, epoch, sample index), the epoch's order by (seed, epoch), and the model-side RNG
states (torch, numpy, python) are saved with the optimiser and scheduler.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from stages.config import ConfigError, TrainConfig, without_execution
from stages.data.check import check_images
from stages.data.source import DatasetError, ImageDataset, LabeledImages, build_dataset, load_image
from stages.io import atomic_write_text
from stages.methods import Method, MethodContext, Progress, build_method
from stages.models.factory import create_clip
from stages.provenance import code_version, now, provenance
from stages.rundir import RunDir, RunRecord
from stages.training.distributed import DistInfo, TrainingStep, init_distributed
from stages.training.tracking import Tracker


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainingSamples(Dataset):
    """Samples addressed by ``(epoch, index)``; each one's crop and per-sample draw depend only on that key."""

    def __init__(self, source: LabeledImages, transform: Callable[[Any], torch.Tensor], seed: int,
                 draw: Callable[[], dict[str, int]] | None = None) -> None:
        """`draw`: the method's per-sample draw (``Method.sample_draw``), called after the crop."""
        self.source, self.transform, self.seed, self.draw = source, transform, seed, draw

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """The sample, or ``{"corrupt": message}`` for an unreadable image (see `collate_samples`)."""
        epoch, index = key
        # fork_rng keeps the caller's global RNG untouched (workers=0 runs in the main process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            try:
                image = self.transform(load_image(self.source.images[index]))
            except DatasetError as error:
                return {"corrupt": str(error)}
            drawn = self.draw() if self.draw is not None else {}
        return {"image": image, "label": self.source.labels[index], **drawn}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch the readable samples; ``"corrupt"`` lists the unreadable ones' messages (raised or counted in the loop)."""
    readable = [item for item in items if "corrupt" not in item]
    batch = default_collate(readable) if readable else {}
    batch["corrupt"] = [item["corrupt"] for item in items if "corrupt" in item]
    return batch


class EpochSampler(Sampler):
    """This epoch's permutation (seeded by (seed, epoch)) from position `start` on, as (epoch, index) keys.

    With W ranks, rank r takes every W-th key from r on, so the r-th shards of the k-th
    micro-batches of all ranks together are exactly the k-th global batch. The permutation's last
    ``size % W`` keys are dropped so that every rank gets as many (the feature gather needs equal
    shards, and a rank running out early would leave the others waiting in a collective).
    """

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start
        self.rank, self.world_size = rank, world_size
        self.end = size - size % world_size

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.end, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # 2**32 - 1 is a key no sample index uses.
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, 2**32 - 1))
        order = torch.randperm(self.size, generator=generator)[:self.end][self.start + self.rank::self.world_size]
        return ((self.epoch, int(index)) for index in order)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """lr multiplier: linear warm-up (t+1)/W for t < W, then cosine from 1 to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _resolve_device(config: TrainConfig) -> torch.device:
    if config.device == "auto":  # init_distributed made this rank's GPU the current one
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(config.device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32): auto is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


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


# --- one optimiser step -----------------------------------------------------------------------

@dataclass
class Optimisation:
    """What one optimiser step needs: the method (through DDP), AdamW, its schedule, AMP and clipping."""

    method: Method
    training_step: TrainingStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    grad_clip: float | None
    device: torch.device

    @classmethod
    def build(cls, method: Method, config: TrainConfig, total_steps: int, device: torch.device,
              dist_info: DistInfo) -> Optimisation:
        """AdamW (decay on every trained parameter, as the official code) with warm-up + cosine, AMP, DDP."""
        # The fused CUDA kernel does the whole AdamW update in one launch; CPU keeps the foreach default.
        optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=config.optim.lr,
                                      weight_decay=method.optimizer_weight_decay(), fused=device.type == "cuda")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      warmup_cosine(config.optim.warmup_steps, total_steps))
        dtype = autocast_dtype(config.precision, device)
        # fp16 needs loss scaling (its range underflows small gradients); a disabled scaler is a no-op.
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        return cls(method, TrainingStep(method, dist_info, device), optimizer, scheduler, scaler, dtype,
                   config.optim.grad_clip, device)


@dataclass
class StepResult:
    """One optimiser step's loss terms (means over its micro-batches), gradient norm and lr, all on the device."""

    terms: dict[str, torch.Tensor]
    grad_norm: torch.Tensor
    lr: float


def optimizer_step(parts: Optimisation, group: list[dict[str, torch.Tensor]], progress: Progress) -> StepResult:
    """One optimiser step over the micro-batches `group` (what ``make bench`` times); reads nothing back from the device."""
    method = parts.method
    method.begin_step(progress)
    parts.optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(parts.device.type, dtype=parts.autocast_dtype) if parts.autocast_dtype is not None
                else nullcontext())
    terms: dict[str, torch.Tensor] = {}
    for index, batch in enumerate(group):
        batch = {key: value.to(parts.device, non_blocking=True) for key, value in batch.items()}
        # DDP all-reduces the gradients in the last micro-batch's backward only.
        with parts.training_step.no_sync() if index < len(group) - 1 else nullcontext():
            with autocast:
                micro_terms = parts.training_step(batch, progress)
            parts.scaler.scale(sum(micro_terms.values()) / len(group)).backward()
        for name, value in micro_terms.items():
            addend = value.detach().float() / len(group)
            terms[name] = terms[name] + addend if name in terms else addend
    parts.scaler.unscale_(parts.optimizer)  # the true gradients (a no-op without fp16's scaler)
    parameters = [p for group_ in parts.optimizer.param_groups for p in group_["params"]]
    grad_norm = (torch.nn.utils.clip_grad_norm_(parameters, parts.grad_clip) if parts.grad_clip is not None
                 else torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]))
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    lr = parts.scheduler.get_last_lr()[0]
    parts.scheduler.step()
    method.after_optimizer_step(progress.step + 1)
    return StepResult(terms, grad_norm.detach().float(), lr)


# --- the log window ---------------------------------------------------------------------------

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

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files."""
        return self.dist.is_main

    def progress(self) -> Progress:
        """Where the step about to be taken stands."""
        return Progress(step=self.step, epoch=self.step // self.steps_per_epoch, total_steps=self.total_steps,
                        epochs=self.config.optim.epochs)

    def weights(self) -> dict[str, Any]:
        return RunDir.weights_payload(self.method.student, self.method.head_state(), self.config, self.step)

    def save_last(self) -> None:
        """The resumable checkpoint; the previous one is kept as ckpt/prev.pt (a corrupt last.pt falls back to it)."""
        if not self.writes:
            return
        payload = self.weights()
        payload.update(optimizer=self.parts.optimizer.state_dict(), scheduler=self.parts.scheduler.state_dict(),
                       best_val=self.best_val, teacher=self.method.teacher_state(), rng=_rng_states(),
                       config=self.record.config.model_dump(mode="json"), scaler=self.parts.scaler.state_dict())
        if self.run_dir.last.is_file():
            os.replace(self.run_dir.last, self.run_dir.prev)
        RunDir.save(self.run_dir.last, payload)


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
    saved = json.loads(run_dir.record_path.read_text())["config"] if run_dir.record_path.is_file() else None
    changes = [] if saved is None else config_changes(saved, config.model_dump(mode="json"))
    if changes:
        raise ConfigError(f"{run_dir.path} holds a finished run of another config ({'; '.join(changes)}): pass "
                          "another --out for the new config, or --force to retrain this directory with it")
    print(f"{run_dir.best} exists: run already finished, nothing to do")
    return True


def _check_train_images(source: LabeledImages, config: TrainConfig) -> None:
    """The pre-training image check (data.check); unreadable files stop the run unless data.skip_corrupt."""
    bad = check_images(source, decode=config.data.check == "decode")
    if not bad:
        return
    listing = f"{len(bad)} unreadable training image(s), e.g. {bad[0][0]} ({bad[0][1]})"
    if config.data.skip_corrupt:
        print(f"warning: {listing}: data.skip_corrupt is set, they will be skipped")
        return
    raise DatasetError(
        f"{listing}. Fix: replace them (list all with `python -m stages.data check --dataset {config.data.train_set} "
        f"--data-root {config.data.data_root} --split {config.data.train_split}`), or set data.skip_corrupt: true"
    )


def _drop_corrupt(group: list[dict[str, Any]], config: TrainConfig, skipped: list[str]) -> list[dict[str, Any]]:
    """The micro-batches without their unreadable images (recorded in `skipped`), or a `DatasetError` for the first."""
    kept = []
    for batch in group:
        corrupt = batch.pop("corrupt")
        if corrupt and not config.data.skip_corrupt:
            raise DatasetError(f"{corrupt[0]} (or set data.skip_corrupt: true to skip and count unreadable images)")
        skipped += corrupt
        if "label" in batch:
            kept.append(batch)
    return kept


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

    method = build_method(config.method, MethodContext(bundle, train_source.classnames, config, total_steps)).to(device)
    if config.grad_checkpointing:
        method.student.set_grad_checkpointing(True)  # open_clip: both towers recompute activations in backward
    if config.compile:
        method.compile_towers()  # compiled lazily, on the first step that calls each tower
    val_loader = None
    if config.select == "val":
        val_source = build_dataset(config.data.train_set, config.data.data_root, config.data.val_split,
                                   **config.data.dataset_options())
        val_loader = DataLoader(ImageDataset(val_source, bundle.preprocess_val), batch_size=micro_batch,
                                num_workers=config.data.workers)
    facts = provenance()
    record = RunRecord(config=config, model=config.model, method=config.method, code_version=code_version(facts["git"]),
                       provenance=facts, **method.record(), classnames=train_source.classnames,
                       train_size=len(train_source), steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                       device=str(device), world_size=dist_info.world_size)
    if dist_info.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_record(record)
    parts = Optimisation.build(method, config, total_steps, device, dist_info) if method.spec.trains else None
    return Training(config, run_dir, dist_info, device, method, parts,
                    TrainingSamples(train_source, bundle.preprocess_train, config.seed, method.sample_draw()),
                    val_loader, record, micro_batch, steps_per_epoch, total_steps)


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
    # Drop log lines written after the checkpoint we resume from (they will be redone).
    log_path = run.run_dir.log
    if run.writes and log_path.is_file():
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line).get("step", 0) <= run.step]
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))


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
            if run.writes:
                RunDir.save(run.run_dir.best_val, run.weights())
    run.save_last()


def finalise(run: Training) -> None:
    """best.pt (the last epoch's or the best validation epoch's weights), written last: the run is complete."""
    if run.skipped:
        print(f"data.skip_corrupt: skipped {len(run.skipped)} unreadable training image loads")
    if not run.writes:
        return
    payload = (torch.load(run.run_dir.best_val, map_location="cpu", weights_only=True)
               if run.config.select == "val" else run.weights())
    run.run_dir.write_record(run.record.model_copy(update={"finished": now()}))
    RunDir.save(run.run_dir.best, payload)


def train(config: TrainConfig, run_dir: RunDir | Path, force: bool = False) -> Path:
    """Run (or resume, or skip if finished) one training run into `run_dir`; return its best.pt.

    A finished run of another config (execution-only settings aside) is refused with the
    differing fields, unless `force` (retrain from scratch). Under torchrun every rank runs this
    function on its shard of each global batch; only rank 0 writes files.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    if _finished(run_dir, config, force):
        return run_dir.best
    run = setup(config, run_dir)
    if not run.method.spec.trains:  # zero-shot: the pretrained weights are the result
        finalise(run)
        return run_dir.best
    restore(run)
    optim, method = config.optim, run.method
    method.train()
    progress_bar = tqdm(total=run.total_steps, initial=run.step, desc=f"{config.method} {run_dir.path.name}",
                        unit="step", disable=not run.writes)
    tracker = Tracker(run_dir, config.tracking, run.record.config.model_dump(mode="json"), enabled=run.writes)
    window = LogWindow(run.device, run.dist.world_size)
    with open(run_dir.log if run.writes else os.devnull, "a", encoding="utf-8") as log:

        def write_row(epoch: int, lr: float, progress: Progress) -> None:
            row = window.row(run.step, epoch, lr, method.log_values(progress))
            if row is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
                tracker.log(row)
                progress_bar.set_postfix(loss=f"{row['loss']:.4f}")

        while run.step < run.total_steps:
            epoch, step_in_epoch = divmod(run.step, run.steps_per_epoch)
            sampler = EpochSampler(len(run.samples), config.seed, epoch, start=step_in_epoch * optim.batch_size,
                                   rank=run.dist.rank, world_size=run.dist.world_size)
            micro_batches = iter(DataLoader(run.samples, batch_size=run.micro_batch, sampler=sampler,
                                            num_workers=config.data.workers, pin_memory=run.device.type == "cuda",
                                            collate_fn=collate_samples))
            for _ in range(step_in_epoch, run.steps_per_epoch):
                group = [batch for _, batch in zip(range(optim.accum_steps), micro_batches)]
                if not group:
                    break
                group = _drop_corrupt(group, config, run.skipped)
                progress = run.progress()
                result = optimizer_step(run.parts, group, progress)
                run.step += 1
                window.add(result, sum(len(batch["label"]) for batch in group))
                progress_bar.update()
                checkpoint = run.step % config.checkpoint_every == 0 or run.step % run.steps_per_epoch == 0
                if run.step % config.log_every == 0 or checkpoint:
                    write_row(epoch, result.lr, progress)
                # The epoch's last step is checkpointed after validation, so a resume never skips it.
                if checkpoint and run.step % run.steps_per_epoch != 0:
                    run.save_last()
            end_of_epoch(run, epoch, log, tracker)
    progress_bar.close()
    tracker.close()
    finalise(run)
    return run_dir.best
