"""Exact accumulation's price: a batch as 1 x B against k x B/k (gradient caching, and independent), time and memory.

``python -m stages.training.bench --accum-compare --arch ViT-B-16 --batch-size 512 --micro-batch 64``
runs one training step of the method (default starft) as the loop runs it (`optimizer_step` with
``optim.accum_steps`` = B / micro-batch), once per setting, each in a fresh process so that its
peak memory is its own: ``1xB`` (one micro-batch), ``kxm-exact`` (stages/training/gradcache.py) and
``kxm-independent``. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the steps
(everything the process holds: weights, teacher, AdamW state, activations); on CPU the process's
RSS high-water (``VmHWM``, reset just before the first step) minus its RSS then, i.e. what the steps added
on top of the built method (allocator caching included). Output ``results/bench/<arch>-accum.json``
and a markdown summary beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from stages.config import TrainConfig
from stages.descriptors.bank import load_bank
from stages.io import atomic_write_json, atomic_write_text
from stages.methods import MethodContext, Progress, build_method
from stages.models.factory import create_clip
from stages.training.bench.run import bench_classnames, resolve_device, synthetic_batch
from stages.training.bench.timing import autocast_for, timed
from stages.training.distributed import DistInfo
from stages.training.loop import Optimisation, optimizer_step


def _status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of /proc/self/status in bytes (the kernel reports kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (the CPU memory measure needs Linux)")


def _reset_rss_high_water() -> int:
    """Reset this process's RSS high-water mark to its current RSS and return that RSS in bytes.

    Writing 5 to /proc/self/clear_refs (Linux >= 4.0) resets VmHWM, so the peak read after the steps
    is the steps' own even when the process ran something bigger before (an in-process caller, a test
    session); without the reset, the lifetime ``ru_maxrss`` minus the current RSS measures nothing.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmHWM")


def measure_setting(args: argparse.Namespace, accum_steps: int, mode: str) -> dict[str, Any]:
    """One setting in this process: build the method, run warm-up + timed steps of batch B as `accum_steps` micro-batches."""
    device = resolve_device(args.device)
    precision = "fp32" if autocast_for(args.precision, device) is nullcontext else "bf16"
    method_name = args.methods[0] if args.methods else "starft"
    config = TrainConfig.model_validate({
        "model": {"name": args.arch, "pretrained": args.pretrained}, "method": method_name, "lam": args.lam,
        "spurious": {"bank": str(args.bank), "concept": args.concept, "decay": "none"},
        "precision": precision, "device": str(device),
        "optim": {"batch_size": args.batch_size, "accum_steps": accum_steps, "accum": mode},
    })
    torch.manual_seed(args.seed)
    bundle = create_clip(args.arch, args.pretrained, device=device)
    context = MethodContext.from_config(bundle, bench_classnames(args.classes), config,
                                         total_steps=args.warmup + args.steps)
    method = build_method(method_name, context).to(device)
    method.train()
    parts = Optimisation.build(method, config, context.total_steps, device, DistInfo())
    progress = Progress(step=1, epoch=0, total_steps=context.total_steps, epochs=config.optim.epochs)
    descriptors = len(load_bank(args.bank).descriptors(args.concept))
    generator = torch.Generator().manual_seed(args.seed)
    micro = args.batch_size // accum_steps
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = _reset_rss_high_water() if device.type != "cuda" else 0
    times = []
    for index in range(args.warmup + args.steps):
        batch = synthetic_batch(generator, args.batch_size, bundle.image_size, args.classes, descriptors, device)
        group = [{key: value[i * micro:(i + 1) * micro] for key, value in batch.items()} for i in range(accum_steps)]
        seconds = timed(lambda: optimizer_step(parts, group, progress), device)
        if index >= args.warmup:
            times.append(seconds)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        source = "torch.cuda.max_memory_allocated (whole process: weights, teacher, AdamW state, activations)"
    else:
        peak = _status_bytes("VmHWM") - before
        source = "RSS high-water (VmHWM, reset before the first step) minus RSS then (CPU: what the steps added)"
    step_time = statistics.median(times)
    return {"accum_steps": accum_steps, "micro_batch": micro, "accum": parts.accum, "step_time_s": step_time,
            "step_times_s": times, "samples_per_s": args.batch_size / step_time, "peak_memory_mb": peak / 2**20,
            "peak_memory_source": source, "method": method_name, "precision": precision, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads()}


