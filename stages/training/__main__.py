"""``python -m stages.training --config CONFIG.yaml [--out RUN_DIR] [--set key=value ...]``.

Trains one run into RUN_DIR (default: the templated run-directory path under ``--results``),
resuming from ``RUN_DIR/ckpt/last.pt`` (or ``ckpt/prev.pt`` if last.pt is corrupt) when present.
When ``RUN_DIR/best.pt`` exists the run is finished: the same config does nothing, another config
is refused with the fields that differ (use another --out, or --force to retrain it). Before
training, every train image is checked (data.check: header, decode or none).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from stages.config import ConfigError, load_train_config


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["optim.lr=1e-4", "method=flyp"]`` -> ``{"optim.lr": 1e-4, "method": "flyp"}`` (values parsed as YAML)."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="training config YAML (stages.config.TrainConfig)")
    parser.add_argument("--out", type=Path, help="run directory (default: templated path under --results)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root for the default --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--force", action="store_true",
                        help="retrain from scratch even if RUN_DIR holds a finished run (of this or another config)")
    args = parser.parse_args(argv)
    # Imported after parsing, so that --help does not wait for torch and open_clip.
    from stages.data.source import DatasetError
    from stages.descriptors.bank import BankError
    from stages.models.factory import ModelLoadError
    from stages.training.loop import train

    try:
        config = load_train_config(args.config, parse_overrides(args.overrides))
        run_dir = args.out or config.run_dir(args.results)
        best = train(config, run_dir, force=args.force)
    except (ConfigError, DatasetError, BankError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
