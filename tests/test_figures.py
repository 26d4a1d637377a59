"""Figures from hand-made metrics JSON: subgroup differences vs zero-shot, the λ trade-off, the WiSE-FT α curve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from stages import plan
from stages.config import ConfigError, WorkflowConfig, validate_workflow_config
from stages.io import atomic_write_json
from stages.reports.__main__ import main
from stages.reports.figures import Plot, build_figure, write_figure

REPO = Path(__file__).resolve().parents[1]


def raw_config(results: Path) -> dict:
    """A small workflow: Table 3 (group shift), 10 (λ), 8 (WiSE-FT α) and one figure of each kind."""
    columns = [{"label": "ID", "benchmark": "demo-id"}, {"label": "Sketch", "benchmark": "demo-sketch"},
               {"label": "Minority", "benchmark": "demo-group", "metric": "minority_mean"}]
    return {
        "results": str(results),
        "archs": {"TinyCLIP-demo": "results/demo/TinyCLIP-demo.pt"},
        "seeds": [0, 1],
        "banks": {"official-code": {"path": "descriptor_banks/official-code.json"}},
        "train_sets": {"fmnist-demo": {"lam": 10.0}},
        "tables": {
            3: {"title": "groups", "train_sets": ["fmnist-demo"], "methods": ["zeroshot", "ft", "flyp", "starft"],
                "columns": columns[2:], "paper": False},
            10: {"title": "λ", "train_sets": ["fmnist-demo"], "rows": ["lam"], "methods": ["starft"],
                 "lams": [0.5, 2.0, 10.0], "columns": columns, "paper": False},
            8: {"title": "α", "train_sets": ["fmnist-demo"], "rows": ["method", "ensemble"],
                "methods": ["zeroshot", "flyp"], "alphas": [0.0, 0.5, 1.0], "id_column": "ID", "columns": columns,
                "averages": {"OOD avg": ["Sketch", "Minority"]}, "paper": False},
        },
        "figures": {
            "figure2": {"kind": "groups", "title": "Figure 2 analogue", "table": 3, "benchmarks": ["demo-group"],
                        "methods": ["ft", "flyp", "starft"]},
            "lambda": {"kind": "lambda", "title": "λ trade-off", "table": 10, "x": "ID", "y": "Minority"},
            "alpha": {"kind": "alpha", "title": "WiSE-FT α", "table": 8, "x": "ID", "y": "OOD avg"},
        },
    }


@pytest.fixture
def config(tmp_path: Path) -> WorkflowConfig:
    return validate_workflow_config(raw_config(tmp_path / "results"))


def write_eval(path: Path, metrics: dict[str, float] | None = None, groups: dict[str, float] | None = None) -> None:
    """A metrics JSON in the evaluation stage's format (fractions, ``groups`` as ``[{group, n, top1}]``)."""
    atomic_write_json(path, {
        "benchmark": path.stem, "model": "TinyCLIP-demo", "n": 100, "metrics": metrics or {"top1": 0.5},
        "groups": [{"group": name, "n": 10, "top1": top1} for name, top1 in (groups or {}).items()],
        "images_per_s": 1000.0,
    })


def cell(config: WorkflowConfig, number: int, method: str, seed: int, lam: float | None = None,
         alpha: float | None = None) -> plan.Cell:
    """The planned cell of table `number` for (method, seed[, λ][, α])."""
    return next(c for c in plan.table_cells(config, number) if c.run.method == method and c.seed == seed
                and (lam is None or c.run.lam == lam) and c.alpha == alpha)


