"""Training-step benchmark: ft, flyp, starft and a reference-style starft, side by side.

``python -m stages.bench --arch ViT-B-16 --batch-size 8 --steps 3`` builds every method from
the same random weights (throughput does not depend on them), feeds them the same synthetic
batches (random images of the model's input size, labels uniform over ``--classes`` ImageNet
class names, descriptor indices uniform over the bank's concept), and times the whole training
step as the loop runs it: forward and loss under the run's precision, backward, AdamW step.
The methods are interleaved step by step (the order rotating every round) so that a busy or
throttled machine slows them alike and the ratios stay fair.

``starft-reference`` is StarFT's step as the official code runs it (see
:class:`ReferenceStarFT`); ``ratios.reference_over_starft`` is what our optimisations buy,
``ratios.starft_over_flyp`` what the Star term costs on top of FLYP.

Output ``results/bench/<arch>.json`` (keys: ``arch``, ``device``, ``device_name``,
``precision``, ``batch_size``, ``steps``, ``warmup``, ``classes``, ``descriptors``, ``lam``,
``compile``, ``torch``, ``threads``, ``peak_flops``, ``peak_source``, ``methods``, ``eval``,
``process_peak_memory_mb``, ``ratios``, ``targets``) and a markdown summary beside it. Per
method: ``step_time_s`` (median), ``step_times_s``, ``samples_per_s``, ``flops_per_step``,
``tflops_per_s``, ``mfu`` (CUDA with a known peak only), ``state_memory_mb`` (its own weights,
buffers, teacher, caches and optimiser state), ``peak_memory_mb`` (CUDA: state plus the
step's peak allocation above what was allocated before it, i.e. the peak if it ran alone;
None on CPU, where only the process-wide RSS high-water ``process_peak_memory_mb`` exists) and
``peak_memory_checkpointed_mb`` (the same for one more step with the student's gradient
checkpointing on, the training option ``grad_checkpointing``; None on CPU).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on each method's first
(eager, untimed warm-up) step: the matmuls, convolutions and attention actually executed, forward and backward (for
StarFT: student image fwd+bwd, student text fwd+bwd at the trimmed length, teacher image fwd).
MFU divides them by the step time and the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from stages.config import TrainConfig
from stages.descriptors.bank import load_bank
from stages.io import atomic_write_json, atomic_write_text
from stages.models.factory import create_clip
from stages.training.methods import Method, MethodContext, StarFT, build_method

REFERENCE = "starft-reference"
METHODS = ("ft", "flyp", "starft", REFERENCE)
DEFAULT_BANK = Path("descriptor_banks/official-code.json")
# Issue 7's targets; reported, never asserted.
TARGETS = {"starft_over_flyp_max": 1.30, "reference_over_starft_min": 1.25}
# Dense bf16 tensor-core peaks in FLOP/s, keyed by a substring of torch.cuda.get_device_name();
# the first match wins, so more specific names come first.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)
Autocast = Callable[[], AbstractContextManager[Any]]


class ReferenceStarFT(StarFT):
    """StarFT's training step as the official code computes it: the benchmark's baseline.

    Every step the student encodes the images, then the clean captions and the spurious
    captions in two separate ``encode_text`` calls over the full 77-token context, and the
    frozen teacher re-encodes the images and the spurious captions under ``no_grad``: no
    teacher-text cache, no trimming, no inference mode. The losses are StarFT's own (fp32), so
    both steps give the same loss and gradients (tests/test_bench.py checks it).
    """

    def __init__(self, context: MethodContext) -> None:
        if context.config.spurious.suffix != "spurious":
            raise ValueError(f"{REFERENCE} supports spurious.suffix 'spurious' only")
        super().__init__(context)
        del self.teacher_text  # the reference keeps no cache: it re-encodes the teacher's text each step

    def training_step(self, batch: dict[str, Tensor], lam: float) -> dict[str, Tensor]:
        images, labels = batch["image"], batch["label"]
        spurious_tokens = self.spurious_tokens[labels, batch["descriptor_index"]]
        image_features = self.student.encode_image(images, normalize=True)
        clean_text = self.student.encode_text(self.caption_tokens[labels], normalize=True)
        spurious_text = self.student.encode_text(spurious_tokens, normalize=True)
        with torch.no_grad():
            teacher_image = self.teacher.encode_image(images, normalize=True)
            teacher_text = self.teacher.encode_text(spurious_tokens, normalize=True)
        return {
            "clip": self.clip_loss(image_features, clean_text, self.student.logit_scale.exp()),
            "star": lam * self.star_loss(
                teacher_image, teacher_text, image_features, spurious_text, labels, self.zeroshot_scale
            ),
        }


@dataclass
class Candidate:
    """One benchmarked method with its optimiser and what was measured."""

    name: str
    method: Method
    optimizer: torch.optim.Optimizer
    step_times: list[float] = field(default_factory=list)
    step_peak_bytes: int = 0
    checkpointed_peak_bytes: int = 0
    flops_per_step: int = 0


def build_bench_method(name: str, context: MethodContext) -> Method:
    """A registered method, or the reference-style StarFT for ``starft-reference``."""
    return ReferenceStarFT(context) if name == REFERENCE else build_method(name, context)


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


def autocast_for(precision: str, device: torch.device) -> Autocast:
    """The loop's precision rule: bf16 autocast (fp32 master weights) on CUDA or when asked, else fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


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


