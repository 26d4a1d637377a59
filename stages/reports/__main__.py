"""``python -m stages.reports --config WORKFLOW.yaml [--table N ...] [--figure NAME ...] [--all-results] [--claims] [--out-dir DIR] [--device D]``.

Builds ``tableN.md`` and ``tableN.csv`` for each N, and ``figure_<NAME>.png`` for each figure of
the config's ``figures``, from the metrics JSON files the workflow config implies (missing ones
show as missing cells, or are listed on the figure and here), into DIR (default: the config's
results). ``--all-results`` writes ``all_results.csv`` and ``all_results.jsonl``: one row per
(run, benchmark, WiSE-FT α) with the run's slots and every metric (``stages.reports.results``).
A ``gradcam`` figure instead reads the runs' ``best.pt`` and the benchmark's images under
``data_root`` and runs the models (on ``--device``, default cpu). ``--claims`` writes ``claims.md``
and ``claims.csv``: the config's ``claims``, each a paired bootstrap interval of one method minus
another over seeds and test items, from the evaluation's items files (``stages.reports.claims``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stages.cli import command
from stages.config import ConfigError, GradcamFigureSpec, validate_workflow_config
from stages.errors import read_yaml


@command
def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a bad config, table number or figure name prints one line and exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m stages.reports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="workflow config YAML (stages.config.WorkflowConfig)")
    parser.add_argument("--table", type=int, nargs="+", default=[], help="table numbers, e.g. 2 3")
    parser.add_argument("--figure", nargs="+", default=[], help="figure names (the config's figures), e.g. figure2")
    parser.add_argument("--all-results", action="store_true",
                        help="write all_results.csv and .jsonl (one row per run, benchmark and α)")
    parser.add_argument("--claims", action="store_true",
                        help="write claims.md and claims.csv (the config's claims, with bootstrap intervals)")
    parser.add_argument("--out-dir", type=Path, help="where the tables and figures go (default: the config's results)")
    parser.add_argument("--device", default="cpu", help="where gradcam figures run their models (e.g. cuda)")
    args = parser.parse_args(argv)
    if not args.table and not args.figure and not args.all_results and not args.claims:
        parser.error("give --table, --figure, --all-results and/or --claims")
    # Imported after parsing, so that --help does not wait for torch and matplotlib.
    from stages.reports.figures import build_figure, write_figure
    from stages.reports.results import write_all_results
    from stages.reports.tables import build_table, write_table

    config = validate_workflow_config(read_yaml(args.config, "workflow config") or {}, str(args.config))
    for number in args.table:
        if number not in config.tables:
            raise ConfigError(f"{args.config}: no table {number}; tables: {sorted(config.tables)}")
        table = build_table(config, number)
        paths = write_table(table, args.out_dir or config.results)
        print(f"table {number}: {table.filled} of {table.cells} cells -> {', '.join(map(str, paths))}")
    for name in args.figure:
        if name not in config.figures:
            raise ConfigError(f"{args.config}: no figure {name!r}; figures: {sorted(config.figures)}")
        if isinstance(config.figures[name], GradcamFigureSpec):
            from stages.reports.gradcam import build_gradcam, write_gradcam  # torch + models: only when needed

            plot = build_gradcam(config, name, args.device)
            path = write_gradcam(plot, args.out_dir or config.results)
        else:
            plot = build_figure(config, name)
            path = write_figure(plot, args.out_dir or config.results)
        print(f"figure {name}: {plot.points} points, {len(plot.missing)} missing -> {path}")
        for note in plot.missing:
            print(f"  missing: {note}")
    if args.all_results:
        paths, rows, missing = write_all_results(config, args.out_dir or config.results)
        print(f"all results: {rows} rows, {missing} planned metrics files missing -> {', '.join(map(str, paths))}")
    if args.claims:
        from stages.reports.claims import build_claims, write_claims

        if config.claims is None:
            raise ConfigError(f"{args.config}: no claims (the config's `claims` key) to report")
        claims = build_claims(config)
        paths = write_claims(config, claims, args.out_dir or config.results)
        verdicts = ", ".join(f"{claim.verdict}" for claim in claims)
        print(f"claims: {len(claims)} ({verdicts}) -> {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
