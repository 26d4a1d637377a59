"""Training-step benchmark: ft, flyp, starft and a reference-style starft, side by side (options, files).

What is measured: the docstring of ``stages.training.bench`` and docs/bench.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stages.cli import command
from stages.io import atomic_write_json, atomic_write_text
from stages.training.bench.accum import measure_setting, run_accum_compare
from stages.training.bench.report import render_markdown
from stages.training.bench.run import DEFAULT_BANK, METHODS, run_benchmark


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m stages.training.bench``."""
    parser = argparse.ArgumentParser(prog="python -m stages.training.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="open_clip architecture, e.g. ViT-B-16 or TinyCLIP-test")
    parser.add_argument("--pretrained", default="none", help="weights (default: random; speed does not depend on them)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per method first (>= 1: the first one counts the FLOPs; >= 2 with --compile)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (as training)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--classes", type=int, default=1000, help="label space (StarFT caches classes x descriptors texts)")
    parser.add_argument("--bank", type=Path, default=DEFAULT_BANK)
    parser.add_argument("--concept", default="background")
    parser.add_argument("--lam", type=float, default=0.5, help="λ of the Star term (> 0, so it runs)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU, overriding the table")
    parser.add_argument("--compile", action="store_true", help="torch.compile the image and text towers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default results/bench/<arch>.json; with --accum-compare <arch>-accum.json)")
    parser.add_argument("--accum-compare", action="store_true",
                        help="instead: one method (the first of --methods; default starft) at --batch-size as 1 x B vs "
                             "B/m x m micro-batches (exact and independent accumulation), step time and peak memory")
    parser.add_argument("--micro-batch", type=int, default=None, help="m of --accum-compare (default B/8)")
    parser.add_argument("--accum-worker", default=None, help=argparse.SUPPRESS)  # "k,mode": one setting, JSON on stdout
    args = parser.parse_args(argv)
    args.out_given = args.out is not None
    if (args.accum_compare or args.accum_worker) and args.methods == ",".join(METHODS):
        args.methods = "starft"
    if args.micro_batch is None:
        args.micro_batch = max(1, args.batch_size // 8)
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
    if args.steps < 1 or args.warmup < 1 + args.compile or args.batch_size < 2:
        parser.error("need --steps >= 1, --warmup >= 1 (2 with --compile) and --batch-size >= 2")
    if args.out is None:
        args.out = Path("results") / "bench" / f"{args.arch}.json"
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stages.training.bench``: `bench` (errors: one line, exit 2, stages.cli)."""
    bench(argv)
    return 0


def bench(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and the markdown summary, print the summary; the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.accum_worker is not None:
        accum_steps, mode = args.accum_worker.split(",")
        result = measure_setting(args, int(accum_steps), mode)
        print(json.dumps(result))
        return result
    if args.accum_compare:
        return run_accum_compare(args, [arg for arg in argv if arg != "--accum-compare"])
    result = run_benchmark(args)
    summary = render_markdown(result)
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), summary)
    print(summary)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result