def training_step(candidate: Candidate, batch: dict[str, Tensor], lam: float, autocast: Autocast) -> None:
    """One optimiser step as the training loop takes it; gradients are freed right after."""
    with autocast():
        terms = candidate.method.training_step(batch, lam)
    sum(terms.values()).backward()
    candidate.optimizer.step()
    candidate.optimizer.zero_grad(set_to_none=True)


def step_peak_bytes(run: Callable[[], None], device: torch.device) -> int:
    """CUDA bytes a step allocates at its peak above what was allocated before it."""
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], device: torch.device) -> float:
    """Wall-clock seconds of `run`, with the device's queue drained before and after."""
    _synchronize(device)
    started = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - started


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(
    grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU flash kernel SDPA uses on CPU.
_CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


@contextmanager
def _without_mha_fastpath() -> Iterator[None]:
    """nn.MultiheadAttention's inference fast path runs one fused op FlopCounterMode cannot see into."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def counting_flops(run: Callable[[], None]) -> int:
    """Matmul, convolution and attention FLOPs that `run` executes, forward and backward."""
    with _without_mha_fastpath(), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        run()
    return counter.get_total_flops()


def state_bytes(method: Method, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of a method's own resident tensors: parameters (teacher included), buffers, optimiser state."""
    tensors = [*method.parameters(), *method.buffers()]
    tensors += [value for state in optimizer.state.values() for value in state.values() if isinstance(value, Tensor)]
    storages = {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in tensors}
    return sum(storages.values())


def peak_flops(cuda_device_name: str | None, override_tflops: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak (FLOP/s) MFU divides by, and where it came from (None: not on CUDA)."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if cuda_device_name is None:
        return None, "none (MFU is reported on CUDA only)"
    name = cuda_device_name
    for key, flops in BF16_PEAK_FLOPS:
        if key in name:
            return flops, f"{name}: dense bf16 table entry {key!r}"
    return None, f"{name} is not in the peak table; pass --peak-tflops"


def measure_eval(
    model: torch.nn.Module, batch_size: int, image_size: int, steps: int, warmup: int, autocast: Autocast,
    device: torch.device, generator: torch.Generator,
) -> dict[str, float]:
    """Zero-shot evaluation throughput: ``encode_image`` under inference mode at the batch size."""
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)

    def run() -> None:
        with torch.inference_mode(), autocast():
            model.encode_image(images, normalize=True)

    model.eval()
    times = [timed(run, device) for _ in range(warmup + steps)][warmup:]
    model.train()
    batch_time = statistics.median(times)
    return {"batch_time_s": batch_time, "images_per_s": batch_size / batch_time}


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
        context = MethodContext(dataclasses.replace(bundle, model=model), classnames, config, descriptors,
                                total_steps=args.warmup + args.steps)
        method = build_bench_method(name, context).to(device)
        method.train()
        method.begin_step(1)  # time steady-state steps (CaRot distils from its second step on)
        optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=config.optim.lr,  # as the loop's
                                      weight_decay=method.optimizer_weight_decay(), fused=device.type == "cuda")
        candidates.append(Candidate(name, method, optimizer))

    generator = torch.Generator().manual_seed(args.seed)
    image_size = bundle.image_size

    def next_batch() -> dict[str, Tensor]:
        return synthetic_batch(generator, args.batch_size, image_size, args.classes, len(descriptors), device)

    # Round 0 is a warm-up round: its steps are the ones whose FLOPs are counted (eagerly).
    for round_index in range(args.warmup + args.steps):
        batch = next_batch()
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            step = functools.partial(training_step, candidate, batch, args.lam, autocast)
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
                functools.partial(training_step, candidate, batch, args.lam, autocast), device)
            candidate.method.student.set_grad_checkpointing(False)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    peak, peak_source = peak_flops(device_name, args.peak_tflops)
    methods: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        step_time = statistics.median(candidate.step_times)
        state = state_bytes(candidate.method, candidate.optimizer)
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


