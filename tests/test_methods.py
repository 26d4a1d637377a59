"""Contract tests over the method registry, plus the StarFT data path and its speed-up parities."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import fakes
from conftest import TEST_DESCRIPTORS as DESCRIPTORS
from conftest import carot_loss_py_schedule, move_student_off_teacher, progress, tiny_config
from stages.data.source import load_image
from stages.models import create_clip, encode_text_trimmed
from stages.losses import ClipLoss, star_loss
from stages.methods import MethodContext, MethodSettings, build_method, method_names
from stages.methods.starft import StarFT


def make_method(name: str, **overrides: object):
    """`name` on 16 synthetic images; λ is a constant 0.7 (what the Star parity references use) unless overridden."""
    torch.manual_seed(0)
    config = tiny_config(name, **{"lam": 0.7, "spurious__decay": "none", **overrides})
    bundle = create_clip("TinyCLIP-test", None)
    source = fakes.colour_images("train", 16)
    method = build_method(name, MethodContext.from_config(bundle, source.classnames, config, total_steps=10))
    return method, source, bundle


def batch_from(source, bundle, size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.stack([bundle.preprocess_train(load_image(source.images[i])) for i in range(size)])
    return {"image": images, "label": torch.tensor(source.labels[:size]),
            "descriptor_index": torch.randint(len(DESCRIPTORS), (size,), generator=generator)}


def test_registry_lists_every_method_of_the_paper() -> None:
    assert set(method_names()) == {"zeroshot", "ft", "flyp", "carft", "carot", "lipsumft", "starft"}


@pytest.mark.parametrize("name", method_names())
def test_two_steps_change_the_student_and_never_the_frozen_teacher(name: str) -> None:
    method, source, bundle = make_method(name)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    teacher = getattr(method, "teacher", None)
    teacher_before = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
    params = method.trainable_parameters()
    if not method.spec.trains:
        assert params == [] and method.head_state() is None
        return
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    for step in range(2):
        terms = method.training_step(batch_from(source, bundle, seed=step), progress(step=step))
        loss = sum(terms.values())
        assert torch.isfinite(loss), terms
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step + 1)
        if step == 0 and teacher is not None:
            teacher_after_first = copy.deepcopy(teacher.state_dict())
    after = method.state_dict()
    changed = [k for k in before if k.startswith("student.") and not torch.equal(before[k], after[k])]
    assert changed, "no student parameter moved"
    if teacher_before is not None:  # frozen teachers never move; CaRot's EMA only after steps 1, 501, 1001, ...
        expected = teacher_after_first if name == "carot" else teacher_before
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, expected[key]), f"teacher parameter {key} changed"
    if name in ("ft", "carft", "lipsumft"):  # head methods keep the text tower at zero-shot
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("student.transformer."))
        assert method.head_state()["weight"].shape == (4, 32)


@pytest.mark.parametrize("name", [name for name in method_names() if name != "zeroshot"])
def test_bf16_autocast_keeps_fp32_weights_losses_and_gradients_close_to_fp32(name: str) -> None:
    """The GPU precision rule, run on CPU: bf16 matmuls, fp32 master weights, fp32 loss terms."""
    method, source, bundle = make_method(name)
    move_student_off_teacher(method)
    batch = batch_from(source, bundle)
    results = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(5)  # the same per-step draws (Lipsum-FT's random texts) in both passes
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            terms = method.training_step(batch, progress(step=1))  # a step after the first (CaRot distils from then on)
        assert all(value.dtype == torch.float32 for value in terms.values()), {k: v.dtype for k, v in terms.items()}
        loss = sum(terms.values())
        results.append((loss, torch.autograd.grad(loss, method.trainable_parameters())))
    (loss32, grads32), (loss16, grads16) = results
    assert all(p.dtype == torch.float32 for p in method.trainable_parameters())
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=1e-3)
    flat32, flat16 = torch.cat([g.flatten() for g in grads32]), torch.cat([g.flatten() for g in grads16])
    assert all(g.dtype == torch.float32 for g in grads16)
    assert F.cosine_similarity(flat16, flat32, dim=0) > 0.99  # bf16 has 8 mantissa bits: close, not equal


def test_a_method_gets_exactly_its_configs_settings_and_no_config() -> None:
    """`MethodContext.from_config` is the one bridge from a TrainConfig: a method holds these settings, its own
    options block (a context built for another method's is refused), and never the whole config."""
    config = tiny_config("carot", lam=0.3, optim__weight_decay=0.2, data__caption_template="an image of a {c}.",
                         spurious__decay="step", options__carot__distill=2.5)
    bundle = create_clip("TinyCLIP-test", None)
    method = build_method("carot", MethodContext.from_config(bundle, ["cat", "dog"], config, total_steps=10))
    assert method.settings == MethodSettings(
        caption_template="an image of a {c}.", head_templates=tuple(config.data.head_templates), weight_decay=0.2,
        lam=0.3, spurious=config.spurious, options=config.options["carot"])
    assert method.options is config.options["carot"] and method.options.distill == 2.5
    assert method.optimizer_weight_decay() == 0.2
    assert torch.equal(method.caption_tokens, bundle.tokenizer(["an image of a cat.", "an image of a dog."]))
    assert not hasattr(method, "config")
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.settings.lam = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="carot: the context's options are NoneType, not CarotOptions"):
        build_method("carot", MethodContext.from_config(bundle, ["cat", "dog"], config, 10, method="flyp"))


