"""Build the demo's splits from Fashion-MNIST (read back by the ``fmnist-demo`` dataset adapter).

Splits (``<data_root>/fmnist-demo/<split>.npz``: uint8 images [N, 32, 32, 3], labels, backgrounds,
object ids, class names; stages.data.fmnist_demo):

| split         | source       | classes      | backgrounds                                              |
|---------------|--------------|--------------|----------------------------------------------------------|
| pretrain      | FMNIST train | all 10       | home w.p. `pretrain_correlation`; 15 % sketches, 15 % renditions |
| train, val    | FMNIST train | 8 fine-tuned | home w.p. `correlation`                                  |
| test          | FMNIST test  | 8 fine-tuned | same bias as train (the ID test)                         |
| group         | FMNIST test  | 8 fine-tuned | each item on all 5 backgrounds (class x background)      |
| sketch        | FMNIST test  | 8 fine-tuned | uniform, rendered as an edge map (domain shift)          |
| rendition     | FMNIST test  | 8 fine-tuned | uniform, inverted and posterised (domain shift)          |
| heldout-group | FMNIST test  | 2 held out   | each item on both held-out homes (the Waterbirds analogue) |
| heldout       | FMNIST test  | 2 held out   | uniform (zero-shot transfer to unseen classes)           |
| all           | FMNIST test  | all 10       | uniform                                                  |

Off-home backgrounds are uniform over the other four. Pretraining and fine-tuning draw from
disjoint halves of the training images. Everything is deterministic given the seed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from stages.config import DemoSettings
from stages.data.fmnist_demo import BACKGROUNDS, FMNIST_NAMES, HELDOUT_CLASSES, HOME, ID_CLASSES, SPLITS
from stages.data.source import DatasetError
from stages.io import atomic_write_json

_DEMO = DemoSettings()  # the workflow's demo settings own the defaults (config/config.yaml `demo:`)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZE = 32
PRETRAIN_SKETCH, PRETRAIN_RENDITION = 0.15, 0.15  # shares of the pretrain split drawn in those styles


def read_idx(path: Path) -> np.ndarray:
    """The array of one (gzipped) IDX file of Fashion-MNIST."""
    raw = gzip.open(path).read()
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def find_fashion_mnist(cache: Path) -> Path:
    """The folder of the four Fashion-MNIST .gz files: Debian's package (which `make demo-data`
    installs), else torchvision's download into `cache` when online; else one error naming both.
    The library only looks: installing system packages is the Makefile's job."""
    if (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        return DEBIAN_DIR
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache), train=True, download=True)
        FashionMNIST(str(cache), train=False, download=True)
        return cache / "FashionMNIST" / "raw"
    except Exception as error:  # noqa: BLE001 - any failure here means "not online"; reported below
        raise DatasetError(
            "Fashion-MNIST not found. Tried (1) the Debian package files in "
            f"{DEBIAN_DIR} and (2) torchvision's download into {cache} ({error}). "
            "Run `make demo-data` (as root: apt-get install dataset-fashion-mnist), or copy the four "
            "*-ubyte.gz files into one of these folders"
        ) from error


def paint_background(kind: int, rng: np.random.Generator) -> np.ndarray:
    """A 32x32 RGB float background that reads as BACKGROUNDS[kind]; fresh noise per call."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    noise = rng.normal(0, 1, (SIZE, SIZE))
    if kind == 0:  # snow: bright, bluish-white with flakes
        image = np.stack([225 + 10 * noise] * 3, -1) + np.array([-10, -5, 10])
        image[rng.random((SIZE, SIZE)) < 0.08] = 255
    elif kind == 1:  # forest: dark green blotches
        blotch = np.repeat(np.repeat(rng.random((8, 8)), 4, 0), 4, 1)
        image = np.stack([20 + 30 * blotch, 70 + 80 * blotch, 20 + 25 * blotch], -1) + 8 * noise[..., None]
    elif kind == 2:  # blue sky: vertical gradient
        image = np.stack([60 + 100 * y, 120 + 90 * y, 230 + 0 * y], -1) + 5 * noise[..., None]
    elif kind == 3:  # desert: orange dune bands
        bands = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * y + 0.5 * x + rng.random()))
        image = np.stack([200 + 40 * bands, 130 + 50 * bands, 50 + 30 * bands], -1) + 6 * noise[..., None]
    else:  # urban: grey with a dark street grid
        image = np.stack([120 + 10 * noise] * 3, -1)
        offset = rng.integers(0, 8, size=2)
        image[(np.arange(SIZE) + offset[0]) % 8 == 0, :] = 40
        image[:, (np.arange(SIZE) + offset[1]) % 8 == 0] = 40
    return image


def composite(item: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Paste a 28x28 Fashion-MNIST item (bright on black) onto the centre of a background."""
    alpha = np.zeros((SIZE, SIZE, 1))
    pixels = np.zeros((SIZE, SIZE, 3))
    alpha[2:30, 2:30, 0] = np.clip(item / 255.0 * 1.6, 0, 1)  # solid object interior
    pixels[2:30, 2:30] = (80 + 0.7 * item)[..., None]
    return np.clip(alpha * pixels + (1 - alpha) * background, 0, 255).astype(np.uint8)


