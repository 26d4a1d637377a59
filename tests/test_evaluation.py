"""Evaluation: known-answer metrics, projection, template heads, head cache, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fakes
from conftest import tiny_config
from stages.data.source import ImageDataset, build_dataset, load_image
from stages.evaluation import metrics
from stages.evaluation.benchmarks import get_benchmark, score
from stages.evaluation.image_cache import CachedImages, evaluation_images
from stages.evaluation.items import ItemOutcomes
from stages.evaluation.run import EvaluationError, classifier, load_pretrained, load_run, main, predict
from stages.evaluation.heads import HeadCache, text_head
from stages.config import TrainConfig
from stages.io import atomic_torch_save
from stages.models.factory import LoadedModel, create_clip
from stages.reports.intervals import metric_value
from stages.rundir import RunDir, RunRecord
from stages.training.loop import train

TINY = "TinyCLIP-test"


# --- metrics on hand-made predictions ------------------------------------------------------------------

def _plain_group_accuracies(predictions: list[int], labels: list[int], groups: list[int]) -> dict[int, float]:
    correct: dict[int, int] = {}
    total: dict[int, int] = {}
    for p, y, g in zip(predictions, labels, groups):
        total[g] = total.get(g, 0) + 1
        correct[g] = correct.get(g, 0) + (p == y)
    return {g: correct[g] / total[g] for g in total}


def test_worst_group_mean_group_and_top1_known_answer() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    predictions = [0, 0, 0, 1, 1, 0, 1, 1, 1, 0]
    groups = [0, 0, 0, 1, 2, 2, 3, 3, 3, 3]  # accuracies 1, 0, 1/2, 3/4
    table = metrics.group_accuracies(np.array(predictions), np.array(labels), np.array(groups), ["a", "b", "c", "d", "empty"])
    plain = _plain_group_accuracies(predictions, labels, groups)
    assert [row["group"] for row in table] == ["a", "b", "c", "d"] and [row["n"] for row in table] == [3, 1, 2, 4]
    assert [row["top1"] for row in table] == [plain[g] for g in range(4)] == [1.0, 0.0, 0.5, 0.75]
    assert metrics.worst_group(table) == min(plain.values()) == 0.0
    assert metrics.mean_group(table) == pytest.approx(sum(plain.values()) / 4) == pytest.approx(0.5625)
    # top-1 is the sample-weighted average of the group accuracies.
    weighted = sum(row["n"] * row["top1"] for row in table) / len(labels)
    assert metrics.top1(np.array(predictions), np.array(labels)) == pytest.approx(weighted) == pytest.approx(0.7)


def test_train_weighted_group_mean_known_answer() -> None:
    table = [{"group": "a", "n": 5, "top1": 1.0}, {"group": "b", "n": 5, "top1": 0.0}, {"group": "c", "n": 5, "top1": 0.5}]
    counts = {"a": 70, "b": 10, "c": 20, "unused": 999}
    assert metrics.train_weighted_group_mean(table, counts) == pytest.approx((70 * 1.0 + 10 * 0.0 + 20 * 0.5) / 100)
    with pytest.raises(ValueError, match="group"):
        metrics.train_weighted_group_mean(table, {"a": 1, "b": 1})


def test_macro_f1_known_answer_counts_only_classes_present() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 0, 1, 1, 3, 2]  # class 3 is only predicted
    # plain: per present class, F1 = 2 P R / (P + R)
    scores = []
    for cls in sorted(set(labels)):
        tp = sum(p == cls and y == cls for p, y in zip(predictions, labels))
        precision = tp / max(1, sum(p == cls for p in predictions))
        recall = tp / sum(y == cls for y in labels)
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    assert metrics.macro_f1(np.array(predictions), np.array(labels)) == pytest.approx(sum(scores) / len(scores))
    assert metrics.macro_f1(np.array(predictions), np.array(labels)) == pytest.approx((0.8 + 0.5 + 1.0) / 3)


def test_worst_region_excludes_other() -> None:
    fmow = get_benchmark("fmow-ood")
    source = fakes.colour_images("test", 6)
    source.labels = [0, 0, 1, 1, 2, 2]
    source.groups, source.group_names = [0, 0, 1, 1, 5, 5], ["Asia", "Europe", "Africa", "Americas", "Oceania", "Other"]
    results, table = score(fmow, source, np.array([0, 1, 1, 1, 0, 0]))
    assert [row["group"] for row in table] == ["Asia", "Europe", "Other"]
    assert results["worst_region"] == 0.5 and results["top1"] == pytest.approx(0.5)


def _reference_ece(confidences: list[float], correct: list[bool], bins: int = 15) -> float:
    """Guo et al.'s ECE, bin by bin in float64: bin b holds (b/bins, (b+1)/bins] (0 in the first)."""
    edges = [b / bins for b in range(bins + 1)]
    total = 0.0
    for b in range(bins):
        members = [i for i, c in enumerate(confidences) if (edges[b] < c or (b == 0 and c == 0.0)) and c <= edges[b + 1]]
        if members:
            accuracy = sum(correct[i] for i in members) / len(members)
            confidence = sum(confidences[i] for i in members) / len(members)
            total += len(members) / len(confidences) * abs(accuracy - confidence)
    return total


