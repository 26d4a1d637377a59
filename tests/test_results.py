"""results/all_results.csv and .jsonl: one row per (run, benchmark, α) with the run's slots and every metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from stages.config import validate_workflow_config
from stages.reports.__main__ import main
from stages import plan
from test_figures import cell, raw_config, write_eval


def test_all_results_rows_slots_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = raw_config(tmp_path / "results")
    (tmp_path / "config.yaml").write_text(json.dumps(raw))
    config = validate_workflow_config(raw)
    starft = cell(config, 10, "starft", 1, lam=2.0)
    flyp = cell(config, 8, "flyp", 0, alpha=0.5)
    write_eval(starft.eval_path(config.results, "demo-group"), {"top1": 0.5, "minority_mean": 0.25})
    write_eval(starft.eval_path(config.results, "demo-id"), {"top1": 0.75})
    write_eval(flyp.eval_path(config.results, "demo-sketch"), {"top1": 0.125})
    inputs = sorted({path for number in config.tables for path in plan.table_inputs(config, number)})
    assert starft.eval_path(config.results, "demo-group") in inputs and len(inputs) == len(set(inputs))
    assert main(["--config", str(tmp_path / "config.yaml"), "--all-results"]) == 0
    assert f"3 rows, {len(inputs) - 3} planned metrics files missing" in capsys.readouterr().out
    rows = list(csv.DictReader((config.results / "all_results.csv").open()))
    assert [(r["method"], r["benchmark"], r["alpha"]) for r in rows] == [
        ("flyp", "demo-sketch", "0.5"), ("starft", "demo-group", ""), ("starft", "demo-id", "")]
    group = rows[1]
    assert (group["lam"], group["seed"], group["bank"], group["concept"], group["arch"]) == (
        "2.0", "1", "official-code", "background", "TinyCLIP-demo")
    assert (group["top1"], group["minority_mean"], group["n"]) == ("0.5", "0.25", "100")
    assert rows[2]["minority_mean"] == "" and rows[0]["lam"] == "" and rows[0]["variant"] == "-"
    jsonl = [json.loads(line) for line in (config.results / "all_results.jsonl").read_text().splitlines()]
    assert jsonl[1]["minority_mean"] == 0.25 and jsonl[0]["alpha"] == 0.5 and jsonl[1]["alpha"] is None
