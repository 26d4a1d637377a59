"""Reports from metrics JSON: paper numbers matched by row, mean ± std over seeds, WiSE-FT α, missing cells."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages import plan
from stages.config import WorkflowConfig, validate_workflow_config
from stages.io import atomic_write_json
from stages.reports.__main__ import main
from stages.reports import tables
from stages.reports.tables import build_table, markdown

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper(tmp_path: Path) -> WorkflowConfig:
    raw = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    raw["results"] = str(tmp_path)
    return validate_workflow_config(raw)


def write_metrics(path: Path, **metrics: float) -> None:
    atomic_write_json(path, {"benchmark": path.stem, "n": 10, "metrics": metrics, "groups": []})


def test_table2_paper_numbers_and_seed_statistics(paper: WorkflowConfig) -> None:
    for cell in plan.table_cells(paper, 2):
        if cell.run.method == "starft" and cell.run.model.name == "ViT-B-16":
            write_metrics(cell.eval_path(paper.results, "imagenet"), top1=0.80 + 0.01 * cell.seed)
    table = build_table(paper, 2)
    row = next(r for r in table.rows if r.labels == ["ViT-B-16", "StarFT"])
    assert row.stats["IN"].mean == pytest.approx(81.0)
    assert row.stats["IN"].std == pytest.approx(1.0)
    assert row.stats["IN"].paper == 82.9 and row.stats["IN"].diff == pytest.approx(-1.9)
    assert row.stats["IN-R"].mean is None and row.stats["IN-R"].paper == 77.7
    assert row.stats["OOD_avg"].mean is None  # an average needs every part
    lines = markdown(table).splitlines()
    assert "| ViT-B-16 | StarFT | 81.00 ± 1.00 [82.90, -1.90] | — [77.70, —]" in "\n".join(lines)
    assert next(r for r in table.rows if r.labels == ["ViT-L-14", "Lipsum-FT"]).stats["IN"].paper is None


def test_single_seed_cell_prints_the_value_alone(paper: WorkflowConfig) -> None:
    for cell in plan.table_cells(paper, 2):
        if cell.run.method == "starft" and cell.run.model.name == "ViT-B-16" and cell.seed == 0:
            write_metrics(cell.eval_path(paper.results, "imagenet"), top1=0.80)
    text = markdown(build_table(paper, 2))
    assert "| ViT-B-16 | StarFT | 80.00 (n=1) [82.90, -2.90] |" in text  # not "80.00 ± 0.00"


def test_table8_picks_best_alpha_on_id(paper: WorkflowConfig) -> None:
    for cell in plan.table_cells(paper, 8):
        if cell.run.method == "flyp" and cell.alpha is not None:
            id_top1 = 0.9 - abs(cell.alpha - 0.3)  # best at α = 0.3
            write_metrics(cell.eval_path(paper.results, "imagenet"), top1=id_top1)
            write_metrics(cell.eval_path(paper.results, "imagenet-r"), top1=cell.alpha)
    row = next(r for r in build_table(paper, 8).rows if r.labels == ["FLYP", "yes"])
    assert row.stats["IN"].mean == pytest.approx(90.0) and row.stats["IN-R"].mean == pytest.approx(30.0)
    assert row.stats["IN"].paper == 82.9  # Table 8's FLYP ensembled row


def test_ablation_and_bank_rows_match_the_paper(paper: WorkflowConfig) -> None:
    rows = {tuple(r.labels): r for r in build_table(paper, 6).rows}
    assert rows[("FLYP", "-")].stats["IN"].paper == 82.6
    assert rows[("StarFT", "suffix-none_mask-off_decay-none")].stats["IN"].paper == 80.4
    assert rows[("StarFT", "suffix-spurious_mask-on_decay-none")].stats["IN-A"].paper == 54.2
    banks = {tuple(r.labels): r for r in build_table(paper, 12).rows}
    assert banks[("StarFT", "Llama-3.3-70B-Instruct")].stats["IN"].paper == 82.7
    assert {tuple(r.labels) for r in build_table(paper, 10).rows} == {("0.1",), ("0.5",), ("1",)}
    assert build_table(paper, 10).rows[0].stats["ID"].paper == 83.02


def test_cli_writes_markdown_and_csv(paper: WorkflowConfig, tmp_path: Path) -> None:
    config = tmp_path / "workflow.yaml"
    config.write_text(yaml.safe_dump(paper.model_dump(mode="json")))
    assert main(["--config", str(config), "--table", "3", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "table3.csv").read_text().startswith("method,Waterbirds_WG,Waterbirds_WG_std,")
    assert main(["--config", str(config), "--table", "13"]) == 2


def test_table5_average_rank_reproduces_the_papers_from_its_own_numbers(paper: WorkflowConfig) -> None:
    spec = paper.tables[5]
    metric = {column.label: column.metric for column in spec.columns}
    for cell in plan.table_cells(paper, 5):
        key = tables.paper_key(paper, spec, cell.run, ensemble=False)
        numbers = tables.paper_values(paper, 5, cell)
        if not numbers:
            continue  # Lipsum-FT: not in the paper's Table 5, so it stays missing and unranked
        for column in spec.columns:
            if plan.fills(column, cell):
                write_metrics(cell.eval_path(paper.results, column.benchmark),
                              **{metric[column.label]: numbers[column.label] / 100})
        assert key["method"] in {"Zeroshot", "FT", "FLYP", "CAR-FT", "CaRot", "StarFT"}
    table = build_table(paper, 5)
    ranked = {row.labels[0]: row.stats["avg_rank"] for row in table.rows}
    assert ranked["Lipsum-FT"].mean is None
    for name, stat in ranked.items():
        if name != "Lipsum-FT":
            assert round(stat.mean, 1) == stat.paper, name  # ties (FMoW 68.6 / 68.4) share the better rank
    assert ranked["StarFT"].mean == pytest.approx((1 + 2 + 1 + 2 + 1 + 3) / 6)
    text = markdown(table)
    assert "| StarFT | 97.20 ± 0.00 [97.20, +0.00]" in text and "| 1.67 [1.70, -0.03] |" in text


def test_calibration_table_ece_in_percent_and_nll_as_it_is(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "config/config.yaml").read_text())
    raw["results"] = str(tmp_path)
    demo = validate_workflow_config(raw)
    for cell in plan.table_cells(demo, 31):
        if cell.run.method == "flyp":
            for benchmark in ("demo-id", "demo-sketch", "demo-rendition"):
                write_metrics(cell.eval_path(demo.results, benchmark), top1=0.5, ece=0.1234 + 0.01 * cell.seed,
                              nll=1.23456 + 0.1 * cell.seed)
    table = build_table(demo, 31)
    row = next(r for r in table.rows if r.labels == ["FLYP"])
    assert row.stats["ECE ID"].mean == pytest.approx(13.34) and row.stats["NLL ID"].mean == pytest.approx(1.33456)
    text = markdown(table)
    assert "| FLYP | 13.34 ± 1.00 | 13.34 ± 1.00 | 13.34 ± 1.00 | 1.335 ± 0.100 | 1.335 ± 0.100 | 1.335 ± 0.100 |" in text
    assert "1.335,0.100,3" in tables.csv_text(table)


def test_an_average_of_columns_in_different_units_is_refused() -> None:
    raw = yaml.safe_load((REPO / "config/paper.yaml").read_text())
    raw["tables"][31]["columns"] = [dict(column) for column in raw["tables"][31]["columns"]]
    raw["tables"][31]["columns"][1]["metric"] = "nll"
    with pytest.raises(Exception, match="different units"):
        validate_workflow_config(raw)
