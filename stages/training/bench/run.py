"""The benchmark's rounds: every method on the same batches, interleaved, and the result record."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import resource
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from torch import Tensor

from stages.config import TrainConfig
from stages.descriptors.bank import load_bank
from stages.models.factory import create_clip
from stages.training.bench.flops import counting_flops, peak_flops
from stages.training.bench.reference import REFERENCE
from stages.training.bench.timing import autocast_for, build_candidate, measure_eval, state_bytes, step_peak_bytes, timed

METHODS = ("ft", "flyp", "starft", REFERENCE)
DEFAULT_BANK = Path("descriptor_banks/official-code.json")
# Issue 7's targets; reported, never asserted.
TARGETS = {"starft_over_flyp_max": 1.30, "reference_over_starft_min": 1.25}


def bench_classnames(count: int) -> list[str]:
    """`count` ImageNet class names spread evenly over the 1000 (realistic caption lengths)."""
    if not 1 <= count <= len(IMAGENET_CLASSNAMES):
        raise ValueError(f"--classes must be between 1 and {len(IMAGENET_CLASSNAMES)}, got {count}")
    return [IMAGENET_CLASSNAMES[i * len(IMAGENET_CLASSNAMES) // count] for i in range(count)]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synthetic_batch(
    generator: torch.Generator, batch_size: int, image_size: int, classes: int, descriptors: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Random normalised-looking images, uniform labels and uniform descriptor indices."""
    return {
        "image": torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device),
        "label": torch.randint(classes, (batch_size,), generator=generator).to(device),
        "descriptor_index": torch.randint(descriptors, (batch_size,), generator=generator).to(device),
    }


def _ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    return numerator["step_time_s"] / denominator["step_time_s"]


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Build the methods, time them interleaved, and return the result record."""
    device = resolve_device(args.device)
    autocast = autocast_for(args.precision, device)
    precision = "fp32" if autocast is nullcontext else "bf16"
    descriptors = load_bank(args.bank).descriptors(args.concept)
    classnames = bench_classnames(args.classes)
    config = TrainConfig.model_validate({
        "model": {"name": args.arch, "pretrained": args.pretrained}, "method": "starft", "lam": args.lam,
        "spurious": {"bank": str(args.bank), "concept": args.concept, "decay": "none"},  # λ_e = λ at every step
        "precision": precision, "device": str(device),
    })
    torch.manual_seed(args.seed)
    bundle = create_clip(args.arch, args.pretrained, device=device)
    # Every method gets its own copy of the same initial weights, all taken before any method
    # touches them (ft freezes its text tower in place).
    models = [bundle.model, *(copy.deepcopy(bundle.model) for _ in args.methods[1:])]
    candidates = []
    for name, model in zip(args.methods, models):
        print(f"[bench] building {name}", file=sys.stderr)
        candidates.append(build_candidate(name, dataclasses.replace(bundle, model=model), classnames, config,
                                          args.warmup + args.steps, device))

    generator = torch.Generator().manual_seed(args.seed)
    image_size = bundle.image_size

    def next_batch() -> dict[str, Tensor]:
        return synthetic_batch(generator, args.batch_size, image_size, args.classes, len(descriptors), device)

    # Round 0 is a warm-up round: its steps are the ones whose FLOPs are counted (eagerly).
    for round_index in range(args.warmup + args.steps):
        batch = next_batch()
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            step = functools.partial(candidate.step, batch)
            if round_index == 0:
                candidate.flops_per_step = counting_flops(step)
                if args.compile:
                    candidate.method.compile_towers()
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            seconds = timed(step, device)
            if device.type == "cuda":
                candidate.step_peak_bytes = max(candidate.step_peak_bytes,
                                                torch.cuda.max_memory_allocated(device) - before)
            if round_index >= args.warmup:
                candidate.step_times.append(seconds)
        print(f"[bench] round {round_index + 1}/{args.warmup + args.steps}"
              f"{' (warm-up)' if round_index < args.warmup else ''}", file=sys.stderr)

    if device.type == "cuda":  # one more step each with gradient checkpointing: the memory it saves
        batch = next_batch()
        for candidate in candidates:
            candidate.method.student.set_grad_checkpointing(True)
            candidate.checkpointed_peak_bytes = step_peak_bytes(
                functools.partial(candidate.step, batch), device)
            candidate.method.student.set_grad_checkpointing(False)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak, peak_source = peak_flops(device_name, args.peak_tflops)
    methods: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        step_time = statistics.median(candidate.step_times)
        state = state_bytes(candidate.method, candidate.parts.optimizer)
        achieved = candidate.flops_per_step / step_time
        methods[candidate.name] = {
            "step_time_s": step_time,
            "step_times_s": candidate.step_times,
            "samples_per_s": args.batch_size / step_time,
            "flops_per_step": candidate.flops_per_step,
            "tflops_per_s": achieved / 1e12,
            "mfu": achieved / peak if peak else None,
            "state_memory_mb": state / 2**20,
            "peak_memory_mb": (state + candidate.step_peak_bytes) / 2**20 if device.type == "cuda" else None,
            "peak_memory_checkpointed_mb": ((state + candidate.checkpointed_peak_bytes) / 2**20
                                            if device.type == "cuda" else None),
        }
    eval_result = measure_eval(candidates[0].method.student, args.batch_size, image_size, args.steps, args.warmup,
                               autocast, device, generator)
    if device.type == "cuda":
        process_peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB
    return {
        "arch": args.arch, "pretrained": args.pretrained, "device": str(device),
        "device_name": device_name or "cpu",
        "precision": precision, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
        "classes": args.classes, "descriptors": len(descriptors), "lam": args.lam, "compile": args.compile,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "peak_flops": peak, "peak_source": peak_source,
        "methods": methods, "eval": eval_result, "process_peak_memory_mb": process_peak,
        "ratios": {
            "starft_over_flyp": _ratio(methods.get("starft"), methods.get("flyp")),
            "reference_over_starft": _ratio(methods.get(REFERENCE), methods.get("starft")),
        },
        "targets": TARGETS,
    }
