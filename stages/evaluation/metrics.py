"""Metrics as pure functions of predictions, labels and groups (all results are fractions in [0, 1]).

- top-1: mean(pred == label); over a partition into groups this is also the sample-weighted
  average of the group accuracies.
- per-group accuracy over the non-empty groups; worst-group = their minimum; mean-group = their
  unweighted mean.
- train-weighted group mean (Waterbirds, WILDS ``adj_acc_avg``): the group accuracies weighted
  by each group's share of the *training* split, i.e. test accuracy re-weighted to the training
  distribution (3498/184/56/1057 of 4795 for Waterbirds).
- macro-F1 as WILDS/sklearn ``f1_score(average="macro", labels=unique(y_true))``: the mean F1 over
  the classes present in the labels (a class that is only predicted adds false positives to none).
- background swap rate (the demo): per object drawn on several backgrounds, the share of its
  pairs of renders predicted differently, averaged over objects.
- worst-region (FMoW): worst-group over the regions, ``Other`` excluded, as WILDS does.
- projection (IN-R / IN-A): keep the 1000-way logits' columns of the 200-class sub-list.
- expected calibration error (ECE, Guo et al. 2017; CaRot's table metric): the top-1 confidences
  (max softmax probability) in ``ECE_BINS`` = 15 equal-width bins ``(b/15, (b+1)/15]`` (right-
  inclusive, a confidence of exactly 1 in the last bin); ECE = sum_b (n_b / n) |acc_b - conf_b|,
  a fraction in [0, 1]. torchmetrics' ``MulticlassCalibrationError(n_bins=15, norm="l1")`` is the
  same sum, but its bins are ``[b/15, (b+1)/15)`` with a 16th bin holding the confidences of exactly
  1.0 (``bucketize(right=True)``; its issue #3510): the two differ only when confidences sit exactly
  on a bin edge, which for CLIP at logit scale 100 means saturated softmaxes (confidence 1.0 in float32).
- negative log-likelihood (NLL): the mean over images of -log softmax(logits)[label], in nats, at
  the logits the classifier scores with (docs/evaluation.md says which scale); not a fraction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only project_logits takes tensors: a plan that names metrics starts without torch
    import torch


def top1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("top-1 of zero samples is undefined")
    return float(np.mean(predictions == labels))


def group_accuracies(
    predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray, group_names: Sequence[str]
) -> list[dict[str, Any]]:
    """``[{group, n, top1}]`` for every non-empty group, in group-id order."""
    predictions, labels, groups = np.asarray(predictions), np.asarray(labels), np.asarray(groups)
    table = []
    for group_id, name in enumerate(group_names):
        members = groups == group_id
        if members.any():
            table.append({"group": name, "n": int(members.sum()), "top1": top1(predictions[members], labels[members])})
    return table


def worst_group(table: Sequence[Mapping[str, Any]], exclude: Sequence[str] = ()) -> float:
    """Minimum accuracy over the groups of `table` (from ``group_accuracies``) not named in `exclude`."""
    kept = [row["top1"] for row in table if row["group"] not in exclude]
    if not kept:
        raise ValueError("worst-group accuracy needs at least one non-empty group")
    return float(min(kept))


def mean_group(table: Sequence[Mapping[str, Any]]) -> float:
    """Unweighted mean of the group accuracies."""
    return float(np.mean([row["top1"] for row in table]))


def train_weighted_group_mean(table: Sequence[Mapping[str, Any]], train_counts: Mapping[str, int]) -> float:
    """sum_g acc_g * n_g^train / sum_g n_g^train over the groups of `table` (WILDS' adjusted average)."""
    missing = [row["group"] for row in table if not train_counts.get(row["group"])]
    if missing:
        raise ValueError(f"no training samples counted for group(s) {', '.join(missing)}")
    total = sum(train_counts[row["group"]] for row in table)
    return float(sum(row["top1"] * train_counts[row["group"]] for row in table) / total)


def background_shortcut(predictions: np.ndarray, labels: np.ndarray, backgrounds: np.ndarray,
                        homes: Sequence[int]) -> tuple[float, float]:
    """The demo's shortcut measures, where class c lives on its home background ``homes[c]``.

    minority_mean: unweighted mean accuracy over the (class, background) groups off the class's
    home; shortcut_rate: the share of those samples predicted as a class whose home is their
    background (worst-group accuracy saturates at 0 once a shortcut is learned; these two keep
    moving).
    """
    predictions, labels, backgrounds = np.asarray(predictions), np.asarray(labels), np.asarray(backgrounds)
    homes = np.asarray(homes)
    minority = backgrounds != homes[labels]
    if not minority.any():
        raise ValueError("no sample lies off its class's home background")
    accuracies = [top1(predictions[minority & (labels == c) & (backgrounds == b)], labels[minority & (labels == c)
                       & (backgrounds == b)])
                  for c, b in sorted(set(zip(labels[minority].tolist(), backgrounds[minority].tolist())))]
    return float(np.mean(accuracies)), float(np.mean(homes[predictions[minority]] == backgrounds[minority]))


def background_swap_rate(predictions: np.ndarray, objects: np.ndarray) -> float:
    """How often replacing only the background changes the prediction (the demo's paired splits).

    Each object is drawn on several backgrounds; per object, the share of its unordered pairs of
    renders whose predictions differ; then the mean over objects (each object weighs the same).
    Counted without a loop over objects (a bootstrap calls it thousands of times): an object's
    differing pairs are all its pairs minus, per predicted class, the pairs of renders both predicted
    as it; each share is an exact count over an exact count, as a pair-by-pair comparison gives.
    """
    predictions, objects = np.asarray(predictions), np.asarray(objects)
    names, owner, renders = np.unique(objects, return_inverse=True, return_counts=True)
    if (renders < 2).any():
        raise ValueError(f"object {names[renders < 2][0]} has one render: the swap rate needs every object on "
                         ">= 2 backgrounds")
    # Each (object, predicted class) once, as one integer key, with how many of the object's renders got that class.
    _, predicted = np.unique(predictions, return_inverse=True)
    width = int(predicted.max()) + 1
    keys, counts = np.unique(owner.reshape(-1) * width + predicted.reshape(-1), return_counts=True)
    same = np.bincount(keys // width, weights=counts * (counts - 1) // 2, minlength=len(names))
    pairs = renders * (renders - 1) // 2
    return float(np.mean((pairs - same) / pairs))


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Macro-F1 over the classes present in `labels` (WILDS ``F1-macro_all``)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = []
    for cls in np.unique(labels):
        true_positive = np.sum((predictions == cls) & (labels == cls))
        predicted, actual = np.sum(predictions == cls), np.sum(labels == cls)
        scores.append(0.0 if true_positive == 0 else 2.0 * true_positive / (predicted + actual))
    return float(np.mean(scores))


ECE_BINS = 15


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of top-1 `confidences` (each in [0, 1]) and whether each top-1 prediction was `correct`.

    Bin b holds the confidences in ``(b/bins, (b+1)/bins]`` (0 joins the first bin); the result is
    sum_b |sum of correct_b - sum of confidences_b| / n, i.e. the bin-fraction-weighted
    |accuracy - mean confidence|, computed in float64.
    """
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if len(confidences) == 0 or confidences.shape != correct.shape:
        raise ValueError(f"ECE needs as many confidences as outcomes, at least one: {confidences.shape}, {correct.shape}")
    if np.any(confidences < 0) or np.any(confidences > 1) or np.isnan(confidences).any():
        raise ValueError("ECE: confidences must be probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)  # edges[b] < c <= edges[b+1]
    gaps = np.bincount(index, weights=correct, minlength=bins) - np.bincount(index, weights=confidences, minlength=bins)
    return float(np.abs(gaps).sum() / len(confidences))


def negative_log_likelihood(label_log_probs: np.ndarray) -> float:
    """Mean of -log p(label) over images, from each image's log-probability of its true label (nats)."""
    label_log_probs = np.asarray(label_log_probs, dtype=np.float64)
    if len(label_log_probs) == 0:
        raise ValueError("NLL of zero samples is undefined")
    return float(-label_log_probs.mean())


def project_logits(logits: torch.Tensor, class_indices: Sequence[int] | None) -> torch.Tensor:
    """Keep the columns `class_indices` of `logits` (IN-R/IN-A: 1000-way -> 200-way); None keeps all."""
    import torch

    if class_indices is None:
        return logits
    return logits[:, torch.as_tensor(class_indices, device=logits.device)]
