"""How close is one descriptor bank to another (paper Table 12: banks written by other LLMs)?

``python -m stages.descriptors compare BANK_A [BANK_B]`` (B defaults to the official bank)
reports, for one concept (``--concept``, default ``all`` = the union of the bank's concepts):

- sizes of both;
- exact overlap: descriptors whose normalised form (``parse.dedupe_key``: case, whitespace,
  punctuation and simple plurals ignored) is in the other bank;
- near-duplicate overlap: descriptors not exactly in the other bank whose token Jaccard with some
  descriptor there is >= ``JACCARD_NEAR`` (0.8; tokens of the normalised form, the ``{}`` slot left out);
- each descriptor's nearest neighbour in the other bank by cosine in the CLIP text space of a
  model (``--model/--pretrained``, default ViT-B-16 / openai, config/paper.yaml's default arch);
  each template is encoded with its slot filled by the class-agnostic base caption ``BASE_CAPTION``
  ("a photo of an object" -> "a photo of an object in the snow."), i.e. the training caption
  without a class name;
- coverage both ways: the fraction of A whose nearest B neighbour has cosine >= ``--threshold``
  (``COVERAGE_COSINE`` = 0.9), and of B by A;
- a figure (histograms of the nearest-neighbour cosines both ways, the threshold marked) and a
  JSON and markdown summary: ``<out>/<name>.{json,md,png}``.

The maths (``overlap``, ``nearest``) is plain numpy on given strings and embeddings; only
``embed`` touches a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.descriptors.bank import BankError, DescriptorBank, load_bank
from stages.descriptors.parse import dedupe_key
from stages.io import atomic_write_binary, atomic_write_text

REFERENCE_BANK = Path("descriptor_banks/official-code.json")
DEFAULT_MODEL, DEFAULT_PRETRAINED = "ViT-B-16", "openai"
BASE_CAPTION = "a photo of an object"
JACCARD_NEAR = 0.8
COVERAGE_COSINE = 0.9
SLOT_TOKEN = "slot"  # what dedupe_key writes for the {} slot
LISTED = 10  # descriptors listed per direction in the markdown (least covered first)


class CompareError(BankError):
    """A comparison that cannot run: a bank without the concept, or a text model that does not load."""


def tokens(descriptor: str) -> frozenset[str]:
    """The words of the normalised descriptor, without its slot."""
    return frozenset(word for word in dedupe_key(descriptor).split() if word != SLOT_TOKEN)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets)."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


@dataclass
class Overlap:
    """String overlap of `bank` with `other`: per descriptor of `bank`, exact and best token Jaccard."""

    exact: list[bool]
    best_jaccard: list[float]
    near_threshold: float = JACCARD_NEAR

    @property
    def near(self) -> list[bool]:
        """Near duplicates: not exact, best Jaccard >= the threshold."""
        return [not exact and score >= self.near_threshold for exact, score in zip(self.exact, self.best_jaccard)]


def overlap(bank: Sequence[str], other: Sequence[str], near_threshold: float = JACCARD_NEAR) -> Overlap:
    """Which descriptors of `bank` are in `other` exactly (normalised) and their best token Jaccard there."""
    keys = {dedupe_key(text) for text in other}
    other_tokens = [tokens(text) for text in other]
    exact = [dedupe_key(text) in keys for text in bank]
    best = [max((jaccard(tokens(text), theirs) for theirs in other_tokens), default=0.0) for text in bank]
    return Overlap(exact, best, near_threshold)


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest neighbours by cosine: (index in b of each row of a, its cosine, index in a of each row of b, cosine).

    Rows are normalised here (float64), so any non-zero embeddings will do.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cosine = a @ b.T
    a_to_b, b_to_a = cosine.argmax(axis=1), cosine.argmax(axis=0)
    return a_to_b, cosine[np.arange(len(a)), a_to_b], b_to_a, cosine[b_to_a, np.arange(len(b))]


def coverage(cosines: np.ndarray, threshold: float = COVERAGE_COSINE) -> float:
    """Fraction of descriptors whose nearest neighbour in the other bank has cosine >= `threshold`."""
    return float(np.mean(np.asarray(cosines) >= threshold))


def captions(descriptors: Sequence[str], base_caption: str = BASE_CAPTION) -> list[str]:
    """The texts encoded: each template with its slot filled by `base_caption`."""
    return [text.replace("{}", base_caption) for text in descriptors]


def embed(texts: Sequence[str], model: str, pretrained: str, batch_size: int = 256) -> np.ndarray:
    """Normalised CLIP text embeddings of `texts` (float64, one row each) with an open_clip model."""
    import torch
    import torch.nn.functional as F

    from stages.models.factory import ModelLoadError, create_clip

    torch.manual_seed(0)  # random ('none') weights are reproducible
    try:
        bundle = create_clip(model, pretrained)
    except ModelLoadError as error:
        raise CompareError(f"text model for the comparison: {error}") from error
    bundle.model.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            features = bundle.model.encode_text(bundle.tokenizer(list(texts[start:start + batch_size])))
            rows.append(F.normalize(features.double(), dim=-1))
    return torch.cat(rows).numpy()


def bank_label(path: Path) -> str:
    """A file-name slug of a bank path: ``descriptor_banks/llama-3/v1.json`` -> ``llama-3-v1``."""
    path = Path(path)
    parts = [path.parent.name, path.stem] if re.fullmatch(r"v\d+", path.stem) and path.parent.name else [path.stem]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


def _side(descriptors: list[str], strings: Overlap, index: np.ndarray, cosines: np.ndarray, other: list[str],
          threshold: float) -> dict[str, Any]:
    """The summary of one direction (a bank against the other)."""
    n = len(descriptors)
    return {
        "exact_in_other": int(sum(strings.exact)), "exact_fraction": sum(strings.exact) / n,
        "near_in_other": int(sum(strings.near)), "near_fraction": sum(strings.near) / n,
        "coverage": coverage(cosines, threshold),
        "nn_cosine": {"mean": float(cosines.mean()), "median": float(np.median(cosines)), "min": float(cosines.min()),
                      "max": float(cosines.max())},
        "descriptors": [
            {"descriptor": text, "nearest": other[int(j)], "cosine": float(c), "exact": exact, "jaccard": score}
            for text, j, c, exact, score in zip(descriptors, index, cosines, strings.exact, strings.best_jaccard)
        ],
    }


def compare_banks(
    path_a: Path, path_b: Path = REFERENCE_BANK, *, concept: str = "all", model: str = DEFAULT_MODEL,
    pretrained: str = DEFAULT_PRETRAINED, threshold: float = COVERAGE_COSINE, base_caption: str = BASE_CAPTION,
) -> dict[str, Any]:
    """The comparison of two bank files as a JSON-ready dict (see the module docstring)."""
    banks: list[DescriptorBank] = [load_bank(path_a), load_bank(path_b)]
    a, b = (bank.descriptors(concept) for bank in banks)
    embeddings = embed(captions(a, base_caption) + captions(b, base_caption), model, pretrained)
    a_to_b, a_cos, b_to_a, b_cos = nearest(embeddings[:len(a)], embeddings[len(a):])
    shared = {dedupe_key(text) for text in a} & {dedupe_key(text) for text in b}
    union = {dedupe_key(text) for text in a} | {dedupe_key(text) for text in b}
    return {
        "banks": {key: {"path": str(path), "source": bank.source, "generator": f"{bank.generator.backend}:"
                        f"{bank.generator.model}", "sha256": bank.sha256, "size": len(texts)}
                  for key, path, bank, texts in (("a", path_a, banks[0], a), ("b", path_b, banks[1], b))},
        "concept": concept,
        "model": {"name": model, "pretrained": pretrained},
        "encoded": f"each template with its slot filled by {base_caption!r}",
        "thresholds": {"near_jaccard": JACCARD_NEAR, "coverage_cosine": threshold},
        "exact_shared": len(shared), "exact_jaccard": len(shared) / len(union),
        "a_vs_b": _side(a, overlap(a, b), a_to_b, a_cos, b, threshold),
        "b_vs_a": _side(b, overlap(b, a), b_to_a, b_cos, a, threshold),
    }


def markdown(result: dict[str, Any], name: str) -> str:
    """The summary as markdown: one table of both directions, then the least covered descriptors."""
    a, b = result["banks"]["a"], result["banks"]["b"]
    near, cos = result["thresholds"]["near_jaccard"], result["thresholds"]["coverage_cosine"]
    lines = [
        f"# Descriptor bank comparison: {name}", "",
        f"A = `{a['path']}` ({a['generator']}), B = `{b['path']}` ({b['generator']}); concept `{result['concept']}`; "
        f"text space of {result['model']['name']} ({result['model']['pretrained']}), {result['encoded']}.",
        f"Exact: normalised strings (case, punctuation, simple plurals ignored); near: token Jaccard >= {near:g}, "
        f"not exact; covered: nearest neighbour's cosine >= {cos:g}.", "",
        f"Shared normalised descriptors: {result['exact_shared']} (Jaccard of the two sets {result['exact_jaccard']:.3f}).",
        "", "| direction | size | exact in other | near duplicates | covered | NN cosine mean | median | min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label, size in (("a_vs_b", "A in B", a["size"]), ("b_vs_a", "B in A", b["size"])):
        side = result[key]
        stats = side["nn_cosine"]
        lines.append(f"| {label} | {size} | {side['exact_in_other']} ({100 * side['exact_fraction']:.1f} %) | "
                     f"{side['near_in_other']} ({100 * side['near_fraction']:.1f} %) | {100 * side['coverage']:.1f} % | "
                     f"{stats['mean']:.3f} | {stats['median']:.3f} | {stats['min']:.3f} |")
    for key, label in (("a_vs_b", "A's least covered (nearest in B)"), ("b_vs_a", "B's least covered (nearest in A)")):
        lines += ["", f"## {label}", "", "| descriptor | nearest | cosine |", "|---|---|---|"]
        for row in sorted(result[key]["descriptors"], key=lambda row: row["cosine"])[:LISTED]:
            lines.append(f"| `{row['descriptor']}` | `{row['nearest']}` | {row['cosine']:.3f} |")
    return "\n".join(lines) + "\n"


def figure_png(result: dict[str, Any], name: str) -> bytes:
    """Histograms of the nearest-neighbour cosines, A -> B and B -> A, with the coverage threshold."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = {f"A -> B ({result['banks']['a']['size']})": [row["cosine"] for row in result["a_vs_b"]["descriptors"]],
              f"B -> A ({result['banks']['b']['size']})": [row["cosine"] for row in result["b_vs_a"]["descriptors"]]}
    low = min(min(v) for v in values.values())
    bins = np.linspace(min(low, result["thresholds"]["coverage_cosine"]) - 1e-6, 1.0 + 1e-6, 31)
    for label, cosines in values.items():
        axes.hist(cosines, bins=bins, alpha=0.6, label=label)
    axes.axvline(result["thresholds"]["coverage_cosine"], color="black", linestyle="--", label="coverage threshold")
    axes.set_xlabel(f"cosine to the nearest descriptor of the other bank ({result['model']['name']} text space)")
    axes.set_ylabel("descriptors")
    axes.set_title(f"{name} (concept {result['concept']})", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_comparison(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    """Write ``<out_dir>/<name>.{json,md,png}`` atomically; return the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{name}.{suffix}" for suffix in ("json", "md", "png")]
    atomic_write_text(paths[0], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(paths[1], markdown(result, name))
    png = figure_png(result, name)
    atomic_write_binary(paths[2], lambda handle: handle.write(png))
    return paths
