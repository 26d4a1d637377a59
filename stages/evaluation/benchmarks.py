"""Benchmarks of the paper: which dataset and split, which class names and templates, which metrics.

A benchmark's *head classes* are the classes a classifier is built over. They equal the dataset's
classes except for IN-R and IN-A, which are scored with the 1000 ImageNet classes and then
projected onto their 200-class sub-list (``dataset.metadata["class_indices"]``), as wise-ft,
FLYP and the official StarFT code do. A trained head is used when its class names equal the
head classes; any other class set goes through the text tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.data.imagenet import imagenet_classes
from stages.data.layout import templates as load_templates
from stages.data.source import LabeledImages
from stages.evaluation import metrics

GROUP_METRICS = "groups"  # worst_group, mean_group (+ the same per extra partition)
MACRO_F1 = "macro_f1"
WORST_REGION = "worst_region"
TRAIN_WEIGHTED = "train_weighted"  # adjusted_mean: group accuracies weighted by the train split's group shares
SHORTCUT = "shortcut"  # minority_mean, shortcut_rate (the demo, where class c lives on its home background)
SWAP = "swap"  # swap_rate: how often replacing only the background changes the prediction (the demo)
ALWAYS_METRICS = ("top1", "ece", "nll")
"""The metrics every benchmark's metrics JSON holds (ECE and NLL from the same softmax as the prediction)."""


@dataclass(frozen=True)
class Benchmark:
    """One evaluation: `dataset` / `split`, prompt templates file, extra metrics, projected or not."""

    name: str
    dataset: str
    split: str
    templates: str
    extra_metrics: tuple[str, ...] = ()
    imagenet_head: bool = False

    def template_list(self, source: LabeledImages | None = None) -> list[str]:
        """The prompt templates (``{c}`` slot, optional ``{a}`` article): the dataset's own
        (``metadata["templates"]``, e.g. your imagefolder's templates.txt), else the shipped data file."""
        if source is not None and source.metadata.get("templates"):
            return list(source.metadata["templates"])
        return load_templates(self.templates)

    def head_classes(self, source: LabeledImages) -> list[str]:
        """The classes a classifier for this benchmark is built over (1000 ImageNet names if projected)."""
        return imagenet_classes()[1] if self.imagenet_head else list(source.classnames)

    def class_indices(self, source: LabeledImages) -> list[int] | None:
        """Head columns of the dataset's labels (IN-R/IN-A sub-list), or None when they coincide."""
        return list(source.metadata["class_indices"]) if self.imagenet_head else None


