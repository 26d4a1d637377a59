#!/usr/bin/env python
"""Screen every candidate held-out pair on ONE pretrained tiny CLIP, zero-shot only (issue 23 calibration).

Every Fashion-MNIST test item (N per class) is drawn on all five backgrounds; one pass of the image
tower and the demo's template ("a photo of a {c}.") give, for each pair (a, b) of classes with
different homes, the zero-shot numbers of the calibration criteria 1-3 as the demo would measure them
with (a, b) held out: the 2 x 2 held-out group test (each class on both homes: worst group, group
average), the pair on uniform backgrounds (mean over the five), and the 8-class ID accuracy of the
other classes on the biased ID test (P(home) = --correlation). StarFT and fine-tuning play no part.

    python scripts/screen_heldout_pairs.py --model-config /tmp/calib/p1/models/X.json --weights W.pt
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", type=Path, required=True)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--correlation", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    import open_clip

    from stages.data.fmnist_demo import BACKGROUNDS, FMNIST_NAMES, HOME
    from stages.demo.data import composite, find_fashion_mnist, paint_background, read_idx
    from stages.models.factory import create_clip

    open_clip.add_model_config(args.model_config.parent)
    bundle = create_clip(args.model_config.stem, str(args.weights))
    model = bundle.model.eval()
    source = find_fashion_mnist(Path(".cache/fashion-mnist"))
    items, labels = read_idx(source / "t10k-images-idx3-ubyte.gz"), read_idx(source / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(args.seed)
    images = []
    for c in range(10):
        for index in rng.choice(np.flatnonzero(labels == c), args.per_class, replace=False):
            for b in range(5):
                images.append(composite(items[index].astype(np.float64), paint_background(b, rng)))
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        feats = torch.cat([F.normalize(model.encode_image(chunk), dim=-1) for chunk in x.split(500)])
        text = F.normalize(model.encode_text(bundle.tokenizer([f"a photo of a {c}." for c in FMNIST_NAMES])), dim=-1)
    logits = (feats @ text.T).numpy().reshape(10, args.per_class, 5, 10)  # [class, item, background, class scored]

    def acc(c: int, b: int, among: list[int]) -> float:
        scores = logits[c, :, b][:, among]
        return float((np.array(among)[scores.argmax(1)] == c).mean())

    rows = []
    for a, b in itertools.combinations(range(10), 2):
        if HOME[a] == HOME[b]:
            continue
        pair, homes = [a, b], [HOME[a], HOME[b]]
        groups = [acc(c, h, pair) for c in pair for h in homes]
        uniform = np.mean([acc(c, h, pair) for c in pair for h in range(5)])
        rest = [c for c in range(10) if c not in pair]
        ident = np.mean([args.correlation * acc(c, HOME[c], rest)
                         + (1 - args.correlation) * np.mean([acc(c, h, rest) for h in range(5) if h != HOME[c]])
                         for c in rest])
        rows.append({"pair": f"{FMNIST_NAMES[a]}/{FMNIST_NAMES[b]}", "homes": f"{BACKGROUNDS[HOME[a]]}/{BACKGROUNDS[HOME[b]]}",
                     "worst": round(100 * min(groups), 1), "group_avg": round(100 * np.mean(groups), 1),
                     "uniform": round(100 * uniform, 1), "id8": round(100 * ident, 1),
                     "ok123": bool(15 <= 100 * min(groups) <= 45 and 100 * np.mean(groups) >= 60 and 100 * uniform >= 80)})
    rows.sort(key=lambda r: (not r["ok123"], -r["uniform"]))
    print(json.dumps({"weights": str(args.weights), "all_10_uniform": round(100 * float(
        np.mean([acc(c, h, list(range(10))) for c in range(10) for h in range(5)])), 1)}))
    for row in rows[: args.top]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
