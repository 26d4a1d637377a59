"""Grad-CAM of the predicted class, side by side for several runs (``figures: kind: gradcam``; paper Figure 3).

For each drawn image of a benchmark: the image, then for each method's run (zero-shot, FLYP,
StarFT, ...) the Grad-CAM of the class that run predicts, overlaid on the image, titled with the
prediction (✓ right, ✗ wrong). The logits are those evaluation scores the benchmark with
(``stages.evaluation.run.classifier``: the text head from the benchmark's templates through the
run's own text tower, or a trained head on its own classes), so the map explains the number in
the tables.

ViT-aware (open_clip ``VisionTransformer``): the target layer is the last residual block's first
LayerNorm (``ln_1``), whose output holds one token per patch plus the class token in front,
``[B, 1 + H·W, D]`` (batch-first, open_clip's layout since 2.x; ``[1 + H·W, B, D]`` when the
transformer is not batch-first). ``vit_reshape_transform`` drops the class token and lays the
patch tokens out on the ``[D, H, W]`` grid the ``grad-cam`` package (pytorch_grad_cam) weights
and upsamples. The figure reads each run's ``best.pt`` (and ``run.json``), the zero-shot model's
pretrained weights, and the benchmark's images under ``data_root``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn
from torchvision import transforms as T

from stages import plan
from stages.config import ConfigError, GradcamFigureSpec, WorkflowConfig
from stages.data.source import LabeledImages, build_dataset, load_image
from stages.evaluation.benchmarks import BENCHMARKS, Benchmark, get_benchmark
from stages.evaluation.metrics import project_logits
from stages.evaluation.run import classifier, load_pretrained, load_run
from stages.evaluation.heads import HeadCache
from stages.methods import method_spec
from stages.models.factory import ClipBundle, LoadedModel
from stages.reports.figures import save_png
from stages.reports.tables import display

NOTE_CHARS = 110  # characters per line of the notes under the figure


def vit_reshape_transform(visual: nn.Module) -> Callable[[Tensor], Tensor]:
    """Tokens ``[B, 1 + H·W, D]`` (or ``[1 + H·W, B, D]``) of an open_clip ViT -> patch grid ``[B, D, H, W]``."""
    grid_h, grid_w = visual.grid_size
    batch_first = getattr(visual.transformer, "batch_first", True)

    def reshape(tokens: Tensor) -> Tensor:
        if not batch_first:
            tokens = tokens.transpose(0, 1)
        if tokens.shape[1] != 1 + grid_h * grid_w:
            raise ValueError(f"expected 1 class token + {grid_h}x{grid_w} patch tokens, got {tokens.shape[1]} tokens")
        patches = tokens[:, 1:]  # the class token comes first
        return patches.reshape(tokens.shape[0], grid_h, grid_w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


class HeadClassifier(nn.Module):
    """Image -> logits as evaluation computes them: ``project(normalize(f(x)) @ weight.T)``."""

    def __init__(self, model: nn.Module, weight: Tensor, class_indices: list[int] | None) -> None:
        super().__init__()
        self.model, self.class_indices = model, class_indices
        self.register_buffer("weight", weight.float())

    def forward(self, images: Tensor) -> Tensor:
        features = F.normalize(self.model.encode_image(images).float(), dim=-1)
        return project_logits(features @ self.weight.T, self.class_indices)


def target_layer(model: nn.Module) -> nn.Module:
    """The last residual block's first LayerNorm of an open_clip ViT image tower."""
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "grid_size") or not hasattr(blocks[-1], "ln_1"):
        raise ConfigError(f"Grad-CAM needs an open_clip VisionTransformer image tower; {type(visual).__name__} "
                          "is not one (ResNet and timm towers are not supported)")
    return blocks[-1].ln_1


def gradcam_maps(model: nn.Module, weight: Tensor, images: Tensor,
                 class_indices: list[int] | None = None) -> tuple[np.ndarray, Tensor]:
    """Grad-CAM ``[B, H_img, W_img]`` in [0, 1] of each image's predicted class, and the predictions ``[B]``.

    The target is the predicted class's logit of ``HeadClassifier(model, weight, class_indices)``.
    """
    wrapped = HeadClassifier(model, weight, class_indices).to(images.device).eval()
    model.requires_grad_(True)  # the hooks need activations that carry gradients
    with torch.no_grad():
        predictions = wrapped(images).argmax(dim=-1)
    with GradCAM(model=wrapped, target_layers=[target_layer(model)],
                 reshape_transform=vit_reshape_transform(model.visual)) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(p)) for p in predictions])
    return maps, predictions.cpu()