BENCHMARKS: dict[str, Benchmark] = {
    bench.name: bench
    for bench in [
        # Domain shift (Tables 2, 6-8, 10, 12): 80 OpenAI templates.
        Benchmark("imagenet", "imagenet", "val", "imagenet"),
        Benchmark("imagenetv2", "imagenetv2", "test", "imagenet"),
        Benchmark("imagenet-r", "imagenet-r", "test", "imagenet", imagenet_head=True),
        Benchmark("imagenet-a", "imagenet-a", "test", "imagenet", imagenet_head=True),
        Benchmark("imagenet-sketch", "imagenet-sketch", "test", "imagenet"),
        # Group shift (Table 3): one Table 14 prompt each.
        Benchmark("waterbirds", "waterbirds", "test", "waterbirds", (GROUP_METRICS, TRAIN_WEIGHTED)),
        Benchmark("pacs", "pacs", "test", "pacs", (GROUP_METRICS,)),
        Benchmark("cifar10.02", "cifar10.02", "test", "cifar10.02", (GROUP_METRICS,)),
        # Zero-shot transfer (Table 4): OpenAI per-dataset templates.
        Benchmark("cifar10", "cifar10", "test", "cifar"),
        Benchmark("cifar100", "cifar100", "test", "cifar"),
        Benchmark("stl10", "stl10", "test", "stl10"),
        Benchmark("caltech101-all", "caltech101", "all", "caltech101"),
        # Transfer after fine-tuning on the target (Tables 5, 9, 11): FLYP test splits.
        Benchmark("caltech101", "caltech101", "test", "caltech101"),
        Benchmark("stanford-cars", "stanford-cars", "test", "stanford_cars"),
        Benchmark("flowers102", "flowers102", "test", "flowers102"),
        Benchmark("iwildcam-id", "iwildcam", "id_test", "iwildcam", (MACRO_F1,)),
        Benchmark("iwildcam-ood", "iwildcam", "test", "iwildcam", (MACRO_F1,)),
        Benchmark("fmow-id", "fmow", "id_test", "fmow", (WORST_REGION,)),
        Benchmark("fmow-ood", "fmow", "test", "fmow", (WORST_REGION,)),
        # Your own data (stages/data/custom.py): <data_root>/imagefolder/{val,test}/<class folder>/.
        Benchmark("imagefolder-val", "imagefolder", "val", "imagefolder"),
        Benchmark("imagefolder-test", "imagefolder", "test", "imagefolder"),
        # Your own CSV files (stages/data/formats.py, default options): <data_root>/csv/{val,test}.csv.
        Benchmark("csv-val", "csv", "csv/val.csv", "imagefolder"),
        Benchmark("csv-test", "csv", "csv/test.csv", "imagefolder"),
        # The embedded demo (Fashion-MNIST on injected backgrounds, stages/data/fmnist_demo.py): on the
        # fine-tuned classes ID, group shift and domain shifts; on the held-out classes group shift
        # (the Waterbirds analogue) and zero-shot transfer; all ten classes.
        Benchmark("demo-id", "fmnist-demo", "test", "fmnist-demo"),
        Benchmark("demo-group", "fmnist-demo", "group", "fmnist-demo", (GROUP_METRICS, TRAIN_WEIGHTED, SHORTCUT, SWAP)),
        Benchmark("demo-sketch", "fmnist-demo", "sketch", "fmnist-demo"),
        Benchmark("demo-rendition", "fmnist-demo", "rendition", "fmnist-demo"),
        Benchmark("demo-heldout-group", "fmnist-demo", "heldout-group", "fmnist-demo",
                  (GROUP_METRICS, TRAIN_WEIGHTED, SHORTCUT, SWAP)),
        Benchmark("demo-heldout", "fmnist-demo", "heldout", "fmnist-demo"),
        Benchmark("demo-all", "fmnist-demo", "all", "fmnist-demo"),
    ]
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; an unknown name lists the known ones."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


def score(
    bench: Benchmark, source: LabeledImages, predictions: np.ndarray, confidences: np.ndarray | None = None,
    label_log_probs: np.ndarray | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The ``metrics`` dict and the per-group table of `predictions` (labels in the dataset's class order).

    With the top-1 softmax `confidences` and each image's `label_log_probs` (``run.predict``), the
    dict also holds ``ece`` and ``nll`` (``ALWAYS_METRICS``); without them, the accuracy metrics only.
    """
    labels = np.asarray(source.labels)
    results = {"top1": metrics.top1(predictions, labels)}
    if confidences is not None:
        results["ece"] = metrics.expected_calibration_error(confidences, np.asarray(predictions) == labels)
    if label_log_probs is not None:
        results["nll"] = metrics.negative_log_likelihood(label_log_probs)
    table: list[dict[str, Any]] = []
    if source.groups is not None and source.group_names is not None:
        table = metrics.group_accuracies(predictions, labels, np.asarray(source.groups), source.group_names)
    if GROUP_METRICS in bench.extra_metrics:
        results["worst_group"] = metrics.worst_group(table)
        results["mean_group"] = metrics.mean_group(table)
        for partition, (groups, names) in source.metadata.get("partitions", {}).items():
            extra = metrics.group_accuracies(predictions, labels, np.asarray(groups), names)
            results[f"worst_group_by_{partition}"] = metrics.worst_group(extra)
            results[f"mean_group_by_{partition}"] = metrics.mean_group(extra)
    if TRAIN_WEIGHTED in bench.extra_metrics:
        results["adjusted_mean"] = metrics.train_weighted_group_mean(table, source.metadata["train_group_counts"])
    if MACRO_F1 in bench.extra_metrics:
        results["macro_f1"] = metrics.macro_f1(predictions, labels)
    if SHORTCUT in bench.extra_metrics:
        results["minority_mean"], results["shortcut_rate"] = metrics.background_shortcut(
            predictions, labels, np.asarray(source.metadata["backgrounds"]), source.metadata["homes"])
    if SWAP in bench.extra_metrics:
        results["swap_rate"] = metrics.background_swap_rate(predictions, np.asarray(source.metadata["objects"]))
    if WORST_REGION in bench.extra_metrics:
        results["worst_region"] = metrics.worst_group(table, exclude=("Other",))
    return results, table
