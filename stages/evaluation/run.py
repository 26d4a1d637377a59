"""Evaluate a model on benchmarks (and WiSE-FT alphas) and write one metrics JSON per pair.

::

    python -m stages.evaluation --benchmark waterbirds --data-root R --out m.json \\
        (--run-dir DIR [--checkpoint best.pt] [--alpha A] | --model NAME --pretrained TAG_OR_FILE) \\
        [--batch-size N] [--workers 8] [--device cuda] [--head-cache DIR] [--image-cache DIR]

    # a run's whole evaluation in one process (what the workflow runs, one job per run):
    python -m stages.evaluation --eval-dir DIR/eval --requests imagenet imagenet@alpha0.5 waterbirds ... \\
        --data-root R (--run-dir DIR | --model NAME --pretrained TAG_OR_FILE) [options as above]

With ``--requests``, each request ``<benchmark>[@alpha<α>]`` is written to
``<eval dir>/<request>.json`` and an index of them to ``<eval dir>/index.json``. The model is
loaded once, each WiSE-FT α is one interpolation of it, heads are built once per (text tower,
classes), and each benchmark's images are decoded once for all alphas (into ``--image-cache``,
or a temporary one). A metrics file that already exists for the same checkpoint (sha256) and α
is kept, not recomputed, so adding a benchmark or an α to a table only computes the new ones.

Beside every metrics file goes its per-item outcomes, ``<request>.items.npz`` (``--out m.json``:
``m.items.npz``; stages/evaluation/items.py), written before the JSON, so that a current JSON
always has its own items file. A current JSON without one (written before items files existed)
is scored again for its items only; the JSON is kept byte for byte when the new numbers equal it.

The JSON holds ``benchmark``, ``model`` (name, pretrained, run dir, checkpoint and its sha256,
WiSE-FT alpha, which head scored it), ``n``, ``metrics``, ``groups`` and ``images_per_s``.
Every benchmark's ``metrics`` hold ``top1``, ``ece`` and ``nll``: the calibration metrics use the
softmax of the logits that also give the prediction, i.e. of a text head scaled by the scored
model's own ``logit_scale.exp()`` (100 for OpenAI CLIP as released; a fine-tuned contrastive run's
learned scale), or of a trained head's logits (FT, CAR-FT, Lipsum-FT: the head carries its scale).

Which classifier scores a benchmark: a run with a trained head (FT, CAR-FT, Lipsum-FT) uses it
when the benchmark's head classes equal the head's class names; every other case builds a
zero-shot head from the benchmark's templates through the model's own (possibly fine-tuned) text
tower. ``--alpha`` interpolates the run's weights with its zero-shot start (WiSE-FT), and a
trained head with the zero-shot head it was initialised from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.data.source import LabeledImages, build_dataset
from stages.errors import PipelineError
from stages.evaluation.benchmarks import ALWAYS_METRICS, BENCHMARKS, Benchmark, get_benchmark, score
from stages.evaluation.image_cache import evaluation_images
from stages.evaluation.items import ItemOutcomes
from stages.evaluation.metrics import project_logits
from stages.evaluation.heads import HeadCache, text_head
from stages.io import atomic_write_json, scratch_dir, sha256_file
from stages.models.factory import ClipBundle, LoadedModel, create_clip
from stages.models.wise import interpolate_state_dicts
from stages.cli import command
from stages.config import WorkflowConfig
from stages.rundir import ALPHA, BEST, INDEX, RECORD, EvalRequest, RunDir, index_path, items_path

# The workflow config's field owns the evaluation batch size (``eval_batch_size``); the CLI and these functions read it.
EVAL_BATCH_SIZE: int = WorkflowConfig.model_fields["eval_batch_size"].default


log = logging.getLogger(__name__)
CROPS_PREFIX = ".crops-"
"""Name prefix of the temporary crop caches inside a run's eval folder (ImageNet val: about 7.5 GB each)."""


