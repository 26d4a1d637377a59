"""Paired bootstrap intervals (stages/reports/intervals.py), items files and the claims report, on toy outcomes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import plan
from stages.config import ConfigError, WorkflowConfig, validate_workflow_config
from stages.evaluation.items import ItemOutcomes, ItemsError
from stages.reports.__main__ import main
from stages.reports.intervals import Comparison, metric_value, paired_bootstrap, seed_pairs, verdict

REPO = Path(__file__).resolve().parents[1]


def _outcomes(predictions: np.ndarray, labels: np.ndarray, objects: np.ndarray | None = None) -> ItemOutcomes:
    groups = labels % 2  # two groups, so that the group metrics are defined
    return ItemOutcomes(np.asarray(predictions), np.asarray(labels), groups, ("even", "odd"), objects)


def _plain_top1(predictions: list[int], labels: list[int]) -> float:
    return sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def _plain_swap_rate(predictions: list[int], objects: list[int]) -> float:
    """Per object, the share of its pairs of renders predicted differently; the mean over objects."""
    rates = []
    for obj in sorted(set(objects)):
        mine = [p for p, o in zip(predictions, objects) if o == obj]
        pairs = [(i, j) for i in range(len(mine)) for j in range(i + 1, len(mine))]
        rates.append(sum(mine[i] != mine[j] for i, j in pairs) / len(pairs))
    return sum(rates) / len(rates)


def _plain_bootstrap(metric: str, a: dict[int, ItemOutcomes], b: dict[int, ItemOutcomes], replicates: int,
                     seed: int) -> tuple[float, float]:
    """The documented algorithm, loop by loop: seeds drawn first (one row per replicate), then per drawn seed
    the objects (an image is its own object when there are none), each drawn copy a new object."""
    plain = {"top1": lambda o: _plain_top1(o[0], o[1]), "swap_rate": lambda o: _plain_swap_rate(o[0], o[2])}[metric]
    pairs = seed_pairs(list(a), list(b))
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, len(pairs), size=(replicates, len(pairs)))
    first = a[pairs[0][0]]
    units = first.objects.tolist() if first.objects is not None else list(range(len(first.labels)))
    names = sorted(set(units))
    members = {name: [i for i, unit in enumerate(units) if unit == name] for name in names}
    differences = []
    for drawn in seed_draws:
        per_seed = []
        for pair in drawn:
            chosen = rng.integers(0, len(names), len(names))
            images = [(i, copy) for copy, unit in enumerate(chosen) for i in members[names[unit]]]

            def value(outcomes: ItemOutcomes) -> float:
                return plain(([int(outcomes.predictions[i]) for i, _ in images],
                              [int(outcomes.labels[i]) for i, _ in images], [copy for _, copy in images]))

            sa, sb = pairs[pair]
            per_seed.append(value(a[sa]) - value(b[sb]))
        differences.append(sum(per_seed) / len(per_seed))
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def test_identical_predictions_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    same = _outcomes(rng.integers(0, 4, 200), labels)
    for metric in ("top1", "worst_group", "mean_group"):
        interval = paired_bootstrap([Comparison(metric, {0: same}, {0: same})], replicates=200)
        assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0), metric
        assert verdict(interval.low, interval.high, 1) == "inconclusive"


def test_a_right_wherever_b_is_wrong_is_strictly_positive() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    wrong = np.where(rng.random(300) < 0.3, (labels + 1) % 4, labels)  # B wrong on ~30 %, A never
    a, b = _outcomes(labels, labels), _outcomes(wrong, labels)
    interval = paired_bootstrap([Comparison("top1", {0: a}, {0: b})], replicates=500)
    assert interval.difference == pytest.approx(np.mean(wrong != labels))
    assert 0 < interval.low <= interval.difference <= interval.high
    assert verdict(interval.low, interval.high, 1) == "reproduced"
    assert verdict(interval.low, interval.high, -1) == "contradicted"


def test_top1_interval_equals_a_plain_reference_and_the_mean_difference_numpy() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 60)
    a = {seed: _outcomes(np.where(rng.random(60) < 0.7, labels, (labels + 1) % 3), labels) for seed in (0, 1, 2)}
    zeroshot = {0: _outcomes(np.where(rng.random(60) < 0.5, labels, (labels + 2) % 3), labels)}
    interval = paired_bootstrap([Comparison("top1", a, zeroshot)], replicates=300, seed=7)
    assert interval.pairs == ((0, 0), (1, 0), (2, 0))  # the zero-shot run is paired with every seed
    plain = np.mean([np.mean(a[s].predictions == labels) - np.mean(zeroshot[0].predictions == labels) for s in a])
    assert interval.difference == pytest.approx(plain, abs=1e-15)
    assert (interval.low, interval.high) == pytest.approx(_plain_bootstrap("top1", a, zeroshot, 300, 7), abs=1e-12)


def test_swap_rate_resamples_objects_with_their_renders_as_a_plain_reference_does() -> None:
    rng = np.random.default_rng(4)
    objects = np.repeat(rng.permutation(40) + 100, 2)  # each object on two backgrounds, ids not 0..n-1
    labels = objects % 3
    a = {seed: _outcomes(rng.integers(0, 3, 80), labels, objects) for seed in (0, 1)}
    b = {seed: _outcomes(rng.integers(0, 3, 80), labels, objects) for seed in (0, 1)}
    interval = paired_bootstrap([Comparison("swap_rate", a, b)], replicates=100, seed=3)
    assert interval.pairs == ((0, 0), (1, 1))
    plain = np.mean([_plain_swap_rate(a[s].predictions.tolist(), objects.tolist())
                     - _plain_swap_rate(b[s].predictions.tolist(), objects.tolist()) for s in (0, 1)])
    assert interval.difference == pytest.approx(plain, abs=1e-15)
    assert (interval.low, interval.high) == pytest.approx(_plain_bootstrap("swap_rate", a, b, 100, 3), abs=1e-12)


def test_the_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 100)
    a, b = ({s: _outcomes(rng.integers(0, 4, 100), labels) for s in (0, 1, 2)} for _ in range(2))
    parts = [Comparison("worst_group", a, b), Comparison("top1", a, b)]
    first = paired_bootstrap(parts, replicates=200, seed=11)
    assert paired_bootstrap(parts, replicates=200, seed=11) == first
    assert paired_bootstrap(parts, replicates=200, seed=12) != first
    # Two benchmarks: the observed difference is the mean of the two.
    assert first.difference == pytest.approx(np.mean([paired_bootstrap([part], replicates=1).difference for part in parts]))


@pytest.mark.parametrize(("low", "high", "direction", "expected"), [
    (0.01, 0.05, 1, "reproduced"), (-0.05, -0.01, 1, "contradicted"), (-0.01, 0.02, 1, "inconclusive"),
    (-0.05, -0.01, -1, "reproduced"), (0.01, 0.05, -1, "contradicted"), (0.0, 0.05, 1, "inconclusive"),
])
def test_verdict_rule(low: float, high: float, direction: int, expected: str) -> None:
    assert verdict(low, high, direction) == expected


def test_unpaired_outcomes_and_seeds_are_refused() -> None:
    labels = np.arange(10) % 3
    a, other = _outcomes(labels, labels), _outcomes(labels, (labels + 1) % 3)
    with pytest.raises(ValueError, match="same test items"):
        paired_bootstrap([Comparison("top1", {0: a}, {0: other})], replicates=5)
    with pytest.raises(ValueError, match="cannot be paired"):
        seed_pairs([0, 1], [1, 2])
    with pytest.raises(ValueError, match="object ids"):
        metric_value("swap_rate", a)


def test_items_file_round_trips_without_pickle_and_refuses_object_arrays(tmp_path: Path) -> None:
    outcomes = _outcomes(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), np.array([5, 5, 6, 6]))
    outcomes.write(tmp_path / "m.items.npz")
    with np.load(tmp_path / "m.items.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["group_names", "groups", "labels", "objects", "predictions"]
        assert archive["predictions"].dtype == np.int64 and archive["group_names"].dtype.kind == "U"
    back = ItemOutcomes.read(tmp_path / "m.items.npz")
    assert back.same_items(outcomes) and np.array_equal(back.predictions, outcomes.predictions)
    np.savez(tmp_path / "bad.items.npz", predictions=np.array([object()], dtype=object), labels=np.array([0]))
    with pytest.raises(ItemsError, match="not a readable items file"):
        ItemOutcomes.read(tmp_path / "bad.items.npz")
    with pytest.raises(ItemsError, match="is missing"):
        ItemOutcomes.read(tmp_path / "none.items.npz")


def _tiny(tmp_path: Path, **claims: object) -> dict:
    raw = yaml.safe_load((REPO / "tests/configs/demo-tiny.yaml").read_text())
    raw["results"] = str(tmp_path / "results")
    raw["claims"] |= claims
    return raw


def test_claims_config_is_checked_against_its_tables(tmp_path: Path) -> None:
    bad = [({"table": 9}, "no table 9"), ({"column": "ID"}, "not a column"),
           ({"column": "Adjusted avg"}, "cannot be bootstrapped"), ({"baseline": "flyp"}, "not one of table 3")]
    for override, message in bad:
        raw = _tiny(tmp_path)
        raw["claims"]["rows"][0] |= override
        with pytest.raises(ConfigError, match=message):
            validate_workflow_config(raw)


def test_claims_report_from_items_files(tmp_path: Path) -> None:
    config: WorkflowConfig = validate_workflow_config(_tiny(tmp_path, replicates=100))
    rng = np.random.default_rng(6)
    objects = np.repeat(np.arange(30), 2)
    labels = objects % 2
    for method, accuracy in (("zeroshot", 0.3), ("carft", 0.6), ("starft", 1.0)):
        for claim in config.claims.rows:
            for cell in plan.claim_cells(config, claim, method).values():
                for column in plan.claim_columns(config, claim):
                    predictions = np.where(rng.random(60) < accuracy, labels, 1 - labels)
                    path = cell.run_dir(config.results).items(cell.request(column.benchmark))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _outcomes(predictions, labels, objects).write(path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(plan.report_config(config)))
    assert main(["--config", str(tmp_path / "config.yaml"), "--claims"]) == 0
    rows = list(csv.DictReader((tmp_path / "results" / "claims.csv").open()))
    assert [row["claim"] for row in rows] == [claim.claim for claim in config.claims.rows]
    # StarFT is right on every item: its worst group beats zero-shot's (StarFT 100 %); its swap rate is 0.
    worst = rows[0]
    starft = ItemOutcomes.read(plan.claim_cells(config, config.claims.rows[0], "starft")[0].run_dir(config.results)
                               .items("demo-heldout-group"))
    zeroshot = ItemOutcomes.read(plan.claim_cells(config, config.claims.rows[0], "zeroshot")[0].run_dir(config.results)
                                 .items("demo-heldout-group"))
    plain = 100 * (metric_value("worst_group", starft) - metric_value("worst_group", zeroshot))
    assert float(worst["difference"]) == pytest.approx(plain, abs=0.005) and worst["verdict"] == "reproduced"
    assert float(worst["low"]) > 0 and rows[0]["seed_pairs"] == "1" and rows[0]["replicates"] == "100"
    assert rows[1]["direction"] == "-1" and float(rows[1]["high"]) < 0 and rows[1]["verdict"] == "reproduced"
    text = (tmp_path / "results" / "claims.md").read_text()
    assert "| Held-out worst group: StarFT > zero-shot | StarFT − Zeroshot | > | Worst group (table 3: " in text
    assert text.count("**reproduced**") + text.count("**inconclusive**") + text.count("**contradicted**") == 3
