"""One flat results file for your own plots: ``results/all_results.csv`` and ``.jsonl``.

One row per (run, benchmark, α) the workflow config plans and whose metrics JSON exists: the
run's slots (arch, pretrained, train set, method, variant, bank, concept, λ, seed), the WiSE-FT α
(empty for the run itself), the benchmark, every metric of its metrics JSON (fractions in [0, 1]),
``n`` and ``images_per_s``. ``pandas.read_csv("results/all_results.csv")`` is ready to group.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from stages import plan
from stages.config import WorkflowConfig
from stages.io import atomic_write_text
from stages.methods import method_spec
from stages.rundir import run_slots

SLOTS = ["arch", "pretrained", "train_set", "method", "variant", "bank", "concept", "lam", "seed", "alpha",
         "benchmark", "run_dir"]


def all_results(config: WorkflowConfig) -> tuple[list[dict[str, Any]], list[Path]]:
    """(rows, planned metrics files that are missing); rows sorted by run dir, α, benchmark."""
    rows: dict[tuple[str, float | None, str], dict[str, Any]] = {}
    missing: set[Path] = set()
    for number, table in config.tables.items():
        for cell in plan.table_cells(config, number):
            run, run_dir = cell.run, cell.run_dir(config.results).path
            for column in table.columns:
                key = (str(run_dir), cell.alpha, column.benchmark)
                if key in rows or not plan.fills(column, cell):
                    continue
                path = cell.eval_path(config.results, column.benchmark)
                if not path.is_file():
                    missing.add(path)
                    continue
                payload = json.loads(path.read_text(encoding="utf-8"))
                bank = plan.bank_name(config, run)
                rows[key] = {
                    "arch": run.model.name, "pretrained": run.model.pretrained, "train_set": run.data.train_set,
                    "method": run.method, "variant": run_slots(run)["variant"], "bank": bank,
                    "concept": run.spurious.concept if bank != "-" else "-",
                    "lam": run.lam if method_spec(run.method).uses_lambda else None, "seed": run.seed, "alpha": cell.alpha,
                    "benchmark": column.benchmark, "run_dir": str(run_dir),
                    **{name: value for name, value in payload.get("metrics", {}).items()},
                    "n": payload.get("n"), "images_per_s": payload.get("images_per_s"),
                }
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (k[0], -1.0 if k[1] is None else k[1], k[2]))]
    return ordered, sorted(missing)


def write_all_results(config: WorkflowConfig, out_dir: Path) -> tuple[list[Path], int, int]:
    """Write ``all_results.csv`` and ``all_results.jsonl`` into `out_dir`; (paths, rows, missing files)."""
    rows, missing = all_results(config)
    metrics = sorted({key for row in rows for key in row} - set(SLOTS) - {"n", "images_per_s"})
    header = [*SLOTS, *metrics, "n", "images_per_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out_dir = Path(out_dir)
    paths = [out_dir / "all_results.csv", out_dir / "all_results.jsonl"]
    atomic_write_text(paths[0], buffer.getvalue())
    atomic_write_text(paths[1], "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return paths, len(rows), len(missing)
