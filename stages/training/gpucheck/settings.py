"""What the readiness check measures: the GPU sizes, and the CPU smoke sizes that run the same code in CI."""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_S = 480.0
"""The GPU run's wall-clock target (8 minutes); reported against, never enforced."""


@dataclass(frozen=True)
class StepSettings:
    """Section 1, the training-step benchmark (``stages.training.bench``)."""

    arch: str
    batch_size: int
    classes: int
    steps: int
    warmup: int
    methods: tuple[str, ...] = ("ft", "flyp", "starft", "starft-reference")


@dataclass(frozen=True)
class DataSettings:
    """Section 2, the data path: a generated JPEG folder through the loop's DataLoader and train transforms."""

    arch: str          # whose train transform (input size, mean, std) is applied
    files: int         # JPEG files written
    classes: int       # class folders
    width: int
    height: int
    samples: int       # samples drawn in the timed pass (the file list repeated; the loop's EpochSampler order)
    micro_batch: int   # the DataLoader's batch (the step's batch on one GPU)
    max_seconds: float  # the pass stops after this long (then fewer samples are timed)


@dataclass(frozen=True)
class EndToEndSettings:
    """Section 3, a tiny run through the CLIs: torchrun training, evaluation, one table."""

    arch: str
    method: str
    counts: tuple[tuple[str, int], ...]  # colour imagefolder split sizes
    batch_size: int
    steps: int
    eval_batch_size: int
    workers: int


@dataclass(frozen=True)
class AccumSettings:
    """Section 4, exact contrastive accumulation: 1 x batch vs (batch / micro_batch) x micro_batch."""

    arch: str
    batch_size: int
    micro_batch: int
    classes: int
    steps: int
    warmup: int


@dataclass(frozen=True)
class Preset:
    """Everything one readiness run measures, and where."""

    name: str
    device: str
    precision: str
    step: StepSettings
    data: DataSettings
    end_to_end: EndToEndSettings
    accumulation: AccumSettings


TINY_COUNTS = (("train", 48), ("val", 16), ("test", 32))

GPU = Preset(
    name="gpu", device="cuda", precision="bf16",
    step=StepSettings(arch="ViT-B-16", batch_size=256, classes=1000, steps=20, warmup=5),
    data=DataSettings(arch="ViT-B-16", files=3000, classes=10, width=500, height=375, samples=24000,
                      micro_batch=256, max_seconds=60.0),
    end_to_end=EndToEndSettings(arch="TinyCLIP-test", method="starft", counts=TINY_COUNTS, batch_size=16, steps=3,
                                eval_batch_size=32, workers=2),
    accumulation=AccumSettings(arch="ViT-B-16", batch_size=512, micro_batch=64, classes=1000, steps=5, warmup=2),
)

SMOKE = Preset(
    name="smoke", device="cpu", precision="fp32",
    step=StepSettings(arch="TinyCLIP-test", batch_size=4, classes=5, steps=1, warmup=1),
    data=DataSettings(arch="TinyCLIP-test", files=32, classes=4, width=125, height=94, samples=64, micro_batch=8,
                      max_seconds=20.0),
    end_to_end=EndToEndSettings(arch="TinyCLIP-test", method="starft", counts=TINY_COUNTS, batch_size=16, steps=2,
                                eval_batch_size=32, workers=0),
    accumulation=AccumSettings(arch="TinyCLIP-test", batch_size=8, micro_batch=2, classes=5, steps=1, warmup=1),
)


def describe(preset: Preset, workers: int | None) -> list[str]:
    """One line per section: what it measures at this preset's sizes (`workers` None: the machine's CPUs)."""
    s, d, e, a = preset.step, preset.data, preset.end_to_end, preset.accumulation
    loader_workers = "the machine's CPUs as" if workers is None else workers
    return [
        f"step: {', '.join(s.methods)} on {s.arch}, batch {s.batch_size}, {preset.precision}, {s.classes} classes, "
        f"median of {s.steps} steps after {s.warmup} warm-up, MFU from the device's bf16 peak",
        f"data: {d.files} JPEGs of {d.width} x {d.height} in {d.classes} classes, {d.samples} samples through the "
        f"loop's DataLoader ({loader_workers} workers, batch {d.micro_batch}) and {d.arch}'s train transform, images/s "
        f"vs the step's samples/s",
        f"end-to-end: torchrun --nproc_per_node 1 -m stages.training ({e.method}, {e.arch}, {preset.precision}, "
        f"{e.steps} steps of {e.batch_size}, {preset.device}), python -m stages.evaluation, python -m stages.reports "
        f"--table 1",
        f"accumulation: {a.arch} batch {a.batch_size} as 1 x {a.batch_size} vs {a.batch_size // a.micro_batch} x "
        f"{a.micro_batch} (exact contrastive accumulation), step time and peak memory",
    ]