def test_carot_ema_moves_teacher_towards_student() -> None:
    method, source, bundle = make_method("carot", options__carot__ema_every=1)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    loss = sum(method.training_step(batch_from(source, bundle), progress()).values())
    loss.backward()
    optimizer.step()
    method.after_optimizer_step(1)
    momentum = method.ema_momentum_after(1)
    assert momentum == method.momentum(0) == method.options.momentum_start
    for (key, teacher_value), student_value in zip(method.teacher.named_parameters(), method.student.parameters()):
        expected = momentum * teacher_before[key] + (1 - momentum) * student_value.detach()
        torch.testing.assert_close(teacher_value, expected)


def test_star_captions_are_descriptors_filled_with_the_base_caption() -> None:
    method, source, _ = make_method("starft")
    tokenizer = method.tokenizer
    for c, name in enumerate(source.classnames):
        for d, descriptor in enumerate(DESCRIPTORS):
            expected = tokenizer([descriptor.format(f"a photo of a {name}")])[0]
            assert torch.equal(method.spurious_tokens[c, d], expected)
    assert tokenizer.decode(method.spurious_tokens[0, 0].tolist()).startswith("<start_of_text>a photo of a red square in the snow")


def test_cached_teacher_text_equals_on_the_fly_teacher_forward() -> None:
    method, _, _ = make_method("starft")
    flat = method.spurious_tokens.flatten(0, 1)
    with torch.no_grad():
        on_the_fly = F.normalize(method.teacher.encode_text(flat), dim=-1)
    torch.testing.assert_close(method.teacher_text.flatten(0, 1), on_the_fly, rtol=1e-5, atol=2e-6)


