"""``python -m stages.demo data --data-root ROOT`` and ``python -m stages.demo pretrain --data-root ROOT --out FILE``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.cli import command
from stages.config import DemoSettings
from stages.errors import ConfigError

# The workflow's demo settings (stages.config.DemoSettings) own every default and description here.
_FIELDS = DemoSettings.model_fields


def _setting(name: str) -> dict[str, object]:
    """``default`` and ``help`` of a flag, read from DemoSettings' field `name`."""
    field = _FIELDS[name]
    return {"default": field.default,
            "help": f"{field.description or 'the workflow config: demo.' + name} (default: %(default)s)"}


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="build <data-root>/fmnist-demo/*.npz from Fashion-MNIST")
    data.add_argument("--data-root", type=Path, required=True)
    data.add_argument("--seed", type=int, **_setting("seed"))
    data.add_argument("--correlation", type=float, **_setting("correlation"))
    data.add_argument("--pretrain-correlation", type=float, **_setting("pretrain_correlation"))
    data.add_argument("--size", action="append", default=[], metavar="SPLIT=N", help="override a split's size")
    data.add_argument("--cache", type=Path, default=Path(".cache/fashion-mnist"), help="download folder (if online)")
    pretrain = commands.add_parser("pretrain", help="pretrain the demo's tiny CLIP on the unbiased split")
    pretrain.add_argument("--data-root", type=Path, required=True)
    pretrain.add_argument("--out", type=Path, required=True)
    pretrain.add_argument("--model", **_setting("model"))
    pretrain.add_argument("--steps", type=int, **_setting("pretrain_steps"))
    pretrain.add_argument("--batch-size", type=int, **_setting("pretrain_batch_size"))
    pretrain.add_argument("--lr", type=float, **_setting("pretrain_lr"))
    pretrain.add_argument("--seed", type=int, **_setting("seed"))
    args = parser.parse_args(argv)
    if args.command == "data":
        from stages.demo.data import build_demo_data, find_fashion_mnist

        sizes = {}
        for item in args.size:
            key, _, value = item.partition("=")
            if not key or not value.isdigit():
                raise ConfigError(f"--size {item!r}: expected SPLIT=N with N a count of images, e.g. --size train=2000")
            sizes[key] = int(value)
        build_demo_data(args.data_root / "fmnist-demo", find_fashion_mnist(args.cache), args.seed,
                        args.correlation, args.pretrain_correlation, sizes)
    else:
        from stages.demo.pretrain import pretrain as run_pretrain

        summary = run_pretrain(args.data_root, args.out, args.model, args.steps, args.batch_size, args.lr, args.seed)
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
