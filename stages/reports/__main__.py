"""``python -m stages.reports --config WORKFLOW.yaml --table N [N ...] [--out-dir DIR]``.

Builds ``tableN.md`` and ``tableN.csv`` for each N from the metrics JSON files the workflow
config implies (missing ones show as missing cells), into DIR (default: the config's results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from stages.config import ConfigError, validate_workflow_config
from stages.reports.tables import build_table, write_table


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a bad config or table number prints one line and exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m stages.reports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="workflow config YAML (stages.config.WorkflowConfig)")
    parser.add_argument("--table", type=int, nargs="+", required=True, help="table numbers, e.g. 2 3")
    parser.add_argument("--out-dir", type=Path, help="where tableN.{md,csv} go (default: the config's results)")
    args = parser.parse_args(argv)
    try:
        config = validate_workflow_config(yaml.safe_load(args.config.read_text()) or {}, str(args.config))
        for number in args.table:
            if number not in config.tables:
                raise ConfigError(f"{args.config}: no table {number}; tables: {sorted(config.tables)}")
            table = build_table(config, number)
            paths = write_table(table, args.out_dir or config.results)
            print(f"table {number}: {table.filled} of {table.cells} cells -> {', '.join(map(str, paths))}")
    except (ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
