"""The one training loop every method shares, top to bottom.

setup (model, data, method, optimiser, schedule) -> resume from ckpt/last.pt if present ->
for each epoch: for each optimiser step: accumulate micro-batches, sum the method's loss
terms, step, log, checkpoint -> per-epoch validation / checkpoint -> best.pt (written last).

Resuming is exact on CPU: every random draw of a sample (crop, descriptor) is seeded by
(seed, epoch, sample index), the epoch's order by (seed, epoch), and the model-side RNG states
(torch, numpy, python) are saved with the optimiser and scheduler.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from stages.config import ConfigError, TrainConfig, without_execution
from stages.data.check import check_images
from stages.data.source import DatasetError, ImageDataset, LabeledImages, build_dataset, load_image
from stages.descriptors.bank import load_bank
from stages.io import atomic_torch_save, atomic_write_json, atomic_write_text
from stages.models.factory import create_clip
from stages.provenance import code_version, now, provenance
from stages.training.checkpoint import BEST, LAST, PREV, load_resume_state
from stages.training.distributed import TrainingStep, init_distributed
from stages.training.methods import Method, MethodContext, build_method
from stages.training.tracking import Tracker

BEST_VAL = Path("ckpt") / "best_val.pt"
LOG = "train_log.jsonl"


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainingSamples(Dataset):
    """Samples addressed by ``(epoch, index)``; each one's crop and descriptor draw depend only on that key."""

    def __init__(self, source: LabeledImages, transform: Callable[[Any], torch.Tensor], seed: int,
                 num_descriptors: int) -> None:
        self.source, self.transform, self.seed, self.num_descriptors = source, transform, seed, num_descriptors

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
            descriptor_index = int(torch.randint(self.num_descriptors, ()))  # uniform, as the official code
        return {"image": image, "label": self.source.labels[index], "descriptor_index": descriptor_index}


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


def lambda_at(lam: float, decay: str, epoch: int, epochs: int, step: int, total_steps: int) -> float:
    """λ of the Star term now: per epoch λ(1-(e+1)/E) (official code), per step λ(1-t/T), or constant."""
    if decay == "epoch":
        return lam * (1.0 - (epoch + 1) / epochs)
    if decay == "step":
        return lam * (1.0 - step / max(1, total_steps))
    return lam


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


def _weights_payload(method: Method, config: TrainConfig, step: int) -> dict[str, Any]:
    return {"state_dict": {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                           for k, v in method.student.state_dict().items()},
            "head": method.head_state(), "model_name": config.model.name, "pretrained": config.model.pretrained,
            "method": config.method, "step": step}


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


def _finished(run_dir: Path, config: TrainConfig, force: bool) -> bool:
    """Whether `run_dir` already holds this run's best.pt; refuse another config's; clear it all under `force`."""
    if not (run_dir / BEST).is_file():
        return False
    if force:
        print(f"--force: retraining {run_dir} from scratch")
        for relative in (BEST, LAST, PREV, BEST_VAL, LOG):
            (run_dir / relative).unlink(missing_ok=True)
        return False
    run_json = run_dir / "run.json"
    saved = json.loads(run_json.read_text())["config"] if run_json.is_file() else None
    changes = [] if saved is None else config_changes(saved, config.model_dump(mode="json"))
    if changes:
        raise ConfigError(f"{run_dir} holds a finished run of another config ({'; '.join(changes)}): pass another "
                          "--out for the new config, or --force to retrain this directory with it")
    print(f"{run_dir / BEST} exists: run already finished, nothing to do")
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


