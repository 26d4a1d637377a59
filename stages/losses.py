"""Loss terms of StarFT and the baselines, one small module each.

Conventions: features passed in are already L2-normalised unless a docstring says otherwise;
``logit_scale`` is the *exponentiated* temperature (100 for OpenAI CLIP), a float or a 0-d
tensor. Every loss returns a 0-d tensor; weights (λ and friends) are applied by the method.
Equation numbers refer to the StarFT paper (Kim et al., IJCAI 2025).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def no_autocast(tensor: Tensor) -> torch.autocast:
    """A region where autocast is off, so matmuls on fp32 inputs really run in fp32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _as_float(tensor: Tensor) -> Tensor:
    """Upcast half precision to fp32 (losses are computed in fp32); keep fp32 and fp64 as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


class ClipLoss(nn.Module):
    """Symmetric CLIP contrastive loss used by FLYP, CaRot and StarFT (paper Eq. 1).

    L_C = -1/(2N) Σ_i [ log softmax_j(s·x_i·y_j)_i + log softmax_j(s·x_j·y_i)_i ],

    x_i, y_i the unit image/text embeddings of pair i, s = exp(student's learnable logit scale).
    Pairs of the same class are negatives (as FLYP and the official StarFT code).
    """

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        with no_autocast(image_features):
            logits = logit_scale * _as_float(image_features) @ _as_float(text_features).T
            targets = torch.arange(len(logits), device=logits.device)
            return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def star_loss(
    zs_image: Tensor,
    zs_text: Tensor,
    ft_image: Tensor,
    ft_text: Tensor,
    labels: Tensor,
    logit_scale: Tensor | float,
    mask_same_class: bool = True,
) -> Tensor:
    """Spurious Textual Alignment Regularization (paper Eq. 2-3).

    Rows are the N images, columns the batch's N spurious captions S_j (caption j belongs to
    sample j). With s the **zero-shot** model's fixed scale for both models,

        [q_i]_j  = exp(s·x_i·s_j) / Σ_{j': c(j') ≠ c(i)} exp(s·x_i·s_j')          (Eq. 2, student)
        [q~_i]_j = the same with the frozen zero-shot features                     (teacher)
        L_Star   = 1/N Σ_i KL(q~_i || q_i) = 1/N Σ_i Σ_j [q~_i]_j (log[q~_i]_j - log[q_i]_j)  (Eq. 3)

    Columns with c(j) = c(i) (the diagonal included) are excluded from both softmaxes when
    `mask_same_class`; a row whose columns are all excluded contributes 0 but still counts in
    N. Computed in fp32 (float64 inputs stay float64) without infinities, so it is NaN-free
    under fp16/bf16 autocast.
    """
    with no_autocast(ft_image):
        teacher_logits = logit_scale * _as_float(zs_image) @ _as_float(zs_text).T
        student_logits = logit_scale * _as_float(ft_image) @ _as_float(ft_text).T
        return _masked_kl(teacher_logits, student_logits, labels, mask_same_class)


def _masked_kl(teacher_logits: Tensor, student_logits: Tensor, labels: Tensor, mask_same_class: bool) -> Tensor:
    """Row-wise KL(softmax(teacher) || softmax(student)) over the columns of other classes, summed / N."""
    if mask_same_class:
        valid = labels[:, None] != labels[None, :]
    else:
        valid = torch.ones_like(teacher_logits, dtype=torch.bool)
    # A finite fill keeps log_softmax finite; excluded entries then get probability exactly 0
    # (exp underflows) and torch.where drops them from the sum without touching the gradient.
    fill = torch.finfo(teacher_logits.dtype).min / 4
    teacher_logp = teacher_logits.masked_fill(~valid, fill).log_softmax(dim=-1)
    student_logp = student_logits.masked_fill(~valid, fill).log_softmax(dim=-1)
    kl_terms = torch.where(valid, teacher_logp.exp() * (teacher_logp - student_logp), torch.zeros_like(student_logp))
    return kl_terms.sum() / len(labels)


class StarLoss(nn.Module):
    """Module form of :func:`star_loss` (paper Eq. 3) with the mask switch of Table 9."""

    def __init__(self, mask_same_class: bool = True) -> None:
        super().__init__()
        self.mask_same_class = mask_same_class

    def forward(
        self, zs_image: Tensor, zs_text: Tensor, ft_image: Tensor, ft_text: Tensor, labels: Tensor,
        logit_scale: Tensor | float,
    ) -> Tensor:
        return star_loss(zs_image, zs_text, ft_image, ft_text, labels, logit_scale, self.mask_same_class)


class ContextKLLoss(nn.Module):
    """CAR-FT's context regulariser (Mao et al., 2024; StarFT App. B.3).

    p_ctx(x) = softmax_k(s · x · w_k), w_k the unit mean over classes of the zero-shot text
    embeddings of context template k (fixed), s the zero-shot scale;
    L_ctx = 1/N Σ_i KL(p_ctx^zs(x_i) || p_ctx^ft(x_i)).
    """

    def forward(self, zs_image: Tensor, ft_image: Tensor, context_weights: Tensor, logit_scale: Tensor | float) -> Tensor:
        with no_autocast(ft_image):
            context_weights = _as_float(context_weights)
            teacher_logp = (logit_scale * _as_float(zs_image) @ context_weights.T).log_softmax(dim=-1)
            student_logp = (logit_scale * _as_float(ft_image) @ context_weights.T).log_softmax(dim=-1)
            return (teacher_logp.exp() * (teacher_logp - student_logp)).sum() / len(zs_image)


class SymmetricDistillLoss(nn.Module):
    """CaRot's self-distillation from an EMA teacher (Oh et al., 2024), both directions.

    L_SD = 1/N Σ_i [ -Σ_j softmax(t·X~Y~ᵀ)_ij log softmax(s·XYᵀ)_ij
                     -Σ_j softmax(t·Y~X~ᵀ)_ij log softmax(s·YXᵀ)_ij ],

    teacher (~) with its own scale t, student with its own scale s; the two directions are
    summed, not averaged (as the CaRot code).
    """

    def forward(
        self, teacher_image: Tensor, teacher_text: Tensor, teacher_scale: Tensor | float,
        student_image: Tensor, student_text: Tensor, student_scale: Tensor | float,
    ) -> Tensor:
        with no_autocast(student_image):
            teacher_logits = teacher_scale * _as_float(teacher_image) @ _as_float(teacher_text).T
            student_logits = student_scale * _as_float(student_image) @ _as_float(student_text).T
            image_to_text = -(teacher_logits.softmax(-1) * student_logits.log_softmax(-1)).sum(-1)
            text_to_image = -(teacher_logits.T.softmax(-1) * student_logits.T.log_softmax(-1)).sum(-1)
            return (image_to_text + text_to_image).mean()


class ProjectionPenalties(nn.Module):
    """CaRot's constraints on the projection heads: ‖W_v W_tᵀ‖_F and ‖W_vᵀ W_v − I‖_F.

    W_v [width_v, d] is the image projection, W_t [width_t, d] the text projection. Returns
    (cross_norm, orthogonality) so the method can weight them (0.05 and 0.2 in CaRot).
    """

    def forward(self, image_projection: Tensor, text_projection: Tensor) -> tuple[Tensor, Tensor]:
        with no_autocast(image_projection):
            image_projection, text_projection = _as_float(image_projection), _as_float(text_projection)
            cross = torch.linalg.matrix_norm(image_projection @ text_projection.T)
            gram = image_projection.T @ image_projection
            identity = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            return cross, torch.linalg.matrix_norm(gram - identity)


class RandomTextLogitMSE(nn.Module):
    """Lipsum-FT's regulariser (Nam et al., 2024).

    L = 1/N Σ_i 1/(2M) Σ_m ( s·x_i·t_m − s·x~_i·t_m )²,

    x the fine-tuned and x~ the zero-shot image embeddings, t_m the frozen text embeddings of M
    random-token texts (redrawn each step), s the zero-shot scale.
    """

    def forward(self, zs_image: Tensor, ft_image: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        with no_autocast(ft_image):
            text_features = _as_float(text_features)
            difference = logit_scale * (_as_float(ft_image) - _as_float(zs_image)) @ text_features.T
            return (difference**2).sum() / (2 * text_features.shape[0] * len(ft_image))
