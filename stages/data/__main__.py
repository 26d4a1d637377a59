"""``python -m stages.data check --dataset NAME --data-root R [--split S] [--decode]``.

Lists every unreadable image of a dataset split (a fast parallel header check; ``--decode``
decodes every pixel, which also finds truncated files). Exit status 0 when all images read,
2 when any does not (each printed as ``bad: PATH: REASON``) or the dataset cannot be built.
It always reads every file, and stamps the verdict (``stages.data.check.check_images_once``), so
training jobs on the same unchanged files skip their own check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run the ``check`` sub-command; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stages.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="list every unreadable image of a dataset split")
    check.add_argument("--dataset", required=True, help="registered dataset name, e.g. imagenet or imagefolder")
    check.add_argument("--data-root", type=Path, required=True, help="parent folder of the datasets")
    check.add_argument("--split", default="train", help="split to check (default: train)")
    check.add_argument("--decode", action="store_true", help="decode every image fully (slower; finds truncated files)")
    check.add_argument("--workers", type=int, default=None, help="parallel readers (default: 2 x CPUs, at most 16)")
    args = parser.parse_args(argv)

    from stages.data.check import check_images_once
    from stages.data.source import DatasetError, build_dataset

    try:
        source = build_dataset(args.dataset, args.data_root, args.split)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bad = check_images_once(source, decode=args.decode, workers=args.workers, progress=True, recheck=True)
    for path, reason in bad:
        print(f"bad: {path}: {reason}")
    kind = "decoded" if args.decode else "header-checked"
    print(f"{args.dataset} {args.split}: {len(source)} images {kind}, {len(bad)} unreadable", file=sys.stderr)
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
