"""Evaluate one model on one benchmark and write its metrics JSON.

::

    python -m stages.evaluation --benchmark waterbirds --data-root R --out m.json \\
        (--run-dir DIR [--checkpoint best.pt] [--alpha A] | --model NAME --pretrained TAG_OR_FILE) \\
        [--batch-size 256] [--workers 8] [--device cuda] [--head-cache DIR] [--image-cache DIR]

The JSON holds ``benchmark``, ``model`` (name, pretrained, run dir, checkpoint and its sha256,
WiSE-FT alpha, which head scored it), ``n``, ``metrics``, ``groups`` and ``images_per_s``.

Which classifier scores a benchmark: a run with a trained head (FT, CAR-FT, Lipsum-FT) uses it
when the benchmark's head classes equal the head's class names; every other case builds a
zero-shot head from the benchmark's templates through the model's own (possibly fine-tuned) text
tower. ``--alpha`` interpolates the run's weights with its zero-shot start (WiSE-FT), and a
trained head with the zero-shot head it was initialised from.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.data.source import DatasetError, LabeledImages, build_dataset
from stages.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark, score
from stages.evaluation.image_cache import evaluation_images
from stages.evaluation.metrics import project_logits
from stages.evaluation.zeroshot import HeadCache, text_head
from stages.io import atomic_write_json, sha256_file
from stages.models.factory import ClipBundle, ModelLoadError, create_clip
from stages.models.wise import interpolate_state_dicts
from stages.training.checkpoint import BEST, load_trained


class EvaluationError(RuntimeError):
    """The model and the benchmark do not fit together (e.g. head and dataset class counts differ)."""


@dataclass
class EvalModel:
    """A model ready to evaluate: weights, optional trained head (``normalize(f(x)) @ weight.T``), identity."""

    bundle: ClipBundle
    head_weight: torch.Tensor | None
    head_classnames: list[str] | None
    identity: dict[str, Any]


def load_pretrained(name: str, pretrained: str) -> EvalModel:
    """An open_clip model by name and pretrained tag or local file (random weights are seeded with 0)."""
    torch.manual_seed(0)
    bundle = create_clip(name, pretrained)
    local = Path(pretrained)
    return EvalModel(bundle, None, None, {
        "name": name, "pretrained": pretrained, "run_dir": None, "checkpoint": None,
        "checkpoint_sha256": sha256_file(local) if local.is_file() else None, "alpha": None,
    })


def _zeroshot_head_templates(run_config: dict[str, Any]) -> list[str]:
    """The templates a run's trained head was initialised from (its ``data.head_templates`` or caption)."""
    data = run_config.get("config", {}).get("data", {})
    return list(data.get("head_templates") or [data.get("caption_template", "a photo of a {c}.")])


def load_run(run_dir: Path, checkpoint: str = BEST, alpha: float | None = None) -> EvalModel:
    """A trained run's model, optionally WiSE-FT-interpolated with its zero-shot start by `alpha`."""
    trained = load_trained(run_dir, checkpoint)
    bundle, head = trained.bundle, trained.head_weight
    if alpha is not None:
        start = trained.run_config["model"]
        # Weights the run started from: its loop seeded torch with the run's seed before creating
        # the model, which only matters for random (``none``) weights.
        torch.manual_seed(trained.run_config.get("config", {}).get("seed", 0))
        zeroshot = create_clip(start["name"], start["pretrained"])
        merged = interpolate_state_dicts(zeroshot.model.state_dict(), bundle.model.state_dict(), alpha)
        if head is not None:
            zs_head = text_head(zeroshot.model, zeroshot.tokenizer, trained.head_classnames,
                                _zeroshot_head_templates(trained.run_config))
            head = (1.0 - alpha) * zs_head * zeroshot.model.logit_scale.exp().item() + alpha * head
        bundle.model.load_state_dict(merged)
    return EvalModel(bundle, head, trained.head_classnames, {
        "name": bundle.name, "pretrained": bundle.pretrained, "run_dir": str(run_dir), "checkpoint": checkpoint,
        "checkpoint_sha256": sha256_file(trained.checkpoint_path), "alpha": alpha,
    })


def classifier(
    bench: Benchmark, source: LabeledImages, loaded: EvalModel, cache: HeadCache
) -> tuple[torch.Tensor, str]:
    """The ``[C, d]`` head that scores `bench` and which kind it is (``trained`` or ``text``)."""
    classes = bench.head_classes(source)
    if loaded.head_weight is not None and loaded.head_classnames == classes:
        weight, kind = loaded.head_weight, "trained"
    else:
        model = loaded.bundle.model
        templates = bench.template_list(source)
        weight = cache.get(model, loaded.bundle.tokenizer, classes, templates) * model.logit_scale.exp().item()
        kind = "text"
    check_class_counts(bench, source, weight)
    return weight.float(), kind


