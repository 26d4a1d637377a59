"""Model creation/loading, the frozen teacher, zero-shot heads and WiSE-FT interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.models import (
    ModelLoadError,
    build_zeroshot_weights,
    create_clip,
    frozen_copy,
    interpolate_state_dicts,
    trim_tokens,
)


def test_tiny_config_is_registered_and_loads_a_local_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = create_clip("TinyCLIP-test", "none")
    torch.save({"state_dict": {f"module.{k}": v for k, v in first.model.state_dict().items()}}, tmp_path / "w.pt")
    torch.manual_seed(1)
    again = create_clip("TinyCLIP-test", str(tmp_path / "w.pt"))
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert first.image_size == 32


def test_clear_errors_for_unknown_names_missing_files_and_offline_tags(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture"):
        create_clip("ViT-Nope", None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_clip("TinyCLIP-test", str(tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="local checkpoint|pass the file"):
        create_clip("TinyCLIP-test", "openai")  # no such tag for a tiny model; offline anyway


def test_frozen_copy_is_detached_and_in_eval_mode() -> None:
    bundle = create_clip("TinyCLIP-test", None)
    teacher = frozen_copy(bundle.model)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in bundle.model.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(teacher.parameters(), bundle.model.parameters()))


def test_zeroshot_weights_equal_a_plain_per_class_computation() -> None:
    bundle = create_clip("TinyCLIP-test", None)
    classes, templates = ["cat", "dog", "hot dog"], ["a photo of a {c}.", "a sketch of the {c}.", "{c}"]
    ours = build_zeroshot_weights(bundle.model, bundle.tokenizer, classes, templates, classes_per_batch=2)
    for c, name in enumerate(classes):
        total = torch.zeros(ours.shape[1], dtype=torch.float64)
        for template in templates:
            with torch.no_grad():
                feature = bundle.model.encode_text(bundle.tokenizer([template.format(c=name)]))[0].double()
            total += feature / feature.norm()
        torch.testing.assert_close(ours[c].double(), total / total.norm(), rtol=1e-5, atol=1e-6)


def test_trim_tokens_keeps_the_longest_caption() -> None:
    tokens = torch.tensor([[5, 6, 9, 0, 0, 0], [5, 7, 8, 8, 9, 0]])
    assert torch.equal(trim_tokens(tokens), tokens[:, :5])


def test_wise_ft_endpoints_are_exact_and_midpoint_is_linear() -> None:
    torch.manual_seed(0)
    zs = create_clip("TinyCLIP-test", None).model.state_dict()
    ft = create_clip("TinyCLIP-test", None).model.state_dict()
    at_zero, at_one = interpolate_state_dicts(zs, ft, 0.0), interpolate_state_dicts(zs, ft, 1.0)
    assert all(torch.equal(at_zero[k], zs[k]) and torch.equal(at_one[k], ft[k]) for k in zs)
    half = interpolate_state_dicts(zs, ft, 0.25)
    for key in zs:
        if zs[key].is_floating_point():
            torch.testing.assert_close(half[key], 0.75 * zs[key] + 0.25 * ft[key])
    with pytest.raises(ValueError, match="alpha"):
        interpolate_state_dicts(zs, ft, 1.5)
    with pytest.raises(ValueError, match="differ"):
        interpolate_state_dicts(zs, {k: v for k, v in ft.items() if k != "logit_scale"}, 0.5)