def test_swap_rate_equals_the_pair_by_pair_definition_exactly() -> None:
    """The swap rate counts pairs without a loop (a bootstrap calls it thousands of times): the same floats."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        renders = rng.integers(2, 6, size=rng.integers(1, 30))
        objects = rng.permutation(np.repeat(rng.permutation(500)[:len(renders)], renders))
        predictions = rng.integers(0, rng.integers(1, 6), len(objects))
        rates = []
        for obj in sorted(set(objects.tolist())):
            mine = predictions[objects == obj].tolist()
            rates.append(np.mean([mine[i] != mine[j] for i in range(len(mine)) for j in range(i + 1, len(mine))]))
        assert metrics.background_swap_rate(predictions, objects) == float(np.mean(rates))


def test_ece_hand_computed_right_inclusive_bins_and_one_in_the_last_bin() -> None:
    edge = float(np.linspace(0, 1, 16)[6])  # 6/15: right edge of bin 5
    confidences = [0.95, 1.0, 0.5, edge, 0.42]
    correct = [True, False, True, False, True]
    # bin 14 (14/15, 1]: {0.95 right, 1.0 wrong} -> |0.5 - 0.975| x 2/5; bin 7: |1 - 0.5| x 1/5;
    # bin 5 (1/3, 2/5]: |0 - 0.4| x 1/5; bin 6 (2/5, 7/15]: |1 - 0.42| x 1/5.
    expected = (2 * 0.475 + 0.5 + edge + 0.58) / 5
    assert metrics.expected_calibration_error(np.array(confidences), np.array(correct)) == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(0.486)
    # torchmetrics' bins, [b/15, (b+1)/15) and a 16th bin for exactly 1.0, would give 0.346 here.
    assert _reference_ece(confidences, correct) == pytest.approx(expected, abs=1e-15)
    assert metrics.expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_calibration_error(np.array([1.5]), np.array([True]))


def test_ece_and_nll_equal_a_plain_float64_reference_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 7, generator=generator, dtype=torch.float64) * 3.0
    logits[:20] *= 40.0  # saturated softmaxes: confidences of exactly 1.0
    labels = torch.randint(0, 7, (400,), generator=generator)
    probabilities = logits.softmax(dim=1)
    confidences, predictions = probabilities.max(dim=1)
    assert (confidences == 1.0).any()
    ece = metrics.expected_calibration_error(confidences.numpy(), (predictions == labels).numpy())
    reference = _reference_ece(confidences.tolist(), (predictions == labels).tolist())
    assert ece == pytest.approx(reference, abs=1e-12) and 0.0 < ece < 1.0
    import math
    plain_nll = sum(-math.log(sum(math.exp(v - max(row)) for v in row)) * -1 - (row[y] - max(row)) for row, y in
                    zip(logits.tolist(), labels.tolist())) / 400  # log-sum-exp minus the label's logit
    label_log_probs = logits.log_softmax(dim=1).gather(1, labels[:, None])[:, 0]
    assert metrics.negative_log_likelihood(label_log_probs.numpy()) == pytest.approx(plain_nll, rel=1e-12)
    assert metrics.negative_log_likelihood(label_log_probs.numpy()) == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-12)


def test_projection_scores_the_sublist_columns_only() -> None:
    subset = [1, 2, 4]
    logits = torch.zeros(2, 1000)
    logits[0, 0] = 9.0  # tench: outside the sub-list, must not win
    logits[0, 4] = 1.0
    logits[1, 2] = 3.0
    projected = metrics.project_logits(logits, subset)
    assert projected.shape == (2, 3) and projected.argmax(1).tolist() == [2, 1]
    assert metrics.project_logits(logits, None) is logits


# --- zero-shot heads ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_pretrained(TINY, "none")


def test_head_from_templates_equals_a_plain_float64_computation(tiny: LoadedModel) -> None:
    model, tokenizer = tiny.bundle.model, tiny.bundle.tokenizer
    names, templates = ["elephant", "dog", "owl"], ["{a} {c}.", "a photo of the {c}."]
    head = text_head(model, tokenizer, names, templates)
    expected = []
    with torch.no_grad():
        for name in names:
            article = "an" if name[0] in "aeiou" else "a"
            rows = []
            for template in templates:
                text = template.replace("{a}", article).replace("{c}", name)
                rows.append(model.encode_text(tokenizer([text])).double()[0])
            rows = [row / row.norm() for row in rows]
            mean = sum(rows) / len(rows)
            expected.append(mean / mean.norm())
    torch.testing.assert_close(head.double(), torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_head_cache_reuses_disk_heads_and_keys_on_the_text_state(tiny: LoadedModel, tmp_path: Path) -> None:
    model, tokenizer = tiny.bundle.model, tiny.bundle.tokenizer
    first = HeadCache(tmp_path).get(model, tokenizer, ["cat", "dog"], ["a {c}."])
    assert len(list(tmp_path.glob("*.pt"))) == 1
    torch.testing.assert_close(HeadCache(tmp_path).get(model, tokenizer, ["cat", "dog"], ["a {c}."]), first)
    other = create_clip(TINY, "none").model  # different random text tower
    HeadCache(tmp_path).get(other, tokenizer, ["cat", "dog"], ["a {c}."])
    assert len(list(tmp_path.glob("*.pt"))) == 2


# --- end to end -------------------------------------------------------------------------------------------

def _reference_scores(tiny: LoadedModel, root: Path) -> tuple[float, list[int], float, float]:
    """Waterbirds test accuracy, ECE and NLL computed image by image, with the Table 14 prompt
    and the model's own logit scale."""
    source = build_dataset("waterbirds", root, "test")
    head = text_head(tiny.bundle.model, tiny.bundle.tokenizer, source.classnames, ["This is a picture of a {c}."])
    scale = tiny.bundle.model.logit_scale.exp().item()
    predictions, confidences, nll = [], [], 0.0
    with torch.no_grad():
        for path, label in zip(source.images, source.labels):
            feature = tiny.bundle.model.encode_image(tiny.bundle.preprocess_val(load_image(path))[None])
            logits = (scale * F.normalize(feature, dim=-1) @ head.T)[0].double()
            predictions.append(int(logits.argmax()))
            confidences.append(float(logits.softmax(0).max()))
            nll -= float(logits.log_softmax(0)[label]) / len(source)
    correct = [p == y for p, y in zip(predictions, source.labels)]
    return float(np.mean(correct)), predictions, _reference_ece(confidences, correct), nll


