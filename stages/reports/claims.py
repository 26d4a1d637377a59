"""The claims report: ``claims.md`` and ``claims.csv`` from the config's ``claims`` and the runs' items files.

Each claim (``stages.config.ClaimSpec``) names a table, one of its columns (or averages) and two of
its methods; its runs are the table's (``plan.claim_cells``), its outcomes the items files beside
the metrics JSONs the column reads (``RunDir.items``). The report gives, per claim, the observed
difference method − baseline in the column's unit (``METRIC_FORMATS``: points of percent for
fractions), the 95 % percentile bootstrap interval over seeds and test items, and the verdict
(stages/reports/intervals.py).

``claims.csv`` columns: ``claim, table, column, benchmarks, metrics, method, baseline, direction,
seed_pairs, replicates, difference, low, high, verdict`` (``;`` between several benchmarks).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from stages import plan
from stages.config import METRIC_FORMATS, ClaimSpec, WorkflowConfig
from stages.evaluation.items import ItemOutcomes
from stages.io import atomic_write_text
from stages.methods import method_spec
from stages.reports.intervals import Comparison, Interval, Verdict, paired_bootstrap, verdict

STEM = "claims"
"""The report's files are ``<results>/claims.md`` and ``claims.csv``."""
RULE = {"reproduced": "the interval excludes 0 in the paper's direction", "contradicted": "it excludes 0 the other "
        "way", "inconclusive": "otherwise (it holds 0)"}


@dataclass(frozen=True)
class ClaimResult:
    """One claim's comparison: which benchmarks and metrics, the interval (fractions) and the verdict."""

    spec: ClaimSpec
    benchmarks: tuple[str, ...]
    metrics: tuple[str, ...]
    interval: Interval
    verdict: Verdict

    @property
    def scale(self) -> float:
        """The factor from the metrics JSON's values to the report's unit (the parts share one: TableSpec)."""
        return METRIC_FORMATS[self.metrics[0]].scale


def claim_parts(config: WorkflowConfig, claim: ClaimSpec) -> list[Comparison]:
    """Per benchmark of the claim's column: the two methods' items files, by seed."""
    # The cells (runs by seed) fill every column of the claim: looked up once per method, not per column.
    cells = [plan.claim_cells(config, claim, method) for method in (claim.method, claim.baseline)]
    parts = []
    for column in plan.claim_columns(config, claim):
        sides = [{seed: ItemOutcomes.read(cell.run_dir(config.results).items(cell.request(column.benchmark)))
                  for seed, cell in by_seed.items()} for by_seed in cells]
        parts.append(Comparison(column.metric, *sides))
    return parts


def build_claims(config: WorkflowConfig) -> list[ClaimResult]:
    """Every claim of the config, bootstrapped (each with the config's generator seed: rows do not depend on order)."""
    if config.claims is None:
        return []
    results = []
    for claim in config.claims.rows:
        columns = plan.claim_columns(config, claim)
        interval = paired_bootstrap(claim_parts(config, claim), config.claims.replicates, config.claims.seed)
        results.append(ClaimResult(claim, tuple(column.benchmark for column in columns),
                                   tuple(dict.fromkeys(column.metric for column in columns)), interval,
                                   verdict(interval.low, interval.high, claim.direction)))
    return results


def _points(value: float, result: ClaimResult) -> str:
    """A difference or bound in the report's unit, signed, 2 decimals (as the tables print their numbers)."""
    return f"{value * result.scale:+.2f}"


def markdown(config: WorkflowConfig, results: list[ClaimResult]) -> str:
    """The claims as a markdown table, under the method and the verdict rule in words."""
    assert config.claims is not None
    lines = [f"# {config.claims.title}", "",
             "Method − baseline: the observed difference (mean over seed pairs, in points of percent; paper: the "
             "sign the paper claims for it) and its 95 % percentile bootstrap interval, hierarchical over seeds and "
             "test items "
             f"(paired: the same items for both methods; {config.claims.replicates} replicates, generator seed "
             f"{config.claims.seed}; stages/reports/intervals.py). Verdict: "
             + "; ".join(f"{name} when {rule}" for name, rule in RULE.items()) + ".", "",
             "| claim | compared | paper | column (table: benchmarks) | difference | 95 % interval | seed pairs | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        claim, interval = result.spec, result.interval
        method, baseline = method_spec(claim.method).display, method_spec(claim.baseline).display
        lines.append(f"| {claim.claim} | {method} − {baseline} | {'>' if claim.direction == 1 else '<'} | "
                     f"{claim.column} (table {claim.table}: {', '.join(result.benchmarks)}) | "
                     f"{_points(interval.difference, result)} | [{_points(interval.low, result)}, "
                     f"{_points(interval.high, result)}] | {len(interval.pairs)} | **{result.verdict}** |")
    return "\n".join(lines) + "\n"


def csv_text(results: list[ClaimResult]) -> str:
    """The claims as CSV (the module docstring lists the columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["claim", "table", "column", "benchmarks", "metrics", "method", "baseline", "direction",
                     "seed_pairs", "replicates", "difference", "low", "high", "verdict"])
    for result in results:
        claim, interval = result.spec, result.interval
        writer.writerow([claim.claim, claim.table, claim.column, ";".join(result.benchmarks), ";".join(result.metrics),
                         claim.method, claim.baseline, claim.direction, len(interval.pairs), interval.replicates,
                         _points(interval.difference, result), _points(interval.low, result),
                         _points(interval.high, result), result.verdict])
    return buffer.getvalue()


def write_claims(config: WorkflowConfig, results: list[ClaimResult], out_dir: Path) -> list[Path]:
    """Write ``claims.md`` and ``claims.csv`` atomically; return their paths."""
    paths = [Path(out_dir) / f"{STEM}.md", Path(out_dir) / f"{STEM}.csv"]
    atomic_write_text(paths[0], markdown(config, results))
    atomic_write_text(paths[1], csv_text(results))
    return paths
