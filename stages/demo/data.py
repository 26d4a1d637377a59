"""Build the demo's splits from Fashion-MNIST (read back by the ``fmnist-demo`` dataset adapter).

Splits (``<data_root>/fmnist-demo/<split>.npz``: uint8 images [N, 32, 32, 3], labels, backgrounds):

| split      | source     | classes | backgrounds                                             |
|------------|------------|---------|---------------------------------------------------------|
| pretrain   | FMNIST train | all 10 | uniform (no bias), 15 % as sketches, 15 % as renditions |
| train, val | FMNIST train | 5 ID   | class c on background c with probability `correlation` |
| test       | FMNIST test  | 5 ID   | same bias as train (the ID test)                       |
| group      | FMNIST test  | 5 ID   | balanced over class x background (Waterbirds analogue) |
| sketch     | FMNIST test  | 5 ID   | uniform, rendered as an edge map (domain shift)        |
| rendition  | FMNIST test  | 5 ID   | uniform, inverted and posterised (domain shift)        |

Everything is deterministic given the seed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from stages.data.fmnist_demo import BACKGROUNDS, FMNIST_NAMES, ID_CLASSES
from stages.data.source import DatasetError
from stages.io import atomic_write_json

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
SIZE = 32
PRETRAIN_SKETCH, PRETRAIN_RENDITION = 0.15, 0.15  # shares of the pretrain split drawn in those styles


def _read_idx(path: Path) -> np.ndarray:
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


def _draw(items: np.ndarray, labels: np.ndarray, classes: list[int], count: int, backgrounds: str,
          correlation: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` composites of `classes`: background 'uniform', 'biased' (own w.p. correlation) or 'balanced'."""
    per_class = count // len(classes)
    images, out_labels, out_backgrounds = [], [], []
    for position, fmnist_class in enumerate(classes):
        pool = np.flatnonzero(labels == fmnist_class)
        chosen = rng.choice(pool, size=per_class, replace=per_class > len(pool))
        for n, index in enumerate(chosen):
            own = position % len(BACKGROUNDS)
            if backgrounds == "balanced":
                kind = n % len(BACKGROUNDS)
            elif backgrounds == "biased" and rng.random() < correlation:
                kind = own
            elif backgrounds == "biased":
                kind = int(rng.choice([b for b in range(len(BACKGROUNDS)) if b != own]))
            else:
                kind = int(rng.integers(len(BACKGROUNDS)))
            images.append(composite(items[index].astype(np.float64), paint_background(kind, rng)))
            out_labels.append(position)
            out_backgrounds.append(kind)
    return np.stack(images), np.array(out_labels), np.array(out_backgrounds)


def build_demo_data(out_dir: Path, source_dir: Path, seed: int = 0, correlation: float = 0.95,
                    sizes: dict[str, int] | None = None) -> None:
    """Write every split of the demo under `out_dir` (atomically, one .npz per split)."""
    sizes = {"pretrain": 20000, "train": 5000, "val": 500, "test": 1000, "group": 1250, "sketch": 1000,
             "rendition": 1000, **(sizes or {})}
    train_items, train_labels = _read_idx(source_dir / "train-images-idx3-ubyte.gz"), _read_idx(
        source_dir / "train-labels-idx1-ubyte.gz")
    test_items, test_labels = _read_idx(source_dir / "t10k-images-idx3-ubyte.gz"), _read_idx(
        source_dir / "t10k-labels-idx1-ubyte.gz")
    # Pretraining and fine-tuning draw from disjoint halves of the training images.
    half = len(train_labels) // 2
    plans = {
        "pretrain": (train_items[:half], train_labels[:half], list(range(10)), "uniform"),
        "train": (train_items[half:], train_labels[half:], ID_CLASSES, "biased"),
        "val": (train_items[half:], train_labels[half:], ID_CLASSES, "biased"),
        "test": (test_items, test_labels, ID_CLASSES, "biased"),
        "group": (test_items, test_labels, ID_CLASSES, "balanced"),
        "sketch": (test_items, test_labels, ID_CLASSES, "uniform"),
        "rendition": (test_items, test_labels, ID_CLASSES, "uniform"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for offset, (split, (items, labels, classes, backgrounds)) in enumerate(plans.items()):
        rng = np.random.default_rng([seed, offset])
        images, split_labels, split_backgrounds = _draw(items, labels, classes, sizes[split], backgrounds,
                                                        correlation, rng)
        if split == "sketch":
            images = np.stack([sketch(image) for image in images])
        elif split == "rendition":
            images = np.stack([rendition(image) for image in images])
        elif split == "pretrain":
            # Like CLIP's web data, pretraining has seen other renditions; fine-tuning data has not.
            style = rng.random(len(images))
            images = np.stack([sketch(image) if s < PRETRAIN_SKETCH else rendition(image)
                               if s < PRETRAIN_SKETCH + PRETRAIN_RENDITION else image for image, s in zip(images, style)])
        names = [FMNIST_NAMES[c] for c in classes]
        tmp = out_dir / f".{split}.tmp.npz"
        np.savez_compressed(tmp, images=images, labels=split_labels, backgrounds=split_backgrounds,
                            classnames=np.array(names))
        os.replace(tmp, out_dir / f"{split}.npz")
    atomic_write_json(out_dir / "info.json", {"seed": seed, "correlation": correlation, "sizes": sizes,
                                              "backgrounds": BACKGROUNDS, "source": str(source_dir)})
