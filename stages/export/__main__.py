"""``python -m stages.export --run-dir DIR --out OUT [--alpha A] [--push-to ORG/NAME [--private]]``.

Writes a finished run as an open_clip Hub folder (``open_clip_model.safetensors``,
``open_clip_config.json``, ``README.md`` model card, and the head of head methods) into OUT;
``--alpha`` exports the WiSE-FT interpolation with the run's zero-shot start; ``--push-to``
uploads OUT to the Hugging Face Hub (``$HF_ENDPOINT``, token from ``$HF_TOKEN`` or ``hf auth login``).
Load it with plain open_clip: ``open_clip.create_model_and_transforms("local-dir:OUT")``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.cli import command
from stages.export import check_push, export_run, push
from stages.rundir import BEST, RECORD


@command
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; an unusable run or a failed upload prints one line and exits with status 2."""
    parser = argparse.ArgumentParser(prog="python -m stages.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help=f"a finished training run ({RECORD} + {BEST})")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the export into")
    parser.add_argument("--alpha", type=float, help="WiSE-FT: export (1-α)·zero-shot + α·fine-tuned")
    parser.add_argument("--push-to", metavar="ORG/NAME", help="also upload the folder to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    if args.push_to:
        check_push(args.push_to)  # no token, offline: said before anything is written
    for path in export_run(args.run_dir, args.out, args.alpha):
        print(path)
    if args.push_to:
        print(push(args.out, args.push_to, args.private))
    return 0


if __name__ == "__main__":
    sys.exit(main())