def check_class_counts(bench: Benchmark, source: LabeledImages, weight: torch.Tensor) -> None:
    """A head must have one row per head class and score exactly the dataset's classes."""
    classes = bench.head_classes(source)
    indices = bench.class_indices(source)
    scored = len(indices) if indices is not None else weight.shape[0]
    if weight.ndim != 2 or weight.shape[0] != len(classes) or scored != len(source.classnames):
        raise EvaluationError(
            f"{bench.name}: the head has {weight.shape[0] if weight.ndim == 2 else weight.shape} classes and "
            f"scores {scored}, but the benchmark has {len(classes)} head classes and the dataset "
            f"{len(source.classnames)}; a mismatched head would give a wrong number, not an error"
        )


def predict(
    bundle: ClipBundle,
    weight: torch.Tensor,
    source: LabeledImages,
    class_indices: Sequence[int] | None,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    desc: str,
    image_cache: Path | None = None,
) -> tuple[np.ndarray, float]:
    """Argmax predictions over `source` (in the dataset's class order) and the images/s achieved.

    With `image_cache`, decoded crops are read from (or first written to) that folder
    (stages/evaluation/image_cache.py); the predictions are the same.
    """
    model = bundle.model.to(device).eval()
    weight = weight.to(device)
    loader = torch.utils.data.DataLoader(
        evaluation_images(source, bundle.preprocess_val, image_cache, workers), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda",
    )
    predictions = []
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            features = F.normalize(model.encode_image(batch["image"].to(device, non_blocking=True)).float(), dim=-1)
            logits = project_logits(features @ weight.T, class_indices)
            predictions.append(logits.argmax(dim=-1).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return torch.cat(predictions).numpy(), len(source) / seconds


def evaluate(
    benchmark: str,
    data_root: Path,
    loaded: EvalModel,
    *,
    cache: HeadCache | None = None,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device = "cpu",
    image_cache: Path | None = None,
) -> dict[str, Any]:
    """Score `loaded` on `benchmark` and return the metrics JSON payload."""
    bench = get_benchmark(benchmark)
    source = build_dataset(bench.dataset, data_root, bench.split)
    weight, kind = classifier(bench, source, loaded, cache or HeadCache())
    predictions, images_per_s = predict(
        loaded.bundle, weight, source, bench.class_indices(source),
        batch_size=batch_size, workers=workers, device=torch.device(device), desc=bench.name, image_cache=image_cache,
    )
    results, groups = score(bench, source, predictions)
    return {
        "benchmark": bench.name, "model": {**loaded.identity, "head": kind}, "n": len(source),
        "metrics": results, "groups": groups, "images_per_s": images_per_s,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m stages.evaluation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding each dataset under its standard name")
    parser.add_argument("--out", type=Path, required=True, help="metrics JSON to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help="a finished training run (run.json + checkpoint)")
    source.add_argument("--model", help="open_clip architecture name (with --pretrained)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag, a local weights file, or 'none'")
    parser.add_argument("--checkpoint", default=BEST, help="checkpoint file inside --run-dir")
    parser.add_argument("--alpha", type=float, help="WiSE-FT: interpolate the run with its zero-shot start")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--head-cache", type=Path, help="folder for cached zero-shot heads (default: <run-dir>/eval/heads)")
    parser.add_argument("--image-cache", type=Path,
                        help="folder of decoded evaluation crops, shared by all runs (built on first use; same results)")
    args = parser.parse_args(argv)
    if args.model is not None and args.pretrained is None:
        parser.error("--model needs --pretrained (a tag, a weights file, or 'none')")
    if args.model is not None and args.alpha is not None:
        parser.error("--alpha interpolates a run with its zero-shot start: use it with --run-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; user errors print one line and exit with status 2."""
    args = parse_args(argv)
    try:
        if args.run_dir is not None:
            loaded = load_run(args.run_dir, args.checkpoint, args.alpha)
            cache_dir = args.head_cache or args.run_dir / "eval" / "heads"
        else:
            loaded = load_pretrained(args.model, args.pretrained)
            cache_dir = args.head_cache
        payload = evaluate(
            args.benchmark, args.data_root, loaded, cache=HeadCache(cache_dir),
            batch_size=args.batch_size, workers=args.workers, device=args.device, image_cache=args.image_cache,
        )
    except (DatasetError, ModelLoadError, EvaluationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    atomic_write_json(args.out, payload)
    summary = ", ".join(f"{key} {value:.4f}" for key, value in payload["metrics"].items())
    print(f"{args.benchmark}: n={payload['n']} {summary} ({payload['images_per_s']:.1f} images/s) -> {args.out}")
    return 0
