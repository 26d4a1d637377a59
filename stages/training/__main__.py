"""``python -m stages.training --config CONFIG.yaml [--out RUN_DIR] [--set key=value ...] [--print-config]``.

Trains one run into RUN_DIR (default: the templated run-directory path under ``--results``),
resuming from ``RUN_DIR/ckpt/last.pt`` (or ``ckpt/prev.pt`` if last.pt is corrupt) when present.
When ``RUN_DIR/best.pt`` exists the run is finished: the same config does nothing, another config
is refused with the fields that differ (use another --out, or --force to retrain it). Before
training, every train image is checked (data.check: header, decode or none).

One process trains a run directory at a time (a second one waits lock_wait_s, then exits 2 naming
the holder). SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and SIGINT finish the step
in flight, write the checkpoint and exit 75: interrupted, resumable by the same command. Exit 2: an
error (one line naming the file or setting and the fix). ``--print-config``
prints the resolved config (every field, defaults filled in) as YAML and exits; the fields and
their defaults are listed below.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from stages.cli import command
from stages.config import ConfigError, TrainConfig, load_train_config


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["optim.lr=1e-4", "seed=2"]`` -> ``{"optim.lr": 1e-4, "seed": 2}`` (values parsed as YAML)."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {pair!r}: the value is not YAML ({getattr(error, 'problem', error)}); quote it, "
                              "e.g. --set 'key=\"text\"'") from None
    return overrides


def field_docs(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """One line per config field (dotted key, default, description), nested models expanded."""
    lines = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += field_docs(annotation, f"{prefix}{name}.")
            continue
        default = info.get_default(call_default_factory=True)
        shown = default.as_posix() if isinstance(default, Path) else default
        lines.append(f"  {prefix}{name} = {shown!r}" + (f": {info.description}" if info.description else ""))
    return lines


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.training", description=__doc__,
                                     epilog="config fields (key = default: meaning):\n" + "\n".join(field_docs()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="training config YAML (stages.config.TrainConfig); "
                        "required unless --print-config (then: the defaults)")
    parser.add_argument("--out", type=Path, help="run directory (default: templated path under --results)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root for the default --out")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--force", action="store_true",
                        help="retrain from scratch even if RUN_DIR holds a finished run (of this or another config)")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop (checkpoint, exit 75) when the process that started this one dies: for workflow "
                        "jobs, so that a killed job never leaves its trainer running beside the retry")
    args = parser.parse_args(argv)
    if args.config is None and (not args.print_config or args.overrides):
        parser.error("--config is required (--print-config alone prints the defaults)")
    # Imported after parsing, so that --help does not wait for torch and open_clip.
    from stages.rundir import RunDir
    from stages.training.interrupt import EXIT_INTERRUPTED, RunInterrupted
    from stages.training.loop import train
    from stages.training.tracking import require_backends

    try:
        config = TrainConfig() if args.config is None else load_train_config(args.config,
                                                                               parse_overrides(args.overrides))
        if args.print_config:
            print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
            return 0
        run_dir = RunDir(args.out) if args.out is not None else RunDir.of(config, args.results)
        require_backends(config.tracking)  # before the run starts, not at its first step
        best = train(config, run_dir, force=args.force, watch_parent=args.exit_with_parent)
    except RunInterrupted as interrupted:  # not an error: resumable (every error's path is stages.cli.command's)
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
