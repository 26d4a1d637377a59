"""``python -m stages.data {check,prepare,verify}``: the datasets under a data root.

- ``check --dataset NAME --data-root R [--split S] [--decode]`` lists every unreadable image of a
  split (a fast parallel header check; ``--decode`` decodes every pixel, which also finds truncated
  files); each printed as ``bad: PATH: REASON``. It always reads every file, and stamps the verdict
  (``stages.data.check.check_images_once``), so training jobs on the same unchanged files skip theirs.
- ``prepare --dataset NAME --data-root R [--from DIR] [--mirror URL]`` (or ``--all --config Y``)
  downloads, checks and arranges a benchmark from its official release (stages/data/prepare.py).
- ``verify --dataset NAME --data-root R [--decode]`` (or ``--all --config Y``) compares what is on
  disk with the dataset's manifest, listing only (stages/data/verify.py); your own data
  (imagefolder, csv, webdataset) is reported per split and its class sets compared.

Exit status 0 when all is well, 2 on any problem (one message, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from stages.cli import command

@command
def main(argv: list[str] | None = None) -> int:
    """Run one sub-command (check, prepare, verify); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stages.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="list every unreadable image of a dataset split")
    check.add_argument("--dataset", required=True, help="registered dataset name, e.g. imagenet or imagefolder")
    check.add_argument("--data-root", type=Path, required=True, help="parent folder of the datasets")
    check.add_argument("--split", default="train", help="split to check (default: train)")
    check.add_argument("--decode", action="store_true", help="decode every image fully (slower; finds truncated files)")
    check.add_argument("--workers", type=int, default=None, help="parallel readers (default: 2 x CPUs, at most 16)")
    for name, text in (("prepare", "download, check and arrange a benchmark from its official release"),
                       ("verify", "compare a dataset on disk with its manifest (listing only)")):
        command = commands.add_parser(name, help=text)
        which = command.add_mutually_exclusive_group(required=True)
        which.add_argument("--dataset", help="registered dataset name, e.g. imagenet-r")
        which.add_argument("--all", action="store_true", help="every dataset the workflow config --config reads")
        command.add_argument("--config", type=Path, help="workflow config (with --all), e.g. config/paper.yaml")
        command.add_argument("--data-root", type=Path, help="parent folder of the datasets (default with --all: "
                             "the config's data_root)")
        if name == "prepare":
            command.add_argument("--from", dest="from_dir", type=Path,
                                 help="folder holding files you downloaded yourself (ImageNet's archives)")
            command.add_argument("--mirror", help="replace every source's scheme and host, e.g. "
                                 "http://mirror.internal/datasets (default: $STAGES_DATA_MIRROR)")
        else:
            command.add_argument("--split", action="append", help="own data: a split to check (repeatable; "
                                 "default: every split on disk)")
            command.add_argument("--decode", action="store_true", help="also decode every image (slow)")
            command.add_argument("--workers", type=int, default=None, help="parallel readers with --decode")
    args = parser.parse_args(argv)
    if args.command == "check":  # errors: one line, exit 2 (stages.cli)
        return _check(args)
    if args.command == "prepare":
        return _prepare(args)
    return _verify(args)


def _check(args: argparse.Namespace) -> int:
    from stages.data.check import check_images_once
    from stages.data.source import build_dataset

    source = build_dataset(args.dataset, args.data_root, args.split)
    bad = check_images_once(source, decode=args.decode, workers=args.workers, progress=True, recheck=True)
    for path, reason in bad:
        print(f"bad: {path}: {reason}")
    kind = "decoded" if args.decode else "header-checked"
    print(f"{args.dataset} {args.split}: {len(source)} images {kind}, {len(bad)} unreadable", file=sys.stderr)
    return 2 if bad else 0


def _targets(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any] | None], Path]:
    """Dataset -> own-data spec (None: manifest) and the data root, from --dataset or --all --config."""
    from stages.data.source import DatasetError
    from stages.data.verify import OWN_DATA

    if not args.all:
        if args.data_root is None:
            raise DatasetError("--data-root is required with --dataset (the parent folder of the datasets)")
        own = {"splits": args.split or [], "train_split": None, "options": {}} if args.dataset in OWN_DATA else None
        return {args.dataset: own}, args.data_root
    if args.config is None:
        raise DatasetError("--all needs --config CONFIG (the workflow config whose datasets to take, "
                           "e.g. config/paper.yaml)")
    import yaml

    from stages import plan
    from stages.config import ConfigError, validate_workflow_config

    try:
        raw = yaml.safe_load(args.config.read_text(encoding="utf-8"))
        config = validate_workflow_config(raw, str(args.config))
    except (OSError, yaml.YAMLError, ConfigError) as error:
        raise DatasetError(f"--config {args.config}: {error}") from error
    return plan.data_needs(config, *plan.config_data(config)), args.data_root or config.data_root


def _prepare(args: argparse.Namespace) -> int:
    from stages.data.prepare import prepare, prepare_all

    needs, data_root = _targets(args)
    if not args.all:  # one named dataset: no route is an error, not a note
        print(prepare(args.dataset, data_root, args.mirror, args.from_dir))
        return 0
    for line in prepare_all(list(needs), data_root, args.mirror, args.from_dir):
        print(line)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from stages.data.verify import own_splits, verify_dataset, verify_own_data

    needs, data_root = _targets(args)
    failed = []
    for dataset, own in needs.items():
        if own is None:
            report = verify_dataset(dataset, data_root, decode=args.decode, workers=args.workers)
        else:
            splits = own["splits"] or own_splits(dataset, data_root)
            report = verify_own_data(dataset, data_root, splits, own.get("train_split"), own.get("options"),
                                     decode=args.decode, workers=args.workers)
            for split in report.splits:
                if split.counts:
                    print(f"{dataset} {split.split} per class: "
                          + ", ".join(f"{name} {count}" for name, count in split.counts.items()))
        print(report.text())
        if not report.ok:
            failed.append(dataset)
    if failed:
        print(f"error: {len(failed)} dataset(s) fall short: {', '.join(failed)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