class EvaluationError(PipelineError, RuntimeError):
    """The model and the benchmark do not fit together (e.g. head and dataset class counts differ)."""


def load_pretrained(name: str, pretrained: str) -> LoadedModel:
    """An open_clip model by name and pretrained tag or local file (random weights are seeded with 0)."""
    torch.manual_seed(0)
    bundle = create_clip(name, pretrained)
    local = Path(pretrained)
    return LoadedModel(bundle, None, None, {
        "name": name, "pretrained": pretrained, "run_dir": None, "checkpoint": None,
        "checkpoint_sha256": sha256_file(local) if local.is_file() else None, "alpha": None,
    })


class RunWeights:
    """A trained run loaded once, served as one ``LoadedModel`` per WiSE-FT alpha.

    The zero-shot start is built on the first alpha that needs it. Every ``LoadedModel`` returned
    shares one model whose weights ``at`` rewrites: use one at a time.
    """

    def __init__(self, run_dir: Path, checkpoint: str = BEST, sha256: str | None = None) -> None:
        """`sha256`: the checkpoint's, when the caller has already hashed it (a ViT-L/14 file is 1.7 GB)."""
        self.run_dir, self.checkpoint = RunDir(Path(run_dir)), checkpoint
        self.trained = self.run_dir.load_model(checkpoint)
        self.record = self.run_dir.read_record()
        self.sha256 = sha256 or sha256_file(self.run_dir.path / checkpoint)
        # A copy: the model's own tensors are overwritten by each interpolation.
        self.finetuned = {key: value.clone() for key, value in self.trained.bundle.model.state_dict().items()}
        self._start: tuple[dict[str, torch.Tensor], torch.Tensor | None] | None = None

    def _zeroshot_start(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The weights (and, for head methods, the scaled zero-shot head) the run started from."""
        if self._start is None:
            config = self.record.config
            # The run's loop seeded torch with its seed before creating the model, which only
            # matters for random (``none``) weights.
            torch.manual_seed(config.seed)
            zeroshot = create_clip(config.model.name, config.model.pretrained)
            head = None
            if self.trained.head_weight is not None:  # the templates the trained head was initialised from
                templates = config.data.head_templates or [config.data.caption_template]
                head = text_head(zeroshot.model, zeroshot.tokenizer, self.trained.head_classnames,
                                 templates) * zeroshot.model.logit_scale.exp().item()
            self._start = (zeroshot.model.state_dict(), head)
        return self._start

    def at(self, alpha: float | None) -> LoadedModel:
        """The run's model (``alpha`` None), or its WiSE-FT interpolation with its zero-shot start."""
        bundle, head = self.trained.bundle, self.trained.head_weight
        if alpha is None:
            bundle.model.load_state_dict(self.finetuned)
        else:
            start_state, start_head = self._zeroshot_start()
            bundle.model.load_state_dict(interpolate_state_dicts(start_state, self.finetuned, alpha))
            if head is not None:
                head = (1.0 - alpha) * start_head + alpha * head
        return LoadedModel(bundle, head, self.trained.head_classnames,
                           {**self.trained.identity, "checkpoint_sha256": self.sha256, "alpha": alpha})


def load_run(run_dir: Path, checkpoint: str = BEST, alpha: float | None = None) -> LoadedModel:
    """A trained run's model, optionally WiSE-FT-interpolated with its zero-shot start by `alpha`."""
    return RunWeights(run_dir, checkpoint).at(alpha)


def classifier(
    bench: Benchmark, source: LabeledImages, loaded: LoadedModel, cache: HeadCache
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


class Scores(NamedTuple):
    """What :func:`predict` returns, per image in dataset order, and the speed achieved."""

    predictions: np.ndarray  # argmax class (dataset class order)
    images_per_s: float
    confidences: np.ndarray  # top-1 softmax probability
    label_log_probs: np.ndarray  # log softmax probability of the image's true label


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
) -> Scores:
    """Argmax predictions over `source` (in the dataset's class order), their softmax confidences and
    true-label log-probabilities, and the images/s achieved.

    The logits are ``normalised image features @ weight.T`` (the head carries its scale), projected
    to the dataset's classes, in float32 outside autocast (the image tower alone runs in bf16 on
    GPU); the softmax is over the projected classes. With `image_cache`, decoded crops are read
    from (or first written to) that folder (stages/evaluation/image_cache.py); the results are the same.
    """
    model = bundle.model.to(device).eval()
    weight = weight.to(device).float()
    loader = torch.utils.data.DataLoader(
        evaluation_images(source, bundle.preprocess_val, image_cache, workers), batch_size=batch_size, shuffle=False,
        num_workers=workers, pin_memory=device.type == "cuda",
    )
    predictions, confidences, label_log_probs = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                features = model.encode_image(batch["image"].to(device, non_blocking=True))
            features = F.normalize(features.float(), dim=-1)
            logits = project_logits(features @ weight.T, class_indices)
            predicted = logits.argmax(dim=-1)
            log_probs = torch.log_softmax(logits, dim=-1)
            labels = torch.as_tensor(batch["label"], device=device).long()
            predictions.append(predicted.cpu())
            confidences.append(log_probs.gather(1, predicted[:, None])[:, 0].exp().cpu())
            label_log_probs.append(log_probs.gather(1, labels[:, None])[:, 0].cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return Scores(torch.cat(predictions).numpy(), len(source) / seconds, torch.cat(confidences).double().numpy(),
                  torch.cat(label_log_probs).double().numpy())


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns: the metrics JSON payload and the per-item outcomes behind it."""

    payload: dict[str, Any]
    items: ItemOutcomes


def evaluate(
    benchmark: str,
    data_root: Path,
    loaded: LoadedModel,
    *,
    cache: HeadCache | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int = 0,
    device: str | torch.device = "cpu",
    image_cache: Path | None = None,
    source: LabeledImages | None = None,
) -> Evaluation:
    """Score `loaded` on `benchmark`: the metrics JSON payload and its items (`source`: the dataset, if built)."""
    bench = get_benchmark(benchmark)
    source = source or build_dataset(bench.dataset, data_root, bench.split)
    weight, kind = classifier(bench, source, loaded, cache or HeadCache())
    scores = predict(
        loaded.bundle, weight, source, bench.class_indices(source),
        batch_size=batch_size, workers=workers, device=torch.device(device), desc=bench.name, image_cache=image_cache,
    )
    results, groups = score(bench, source, scores.predictions, scores.confidences, scores.label_log_probs)
    return Evaluation({
        "benchmark": bench.name, "model": {**loaded.identity, "head": kind}, "n": len(source),
        "metrics": results, "groups": groups, "images_per_s": scores.images_per_s,
    }, ItemOutcomes.of(source, scores.predictions))


def write_evaluation(metrics_path: Path, evaluation: Evaluation, keep_equal: bool = False) -> bool:
    """Write the items file, then the metrics JSON (the JSON last: a current JSON has its own items file).

    With `keep_equal`, an existing JSON whose numbers (metrics, groups) equal the new ones is kept as
    it is (its speed and bytes unchanged). Whether the JSON was written.
    """
    evaluation.items.write(items_path(metrics_path))
    if keep_equal:
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(metrics_path.read_text(encoding="utf-8"))
            if (old.get("metrics"), old.get("groups")) == (evaluation.payload["metrics"], evaluation.payload["groups"]):
                return False
        log.warning("warning: %s: scoring it again for its items file changed its numbers; rewritten", metrics_path)
    atomic_write_json(metrics_path, evaluation.payload)
    return True


def is_current(path: Path, benchmark: str, identity: dict[str, Any]) -> bool:
    """Whether `path` holds `benchmark`'s metrics of the model `identity` describes.

    `identity` holds the ``model`` fields that fix the numbers: the checkpoint's sha256 and α (and,
    for a model given by name, its name and pretrained tag); other fields, such as the run dir's
    path, may change without changing a number. A file without a metric every benchmark now has
    (``ALWAYS_METRICS``: one written before ECE and NLL were added) is not current.
    """
    try:
        payload = json.loads(path.read_text())
        model = payload["model"]
        return (payload["benchmark"] == benchmark and all(model[key] == value for key, value in identity.items())
                and all(key in payload["metrics"] for key in ALWAYS_METRICS))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def evaluate_requests(
    requests: Sequence[EvalRequest | str],
    eval_dir: Path,
    data_root: Path,
    model_at: Callable[[float | None], LoadedModel],
    identity: dict[str, Any],
    *,
    cache: HeadCache,
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int = 0,
    device: str | torch.device = "cpu",
    image_cache: Path | None = None,
) -> dict[str, Any]:
    """Write every request's metrics file in `eval_dir` (`EvalRequest.path`) and its items file unless both are
    current (`write_evaluation`); return the index.

    `model_at(alpha)` gives the model at a WiSE-FT α (None: as trained); `identity` is the
    model's for :func:`is_current`, without ``alpha`` (set per request). The model is set once
    per α and each benchmark's dataset built once; with several α and no `image_cache`, decoded
    crops go to a temporary cache, so each image is decoded once.
    """
    parsed = {str(request): EvalRequest.parse(str(request), BENCHMARKS) for request in requests}
    eval_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: request.path(eval_dir) for name, request in parsed.items()}
    stale = {name for name, request in parsed.items()
             if not is_current(targets[name], request.benchmark, {**identity, "alpha": request.alpha})}
    # A current JSON from before items files existed: scored again for its items (the JSON is kept if equal).
    no_items = {name for name, request in parsed.items()
                if name not in stale and not request.items_path(eval_dir).is_file()}
    pending = {name: (parsed[name].benchmark, parsed[name].alpha) for name in stale | no_items}
    for name in sorted(set(parsed) - set(pending)):
        log.info("%s: kept %s (same checkpoint and alpha)", name, targets[name])
    written: set[str] = set()  # the requests whose metrics JSON this call wrote (the index's "computed")
    alphas = sorted({alpha for _, alpha in pending.values()}, key=lambda alpha: (alpha is not None, alpha or 0.0))
    sources: dict[str, LabeledImages] = {}
    # A private crop cache for this process's alphas; one left by a killed evaluation is removed (scratch_dir).
    with scratch_dir(eval_dir, CROPS_PREFIX) if image_cache is None and len(alphas) > 1 \
            else contextlib.nullcontext(image_cache) as crops:
        for alpha in alphas:
            loaded = model_at(alpha)
            for name, (benchmark, _) in sorted(pending.items()):
                if pending[name][1] != alpha:
                    continue
                if benchmark not in sources:
                    bench = get_benchmark(benchmark)
                    sources[benchmark] = build_dataset(bench.dataset, data_root, bench.split)
                evaluation = evaluate(benchmark, data_root, loaded, cache=cache, batch_size=batch_size,
                                      workers=workers, device=device, image_cache=None if crops is None else Path(crops),
                                      source=sources[benchmark])
                if write_evaluation(targets[name], evaluation, keep_equal=name in no_items):
                    written.add(name)
                log.info("%s: %s -> %s", name, summary(evaluation.payload), targets[name])
    return {"requests": [{"request": name, "file": targets[name].name, "sha256": sha256_file(targets[name]),
                          "computed": name in written} for name in parsed]}


def summary(payload: dict[str, Any]) -> str:
    """One line of a metrics payload: n, every metric, speed."""
    metrics = ", ".join(f"{key} {value:.4f}" for key, value in payload["metrics"].items())
    return f"n={payload['n']} {metrics} ({payload['images_per_s']:.1f} images/s)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m stages.evaluation", description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--benchmark", choices=sorted(BENCHMARKS), help="one benchmark, written to --out")
    what.add_argument("--requests", nargs="+", metavar=f"BENCHMARK[{ALPHA}A]",
                      help="several benchmarks / WiSE-FT alphas, each written to --eval-dir/<request>.json")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding each dataset under its standard name")
    parser.add_argument("--out", type=Path, help="metrics JSON to write (with --benchmark)")
    parser.add_argument("--eval-dir", type=Path, help=f"folder of the metrics JSON files and {INDEX} (with --requests)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help=f"a finished training run ({RECORD} + checkpoint)")
    source.add_argument("--model", help="open_clip architecture name (with --pretrained)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag, a local weights file, or 'none'")
    parser.add_argument("--checkpoint", default=BEST, help="checkpoint file inside --run-dir")
    parser.add_argument("--alpha", type=float, help="WiSE-FT: interpolate the run with its zero-shot start (with --benchmark)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help="images per forward (default: the workflow's eval_batch_size, %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--head-cache", type=Path, help="folder for cached zero-shot heads (default: the run dir's)")
    parser.add_argument("--image-cache", type=Path,
                        help="folder of decoded evaluation crops, shared by all runs (built on first use; same results)")
    args = parser.parse_args(argv)
    # A bad request is a RequestError (one line, exit 2: stages.cli), not argparse's usage text.
    args.requests = None if args.requests is None else [EvalRequest.parse(text, BENCHMARKS) for text in args.requests]
    if args.benchmark is not None and args.out is None:
        parser.error("--benchmark needs --out (the metrics JSON to write)")
    if args.requests is not None and (args.eval_dir is None or args.out is not None or args.alpha is not None):
        parser.error("--requests writes <eval-dir>/<request>.json: give --eval-dir, not --out or --alpha "
                     f"(an α is part of a request: BENCHMARK{ALPHA}A)")
    if args.model is not None and args.pretrained is None:
        parser.error("--model needs --pretrained (a tag, a weights file, or 'none')")
    if args.model is not None and (args.alpha is not None or any(request.alpha is not None for request in args.requests or ())):
        parser.error("an alpha interpolates a run with its zero-shot start: use it with --run-dir")
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; user errors print one line and exit with status 2 (stages.cli)."""
    args = parse_args(argv)
    if args.run_dir is not None:
        cache = HeadCache(args.head_cache or RunDir(args.run_dir).heads)
        sha256 = sha256_file(args.run_dir / args.checkpoint) if (args.run_dir / args.checkpoint).is_file() else None
        weights: RunWeights | None = None

        def model_at(alpha: float | None) -> LoadedModel:
            nonlocal weights
            weights = weights or RunWeights(args.run_dir, args.checkpoint, sha256)
            return weights.at(alpha)
    else:
        cache = HeadCache(args.head_cache)
        local = Path(args.pretrained)
        sha256 = sha256_file(local) if local.is_file() else None

        def model_at(alpha: float | None) -> LoadedModel:
            return load_pretrained(args.model, args.pretrained)
    options = dict(cache=cache, batch_size=args.batch_size, workers=args.workers, device=args.device,
                   image_cache=args.image_cache)
    if args.requests is not None:
        # A run's name and pretrained tag are its checkpoint's: equal whenever its sha256 is.
        identity: dict[str, Any] = {"checkpoint_sha256": sha256}
        if args.model is not None:
            identity |= {"name": args.model, "pretrained": args.pretrained}
        index = evaluate_requests(args.requests, args.eval_dir, args.data_root, model_at, identity, **options)
        atomic_write_json(index_path(args.eval_dir), index)
        return 0
    evaluation = evaluate(args.benchmark, args.data_root, model_at(args.alpha), **options)
    write_evaluation(args.out, evaluation)
    print(f"{args.benchmark}: {summary(evaluation.payload)} -> {args.out} (items: {items_path(args.out)})")
    return 0
