"""Every loss against an independent float64 reference written with plain loops, forward and gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.training.losses import (
    ClipLoss,
    ContextKLLoss,
    ProjectionPenalties,
    RandomTextLogitMSE,
    StarLoss,
    SymmetricDistillLoss,
    star_loss,
)


def unit(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)


def log_softmax_over(values: list[float]) -> list[float]:
    top = max(values)
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_total for v in values]


def reference_star(zs_img, zs_txt, ft_img, ft_txt, labels, scale, mask=True) -> torch.Tensor:
    """KL(teacher || student) per row over the columns j with label_j != label_i, plain loops."""
    n = len(labels)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        columns = [j for j in range(n) if not mask or labels[i] != labels[j]]
        if not columns:
            continue
        t_logits = [scale * float(zs_img[i] @ zs_txt[j]) for j in columns]
        t_logp = log_softmax_over(t_logits)
        # Student logits keep the autograd graph: build them as tensors.
        s_logits = torch.stack([scale * (ft_img[i] @ ft_txt[j]) for j in columns])
        s_logp = s_logits - torch.logsumexp(s_logits, dim=0)
        for k in range(len(columns)):
            total = total + math.exp(t_logp[k]) * (t_logp[k] - s_logp[k])
    return total / n


def reference_clip(img, txt, scale) -> torch.Tensor:
    n = len(img)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        row = torch.stack([scale * (img[i] @ txt[j]) for j in range(n)])
        col = torch.stack([scale * (img[j] @ txt[i]) for j in range(n)])
        total = total - (row[i] - torch.logsumexp(row, 0)) - (col[i] - torch.logsumexp(col, 0))
    return total / (2 * n)


def assert_forward_and_grad(ours, reference, leaves) -> None:
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-10)
    ours_grad = torch.autograd.grad(ours, leaves)
    ref_grad = torch.autograd.grad(reference, leaves)
    for got, want in zip(ours_grad, ref_grad):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("labels", [
    [0, 1, 2, 3, 4, 5],          # all distinct: only the diagonal is masked
    [0, 1, 0, 2, 1, 0],          # repeated labels
    [3, 3, 3, 3, 3, 3],          # every column masked: the loss is exactly 0
    [0, 0, 0, 0, 0, 1],          # rows with a single valid column
], ids=["distinct", "repeated", "all-equal", "one-odd"])
@pytest.mark.parametrize("mask", [True, False], ids=["mask", "no-mask"])
def test_star_matches_loop_reference(labels: list[int], mask: bool) -> None:
    generator = torch.Generator().manual_seed(hash((tuple(labels), mask)) % 1000)
    n, dim, scale = len(labels), 8, 100.0 / 7
    zs_img, zs_txt = unit(n, dim, generator), unit(n, dim, generator)
    ft_img = unit(n, dim, generator).requires_grad_(True)
    ft_txt = unit(n, dim, generator).requires_grad_(True)
    label_tensor = torch.tensor(labels)
    ours = star_loss(zs_img, zs_txt, ft_img, ft_txt, label_tensor, scale, mask_same_class=mask)
    reference = reference_star(zs_img, zs_txt, ft_img, ft_txt, labels, scale, mask)
    if mask and len(set(labels)) == 1:
        assert ours.item() == 0.0
        assert all(g.abs().max() == 0 for g in torch.autograd.grad(ours, [ft_img, ft_txt]))
        return
    assert_forward_and_grad(ours, reference, [ft_img, ft_txt])
    assert ours.item() > 0  # teacher and student differ, so the KL is strictly positive


def test_star_module_and_tensor_scale_agree_with_function() -> None:
    generator = torch.Generator().manual_seed(1)
    feats = [unit(5, 4, generator) for _ in range(4)]
    labels = torch.tensor([0, 1, 1, 2, 0])
    scale = torch.tensor(math.log(100.0), dtype=torch.float64).exp()  # a 0-d tensor, already exponentiated
    torch.testing.assert_close(StarLoss(mask_same_class=True)(*feats, labels, scale), star_loss(*feats, labels, 100.0))


def test_star_is_zero_when_student_equals_teacher() -> None:
    generator = torch.Generator().manual_seed(2)
    img, txt = unit(6, 5, generator), unit(6, 5, generator)
    loss = star_loss(img, txt, img, txt, torch.tensor([0, 1, 2, 0, 1, 2]), 100.0)
    assert abs(loss.item()) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_star_half_inputs_are_upcast_and_nan_free(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    feats64 = [unit(8, 16, generator) for _ in range(4)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    half = [f.to(dtype).requires_grad_(True) for f in feats64]
    loss = star_loss(*half, labels, 100.0)
    assert loss.dtype == torch.float32
    grads = torch.autograd.grad(loss, half[2:])
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    # Same value as fp64 on the rounded inputs, to fp32 accuracy.
    reference = star_loss(*[f.detach().double() for f in half], labels, 100.0)
    torch.testing.assert_close(loss.double(), reference, rtol=1e-4, atol=1e-5)


def test_star_is_nan_free_under_cpu_autocast() -> None:
    generator = torch.Generator().manual_seed(4)
    feats = [unit(8, 16, generator).float() for _ in range(4)]
    feats[2].requires_grad_(True)
    labels = torch.tensor([5, 5, 5, 1, 1, 1, 5, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = star_loss(*feats, labels, 100.0)
    (grad,) = torch.autograd.grad(loss, [feats[2]])
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, star_loss(*feats, labels, 100.0).detach())


def test_clip_loss_matches_loop_reference() -> None:
    generator = torch.Generator().manual_seed(5)
    img = unit(6, 8, generator).requires_grad_(True)
    txt = unit(6, 8, generator).requires_grad_(True)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    ours = ClipLoss()(img, txt, scale.exp())
    reference = reference_clip(img, txt, scale.exp())
    assert_forward_and_grad(ours, reference, [img, txt, scale])


def test_context_kl_matches_loop_reference() -> None:
    generator = torch.Generator().manual_seed(6)
    n, k, dim, scale = 5, 7, 8, 30.0
    zs, ctx = unit(n, dim, generator), unit(k, dim, generator)
    ft = unit(n, dim, generator).requires_grad_(True)
    ours = ContextKLLoss()(zs, ft, ctx, scale)
    reference = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        t = log_softmax_over([scale * float(zs[i] @ ctx[m]) for m in range(k)])
        s = torch.stack([scale * (ft[i] @ ctx[m]) for m in range(k)])
        s = s - torch.logsumexp(s, 0)
        for m in range(k):
            reference = reference + math.exp(t[m]) * (t[m] - s[m])
    assert_forward_and_grad(ours, reference / n, [ft])


def test_symmetric_distill_matches_loop_reference() -> None:
    generator = torch.Generator().manual_seed(7)
    n, dim, t_scale, s_scale = 5, 6, 20.0, 12.0
    t_img, t_txt = unit(n, dim, generator), unit(n, dim, generator)
    s_img = unit(n, dim, generator).requires_grad_(True)
    s_txt = unit(n, dim, generator).requires_grad_(True)
    ours = SymmetricDistillLoss()(t_img, t_txt, t_scale, s_img, s_txt, s_scale)
    reference = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for direction in ("i2t", "t2i"):
            pairs = [(i, j) if direction == "i2t" else (j, i) for j in range(n)]
            t = log_softmax_over([t_scale * float(t_img[a] @ t_txt[b]) for a, b in pairs])
            s = torch.stack([s_scale * (s_img[a] @ s_txt[b]) for a, b in pairs])
            s = s - torch.logsumexp(s, 0)
            for j in range(n):
                reference = reference - math.exp(t[j]) * s[j]
    assert_forward_and_grad(ours, reference / n, [s_img, s_txt])


def test_projection_penalties_match_loop_reference() -> None:
    generator = torch.Generator().manual_seed(8)
    w_v = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    w_t = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    cross, orth = ProjectionPenalties()(w_v, w_t)
    cross_sq = sum((sum(w_v[a, c] * w_t[b, c] for c in range(3))) ** 2 for a in range(5) for b in range(4))
    orth_sq = sum(
        (sum(w_v[r, a] * w_v[r, b] for r in range(5)) - (1.0 if a == b else 0.0)) ** 2
        for a in range(3) for b in range(3)
    )
    assert_forward_and_grad(cross, cross_sq.sqrt(), [w_v, w_t])
    assert_forward_and_grad(orth, orth_sq.sqrt(), [w_v])


def test_random_text_mse_matches_loop_reference() -> None:
    generator = torch.Generator().manual_seed(9)
    n, m, dim, scale = 4, 6, 5, 50.0
    zs, texts = unit(n, dim, generator), unit(m, dim, generator)
    ft = unit(n, dim, generator).requires_grad_(True)
    ours = RandomTextLogitMSE()(zs, ft, texts, scale)
    reference = torch.zeros((), dtype=torch.float64)
    for i in range(n):
        for k in range(m):
            reference = reference + (scale * (ft[i] @ texts[k]) - scale * float(zs[i] @ texts[k])) ** 2 / (2 * m)
    assert_forward_and_grad(ours, reference / n, [ft])