def test_star_step_equals_plain_reference_step() -> None:
    """The optimised step (cache, trimming, one fused text forward) equals the official-style step."""
    method, source, bundle = make_method("starft")
    move_student_off_teacher(method)
    batch = batch_from(source, bundle)
    terms = method.training_step(batch, progress())
    assert terms["star"] > 1e-3
    grads = torch.autograd.grad(sum(terms.values()), method.trainable_parameters())
    student, teacher = method.student, method.teacher
    labels = batch["label"]
    spurious = method.spurious_tokens[labels, batch["descriptor_index"]]
    image = F.normalize(student.encode_image(batch["image"]), dim=-1)
    clean = F.normalize(student.encode_text(method.caption_tokens[labels]), dim=-1)
    spur = F.normalize(student.encode_text(spurious), dim=-1)
    with torch.no_grad():
        zs_image = F.normalize(teacher.encode_image(batch["image"]), dim=-1)
        zs_text = F.normalize(teacher.encode_text(spurious), dim=-1)
    reference = ClipLoss()(image, clean, student.logit_scale.exp()) + 0.7 * star_loss(
        zs_image, zs_text, image, spur, labels, teacher.logit_scale.exp())
    ref_grads = torch.autograd.grad(reference, method.trainable_parameters())
    torch.testing.assert_close(sum(terms.values()), reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # fp32 summation-order noise


def test_trimmed_text_forward_matches_full_context_forward_and_gradient() -> None:
    bundle = create_clip("TinyCLIP-test", None)
    tokens = bundle.tokenizer(["a photo of a dog.", "a photo of a very small cat on the sandy beach at dawn."])
    full = bundle.model.encode_text(tokens)
    trimmed = encode_text_trimmed(bundle.model, tokens)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=2e-6)
    params = [p for p in bundle.model.parameters() if p.requires_grad]
    weights = torch.randn_like(full)
    g_full = torch.autograd.grad((full * weights).sum(), params, allow_unused=True)
    g_trim = torch.autograd.grad((trimmed * weights).sum(), params, allow_unused=True)
    for got, want in zip(g_trim, g_full):
        if want is None:
            assert got is None
        else:  # positional rows past the longest caption get no gradient in either path
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_random_suffix_appends_three_to_eight_vocabulary_words() -> None:
    method, source, _ = make_method("starft", spurious__suffix="random")
    assert isinstance(method, StarFT)
    labels = torch.tensor([0, 1, 2, 3] * 10)
    tokens = method._random_suffix_tokens(labels)
    word_ids = set(method.word_ids.tolist())
    for row, label in zip(tokens.tolist(), labels.tolist()):
        base = method.base_ids[label]
        end = row.index(method.eot_id)
        assert row[0] == method.sot_id and row[1:1 + len(base)] == base
        suffix = row[1 + len(base):end]
        assert 3 <= len(suffix) <= 8 and set(suffix) <= word_ids
    assert len({tuple(r) for r in tokens.tolist()}) > 4  # fresh draws per sample


def test_clean_caption_variant_uses_the_training_caption() -> None:
    method, source, _ = make_method("starft", spurious__suffix="none")
    assert method.spurious_tokens.shape[1] == 1
    assert torch.equal(method.spurious_tokens[:, 0], method.caption_tokens)


@pytest.mark.parametrize("name", ["carft", "lipsumft", "carot", "starft"])
def test_teacher_stays_in_eval_mode_when_the_method_trains(name: str) -> None:
    method, _, _ = make_method(name)
    method.train()
    assert method.student.training and not method.teacher.training


def test_compiled_towers_give_the_eager_loss_and_gradients() -> None:
    """The `compile` option is a speed-up only: same loss and gradients as eager, same state dict keys."""
    from torch._dynamo.utils import counters

    eager, source, bundle = make_method("starft")
    move_student_off_teacher(eager)
    compiled = copy.deepcopy(eager)
    compiled.compile_towers()
    torch._dynamo.reset()  # forget graphs other tests compiled for identical towers
    graphs_before = counters["stats"]["unique_graphs"]
    for seed in (0, 1):  # two batches: other descriptors, so another trimmed text length
        batch = batch_from(source, bundle, seed=seed)
        losses, grads = [], []
        for method in (eager, compiled):
            terms = method.training_step(batch, progress())
            assert terms["star"] > 1e-3
            loss = sum(terms.values())
            losses.append(loss)
            grads.append(torch.autograd.grad(loss, method.trainable_parameters()))
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs_before  # the towers really ran compiled
    assert compiled.student.state_dict().keys() == eager.student.state_dict().keys()


