"""StarFT: L = L_C + λ_e · L_Star (paper Eq. 4), FLYP's contrastive loss plus Spurious Textual Alignment Regularization.

Each sample carries a uniformly drawn descriptor index d (drawn by the data loader under the
sample's seed, `sample_draw`); its spurious caption is descriptor_d.format("a photo of a <class>").
The descriptors are those of ``spurious.concept`` in the bank ``spurious.bank``; λ_e follows
``spurious.decay`` (per epoch, as the official code, per step, or constant).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stages.descriptors.bank import load_bank
from stages.methods._base import Method, MethodContext, Prepared, Progress, module_device, unit
from stages.methods._spec import MethodSpec, register_method
from stages.models.teacher import frozen_copy
from stages.models.text import encode_text_trimmed, trim_tokens
from stages.losses import ClipLoss, StarLoss

if TYPE_CHECKING:
    from stages.config import TrainConfig


def lambda_at(lam: float, decay: str, progress: Progress) -> float:
    """λ of the Star term now: per epoch λ(1-(e+1)/E) (official code), per step λ(1-t/T), or constant."""
    if decay == "epoch":
        return lam * (1.0 - (progress.epoch + 1) / progress.epochs)
    if decay == "step":
        return lam * (1.0 - progress.step / max(1, progress.total_steps))
    return lam


def draw_descriptor(count: int) -> dict[str, int]:
    """One sample's descriptor index, uniform over the bank's `count` descriptors (as the official code)."""
    return {"descriptor_index": int(torch.randint(count, ()))}


def _warnings(config: TrainConfig) -> list[str]:
    if config.spurious.decay == "epoch" and config.optim.epochs == 1:
        return ["starft with spurious.decay=epoch and optim.epochs=1 has no Star term at all "
                "(λ_0 = λ(1-1/1) = 0); use epochs >= 2 or decay: step"]
    return []


@register_method(MethodSpec(name="starft", display="StarFT", summary="flyp + λ_e · Star (Eq. 4); trains both towers "
                            "and the scale", uses_lambda=True, uses_spurious=True, couples_samples=True,
                            check=_warnings))
class StarFT(Method):
    """The frozen teacher's embeddings of every (class, descriptor) caption are computed once here and
    looked up by index, since the teacher never changes; the student encodes the clean and spurious
    captions in one trimmed text forward. Suffix "random" appends 3-8 random vocabulary words (fresh
    per sample), so its teacher text runs per step; suffix "none" uses the clean caption.
    """

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        spurious = self.settings.spurious
        self.suffix = spurious.suffix
        self.bank_sha256: str | None = None
        self.descriptors = ["{}."]
        if self.suffix == "spurious":
            bank = load_bank(spurious.bank)
            self.bank_sha256, self.descriptors = bank.sha256, bank.descriptors(spurious.concept)
        self.clip_loss, self.star_loss = ClipLoss(), StarLoss(mask_same_class=spurious.mask)
        self.teacher = frozen_copy(self.student)
        self.zeroshot_scale = float(self.teacher.logit_scale.exp())
        device = module_device(self.student)
        base_captions = [self.settings.caption_template.format(c=name).rstrip(".") for name in self.classnames]
        if self.suffix == "random":
            self._prepare_random_suffix(base_captions)
            return
        captions = [descriptor.format(base) for base in base_captions for descriptor in self.descriptors]
        tokens = self.tokenizer(captions).view(len(base_captions), len(self.descriptors), -1).to(device)
        self.register_buffer("spurious_tokens", tokens, persistent=False)
        self.text_length = max(self.caption_length, trim_tokens(tokens.flatten(0, 1)).shape[1])
        self.register_buffer("teacher_text", self._encode_teacher(tokens.flatten(0, 1)).view(
            len(base_captions), len(self.descriptors), -1), persistent=False)

    def lam(self, progress: Progress) -> float:
        """λ_e of the step `progress` is about to take."""
        return lambda_at(self.settings.lam, self.settings.spurious.decay, progress)

    def log_values(self, progress: Progress) -> dict[str, float]:
        return {"lam": self.lam(progress)}

    def record(self) -> dict[str, Any]:
        return {"bank_sha256": self.bank_sha256, "num_descriptors": len(self.descriptors) if self.bank_sha256 else 0}

    def sample_draw(self) -> functools.partial[dict[str, int]]:
        return functools.partial(draw_descriptor, len(self.descriptors))

    @torch.no_grad()
    def _encode_teacher(self, tokens: Tensor, chunk: int = 1024) -> Tensor:
        return torch.cat([
            unit(encode_text_trimmed(self.teacher, tokens[start:start + chunk]).float())
            for start in range(0, len(tokens), chunk)
        ])

    def _prepare_random_suffix(self, base_captions: list[str]) -> None:
        """Token ids of each class's base caption and of the tokenizer's whole-word vocabulary."""
        encoder: dict[str, int] = self.tokenizer.encoder
        self.word_ids = torch.tensor(sorted(i for t, i in encoder.items() if t.endswith("</w>") and t[:-4].isalpha()))
        self.base_ids = [self.tokenizer.encode(caption) for caption in base_captions]
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        self.context_length = self.caption_tokens.shape[1]

    def _random_suffix_tokens(self, labels: Tensor) -> Tensor:
        """"a photo of a <class>" + 3-8 uniformly drawn vocabulary words, one fresh draw per sample."""
        tokens = torch.zeros(len(labels), self.context_length, dtype=torch.long)
        lengths = torch.randint(3, 9, (len(labels),))
        for row, (label, length) in enumerate(zip(labels.tolist(), lengths.tolist())):
            words = self.word_ids[torch.randint(len(self.word_ids), (length,))].tolist()
            ids = [self.sot_id, *self.base_ids[label], *words][: self.context_length - 1] + [self.eot_id]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens.to(labels.device)

    def prepare(self, batch: dict[str, Tensor], progress: Progress) -> Prepared:
        """The spurious captions (the random suffix is drawn here), the teacher's features (λ_e > 0 only)."""
        images, labels = batch["image"], batch["label"]
        if self.suffix == "random":
            spurious_tokens = self._random_suffix_tokens(labels)
            teacher_text = self._encode_teacher(spurious_tokens)
            length = None  # fresh captions every step: trimmed to this batch's longest
        else:
            spurious_tokens = self.spurious_tokens[labels, batch["descriptor_index"]]
            teacher_text = self.teacher_text[labels, batch["descriptor_index"]]
            length = self.text_length
        clean_tokens = self.caption_tokens[labels]
        # One student text forward over clean + spurious captions (trimmed to the longer of both).
        width = max(clean_tokens.shape[1], spurious_tokens.shape[1])
        all_tokens = torch.cat([F.pad(clean_tokens, (0, width - clean_tokens.shape[1])),
                                F.pad(spurious_tokens, (0, width - spurious_tokens.shape[1]))])
        inputs = {"image": images, "tokens": all_tokens, "length": length}
        if self.lam(progress) <= 0:
            return Prepared(inputs=inputs, fixed={})
        with torch.inference_mode():
            teacher_image = unit(self.teacher.encode_image(images))
        # Leave inference mode's tensors behind: only ordinary tensors may meet autograd.
        return Prepared(inputs=inputs, fixed={"teacher_image": teacher_image.clone(), "teacher_text": teacher_text,
                                              "label": labels})

    def embed(self, inputs: dict[str, Any], progress: Progress) -> dict[str, Tensor]:
        text_features = unit(encode_text_trimmed(self.student, inputs["tokens"], length=inputs["length"]))
        samples = len(inputs["image"])
        features = {"image": unit(self.student.encode_image(inputs["image"])), "clean_text": text_features[:samples]}
        if self.lam(progress) > 0:
            features["spurious_text"] = text_features[samples:]
        return features

    def batch_loss(self, features: dict[str, Tensor], fixed: dict[str, Tensor],
                   progress: Progress) -> dict[str, Tensor]:
        terms = {"clip": self.clip_loss(features["image"], features["clean_text"], self.student.logit_scale.exp())}
        lam = self.lam(progress)
        if lam > 0:
            terms["star"] = lam * self.star_loss(fixed["teacher_image"], fixed["teacher_text"], features["image"],
                                                 features["spurious_text"], fixed["label"], self.zeroshot_scale)
        return terms
