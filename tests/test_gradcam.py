"""Grad-CAM figures (``figures: kind: gradcam``): heat on a planted discriminative patch, then the figure end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import colour_root
from stages import plan
from stages.config import ConfigError, validate_workflow_config
from stages.models import create_clip
from stages.reports.__main__ import main
from stages.reports.gradcam import build_gradcam, figure_inputs, gradcam_maps, vit_reshape_transform
from stages.rundir import RunDir
from stages.training.loop import train

GRID, PATCH = 4, 8  # TinyCLIP-test: 32 px images, 8 px patches
ROW, COL = 0, 2  # the planted patch's grid cell: off the diagonal, so a transposed grid would miss it


def test_reshape_drops_the_class_token_and_keeps_row_major_patches() -> None:
    visual = create_clip("TinyCLIP-test", None).model.visual
    tokens = torch.arange(1 + GRID * GRID, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 3)
    grid = vit_reshape_transform(visual)(tokens)
    assert grid.shape == (2, 3, GRID, GRID)
    assert grid[0, 0, ROW, COL] == 1 + ROW * GRID + COL  # token 0 is the class token
    with pytest.raises(ValueError, match="class token"):
        vit_reshape_transform(visual)(tokens[:, 1:])


@pytest.fixture
def one_thread() -> None:
    """The same float sums on every machine (the training below is short and seeded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_gradcam_heat_concentrates_on_the_planted_patch() -> None:
    """A tiny ViT whose class is the sign of a checkerboard in one patch (noise elsewhere): the Grad-CAM
    of the predicted class puts its mass on that patch's grid cell.

    The first block's attention output is zeroed (and frozen), so before the target layer (the last
    block's ln_1) no token mixes with another and only the planted patch's token carries the class.
    Grad-CAM is a heuristic; with these seeds it localises clearly (planted cell ~0.3 of the mass,
    no other cell above 0.1).
    """
    torch.manual_seed(0)
    model = create_clip("TinyCLIP-test", None).model
    mixing = model.visual.transformer.resblocks[0].attn.out_proj
    with torch.no_grad():
        mixing.weight.zero_()
        mixing.bias.zero_()
    mixing.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    checker = ((torch.arange(PATCH)[:, None] + torch.arange(PATCH)[None, :]) % 2) * 2.0 - 1.0

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 2, (size,), generator=generator)
        images = 0.5 * torch.randn(size, 3, GRID * PATCH, GRID * PATCH, generator=generator)
        sign = (2 * labels - 1).float().view(size, 1, 1, 1)
        images[:, :, ROW * PATCH:(ROW + 1) * PATCH, COL * PATCH:(COL + 1) * PATCH] = sign * checker
        return images, labels

    head = torch.nn.Parameter(10 * F.normalize(torch.randn(2, 32, generator=generator), dim=-1))
    optimizer = torch.optim.Adam([p for p in model.visual.parameters() if p.requires_grad] + [head], lr=3e-3)
    for _ in range(40):
        images, labels = batch(16)
        loss = F.cross_entropy(F.normalize(model.encode_image(images), dim=-1) @ head.T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = batch(16)
    maps, predictions = gradcam_maps(model, head.detach(), images)
    assert maps.shape == (16, GRID * PATCH, GRID * PATCH) and torch.equal(predictions, labels)
    cells = maps.reshape(16, GRID, PATCH, GRID, PATCH).sum(axis=(2, 4))
    share = (cells / cells.sum(axis=(1, 2), keepdims=True)).mean(axis=0)
    others = np.delete(share.flatten(), ROW * GRID + COL)
    assert share[ROW, COL] > 0.2 and share[ROW, COL] > 2.5 * others.max(), np.round(share, 3)
    assert (cells.reshape(16, -1).argmax(axis=1) == ROW * GRID + COL).sum() >= 12


def workflow(tmp_path: Path) -> dict:
    """TinyCLIP-test (random weights) on the coloured-noise imagefolder: zero-shot, FLYP and StarFT, one Grad-CAM figure."""
    return {
        "results": str(tmp_path / "results"), "data_root": str(colour_root()),
        "archs": {"TinyCLIP-test": "none"}, "seeds": [0], "workers": 0,
        "banks": {"official-code": {"path": "descriptor_banks/official-code.json"}},
        "train_sets": {"imagefolder": {"train_split": "train", "lam": 1.0, "optim": {
            "lr": 1e-3, "warmup_steps": 1, "epochs": 2, "batch_size": 8, "max_steps_per_epoch": 1}}},
        "tables": {3: {"title": "colours", "train_sets": ["imagefolder"], "methods": ["zeroshot", "flyp", "starft"],
                       "columns": [{"label": "ID", "benchmark": "imagefolder-test"}], "paper": False}},
        "figures": {"gradcam": {"kind": "gradcam", "title": "Grad-CAM", "table": 3, "benchmark": "imagefolder-test",
                                "images": 3}},
    }


def test_gradcam_figure_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the bank path is relative to the repository
    raw = workflow(tmp_path)
    config = validate_workflow_config(raw)
    runs = plan.table_runs(config, 3)
    trained = [RunDir.of(run, config.results).best for run in runs if run.method != "zeroshot"]
    assert sorted(figure_inputs(config, "gradcam")) == sorted(trained)  # what the workflow rule declares
    for run in runs:
        if run.method != "zeroshot":
            train(run, RunDir.of(run, config.results))
    path = tmp_path / "workflow.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path), "--figure", "gradcam"]) == 0
    figure = tmp_path / "results" / "figure_gradcam.png"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 4 * 150 and image.height > 3 * 150
    plot = build_gradcam(config, "gradcam")
    assert [column.label for column in plot.columns] == ["Zeroshot", "FLYP", "StarFT"]
    assert plot.points == 9 and not plot.missing and plot.images.shape == (3, 32, 32, 3)
    assert all(column.maps.shape == (3, 32, 32) and 0.0 <= column.maps.min() <= column.maps.max() <= 1.0
               for column in plot.columns)

    starft = RunDir.of(next(run for run in runs if run.method == "starft"), config.results)
    starft.best.unlink()
    plot = build_gradcam(config, "gradcam")
    assert plot.points == 6 and len(plot.missing) == 1 and "best.pt" in plot.missing[0]


def test_gradcam_spec_errors_name_the_field(tmp_path: Path) -> None:
    raw = workflow(tmp_path)
    raw["figures"]["gradcam"]["methods"] = ["zeroshot", "carot"]
    with pytest.raises(ConfigError, match=r"figures\.gradcam\.methods"):
        validate_workflow_config(raw)
    raw = workflow(tmp_path)
    raw["figures"]["gradcam"]["benchmark"] = "no-such-benchmark"
    with pytest.raises(ConfigError, match=r"figures\.gradcam\.benchmark"):
        build_gradcam(validate_workflow_config(raw), "gradcam")
    raw = workflow(tmp_path)
    raw["figures"]["gradcam"]["groups"] = ["landbird on water"]
    with pytest.raises(ConfigError, match=r"figures\.gradcam: groups: imagefolder has no groups"):
        build_gradcam(validate_workflow_config(raw), "gradcam")