def settings(batch_size: int, micro_batch: int) -> list[tuple[str, int, str]]:
    """(label, accum_steps, accum) of the compared settings."""
    if micro_batch < 1 or batch_size % micro_batch or micro_batch == batch_size:
        raise ValueError(f"--micro-batch {micro_batch} must divide --batch-size {batch_size} and be smaller")
    k = batch_size // micro_batch
    return [(f"1x{batch_size}", 1, "independent"), (f"{k}x{micro_batch}-exact", k, "exact"),
            (f"{k}x{micro_batch}-independent", k, "independent")]


def run_accum_compare(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Each setting in a fresh process (its own peak memory), the record, and the summary files."""
    results: dict[str, Any] = {}
    for label, accum_steps, mode in settings(args.batch_size, args.micro_batch):
        print(f"[bench] accum-compare: {label}", file=sys.stderr)
        worker = [sys.executable, "-m", "stages.training.bench", *argv, "--accum-worker", f"{accum_steps},{mode}"]
        done = subprocess.run(worker, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"accum-compare setting {label} failed (exit {done.returncode}); its stderr is above")
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    first = next(iter(results.values()))
    labels = list(results)
    record = {
        "arch": args.arch, "batch_size": args.batch_size, "micro_batch": args.micro_batch,
        "method": first["method"], "device": first["device"], "device_name": first["device_name"],
        "precision": first["precision"], "steps": args.steps, "warmup": args.warmup, "classes": args.classes,
        "torch": torch.__version__, "threads": first["threads"], "peak_memory_source": first["peak_memory_source"],
        "settings": results,
        "ratios": {
            "exact_time_over_single": results[labels[1]]["step_time_s"] / results[labels[0]]["step_time_s"],
            "exact_time_over_independent": results[labels[1]]["step_time_s"] / results[labels[2]]["step_time_s"],
            "exact_memory_over_single": (results[labels[1]]["peak_memory_mb"] / results[labels[0]]["peak_memory_mb"]
                                         if results[labels[0]]["peak_memory_mb"] > 0 else None),
        },
    }
    out = args.out if args.out_given else Path("results") / "bench" / f"{args.arch}-accum.json"
    summary = render_accum(record)
    atomic_write_json(out, record)
    atomic_write_text(out.with_suffix(".md"), summary)
    print(summary)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return record


def render_accum(record: dict[str, Any]) -> str:
    lines = [f"# Accumulation: {record['arch']} {record['method']}, batch {record['batch_size']}, "
             f"{record['device_name']} ({record['precision']})", "",
             "| setting | step (ms) | samples/s | peak memory (MB) |", "|---|---:|---:|---:|"]
    for label, result in record["settings"].items():
        lines.append(f"| {label} | {result['step_time_s'] * 1e3:.1f} | {result['samples_per_s']:.1f} "
                     f"| {result['peak_memory_mb']:.0f} |")
    ratios = record["ratios"]
    memory = ratios["exact_memory_over_single"]
    lines += ["", f"- exact / one micro-batch step time: {ratios['exact_time_over_single']:.3f}; "
              f"exact / independent: {ratios['exact_time_over_independent']:.3f}",
              f"- exact / one micro-batch peak memory: {'-' if memory is None else f'{memory:.3f}'}",
              f"- peak memory: {record['peak_memory_source']}",
              f"- median of {record['steps']} steps after {record['warmup']} warm-up, each setting in its own "
              f"process; torch {record['torch']}, {record['threads']} threads"]
    return "\n".join(lines) + "\n"