def display_transform(preprocess: Callable) -> Callable:
    """The evaluation transform without its final Normalize: the crop the model sees, in [0, 1]."""
    steps = getattr(preprocess, "transforms", None)
    if not steps or not isinstance(steps[-1], T.Normalize):
        raise ValueError("expected an evaluation transform (torchvision Compose) that ends with Normalize")
    return T.Compose(steps[:-1])


def pick_indices(spec: GradcamFigureSpec, source: LabeledImages) -> list[int]:
    """The drawn images: `indices`, else `images` evenly spaced over all images or over each group in turn."""
    if spec.indices is not None:
        bad = [i for i in spec.indices if i >= len(source.labels)]
        if bad:
            raise ConfigError(f"indices {bad} are beyond the benchmark's {len(source.labels)} images")
        return list(spec.indices)
    if spec.groups is None:
        pools = [list(range(len(source.labels)))]
    else:
        if source.groups is None or source.group_names is None:
            raise ConfigError(f"groups: {source.name} has no groups; drop `groups` or pick a group-shift benchmark")
        unknown = sorted(set(spec.groups) - set(source.group_names))
        if unknown:
            raise ConfigError(f"groups: {unknown} are not groups of {source.name} ({source.group_names})")
        pools = [[i for i, g in enumerate(source.groups) if source.group_names[g] == name] for name in spec.groups]
    per_pool = [[pool[int(k)] for k in np.linspace(0, len(pool) - 1, min(spec.images, len(pool)))] if pool else []
                for pool in pools]
    chosen = [pool[k] for k in range(spec.images) for pool in per_pool if k < len(pool)]  # round-robin over groups
    return chosen[: spec.images]


@dataclass
class CamColumn:
    """One method's maps over the drawn images (None when its run is missing)."""

    label: str
    maps: np.ndarray | None = None
    predictions: list[int] = field(default_factory=list)


@dataclass
class GradcamPlot:
    """A built Grad-CAM figure: the images (``[N, H, W, 3]`` in [0, 1]), labels, one column per method."""

    name: str
    title: str
    benchmark: str
    images: np.ndarray
    labels: list[int]
    classnames: list[str]
    columns: list[CamColumn]
    missing: list[str]

    @property
    def points(self) -> int:
        """How many maps the figure draws."""
        return sum(len(column.predictions) for column in self.columns)


def _method_runs(config: WorkflowConfig, spec: GradcamFigureSpec) -> dict[str, plan.Cell]:
    """Method -> the first cell of the table's grid for it at the figure's seed (zero-shot: its one cell)."""
    table = config.tables[spec.table]
    seed = spec.seed if spec.seed is not None else (table.seeds or config.seeds)[0]
    runs: dict[str, plan.Cell] = {}
    for cell in plan.table_cells(config, spec.table):
        if cell.alpha is None and cell.run.method in spec.methods and (cell.seed == seed or
                                                                       not method_spec(cell.run.method).trains):
            runs.setdefault(cell.run.method, cell)
    return runs


def figure_inputs(config: WorkflowConfig, name: str) -> list[Path]:
    """Files gradcam figure `name` reads besides the images: the drawn runs' best.pt, local zero-shot weights."""
    paths = []
    for cell in _method_runs(config, config.figures[name]).values():
        run = cell.run
        if method_spec(run.method).trains:
            paths.append(cell.run_dir(config.results).best)
        elif "/" in run.model.pretrained:  # a weights file (e.g. the demo's), not an open_clip tag
            paths.append(Path(run.model.pretrained))
    return paths


def _load(config: WorkflowConfig, cell: plan.Cell) -> LoadedModel | None:
    """The model evaluation scores for `cell`: pretrained weights for zero-shot, else the run's best.pt."""
    run = cell.run
    if not method_spec(run.method).trains:
        return load_pretrained(run.model.name, run.model.pretrained)
    run_dir = cell.run_dir(config.results)
    return load_run(run_dir.path) if run_dir.best.is_file() else None


