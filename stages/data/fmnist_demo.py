"""The embedded demo's dataset: Fashion-MNIST tops on injected backgrounds (built by stages.demo.data).

``<data_root>/fmnist-demo/<split>.npz`` holds uint8 images [N, 32, 32, 3], labels and background
ids; class c "owns" background c (the biased splits put it there most of the time). Groups are
class x background, so the group split is the Waterbirds analogue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data.source import DatasetError, LabeledImages, register_dataset

FMNIST_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# The five confusable tops are the fine-tuning classes; each "owns" one background.
ID_CLASSES = [0, 2, 3, 4, 6]
BACKGROUNDS = ["in the snow", "in a forest", "under a blue sky", "in the desert", "in urban settings"]
SPLITS = ("pretrain", "train", "val", "test", "group", "sketch", "rendition")


@register_dataset("fmnist-demo")
def fmnist_demo(root: Path, split: str) -> LabeledImages:
    """``<root>/fmnist-demo/<split>.npz``; groups = class x background; class c owns background c."""
    path = Path(root) / "fmnist-demo" / f"{split}.npz"
    if split not in SPLITS:
        raise DatasetError(f"fmnist-demo has splits {', '.join(SPLITS)}, not {split!r}")
    if not path.is_file():
        raise DatasetError(f"{path} is missing: build the demo data with `python -m stages.demo data --data-root {root}` (or `make demo`)")
    with np.load(path) as arrays:
        images, labels, backgrounds = arrays["images"], arrays["labels"], arrays["backgrounds"]
        classnames = [str(name) for name in arrays["classnames"]]
    groups = [int(label) * len(BACKGROUNDS) + int(bg) for label, bg in zip(labels, backgrounds)]
    group_names = [f"{name} {bg}" for name in classnames for bg in BACKGROUNDS]
    return LabeledImages(name="fmnist-demo", classnames=classnames, images=images, labels=[int(v) for v in labels],
                         groups=groups, group_names=group_names,
                         metadata={"backgrounds": [int(b) for b in backgrounds], "background_names": BACKGROUNDS})