def _fmt(value: float | None, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if value is None else f"{format(value * scale, spec)}{unit}"


def _against(value: float | None, target: float, at_most: bool) -> str:
    """``1.234 (target ≤ 1.3: met)``."""
    if value is None:
        return f"- (target {'≤' if at_most else '≥'} {target})"
    met = value <= target if at_most else value >= target
    return f"**{value:.3f}** (target {'≤' if at_most else '≥'} {target}: {'met' if met else 'missed'})"


def render_markdown(result: dict[str, Any]) -> str:
    """The human summary written beside the JSON (and printed)."""
    cuda = result["device"].startswith("cuda")
    lines = [
        f"# Benchmark: {result['arch']}, batch {result['batch_size']}, {result['device_name']} "
        f"({result['precision']}{', compiled' if result['compile'] else ''})",
        "",
        "| method | step (ms) | samples/s | GFLOP/step | TFLOP/s | MFU | state (MB) | peak (MB) "
        "| peak, grad checkpointing (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in result["methods"].items():
        lines.append(
            f"| {name} | {m['step_time_s'] * 1e3:.1f} | {m['samples_per_s']:.1f} | {m['flops_per_step'] / 1e9:.1f} "
            f"| {m['tflops_per_s']:.3f} | {_fmt(m['mfu'], '.1f', 100, '%')} | {m['state_memory_mb']:.0f} "
            f"| {_fmt(m['peak_memory_mb'], '.0f')} | {_fmt(m['peak_memory_checkpointed_mb'], '.0f')} |"
        )
    ratios, targets = result["ratios"], result["targets"]
    lines += [
        "",
        f"- starft / flyp step time: {_against(ratios['starft_over_flyp'], targets['starft_over_flyp_max'], True)}",
        f"- reference / starft step time: "
        f"{_against(ratios['reference_over_starft'], targets['reference_over_starft_min'], False)}",
        f"- zero-shot evaluation: {result['eval']['images_per_s']:.1f} images/s (encode_image, inference mode, "
        f"batch {result['batch_size']})",
        f"- FLOPs: FlopCounterMode on each method's first (eager, warm-up) step; peak: "
        f"{_fmt(result['peak_flops'], '.0f', 1e-12, ' TFLOP/s')} ({result['peak_source']})",
        f"- process peak memory: {result['process_peak_memory_mb']:.0f} MB "
        f"({'CUDA max allocated' if cuda else 'RSS high-water'})",
        "- per-method peak memory, without and with the student's gradient checkpointing: "
        + ("one step each, CUDA allocator peak plus the method's state" if cuda else "not measured (CPU; CUDA only)"),
        f"- median of {result['steps']} steps after {result['warmup']} warm-up, methods interleaved; "
        f"{result['classes']} classes x {result['descriptors']} descriptors, λ = {result['lam']}, "
        f"torch {result['torch']}, {result['threads']} threads",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m stages.bench``."""
    parser = argparse.ArgumentParser(prog="python -m stages.bench", description=__doc__.splitlines()[0])
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
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/bench/<arch>.json)")
    args = parser.parse_args(argv)
    args.methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}; choose from {','.join(METHODS)}")
    if args.steps < 1 or args.warmup < 1 + args.compile or args.batch_size < 2:
        parser.error("need --steps >= 1, --warmup >= 1 (2 with --compile) and --batch-size >= 2")
    if args.out is None:
        args.out = Path("results") / "bench" / f"{args.arch}.json"
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON and the markdown summary, print the summary."""
    args = parse_args(argv)
    result = run_benchmark(args)
    summary = render_markdown(result)
    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), summary)
    print(summary)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()