def build_gradcam(config: WorkflowConfig, name: str, device: str | torch.device = "cpu") -> GradcamPlot:
    """Compute every map figure `name` draws (runs without a best.pt are listed in ``missing``)."""
    spec = config.figures[name]
    if not isinstance(spec, GradcamFigureSpec):
        raise ConfigError(f"figures.{name} is of kind {spec.kind}, not gradcam")
    if spec.benchmark not in BENCHMARKS:
        raise ConfigError(f"figures.{name}.benchmark: unknown benchmark {spec.benchmark!r}; "
                          f"known: {', '.join(sorted(BENCHMARKS))}")
    bench: Benchmark = get_benchmark(spec.benchmark)
    source = build_dataset(bench.dataset, config.data_root, bench.split)
    try:
        indices = pick_indices(spec, source)
    except ConfigError as error:
        raise ConfigError(f"figures.{name}: {error}") from error
    runs = _method_runs(config, spec)
    columns, missing, shown = [], [], None
    for method in spec.methods:
        column = CamColumn(display(config, "method", method))
        columns.append(column)
        cell = runs.get(method)
        loaded = _load(config, cell) if cell is not None else None
        if loaded is None:
            where = cell.run_dir(config.results).best if cell is not None else "no run in the table"
            missing.append(f"{column.label}: {where}")
            continue
        bundle: ClipBundle = loaded.bundle
        weight, _ = classifier(bench, source, loaded, HeadCache())
        images = torch.stack([bundle.preprocess_val(load_image(source.images[i])) for i in indices]).to(device)
        maps, predictions = gradcam_maps(bundle.model.to(device), weight.to(device), images,
                                         bench.class_indices(source))
        column.maps, column.predictions = maps, predictions.tolist()
        if shown is None:
            crop = display_transform(bundle.preprocess_val)
            shown = np.stack([crop(load_image(source.images[i])).permute(1, 2, 0).numpy() for i in indices])
    if shown is None:
        raise ConfigError(f"figures.{name}: no run to draw; missing: {'; '.join(missing)}")
    return GradcamPlot(name, spec.title, spec.benchmark, shown.astype(np.float32), [source.labels[i] for i in indices],
                       list(source.classnames), columns, missing)


def render_gradcam(plot: GradcamPlot) -> Figure:
    """Rows = images; columns = the image, then each method's map of its predicted class over the image."""
    rows, cols = len(plot.labels), 1 + len(plot.columns)
    notes = [line for note in plot.missing for line in textwrap.wrap(f"missing: {note}", NOTE_CHARS)]
    figure = Figure(figsize=(2.2 * cols, 2.3 * rows + 0.6 + 0.18 * len(notes)), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(textwrap.fill(f"{plot.title} ({plot.benchmark})", 12 * cols))
    for row in range(rows):
        image = np.clip(plot.images[row], 0.0, 1.0)
        axes = figure.add_subplot(rows, cols, row * cols + 1)
        axes.imshow(image)
        axes.set_title(textwrap.fill(f"label: {plot.classnames[plot.labels[row]]}", 24), fontsize="small")
        axes.axis("off")
        for index, column in enumerate(plot.columns, start=2):
            axes = figure.add_subplot(rows, cols, row * cols + index)
            axes.axis("off")
            if column.maps is None:
                axes.text(0.5, 0.5, f"{column.label}:\nno run", ha="center", va="center", transform=axes.transAxes)
                continue
            predicted = column.predictions[row]
            mark = "✓" if predicted == plot.labels[row] else "✗"
            axes.imshow(show_cam_on_image(image, column.maps[row], use_rgb=True))
            axes.set_title(textwrap.fill(f"{column.label} {mark} {plot.classnames[predicted]}", 24), fontsize="small")
    if notes:
        figure.text(0.01, 0.0, "\n".join(notes), fontsize="small", va="bottom")
    return figure


def write_gradcam(plot: GradcamPlot, out_dir: Path) -> Path:
    """Render `plot` to ``figure_<name>.png`` in `out_dir` atomically; return the path."""
    return save_png(render_gradcam(plot), plot.name, out_dir)
