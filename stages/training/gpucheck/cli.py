"""``python -m stages.training.gpucheck [--smoke]``: is this GPU ready for a fast real run? (options, sections, files)."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from stages.io import atomic_write_json, atomic_write_text
from stages.provenance import now
from stages.training.gpucheck.settings import BUDGET_S, GPU, SMOKE, Preset, describe

SECTION_NAMES = ("step", "data", "end_to_end", "accumulation")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.training.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run: the same sections at tiny sizes, fp32, gloo (what CI runs)")
    parser.add_argument("--device", default=None, help="cuda or cuda:N (default: cuda; cpu with --smoke)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loader workers of the data path (default: this machine's CPUs)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak for MFU when the device is not in the table")
    parser.add_argument("--sections", default=",".join(SECTION_NAMES),
                        help=f"comma-separated subset of {','.join(SECTION_NAMES)}")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the generated folders and the tiny run go (default: a temporary folder on "
                        "the local disk, removed afterwards unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, run dir, images)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/bench/gpu_check.json; gpu_check-smoke.json with --smoke); "
                        "the markdown summary goes beside it")
    args = parser.parse_args(argv)
    args.sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(args.sections) - set(SECTION_NAMES))
    if unknown or not args.sections:
        parser.error(f"--sections: unknown {unknown}; choose from {','.join(SECTION_NAMES)}")
    if args.device is None:
        args.device = "cpu" if args.smoke else "cuda"
    if args.out is None:
        args.out = Path("results") / "bench" / ("gpu_check-smoke.json" if args.smoke else "gpu_check.json")
    return args


def cpu_count() -> int:
    """CPUs this process may run on (the scheduler's affinity, not the host's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_facts(device: torch.device) -> dict[str, Any]:
    """torch, CUDA, the device, its memory and driver, the CPUs."""
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpus": cpu_count(),
                             "cuda_available": torch.cuda.is_available(), "device_name": "cpu"}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts |= {"device_name": properties.name, "gpu_memory_gb": properties.total_memory / 1e9,
                  "capability": f"{properties.major}.{properties.minor}",
                  "bf16_supported": torch.cuda.is_bf16_supported(), "driver": None}
        try:
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
            facts["driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            pass
    return facts


def run_section(settings: Any, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One section: its settings, status (ok, skipped, failed), wall time, result or error (never raises)."""
    started = time.perf_counter()
    section: dict[str, Any] = {"settings": dataclasses.asdict(settings)}
    try:
        result = run()
        section["status"] = result.get("status", "ok")
        section["result"] = result
    except Exception as error:  # a failed section is a finding; the others still run
        section |= {"status": "failed", "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-4000:]}
    section["wall_s"] = time.perf_counter() - started
    return section


def _free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_check(args: argparse.Namespace, preset: Preset, work: Path) -> dict[str, Any]:
    """The sections in order (step, data, end-to-end, accumulation), then the verdict: the record."""
    from stages.training.bench.cli import parse_args as bench_args
    from stages.training.bench.run import run_benchmark
    from stages.training.gpucheck.accumulation import exact_accumulation_compare
    from stages.training.gpucheck.data_path import data_verdict, measure_data_path
    from stages.training.gpucheck.end_to_end import run_end_to_end

    started, started_at = time.perf_counter(), now()
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else cpu_count()
    s = preset.step
    step_argv = ["--arch", s.arch, "--batch-size", str(s.batch_size), "--classes", str(s.classes),
                 "--steps", str(s.steps), "--warmup", str(s.warmup), "--device", args.device,
                 "--precision", preset.precision, "--methods", ",".join(s.methods),
                 *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops is not None else [])]
    runs: dict[str, tuple[Any, Callable[[], dict[str, Any]]]] = {
        "step": (s, lambda: run_benchmark(bench_args(step_argv))),
        "data": (preset.data, lambda: measure_data_path(preset.data, work / "jpegs", workers, device)),
        "end_to_end": (preset.end_to_end, lambda: run_end_to_end(preset.end_to_end, work / "end_to_end",
                                                                 args.device, preset.precision)),
        "accumulation": (preset.accumulation, lambda: exact_accumulation_compare(
            preset.accumulation, args.device, preset.precision, work / "accumulation")),
    }
    sections: dict[str, Any] = {}

    def run_named(name: str) -> None:
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        settings, run = runs[name]
        sections[name] = run_section(settings, run)
        print(f"[gpu_check] {name}: {sections[name]['status']} in {sections[name]['wall_s']:.1f} s",
              file=sys.stderr, flush=True)
        _free_device_memory()

    # The smoke run overlaps the end-to-end chain (subprocesses, one thread each) with the in-process
    # sections, to keep CI short; a GPU run keeps them apart, so nothing disturbs the timings.
    overlap = preset.name == "smoke" and "end_to_end" in args.sections and len(args.sections) > 1
    background = threading.Thread(target=run_named, args=("end_to_end",)) if overlap else None
    if background is not None:
        background.start()
    for name in args.sections:
        if not (overlap and name == "end_to_end"):
            run_named(name)
    if background is not None:
        background.join()
    sections = {name: sections[name] for name in args.sections}
    ok_result = {name: section.get("result") for name, section in sections.items() if section["status"] == "ok"}
    return {
        "mode": preset.name, "preset": preset.name, "device": args.device, "precision": preset.precision,
        "started_at": started_at, "machine": machine_facts(device), "workers": workers,
        "gpu_plan": describe(GPU, args.workers), "plan": describe(preset, workers), "overlapped_end_to_end": overlap,
        "sections": sections,
        "verdict": data_verdict(ok_result.get("data"), ok_result.get("step")),
        "ok": all(section["status"] in ("ok", "skipped") for section in sections.values()),
        "budget_s": BUDGET_S, "wall_s": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check, write the JSON and markdown, print the summary; exit 0 when every section passed
    (or was skipped), 1 when one failed, 2 when CUDA is missing without --smoke."""
    args = parse_args(argv)
    if not args.smoke and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
              f"device {args.device!r}); run it on a GPU machine, or pass --smoke for the CPU smoke run", file=sys.stderr)
        return 2
    preset = SMOKE if args.smoke else GPU
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    from stages.training.gpucheck.report import render_summary

    if args.smoke:
        print("[gpu_check] CPU smoke run; on a GPU it would measure:\n" + "\n".join(
            f"  - {line}" for line in describe(GPU, args.workers)),
            file=sys.stderr, flush=True)
    try:
        record = run_check(args, preset, work)
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record["work_dir"] = str(work) if (args.keep or args.work_dir) else None
    summary = render_summary(record)
    atomic_write_json(args.out, record)
    atomic_write_text(args.out.with_suffix(".md"), summary)
    print(summary)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0 if record["ok"] else 1