def train(config: TrainConfig, run_dir: Path, force: bool = False) -> Path:
    """Run (or resume, or skip if finished) one training run into `run_dir`; return the best.pt path.

    A finished run of another config (execution-only settings aside) is refused with the
    differing fields, unless `force` (retrain from scratch). Under torchrun every rank runs this
    function on its shard of each global batch; only rank 0 writes files.
    """
    run_dir = Path(run_dir)
    if _finished(run_dir, config, force):
        return run_dir / BEST
    dist_info = init_distributed()
    device = _resolve_device(config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    # --- model, data, method ---------------------------------------------------------------
    bundle = create_clip(config.model.name, config.model.pretrained, device=device)
    train_source = build_dataset(config.data.train_set, config.data.data_root, config.data.train_split,
                                 **config.data.dataset_options())
    if config.data.check != "none" and dist_info.is_main:
        _check_train_images(train_source, config)
    bank_sha256, descriptors = None, ["{}."]
    if config.method == "starft" and config.spurious.suffix == "spurious":
        bank = load_bank(config.spurious.bank)
        bank_sha256, descriptors = bank.sha256, bank.descriptors(config.spurious.concept)
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
    method = build_method(config.method, MethodContext(bundle, train_source.classnames, config, descriptors,
                                                      total_steps)).to(device)
    if config.grad_checkpointing:
        method.student.set_grad_checkpointing(True)  # open_clip: both towers recompute activations in backward
    if config.compile:
        method.compile_towers()  # compiled lazily, on the first step that calls each tower
    samples = TrainingSamples(train_source, bundle.preprocess_train, config.seed, len(descriptors))
    val_loader = None
    if config.select == "val":
        val_source = build_dataset(config.data.train_set, config.data.data_root, config.data.val_split,
                                   **config.data.dataset_options())
        val_loader = DataLoader(ImageDataset(val_source, bundle.preprocess_val), batch_size=micro_batch,
                                num_workers=config.data.workers)

    writes = dist_info.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    facts = provenance()
    run_record = {
        "config": config.model_dump(mode="json"), "model": config.model.model_dump(mode="json"),
        "method": config.method, "code_version": code_version(facts["git"]), "provenance": facts,
        "bank_sha256": bank_sha256,
        "num_descriptors": len(descriptors) if bank_sha256 else 0, "classnames": train_source.classnames,
        "train_size": len(train_source), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
        "device": str(device), "world_size": dist_info.world_size,
    }
    if writes:
        atomic_write_json(run_dir / "run.json", run_record)

    if not method.trains:  # zeroshot: the pretrained weights are the result
        if writes:
            atomic_torch_save(run_dir / BEST, _weights_payload(method, config, 0))
        return run_dir / BEST

    # --- optimiser and schedule (AdamW, decay on every parameter as the official code) ---------
    # The fused CUDA kernel does the whole AdamW update in one launch; CPU keeps the foreach default.
    parameters = method.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=optim.lr, weight_decay=method.optimizer_weight_decay(),
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(optim.warmup_steps, total_steps))
    dtype = autocast_dtype(config.precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    # fp16 needs loss scaling (its range underflows small gradients); a disabled scaler is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # --- resume ------------------------------------------------------------------------------
    step, best_val = 0, -1.0
    state = load_resume_state(run_dir)
    if state is not None and (state.get("config") is None or config_changes(state["config"], run_record["config"])):
        # Resuming someone else's optimiser state would silently mix two runs.
        print(f"{run_dir / LAST} was written by a different config: starting this run from scratch")
        state = None
    if state is not None:
        method.student.load_state_dict(state["state_dict"])
        if state["head"] is not None:
            method.load_head_state(state["head"])
        if state.get("teacher") is not None:
            method.load_teacher_state(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, best_val = state["step"], state["best_val"]
        _set_rng_states(state["rng"])
        print(f"resuming {run_dir} from step {step}/{total_steps}")
    # Drop log lines written after the checkpoint we resume from (they will be redone).
    log_path = run_dir / LOG
    if writes and log_path.is_file():
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))

    def save_last() -> None:
        if not writes:
            return
        payload = _weights_payload(method, config, step)
        payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), best_val=best_val,
                       teacher=method.teacher_state(), rng=_rng_states(), config=run_record["config"],
                       scaler=scaler.state_dict())
        if (run_dir / LAST).is_file():  # keep the previous checkpoint: a corrupt last.pt falls back to it
            os.replace(run_dir / LAST, run_dir / PREV)
        atomic_torch_save(run_dir / LAST, payload)

    # Loss terms are summed on the device and read (one host-device sync) only when a row is
    # written: every `log_every` steps and at each checkpoint, so a resumed run's rows are the
    # uninterrupted run's.
    window: dict[str, torch.Tensor] = {}
    window_grad_norm = torch.zeros((), device=device)
    window_steps = window_samples = 0
    window_started = time.perf_counter()

    def write_row(epoch: int, lr: float, lam: float) -> None:
        nonlocal window, window_grad_norm, window_steps, window_samples, window_started
        if not window_steps:
            return
        names = list(window)
        values = (torch.stack([window[name] for name in names] + [window_grad_norm]) / window_steps).tolist()
        means, grad_norm = dict(zip(names, values)), values[-1]
        record = {"step": step, "epoch": epoch, "lr": lr, "lam": lam, "steps": window_steps,
                  "loss": sum(means.values()), **{f"loss_{name}": value for name, value in means.items()},
                  "samples_per_s": dist_info.world_size * window_samples / (time.perf_counter() - window_started),
                  "grad_norm": grad_norm}
        log.write(json.dumps(record) + "\n")
        log.flush()
        tracker.log(record)
        progress.set_postfix(loss=f"{record['loss']:.4f}", lam=f"{lam:.3g}")
        window, window_steps, window_samples, window_started = {}, 0, 0, time.perf_counter()
        window_grad_norm = torch.zeros((), device=device)

    training_step = TrainingStep(method, dist_info, device)  # DDP over the ranks (after resume: rank 0's weights)

    # --- the loop ----------------------------------------------------------------------------
    skipped: list[str] = []
    method.train()
    progress = tqdm(total=total_steps, initial=step, desc=f"{config.method} {run_dir.name}", unit="step",
                    disable=not writes)
    tracker = Tracker(run_dir, config.tracking, run_record["config"], enabled=writes)
    with open(log_path if writes else os.devnull, "a", encoding="utf-8") as log:
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            sampler = EpochSampler(len(samples), config.seed, epoch, start=step_in_epoch * optim.batch_size,
                                   rank=dist_info.rank, world_size=dist_info.world_size)
            loader = DataLoader(samples, batch_size=micro_batch, sampler=sampler, num_workers=config.data.workers,
                                pin_memory=device.type == "cuda", collate_fn=collate_samples)
            micro_batches = iter(loader)
            for _ in range(step_in_epoch, steps_per_epoch):
                lam = (lambda_at(config.lam, config.spurious.decay, epoch, optim.epochs, step, total_steps)
                       if method.uses_lambda else 0.0)
                method.begin_step(step)
                optimizer.zero_grad(set_to_none=True)
                group = [batch for _, batch in zip(range(optim.accum_steps), micro_batches)]
                if not group:
                    break
                group = _drop_corrupt(group, config, skipped)
                for index, batch in enumerate(group):
                    batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
                    # DDP all-reduces the gradients in the last micro-batch's backward only.
                    with training_step.no_sync() if index < len(group) - 1 else nullcontext():
                        with autocast():
                            terms = training_step(batch, lam)
                        scaler.scale(sum(terms.values()) / len(group)).backward()
                    for name, value in terms.items():
                        addend = value.detach().float() / len(group)
                        window[name] = window[name] + addend if name in window else addend
                scaler.unscale_(optimizer)  # the true gradients (a no-op without fp16's scaler)
                grad_norm = (torch.nn.utils.clip_grad_norm_(parameters, optim.grad_clip) if optim.grad_clip is not None
                             else torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None]))
                window_grad_norm = window_grad_norm + grad_norm.detach().float()  # on the device: no sync
                scaler.step(optimizer)
                scaler.update()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                method.after_optimizer_step(step)
                window_steps += 1
                window_samples += sum(len(b["label"]) for b in group)
                progress.update()
                checkpoint = step % config.checkpoint_every == 0 or step % steps_per_epoch == 0
                if step % config.log_every == 0 or checkpoint:
                    write_row(epoch, lr, lam)
                # The epoch's last step is checkpointed after validation, so a resume never skips it.
                if checkpoint and step % steps_per_epoch != 0:
                    save_last()
            if val_loader is not None:
                top1 = _validate(method, val_loader, device)
                log.write(json.dumps({"step": step, "epoch": epoch, "val_top1": top1}) + "\n")
                tracker.log({"step": step, "epoch": epoch, "val_top1": top1})
                log.flush()
                if top1 > best_val:
                    best_val = top1
                    if writes:
                        atomic_torch_save(run_dir / BEST_VAL, _weights_payload(method, config, step))
            save_last()
    progress.close()
    tracker.close()
    if skipped:
        print(f"data.skip_corrupt: skipped {len(skipped)} unreadable training image loads")

    if config.select == "val":
        payload = torch.load(run_dir / BEST_VAL, map_location="cpu", weights_only=True)
    else:
        payload = _weights_payload(method, config, step)
    if writes:
        atomic_write_json(run_dir / "run.json", {**run_record, "finished": now()})
        atomic_torch_save(run_dir / BEST, payload)  # written last: its presence means the run is complete
    return run_dir / BEST