@pytest.mark.parametrize(("num_batches", "epochs"), [(2502, 10), (110, 10), (7, 3)])
def test_carot_ema_schedule_is_carot_loss_py(num_batches: int, epochs: int) -> None:
    """EMA after optimiser steps 1, 501, 1001, ... with the momentum of the step before; no distillation at step 0."""
    torch.manual_seed(0)
    total = num_batches * epochs
    every = 500 if total > 100 else 4
    config = tiny_config("carot", options__carot__ema_every=every)
    bundle = create_clip("TinyCLIP-test", None)
    source = fakes.colour_images("train", 16)
    method = build_method("carot", MethodContext.from_config(bundle, source.classnames, config, total_steps=total))
    options = config.options
    expected, distilled = carot_loss_py_schedule(num_batches, epochs, every, options["carot"].momentum_start,
                                                 options["carot"].momentum_end, options["carot"].momentum_warmup)
    ours = [(step, m) for step in range(1, total + 1) if (m := method.ema_momentum_after(step)) is not None]
    assert [step for step, _ in ours] == [step for step, _ in expected]
    for (_, got), (_, want) in zip(ours, expected):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    if total == 25020:  # the paper's ImageNet run: 51 updates (not 50), the first after optimiser step 1
        assert len(ours) == 51 and ours[:3] == [(1, 0.05), (501, ours[1][1]), (1001, ours[2][1])]
        assert ours[-1][0] == 25001
    assert distilled == list(range(1, total))
    batch = batch_from(source, bundle)
    for step in (0, 1):
        assert ("distill" in method.training_step(batch, progress(step=step))) == (step in distilled)


def test_lipsum_head_step_moves_logits_as_its_code_s_times_w() -> None:
    """One AdamW step on Lipsum-FT's head, against a float64 transcription of its parametrisation
    (logits = s·f·W, W trained, s the fixed zero-shot scale; scripts/Lipsum-FT.py L186-187)."""
    method, _, _ = make_method("lipsumft")
    assert method.optimizer_weight_decay() == 0.0  # its code's default, not the train set's 0.1
    s = method.zeroshot_scale
    w0 = method.head.detach().double().clone()
    torch.testing.assert_close(w0.norm(dim=-1), torch.ones(len(w0), dtype=torch.float64))  # unit-norm rows
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(6, w0.shape[1], generator=generator, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    lr, eps = 1e-3, 1e-8
    optimizer = torch.optim.AdamW([method.head], lr=lr, eps=eps, weight_decay=method.optimizer_weight_decay())
    F.cross_entropy(method.head_logits(features.float()), labels).backward()
    optimizer.step()
    ours = method.head_logits(features.float()).detach().double()

    def adamw_first_step(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        # m̂ = g, v̂ = g² after one step of Adam (bias-corrected), no decay
        return weight - lr * grad / (grad.abs() + eps)

    onehot = F.one_hot(labels, len(w0)).double()
    # Lipsum-FT: d/dW CE(s·f·Wᵀ) = s·(softmax - onehot)ᵀ f / N
    grad_w = s * (torch.softmax(s * features @ w0.T, dim=-1) - onehot).T @ features / len(labels)
    reference = s * features @ adamw_first_step(w0, grad_w).T
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    # Training H = s·W directly (the FT parametrisation) would move the logits s times less.
    h0 = s * w0
    grad_h = (torch.softmax(features @ h0.T, dim=-1) - onehot).T @ features / len(labels)
    other = features @ adamw_first_step(h0, grad_h).T
    before = s * features @ w0.T
    move, other_move = float((ours - before).abs().max()), float((other - before).abs().max())
    assert move == pytest.approx(s * other_move, rel=1e-3) and s > 5
    # The checkpoint stores the effective head s·W, the form evaluation applies as normalize(f) @ weight.T.
    state = method.head_state()
    torch.testing.assert_close(features.float() @ state["weight"].T, ours.float(), rtol=1e-5, atol=1e-5)
    restored, _, _ = make_method("lipsumft")
    restored.load_head_state(state)
    assert torch.equal(restored.head, method.head)


def test_ft_head_trains_scale_times_zero_shot_weights_with_the_train_sets_decay() -> None:
    method, _, _ = make_method("ft", optim__weight_decay=0.3)
    lipsum, _, _ = make_method("lipsumft", optim__weight_decay=0.3, options__lipsumft__weight_decay=None)
    assert method.optimizer_weight_decay() == 0.3 and lipsum.optimizer_weight_decay() == 0.3
    torch.testing.assert_close(method.head.detach(), lipsum.head.detach() * lipsum.zeroshot_scale)
    torch.testing.assert_close(method.head_state()["weight"], lipsum.head_state()["weight"])