def sketch(image: np.ndarray) -> np.ndarray:
    """Edge-map rendition: Sobel magnitude of the luminance, dark lines on white."""
    grey = image.astype(np.float64).mean(-1)
    padded = np.pad(grey, 1, mode="edge")
    gx = padded[1:-1, 2:] - padded[1:-1, :-2]
    gy = padded[2:, 1:-1] - padded[:-2, 1:-1]
    edges = np.clip(np.hypot(gx, gy) * 2, 0, 255)
    return np.repeat((255 - edges)[..., None], 3, -1).astype(np.uint8)


def rendition(image: np.ndarray) -> np.ndarray:
    """Inverted, 3-level posterised colours."""
    return ((255 - image) // 86 * 127).clip(0, 255).astype(np.uint8)


def _background(backgrounds: str, home: int, correlation: float, rng: np.random.Generator) -> int:
    """One background id: 'biased' = `home` w.p. `correlation`, else one of the others; 'uniform' = any."""
    if backgrounds == "biased" and rng.random() < correlation:
        return home
    if backgrounds == "biased":
        return int(rng.choice([b for b in range(len(BACKGROUNDS)) if b != home]))
    return int(rng.integers(len(BACKGROUNDS)))


def _draw(items: np.ndarray, labels: np.ndarray, classes: list[int], count: int, backgrounds: str,
          correlation: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """`count` composites of `classes` (Fashion-MNIST ids) with their labels (positions in `classes`),
    background and object ids. `backgrounds`: 'uniform', 'biased' (home w.p. `correlation`), 'paired'
    (every item on all five backgrounds) or 'paired-homes' (every item on each home of `classes`)."""
    paired = {"paired": list(range(len(BACKGROUNDS))), "paired-homes": sorted({HOME[c] for c in classes})}
    renders = paired.get(backgrounds, [None])
    per_class = count // (len(classes) * len(renders))
    if per_class == 0:
        raise DatasetError(f"{count} images cannot hold {len(classes)} classes x {len(renders)} backgrounds: "
                           f"give this split at least {len(classes) * len(renders)} (demo: sizes)")
    images, out_labels, out_backgrounds, objects = [], [], [], []
    for position, fmnist_class in enumerate(classes):
        pool = np.flatnonzero(labels == fmnist_class)
        home = HOME[fmnist_class]
        for index in rng.choice(pool, size=per_class, replace=per_class > len(pool)):
            for kind in renders:
                if kind is None:
                    kind = _background(backgrounds, home, correlation, rng)
                images.append(composite(items[index].astype(np.float64), paint_background(kind, rng)))
                out_labels.append(position)
                out_backgrounds.append(kind)
                objects.append(int(index))
    return {"images": np.stack(images), "labels": np.array(out_labels), "backgrounds": np.array(out_backgrounds),
            "objects": np.array(objects)}


def group_counts(split: dict[str, np.ndarray], classes: list[int], of_classes: list[int]) -> np.ndarray:
    """[len(of_classes), 5] counts of (class, background) in `split` (labels index `classes`)."""
    counts = np.zeros((len(of_classes), len(BACKGROUNDS)), dtype=np.int64)
    for row, fmnist_class in enumerate(of_classes):
        members = split["labels"] == classes.index(fmnist_class)
        counts[row] = np.bincount(split["backgrounds"][members], minlength=len(BACKGROUNDS))
    return counts


def build_demo_data(out_dir: Path, source_dir: Path, seed: int = _DEMO.seed, correlation: float = _DEMO.correlation,
                    pretrain_correlation: float = _DEMO.pretrain_correlation,
                    sizes: dict[str, int] | None = None) -> None:
    """Write every split of the demo under `out_dir` (atomically, one .npz per split)."""
    sizes = {"pretrain": 20000, "train": 5000, "val": 500, "test": 1000, "group": 800, "sketch": 800,
             "rendition": 800, "heldout-group": 1000, "heldout": 500, "all": 500, **(sizes or {})}
    unknown = sorted(set(sizes) - set(SPLITS))
    if unknown:
        raise DatasetError(f"demo sizes: unknown split(s) {unknown}; the splits are {', '.join(SPLITS)}")
    train_items, train_labels = read_idx(source_dir / "train-images-idx3-ubyte.gz"), read_idx(
        source_dir / "train-labels-idx1-ubyte.gz")
    test_items, test_labels = read_idx(source_dir / "t10k-images-idx3-ubyte.gz"), read_idx(
        source_dir / "t10k-labels-idx1-ubyte.gz")
    half = len(train_labels) // 2
    all_classes = list(range(len(FMNIST_NAMES)))
    pretraining, fine_tuning = (train_items[:half], train_labels[:half]), (train_items[half:], train_labels[half:])
    test = (test_items, test_labels)
    plans = {  # split: (source, classes, backgrounds, P(home) when biased)
        "pretrain": (pretraining, all_classes, "biased", pretrain_correlation),
        "train": (fine_tuning, ID_CLASSES, "biased", correlation),
        "val": (fine_tuning, ID_CLASSES, "biased", correlation),
        "test": (test, ID_CLASSES, "biased", correlation),
        "group": (test, ID_CLASSES, "paired", 0.0),
        "sketch": (test, ID_CLASSES, "uniform", 0.0),
        "rendition": (test, ID_CLASSES, "uniform", 0.0),
        "heldout-group": (test, HELDOUT_CLASSES, "paired-homes", 0.0),
        "heldout": (test, HELDOUT_CLASSES, "uniform", 0.0),
        "all": (test, all_classes, "uniform", 0.0),
    }
    # The adjusted average weights each group by its share where the model learnt those classes:
    # the fine-tuning split for the fine-tuned classes, pretraining for the held-out ones.
    reference = {"group": "train", "heldout-group": "pretrain"}
    out_dir.mkdir(parents=True, exist_ok=True)
    counts_of: dict[str, dict[str, np.ndarray]] = {}  # the reference splits' labels and backgrounds
    for offset, (split, ((items, labels), classes, backgrounds, p_home)) in enumerate(plans.items()):
        rng = np.random.default_rng([seed, offset])
        arrays = _draw(items, labels, classes, sizes[split], backgrounds, p_home, rng)
        if split == "sketch":
            arrays["images"] = np.stack([sketch(image) for image in arrays["images"]])
        elif split == "rendition":
            arrays["images"] = np.stack([rendition(image) for image in arrays["images"]])
        elif split == "pretrain":
            # Like CLIP's web data, pretraining has seen other renditions; fine-tuning data has not.
            style = rng.random(len(arrays["images"]))
            arrays["images"] = np.stack([sketch(image) if s < PRETRAIN_SKETCH else rendition(image)
                                         if s < PRETRAIN_SKETCH + PRETRAIN_RENDITION else image
                                         for image, s in zip(arrays["images"], style)])
        if split in reference.values():
            counts_of[split] = {key: arrays[key] for key in ("labels", "backgrounds")}
        extra = {}
        if split in reference:
            source = reference[split]
            extra["reference_counts"] = group_counts(counts_of[source], plans[source][1], classes)
        tmp = out_dir / f".{split}.tmp.npz"
        np.savez_compressed(tmp, **arrays, classnames=np.array([FMNIST_NAMES[c] for c in classes]), **extra)
        os.replace(tmp, out_dir / f"{split}.npz")
    atomic_write_json(out_dir / "info.json", {
        "seed": seed, "correlation": correlation, "pretrain_correlation": pretrain_correlation, "sizes": sizes,
        "backgrounds": BACKGROUNDS, "homes": {FMNIST_NAMES[c]: BACKGROUNDS[HOME[c]] for c in all_classes},
        "heldout_classes": [FMNIST_NAMES[c] for c in HELDOUT_CLASSES], "source": str(source_dir)})