def assert_png(path: Path) -> None:
    """`path` is a valid, non-trivial PNG image."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200


def points(plot: Plot, panel: int = 0) -> dict[str, dict[str, tuple]]:
    """series -> point label -> (x mean, y mean, y std) of one panel."""
    return {series: {p.label: (p.x.mean if p.x else None, p.y.mean, p.y.std) for p in pts}
            for series, pts in plot.panels[panel].series.items()}


def test_group_differences_vs_zeroshot(config: WorkflowConfig, tmp_path: Path) -> None:
    results = config.results
    write_eval(cell(config, 3, "zeroshot", 0).eval_path(results, "demo-group"), groups={"a": 0.5, "b": 0.8, "c": 0.1})
    write_eval(cell(config, 3, "flyp", 0).eval_path(results, "demo-group"), groups={"a": 0.7, "b": 0.6, "c": 0.1})
    write_eval(cell(config, 3, "flyp", 1).eval_path(results, "demo-group"), groups={"a": 0.9, "b": 0.4, "c": 0.3})
    write_eval(cell(config, 3, "starft", 1).eval_path(results, "demo-group"), groups={"b": 0.85})  # one seed, one group
    write_eval(cell(config, 3, "ft", 0).eval_path(results, "demo-group"))  # a file without subgroups
    plot = build_figure(config, "figure2")
    got = points(plot)
    assert set(got) == {"FLYP", "StarFT"}  # FT has no subgroups: no bars, never zeros
    assert list(got["FLYP"]) == ["a", "b", "c"]  # the zero-shot file's order
    assert got["FLYP"]["a"][1:] == pytest.approx((30.0, 14.142135623730951))  # (70-50, 90-50) pp
    assert got["FLYP"]["b"][1:] == pytest.approx((-30.0, 14.142135623730951))  # (60-80, 40-80)
    assert got["FLYP"]["c"][1] == pytest.approx(10.0)  # (0, 20)
    assert got["StarFT"] == {"b": (None, pytest.approx(5.0), 0.0)}
    assert "demo-group: FT: no subgroups to compare with zero-shot's" in plot.missing
    assert "demo-group: StarFT: 1 of 2 seeds" in plot.missing
    path = write_figure(plot, tmp_path / "out")
    assert path == tmp_path / "out" / "figure_figure2.png"
    assert_png(path)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_lambda_tradeoff_one_point_per_lambda(config: WorkflowConfig, tmp_path: Path) -> None:
    results = config.results
    for lam, seeds in ((0.5, (0, 1)), (10.0, (0,))):  # λ = 2 has no metrics
        for seed in seeds:
            run = cell(config, 10, "starft", seed, lam=lam)
            write_eval(run.eval_path(results, "demo-id"), {"top1": 0.9 - 0.01 * lam + 0.02 * seed})
            write_eval(run.eval_path(results, "demo-group"), {"top1": 0.5, "minority_mean": 0.02 * lam + 0.1 * seed})
    plot = build_figure(config, "lambda")
    got = points(plot)
    assert list(got) == ["StarFT"] and list(got["StarFT"]) == ["λ=0.5", "λ=10"]
    # ID (89.5, 91.5), minority (1, 11)
    assert got["StarFT"]["λ=0.5"] == pytest.approx((90.5, 6.0, 7.0710678118654755))
    assert got["StarFT"]["λ=10"] == pytest.approx((80.0, 20.0, 0.0))
    assert plot.missing == ["λ=2: StarFT: no ID or Minority metrics", "λ=10: StarFT: 1 of 2 seeds"]
    assert_png(write_figure(plot, tmp_path))


def test_wise_alpha_curve_uses_each_alpha_and_averages(config: WorkflowConfig, tmp_path: Path) -> None:
    results = config.results
    for alpha in (0.0, 0.5, 1.0):
        for seed in (0, 1):
            run = cell(config, 8, "flyp", seed, alpha=alpha)
            write_eval(run.eval_path(results, "demo-id"), {"top1": 0.6 + 0.3 * alpha})
            write_eval(run.eval_path(results, "demo-sketch"), {"top1": 0.5 + 0.1 * seed})
            if alpha != 1.0:  # the OOD average needs every part: α = 1 has no point
                write_eval(run.eval_path(results, "demo-group"), {"top1": 0.5, "minority_mean": 0.4 - 0.2 * alpha})
    write_eval(cell(config, 8, "flyp", 0).eval_path(results, "demo-id"), {"top1": 0.99})  # not ensembled: not drawn
    plot = build_figure(config, "alpha")
    got = points(plot)
    assert list(got) == ["FLYP"] and list(got["FLYP"]) == ["α=0", "α=0.5"]
    # OOD avg per seed: (sketch + minority) / 2 -> α=0: (45, 50), α=0.5: (40, 45)
    assert got["FLYP"]["α=0"] == pytest.approx((60.0, 47.5, 3.5355339059327378))
    assert got["FLYP"]["α=0.5"] == pytest.approx((75.0, 42.5, 3.5355339059327378))
    assert plot.missing == ["α=1: FLYP: no OOD avg metrics"]
    assert_png(write_figure(plot, tmp_path))


def test_missing_data_is_said_not_drawn(config: WorkflowConfig, tmp_path: Path) -> None:
    for name in ("figure2", "lambda", "alpha"):
        plot = build_figure(config, name)
        assert plot.points == 0 and plot.missing
        assert all(not panel.series for panel in plot.panels)
        assert_png(write_figure(plot, tmp_path))
    assert build_figure(config, "figure2").missing == [
        f"demo-group: no zero-shot metrics ({cell(config, 3, 'zeroshot', 0).eval_path(config.results, 'demo-group')})",
        "demo-group: FT: no metrics", "demo-group: FLYP: no metrics", "demo-group: StarFT: no metrics",
    ]


def test_cli_writes_figures(config: WorkflowConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["--config", str(path), "--figure", "figure2", "lambda", "--out-dir", str(tmp_path)]) == 0
    assert_png(tmp_path / "figure_figure2.png")
    assert_png(tmp_path / "figure_lambda.png")
    out = capsys.readouterr().out
    assert "figure lambda: 0 points, 3 missing" in out and "missing: λ=0.5: StarFT: no ID or Minority metrics" in out
    assert main(["--config", str(path), "--figure", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["--config", str(path)])  # neither --table nor --figure


@pytest.mark.parametrize(("edit", "key"), [
    (lambda c: c["figures"]["lambda"].__setitem__("y", "OOD"), "figures.lambda.y"),
    (lambda c: c["figures"]["figure2"].__setitem__("table", 4), "figures.figure2.table"),
    (lambda c: c["figures"]["figure2"].__setitem__("benchmarks", ["waterbirds"]), "figures.figure2.benchmarks"),
    (lambda c: c["figures"]["alpha"].update(table=10, y="Minority"), "figures.alpha: kind alpha needs"),
    (lambda c: c["figures"]["lambda"].__setitem__("table", 8), "figures.lambda: kind lambda needs"),
    (lambda c: c["tables"][3].__setitem__("methods", ["ft", "flyp", "starft"]), "needs a method that does not train"),
    (lambda c: c["figures"]["figure2"].__setitem__("kind", "pie"), "figures.figure2"),
    (lambda c: c["figures"].__setitem__("a/b", c["figures"]["lambda"]), "figures.a/b"),
])
def test_bad_figure_config_names_the_key(tmp_path: Path, edit, key: str) -> None:
    raw = raw_config(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_workflow_config(raw)


def test_shipped_configs_define_the_issue_figures() -> None:
    kinds = {}
    for name in ("config.yaml", "paper.yaml"):
        config = validate_workflow_config(yaml.safe_load((REPO / "config" / name).read_text()), name)
        kinds[name] = {figure.kind for figure in config.figures.values()}
    assert kinds == {"config.yaml": {"groups", "lambda", "gradcam"}, "paper.yaml": {"groups", "lambda", "alpha", "gradcam"}}


def test_loss_curves_mean_and_std_over_seeds(tmp_path: Path) -> None:
    raw = raw_config(tmp_path / "results")
    raw["figures"] = {"loss": {"kind": "loss", "title": "training loss", "table": 3}}
    config = validate_workflow_config(raw)
    logs = {("ft", 0): [2.0, 1.0], ("ft", 1): [4.0, 3.0], ("flyp", 0): [1.5, 0.5]}  # starft and flyp seed 1: none
    for (method, seed), losses in logs.items():
        run_dir = cell(config, 3, method, seed).run_dir(config.results).path
        run_dir.mkdir(parents=True)
        lines = [{"step": step + 1, "loss": loss, "lr": 0.1} for step, loss in enumerate(losses)]
        lines.append({"step": 2, "epoch": 0, "val_top1": 0.5})  # validation records carry no loss
        (run_dir / "train_log.jsonl").write_text("".join(f"{json.dumps(line)}\n" for line in lines))
    from stages.reports.figures import loss_inputs
    assert len(loss_inputs(config, config.figures["loss"])) == 6  # ft, flyp, starft x 2 seeds (no zero-shot)
    plot = build_figure(config, "loss")
    curves = points(plot)
    assert set(curves) == {"FT", "FLYP"}
    assert curves["FT"] == {"1": (1.0, 3.0, pytest.approx(2 ** 0.5)), "2": (2.0, 2.0, pytest.approx(2 ** 0.5))}
    assert curves["FLYP"]["2"] == (2.0, 0.5, 0.0)
    assert len(plot.missing) == 3 and all("no loss" in note for note in plot.missing)
    assert_png(write_figure(plot, tmp_path))
