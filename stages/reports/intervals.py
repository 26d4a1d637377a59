"""Paired bootstrap intervals: how sure is "method A beats method B on this benchmark"?

A difference of means over 3 seeds says nothing about its noise: the seeds vary, and so do the
few hundred test items. This module resamples both, hierarchically (a percentile bootstrap):
each of B replicates draws the seed pairs with replacement and, for each drawn pair, the test
items with replacement, *the same items for both methods* (paired: the items' difficulty cancels
in the difference); it recomputes the metric of each method on the drawn items with the
evaluation's own functions (stages/evaluation/metrics.py), averages over the drawn seeds and
takes the difference. The interval is the 2.5th to 97.5th percentile of the B differences.

- Seed pairs: equal seeds of the two methods; a side with one seed (a method that does not
  train: zero-shot, seed 0) is paired with every seed of the other.
- Test items: an image, or, where the benchmark draws one object on several images (the demo's
  paired splits, an items file's ``objects``), an object with all its renders, so that
  correlated renders are not counted as independent items (and the swap rate stays defined).
- Several benchmarks (an average column): each is resampled on its own, with the replicate's one
  seed draw, and the per-benchmark differences are averaged per replicate.
- Verdict: "reproduced" when the interval excludes 0 in the paper's direction, "contradicted"
  when it excludes 0 the other way, "inconclusive" otherwise (an interval that touches 0 included).

Deterministic: one ``np.random.default_rng(seed)`` draws everything, in a fixed order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stages.config import IntervalMetric
from stages.evaluation import metrics
from stages.evaluation.items import ItemOutcomes

Verdict = Literal["reproduced", "contradicted", "inconclusive"]
REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Comparison:
    """One benchmark's part of a claim: `metric` of method A's and B's outcomes, by seed, on the same test items."""

    metric: IntervalMetric
    a: Mapping[int, ItemOutcomes]
    b: Mapping[int, ItemOutcomes]


@dataclass(frozen=True)
class Interval:
    """A paired difference A − B (a fraction, as the metrics JSON holds it) and its bootstrap interval."""

    difference: float
    """The observed difference: the mean over seed pairs of metric(A) − metric(B) on all test items."""
    low: float
    high: float
    pairs: tuple[tuple[int, int], ...]
    """The (seed of A, seed of B) pairs the seeds are resampled from."""
    replicates: int


def metric_value(metric: IntervalMetric, outcomes: ItemOutcomes) -> float:
    """`metric` of `outcomes`, as the evaluation computes it (the same functions of stages.evaluation.metrics)."""
    if metric == "top1":
        return metrics.top1(outcomes.predictions, outcomes.labels)
    if metric == "swap_rate":
        if outcomes.objects is None:
            raise ValueError("the swap rate needs object ids: this benchmark draws each object once")
        return metrics.background_swap_rate(outcomes.predictions, outcomes.objects)
    if outcomes.groups is None or outcomes.group_names is None:
        raise ValueError(f"{metric} needs groups: this benchmark has none")
    table = metrics.group_accuracies(outcomes.predictions, outcomes.labels, outcomes.groups, outcomes.group_names)
    if metric == "worst_group":
        return metrics.worst_group(table)
    if metric == "mean_group":
        return metrics.mean_group(table)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def seed_pairs(a: Sequence[int], b: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The (seed of A, seed of B) pairs: equal seeds, or a single-seed side paired with each seed of the other."""
    a, b = sorted(a), sorted(b)
    if len(b) == 1:
        return tuple((seed, b[0]) for seed in a)
    if len(a) == 1:
        return tuple((a[0], seed) for seed in b)
    if a != b:
        raise ValueError(f"seeds {a} and {b} cannot be paired: give both methods the same seeds")
    return tuple(zip(a, b))


class _Resampler:
    """Draws test items with replacement: objects with all their renders, or images where each is its own object."""

    def __init__(self, outcomes: ItemOutcomes) -> None:
        units = outcomes.objects if outcomes.objects is not None else np.arange(len(outcomes.labels))
        _, unit_of, self.sizes = np.unique(units, return_inverse=True, return_counts=True)
        self.order = np.argsort(unit_of.reshape(-1), kind="stable")  # images grouped by unit, in unit order
        self.starts = np.cumsum(self.sizes) - self.sizes

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, new object ids) of one resample: a unit drawn twice is two objects."""
        units = rng.integers(0, len(self.sizes), len(self.sizes))
        sizes = self.sizes[units]
        ends = np.cumsum(sizes)
        # Position k of the resample is image number (k - start of its drawn copy) of its unit.
        positions = np.arange(ends[-1]) - np.repeat(ends - sizes, sizes) + np.repeat(self.starts[units], sizes)
        return self.order[positions], np.repeat(np.arange(len(units)), sizes)


def _checked_pairs(parts: Sequence[Comparison]) -> tuple[tuple[int, int], ...]:
    """The seed pairs shared by every part, each part's outcomes scoring the same items throughout."""
    if not parts:
        raise ValueError("a paired difference needs at least one benchmark")
    pairs = seed_pairs(list(parts[0].a), list(parts[0].b))
    for part in parts:
        if seed_pairs(list(part.a), list(part.b)) != pairs:
            raise ValueError("every benchmark of one claim must compare the same runs (seed pairs)")
        reference = part.a[pairs[0][0]]
        if not all(reference.same_items(outcomes) for outcomes in [*part.a.values(), *part.b.values()]):
            raise ValueError("the two methods' outcomes are not on the same test items: a paired difference "
                             "needs one benchmark's items in one order")
    return pairs


def paired_bootstrap(parts: Sequence[Comparison], replicates: int = REPLICATES, seed: int = 0,
                     level: float = LEVEL) -> Interval:
    """The difference A − B averaged over `parts` (benchmarks) and its `level` percentile bootstrap interval."""
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates must be >= 1 and level in (0, 1): {replicates}, {level}")
    pairs = _checked_pairs(parts)
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, len(pairs), size=(replicates, len(pairs)))
    totals = np.zeros(replicates)
    observed = 0.0
    for part in parts:
        observed += float(np.mean([metric_value(part.metric, part.a[sa]) - metric_value(part.metric, part.b[sb])
                                   for sa, sb in pairs]))
        resampler = _Resampler(part.a[pairs[0][0]])
        for replicate, drawn in enumerate(seed_draws):
            differences = []
            for pair in drawn:
                images, objects = resampler.draw(rng)
                sa, sb = pairs[pair]
                differences.append(metric_value(part.metric, part.a[sa].take(images, objects))
                                   - metric_value(part.metric, part.b[sb].take(images, objects)))
            totals[replicate] += np.mean(differences)
    totals /= len(parts)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(totals, [tail, 100 - tail])
    return Interval(observed / len(parts), float(low), float(high), pairs, replicates)


def verdict(low: float, high: float, direction: int) -> Verdict:
    """The issue's rule on an interval [low, high] of A − B, when the paper claims sign `direction` (+1: A > B)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 (A > B) or -1 (A < B), not {direction!r}")
    if low > high:
        raise ValueError(f"not an interval: [{low}, {high}]")
    if (low > 0 and direction == 1) or (high < 0 and direction == -1):
        return "reproduced"
    if (high < 0 and direction == 1) or (low > 0 and direction == -1):
        return "contradicted"
    return "inconclusive"
