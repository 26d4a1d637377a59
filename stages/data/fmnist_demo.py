"""The embedded demo's dataset: Fashion-MNIST items on injected backgrounds (built by stages.demo.data).

``<data_root>/fmnist-demo/<split>.npz`` holds uint8 images [N, 32, 32, 3], labels, background
ids, object ids (one per Fashion-MNIST item: the paired splits draw one item on several
backgrounds), the split's class names and, for the group splits, the reference group counts of
the adjusted average. Groups are class x background; each class's home is ``HOME`` below.

Every class has a home background, shared within a family as ImageNet's birds share habitats:
light tops (t-shirt, shirt) live in a forest, warm tops (pullover, coat) in the snow, shoes in the
desert. Pretraining sees the home mildly more often than the others; fine-tuning (eight classes)
more often still. Two tops with different homes, t-shirt and pullover, are held out of
fine-tuning (each keeps a fine-tuned relative on its home: shirt, coat) and tested on their
two homes: the Waterbirds analogue (landbirds / waterbirds, land / water).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.data.source import DatasetError, LabeledImages, register_dataset

FMNIST_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
BACKGROUNDS = ["in the snow", "in a forest", "under a blue sky", "in the desert", "in urban settings"]
# Home background of each Fashion-MNIST class: light tops in a forest, warm tops in the snow,
# dress under a blue sky, shoes in the desert, trouser and bag in urban settings.
HOME = [1, 4, 0, 2, 0, 3, 1, 3, 4, 3]
# Held out of fine-tuning: t-shirt (home: forest, relative shirt) and pullover (snow, relative coat).
HELDOUT_CLASSES = [0, 2]
ID_CLASSES = [c for c in range(len(FMNIST_NAMES)) if c not in HELDOUT_CLASSES]
SPLITS = ("pretrain", "train", "val", "test", "group", "sketch", "rendition", "heldout-group", "heldout", "all")


@register_dataset("fmnist-demo")
def fmnist_demo(root: Path, split: str) -> LabeledImages:
    """``<root>/fmnist-demo/<split>.npz``; groups = class x background (the non-empty ones are scored)."""
    path = Path(root) / "fmnist-demo" / f"{split}.npz"
    if split not in SPLITS:
        raise DatasetError(f"fmnist-demo has splits {', '.join(SPLITS)}, not {split!r}")
    if not path.is_file():
        raise DatasetError(f"{path} is missing: build the demo data with `python -m stages.demo data --data-root {root}` (or `make demo`)")
    with np.load(path, allow_pickle=False) as arrays:
        if "objects" not in arrays:
            raise DatasetError(f"{path} was built by an older demo (no object ids): delete "
                               f"{path.parent} and rebuild it (`make demo` does)")
        images, labels, backgrounds = arrays["images"], arrays["labels"], arrays["backgrounds"]
        classnames = [str(name) for name in arrays["classnames"]]
        objects = arrays["objects"]
        reference = arrays["reference_counts"] if "reference_counts" in arrays else None
    groups = [int(label) * len(BACKGROUNDS) + int(bg) for label, bg in zip(labels, backgrounds)]
    group_names = [f"{name} {bg}" for name in classnames for bg in BACKGROUNDS]
    metadata = {"backgrounds": [int(b) for b in backgrounds], "background_names": BACKGROUNDS,
                "objects": [int(o) for o in objects],
                "homes": [HOME[FMNIST_NAMES.index(name)] for name in classnames]}
    if reference is not None:
        metadata["train_group_counts"] = {name: int(count) for name, count in zip(group_names, reference.reshape(-1))}
    return LabeledImages(name="fmnist-demo", classnames=classnames, images=images, labels=[int(v) for v in labels],
                         groups=groups, group_names=group_names, metadata=metadata)
