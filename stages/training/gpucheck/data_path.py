"""Section 2: how many training images per second the loop's data path delivers on this machine.

A generated ImageNet-like JPEG folder (``stages.data.synthetic.imagenet_like_folder``) is read as
the registered ``imagefolder`` dataset and pushed through what training runs: `TrainingSamples`
(per-sample seeded crop, StarFT's descriptor draw), the loop's epoch DataLoader
(`stages.training.loop.train_loader`: `EpochSampler` order, `collate_samples`, the workers, pinned
memory on CUDA) and the model's train transform, each batch then copied to the device. The files were
just written, so they sit in the page cache: this is decode + transform + collate + copy, not a cold
disk or a network file system (point ``--work-dir`` there to time one).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

from stages.data.source import LabeledImages, build_dataset
from stages.data.synthetic import imagenet_like_folder
from stages.methods.starft import draw_descriptor
from stages.models.factory import create_clip
from stages.training.gpucheck.settings import DataSettings
from stages.training.loop import EpochSampler, TrainingSamples, train_loader

OFFICIAL_DESCRIPTORS = 58  # the official background bank's size: StarFT's per-sample draw


def measure_data_path(settings: DataSettings, root: Path, workers: int, device: torch.device,
                      seed: int = 0) -> dict[str, Any]:
    """Write the folder under `root`, then time one pass of `settings.samples` samples.

    ``images_per_s`` is the steady rate: the samples after the first `workers` batches over the time
    after that batch arrived (by then every worker is busy; before it, worker start-up and the
    first batches' latency dominate). ``images_per_s_with_startup`` counts the whole pass."""
    started = time.perf_counter()
    folder = imagenet_like_folder(root, settings.files, settings.classes, (settings.width, settings.height), seed=seed)
    generated_s = time.perf_counter() - started
    files = build_dataset("imagefolder", root, "train")
    repeats = -(-settings.samples // len(files))
    source = LabeledImages(name="imagenet-like", classnames=files.classnames,
                           images=list(files.images) * repeats, labels=list(files.labels) * repeats)
    transform = create_clip(settings.arch, "none").preprocess_train  # only its transform is used
    samples = TrainingSamples(source, transform, seed, functools.partial(draw_descriptor, OFFICIAL_DESCRIPTORS))
    sampler = EpochSampler(min(settings.samples, len(source)), seed, epoch=0)
    loader = train_loader(samples, settings.micro_batch, sampler, workers, device, timeout=120.0)

    arrivals: list[tuple[float, int]] = []  # (seconds since the pass began, images so far)
    count = 0
    begun = time.perf_counter()
    for batch in loader:
        if batch["corrupt"]:
            raise RuntimeError(f"unreadable generated image: {batch['corrupt'][0]}")
        batch["image"].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        count += len(batch["label"])
        arrivals.append((time.perf_counter() - begun, count))
        if arrivals[-1][0] > settings.max_seconds:
            break
    total_s = arrivals[-1][0]
    del loader
    warm = min(max(workers, 1), len(arrivals) - 1)
    if warm >= 1:
        (t0, n0), (t1, n1) = arrivals[warm - 1], arrivals[-1]
        steady = (n1 - n0) / (t1 - t0) if t1 > t0 else None
    else:
        steady = None
    rate = steady if steady is not None else count / total_s
    return {
        "folder": {**folder, "generated_s": generated_s, "root": str(root)},
        "arch": settings.arch, "transform": repr(transform).replace("\n", " "),
        "workers": workers, "micro_batch": settings.micro_batch, "device": str(device),
        "pin_memory": device.type == "cuda", "samples_timed": count, "batches": len(arrivals),
        "pass_s": total_s, "first_batch_s": arrivals[0][0],
        "stopped_early": count < len(sampler),
        "images_per_s": rate, "images_per_s_with_startup": count / total_s,
        "images_per_s_per_worker": rate / workers if workers else rate,
        "steady_from_batch": warm + 1 if steady is not None else None,
    }


def data_verdict(data: dict[str, Any] | None, step: dict[str, Any] | None) -> dict[str, Any]:
    """Which one bounds a run, per method: the loader's images/s vs the step's samples/s.

    The loader's workers run beside the step (prefetching), so a run goes at about the slower of the
    two; ``headroom`` = images/s / samples/s (< 1: data-bound), and ``workers_needed`` the workers
    that would keep up at the measured rate per worker (scaling assumed linear in the workers)."""
    if data is None or step is None:
        missing = [name for name, part in (("data path", data), ("step benchmark", step)) if part is None]
        return {"bound": None, "note": f"no verdict: the {' and the '.join(missing)} did not run", "methods": {}}
    per_worker = data["images_per_s_per_worker"]
    methods = {}
    for name, record in step["methods"].items():
        headroom = data["images_per_s"] / record["samples_per_s"]
        methods[name] = {
            "step_samples_per_s": record["samples_per_s"], "data_images_per_s": data["images_per_s"],
            "headroom": headroom, "bound": "data-bound" if headroom < 1 else "compute-bound",
            "workers_needed": (-(-record["samples_per_s"] // per_worker) if data["workers"] and per_worker else None),
        }
    key = "starft" if "starft" in methods else next(iter(methods))
    return {"bound": methods[key]["bound"], "method": key, "methods": methods,
            "note": f"{key}: {methods[key]['bound']} (data {data['images_per_s']:.0f} images/s with "
                    f"{data['workers']} workers vs step {methods[key]['step_samples_per_s']:.0f} samples/s, "
                    f"headroom {methods[key]['headroom']:.2f}x)"}