def _reference_top1(tiny: LoadedModel, root: Path) -> tuple[float, list[int]]:
    """Waterbirds test accuracy computed image by image, with the Table 14 prompt."""
    return _reference_scores(tiny, root)[:2]


def test_cli_zero_shot_waterbirds_end_to_end(tiny: LoadedModel, tmp_path: Path) -> None:
    fakes.waterbirds(tmp_path / "data", train_counts=(7, 1, 2, 5))
    out = tmp_path / "m.json"
    assert main(["--benchmark", "waterbirds", "--data-root", str(tmp_path / "data"), "--out", str(out),
                 "--model", TINY, "--pretrained", "none", "--batch-size", "3", "--workers", "0", "--device", "cpu",
                 "--image-cache", str(tmp_path / "crops")]) == 0
    assert len(list((tmp_path / "crops").glob("waterbirds-*.npy"))) == 1
    payload = json.loads(out.read_text())
    assert set(payload) == {"benchmark", "model", "n", "metrics", "groups", "images_per_s"}
    assert payload["benchmark"] == "waterbirds" and payload["n"] == 8 and payload["images_per_s"] > 0
    assert payload["model"] | {"head": None} == {"name": TINY, "pretrained": "none", "run_dir": None, "checkpoint": None,
                                                "checkpoint_sha256": None, "alpha": None, "head": None}
    assert payload["model"]["head"] == "text"
    assert set(payload["metrics"]) == {"top1", "worst_group", "mean_group", "adjusted_mean", "ece", "nll"}
    assert all(0.0 <= value <= 1.0 for key, value in payload["metrics"].items() if key != "nll")  # nll: nats
    assert [row["group"] for row in payload["groups"]] == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    expected_top1, _, expected_ece, expected_nll = _reference_scores(tiny, tmp_path / "data")
    assert payload["metrics"]["top1"] == pytest.approx(expected_top1)
    assert payload["metrics"]["ece"] == pytest.approx(expected_ece, abs=1e-5)
    assert payload["metrics"]["nll"] == pytest.approx(expected_nll, rel=1e-5) and payload["metrics"]["nll"] > 0
    assert payload["metrics"]["worst_group"] == min(row["top1"] for row in payload["groups"])
    adjusted = sum(row["top1"] * n for row, n in zip(payload["groups"], (7, 1, 2, 5))) / 15  # train shares
    assert payload["metrics"]["adjusted_mean"] == pytest.approx(adjusted)
    # Beside the JSON, the predictions behind it: plain arrays (no pickle), which give its numbers exactly.
    with np.load(tmp_path / "m.items.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["group_names", "groups", "labels", "predictions"]
        assert metrics.top1(archive["predictions"], archive["labels"]) == payload["metrics"]["top1"]
        assert archive["predictions"].tolist() == _reference_top1(tiny, tmp_path / "data")[1]
    items = ItemOutcomes.read(tmp_path / "m.items.npz")
    for metric in ("top1", "worst_group", "mean_group"):
        assert metric_value(metric, items) == payload["metrics"][metric], metric


def _fake_run(run_dir: Path, head_classes: list[str] | None, head_rows: int | None = None,
              perturbation: float = 0.01) -> None:
    """A run dir in the training stage's format: a perturbed TinyCLIP-test and optionally a head."""
    torch.manual_seed(0)
    bundle = create_clip(TINY, "none")
    state = {k: v + perturbation if v.is_floating_point() else v for k, v in bundle.model.state_dict().items()}
    head = None
    if head_classes is not None:
        weight = torch.randn(head_rows or len(head_classes), int(bundle.model.text_projection.shape[1]))
        head = {"weight": weight, "classnames": head_classes}
    atomic_torch_save(run_dir / "best.pt", {"state_dict": state, "head": head, "model_name": TINY, "pretrained": "none",
                                            "method": "ft", "step": 3})
    config = TrainConfig(model={"name": TINY, "pretrained": "none"}, method="ft",
                         data={"head_templates": ["a photo of a {c}."]})
    RunDir(run_dir).write_record(RunRecord(config=config, model=config.model, method="ft", code_version="tests",
                                           provenance={}, classnames=list(head_classes or []), train_size=0,
                                           steps_per_epoch=1, total_steps=3, device="cpu"))


def _run_cli(tmp_path: Path, run_dir: Path, benchmark: str, *extra: str) -> dict:
    out = tmp_path / f"{benchmark}{'-'.join(extra)}.json"
    code = main(["--benchmark", benchmark, "--data-root", str(tmp_path / "data"), "--out", str(out), "--run-dir",
                 str(run_dir), "--workers", "0", "--device", "cpu", *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_cli_run_dir_uses_the_trained_head_for_its_classes_and_text_for_new_ones(tmp_path: Path) -> None:
    fakes.waterbirds(tmp_path / "data", per_group=1)
    fakes.pacs(tmp_path / "data")
    run_dir = tmp_path / "run"
    _fake_run(run_dir, ["landbird", "waterbird"])
    trained = _run_cli(tmp_path, run_dir, "waterbirds")
    assert trained["model"]["head"] == "trained" and trained["model"]["run_dir"] == str(run_dir)
    assert len(trained["model"]["checkpoint_sha256"]) == 64 and trained["n"] == 4
    assert _run_cli(tmp_path, run_dir, "pacs")["model"]["head"] == "text"
    assert list((run_dir / "eval" / "heads").glob("*.pt"))  # the text head was cached in the run dir
    wise = _run_cli(tmp_path, run_dir, "waterbirds", "--alpha", "0.5")
    assert wise["model"]["alpha"] == 0.5 and wise["model"]["head"] == "trained"


def test_wise_ft_alpha_zero_is_the_zero_shot_model(tiny: LoadedModel, tmp_path: Path) -> None:
    fakes.waterbirds(tmp_path / "data")
    run_dir = tmp_path / "run"
    _fake_run(run_dir, None)
    payload = _run_cli(tmp_path, run_dir, "waterbirds", "--alpha", "0")
    assert payload["metrics"]["top1"] == pytest.approx(_reference_top1(tiny, tmp_path / "data")[0])


def test_wise_ft_start_of_a_random_weight_run_is_its_own_seeds_init(tmp_path: Path) -> None:
    train(tiny_config("flyp", seed=3, optim__epochs=1, optim__max_steps_per_epoch=1), tmp_path / "run")
    torch.manual_seed(3)
    init = create_clip(TINY, "none").model.state_dict()
    endpoints = {alpha: load_run(tmp_path / "run", alpha=alpha).bundle.model.state_dict() for alpha in (0.0, 1.0)}
    trained = load_run(tmp_path / "run").bundle.model.state_dict()
    assert any(not torch.equal(init[key], trained[key]) for key in init)  # the step moved the weights
    for key in init:
        torch.testing.assert_close(endpoints[0.0][key], init[key], rtol=0, atol=1e-7)
        torch.testing.assert_close(endpoints[1.0][key], trained[key], rtol=0, atol=1e-7)


def test_image_cache_gives_the_same_tensors_and_predictions_and_is_built_once(tiny: LoadedModel, tmp_path: Path) -> None:
    fakes.waterbirds(tmp_path / "data")
    source = build_dataset("waterbirds", tmp_path / "data", "test")
    bundle, cache = tiny.bundle, tmp_path / "cache"
    cached = evaluation_images(source, bundle.preprocess_val, cache, workers=0)
    plain = ImageDataset(source, bundle.preprocess_val)
    assert isinstance(cached, CachedImages) and len(cached) == len(plain) == 8
    for index in range(len(plain)):  # ToTensor of the stored uint8 crop == ToTensor of the PIL crop, bit for bit
        assert torch.equal(cached[index]["image"], plain[index]["image"])
        assert cached[index]["label"] == plain[index]["label"] and cached[index]["group"] == plain[index]["group"]
    (stored,) = cache.glob("*.npy")
    crops = np.load(stored)
    assert crops.shape == (8, 32, 32, 3) and crops.dtype == np.uint8 and stored.name.startswith("waterbirds-")
    built = stored.stat().st_mtime_ns
    weight = text_head(bundle.model, bundle.tokenizer, source.classnames, ["This is a picture of a {c}."])
    runs = [predict(bundle, weight, source, None, batch_size=3, workers=0, device=torch.device("cpu"), desc="t",
                    image_cache=folder)[0] for folder in (None, cache)]
    np.testing.assert_array_equal(runs[0], runs[1])
    # The lock is a soft lease: its marker exists only while held, so nothing but the cache file is left.
    assert stored.stat().st_mtime_ns == built and sorted(p.suffix for p in cache.iterdir()) == [".npy"]
    evaluation_images(build_dataset("waterbirds", tmp_path / "data", "val"), bundle.preprocess_val, cache, workers=0)
    assert len(list(cache.glob("*.npy"))) == 2  # another image list, another file
    in_memory = fakes.colour_images("test", 4)
    assert type(evaluation_images(in_memory, bundle.preprocess_val, cache, workers=0)) is ImageDataset


def test_class_count_mismatch_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.waterbirds(tmp_path / "data", per_group=1)
    run_dir = tmp_path / "run"
    _fake_run(run_dir, ["landbird", "waterbird"], head_rows=3)
    code = main(["--benchmark", "waterbirds", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "x.json"),
                 "--run-dir", str(run_dir), "--workers", "0"])
    assert code == 2 and "the head has 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


class _RecordingCache(HeadCache):
    """Returns a zero head of the right shape instead of encoding 1000 x 80 prompts (slow on CPU)."""

    def get(self, model: torch.nn.Module, tokenizer: object, classnames: list[str], templates: list[str]) -> torch.Tensor:
        self.requested = (len(classnames), len(templates))
        return torch.zeros(len(classnames), 8)


def test_projected_benchmark_checks_the_head_against_1000_classes(tiny: LoadedModel, tmp_path: Path) -> None:
    fakes.imagenet_subset(tmp_path, "imagenet-a", [3])
    bench, source = get_benchmark("imagenet-a"), build_dataset("imagenet-a", tmp_path, "test")
    with pytest.raises(EvaluationError, match="1000 head classes"):
        classifier(bench, source, LoadedModel(tiny.bundle, torch.randn(999, 8), bench.head_classes(source), tiny.identity),
                   HeadCache())
    trained = LoadedModel(tiny.bundle, torch.randn(1000, 8), bench.head_classes(source), tiny.identity)
    assert classifier(bench, source, trained, HeadCache())[1] == "trained"
    cache = _RecordingCache()
    two_hundred_way = LoadedModel(tiny.bundle, torch.randn(200, 8), source.classnames, tiny.identity)
    weight, kind = classifier(bench, source, two_hundred_way, cache)  # not the benchmark's head classes: text tower
    assert kind == "text" and weight.shape[0] == 1000 and cache.requested == (1000, 80)


def test_cli_missing_data_root_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--benchmark", "imagenet-r", "--data-root", str(tmp_path), "--out", str(tmp_path / "m.json"),
                 "--model", TINY, "--pretrained", "none", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "imagenet-r" in err and "Expected layout" in err and "hendrycks" in err


def test_requests_equal_single_evaluations_and_keep_current_files(tmp_path: Path) -> None:
    """One process for a run's benchmarks and alphas: the single-benchmark numbers, and no recomputation."""
    fakes.waterbirds(tmp_path / "data", per_group=2)
    fakes.pacs(tmp_path / "data")
    run_dir = tmp_path / "run"
    _fake_run(run_dir, ["landbird", "waterbird"])
    eval_dir = run_dir / "eval"

    def requests(*names: str) -> dict:
        assert main(["--requests", *names, "--eval-dir", str(eval_dir), "--data-root", str(tmp_path / "data"),
                     "--run-dir", str(run_dir), "--workers", "0", "--device", "cpu"]) == 0
        return json.loads((eval_dir / "index.json").read_text())

    index = requests("waterbirds", "waterbirds@alpha0.5", "pacs@alpha0.5")
    assert [row["computed"] for row in index["requests"]] == [True, True, True]
    assert {"ece", "nll"} <= set(json.loads((eval_dir / "pacs@alpha0.5.json").read_text())["metrics"])
    for name, extra in (("waterbirds", ()), ("waterbirds@alpha0.5", ("--alpha", "0.5")), ("pacs@alpha0.5", ("--alpha", "0.5"))):
        single = _run_cli(tmp_path, run_dir, name.partition("@")[0], *extra)
        together = json.loads((eval_dir / f"{name}.json").read_text())
        assert together["metrics"] == single["metrics"] and together["groups"] == single["groups"], name
        assert together["model"] | {"head": None} == single["model"] | {"head": None}
    kept = {name: (eval_dir / f"{name}.json").read_bytes() for name in ("waterbirds", "waterbirds@alpha0.5")}
    index = requests("waterbirds", "waterbirds@alpha0.5", "pacs")  # one new request: only it is computed
    assert [row["computed"] for row in index["requests"]] == [False, False, True]
    assert {name: (eval_dir / f"{name}.json").read_bytes() for name in kept} == kept
    # Every metrics file has its items file; one missing (a JSON from before them) is scored again for its
    # items alone: the JSON is kept byte for byte, and the new items give its numbers.
    assert sorted(path.name for path in eval_dir.glob("*.items.npz")) == [
        "pacs.items.npz", "pacs@alpha0.5.items.npz", "waterbirds.items.npz", "waterbirds@alpha0.5.items.npz"]
    items = RunDir(run_dir).items("waterbirds@alpha0.5")
    before = items.read_bytes()
    items.unlink()
    index = requests("waterbirds", "waterbirds@alpha0.5", "pacs")
    assert [row["computed"] for row in index["requests"]] == [False, False, False]
    assert {name: (eval_dir / f"{name}.json").read_bytes() for name in kept} == kept and items.read_bytes() == before
    # A file from before ECE and NLL were metrics is recomputed, not kept.
    old = json.loads((eval_dir / "waterbirds.json").read_text())
    old["metrics"] = {key: value for key, value in old["metrics"].items() if key not in ("ece", "nll")}
    (eval_dir / "waterbirds.json").write_text(json.dumps(old))
    index = requests("waterbirds", "waterbirds@alpha0.5")
    assert [row["computed"] for row in index["requests"]] == [True, False]
    recomputed = json.loads((eval_dir / "waterbirds.json").read_text())
    assert recomputed["metrics"] == json.loads(kept["waterbirds"])["metrics"]
    # A retrained run (another checkpoint) is evaluated afresh.
    _fake_run(run_dir, ["landbird", "waterbird"], perturbation=0.02)
    index = requests("waterbirds", "waterbirds@alpha0.5")
    assert [row["computed"] for row in index["requests"]] == [True, True]
