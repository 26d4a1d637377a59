"""The GPU step's levers, run on CPU: gradient checkpointing, fp16 with a gradient scaler, windowed logging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import fakes
from conftest import move_student_off_teacher, progress, tiny_config
from stages.data.source import load_image
from stages.models import create_clip
from stages.models.text import trim_tokens
from stages.methods import Method, MethodContext, build_method
from stages.rundir import RunDir
from stages.training.loop import train

REPO = Path(__file__).resolve().parents[1]


def _method_and_batch(name: str) -> tuple[Method, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    bundle = create_clip("TinyCLIP-test", None)
    source = fakes.colour_images("train", 8)
    method = build_method(name, MethodContext.from_config(bundle, source.classnames, tiny_config(name), 4))
    move_student_off_teacher(method)
    images = torch.stack([bundle.preprocess_val(load_image(image)) for image in source.images])
    return method, {"image": images, "label": torch.tensor(source.labels), "descriptor_index": torch.arange(8) % 3}


@pytest.mark.parametrize("name", ["starft", "flyp", "ft"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(name: str) -> None:
    method, batch = _method_and_batch(name)
    method.double()
    batch["image"] = batch["image"].double()
    block = method.student.visual.transformer.resblocks[0]
    block_runs = {"n": 0}
    block_forward = block.forward

    def counted_forward(*args: object, **kwargs: object) -> torch.Tensor:
        block_runs["n"] += 1  # (forward hooks do not fire when checkpointing recomputes)
        return block_forward(*args, **kwargs)

    block.forward = counted_forward
    results = []
    for checkpointing in (False, True):
        method.student.set_grad_checkpointing(checkpointing)
        block_runs["n"] = 0
        loss = sum(method.training_step(batch, progress()).values())
        grads = torch.autograd.grad(loss, method.trainable_parameters())
        results.append((loss, grads, block_runs["n"]))
    (loss, grads, runs), (ckpt_loss, ckpt_grads, ckpt_runs) = results
    assert (runs, ckpt_runs) == (1, 2)  # checkpointing really recomputes the block in the backward
    torch.testing.assert_close(ckpt_loss, loss, rtol=1e-12, atol=0)
    for got, want in zip(ckpt_grads, grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_star_term_is_finite_under_fp16_autocast() -> None:
    method, batch = _method_and_batch("starft")
    fp32 = method.training_step(batch, progress())
    with torch.autocast("cpu", dtype=torch.float16):
        fp16 = method.training_step(batch, progress())
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in fp16.values())
    assert float(fp16["star"].detach()) > 0
    for name in fp32:  # fp16's ~3 significant digits
        torch.testing.assert_close(fp16[name], fp32[name], rtol=5e-2, atol=1e-3)


def test_fp16_trains_through_the_gradient_scaler_and_checkpoints_it(tmp_path: Path) -> None:
    """precision fp16 (CPU autocast, torch.amp.GradScaler("cpu")), with grad_checkpointing on in the loop."""
    config = tiny_config("starft", precision="fp16", grad_checkpointing=True, keep_checkpoints=True,
                         spurious__bank=str(REPO / "descriptor_banks" / "official-code.json"))
    init = {key: value.clone() for key, value in create_clip("TinyCLIP-test", None).model.state_dict().items()}
    train(config, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows) and rows[0]["loss_star"] > 0
    scaler = torch.load(RunDir(tmp_path / "run").last, weights_only=True)["scaler"]
    # GradScaler's state (scale 2^16 halved on each overflowed step, doubled after 2000 good ones).
    assert scaler["scale"] in [2.0 ** k for k in range(17)] and scaler["_growth_tracker"] >= 0
    trained = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(trained[key], value) for key, value in init.items())  # steps were taken


def test_rows_every_log_every_steps_average_since_the_last_row(tmp_path: Path) -> None:
    """Rows at steps 3, 6 and each epoch's end (a checkpoint), each the mean of its steps' terms."""
    settings = {"optim__max_steps_per_epoch": 4, "checkpoint_every": 100, "optim__lr": 1e-5}
    train(tiny_config("flyp", log_every=1, **settings), tmp_path / "every")
    train(tiny_config("flyp", log_every=3, **settings), tmp_path / "windowed")
    every, windowed = ([json.loads(line) for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
                       for run in ("every", "windowed"))
    assert [row["step"] for row in every] == list(range(1, 9))
    assert [(row["step"], row["steps"]) for row in windowed] == [(3, 3), (4, 1), (6, 2), (8, 2)]
    first = 0
    for row in windowed:
        steps = every[first:row["step"]]
        assert row["loss_clip"] == pytest.approx(sum(r["loss_clip"] for r in steps) / len(steps), rel=1e-6)
        assert row["lr"] == steps[-1]["lr"] and row["epoch"] == steps[-1]["epoch"]
        first = row["step"]


# Tensor operations that make the host wait for the device (their result is a Python value or
# has a data-dependent shape): on a GPU each one drains the queue.
SYNCING = {"__int__", "__float__", "__bool__", "__index__", "item", "tolist", "nonzero", "masked_select", "unique",
           "numpy"}


class _SyncCounter(TorchFunctionMode):
    """Records every syncing tensor operation (plus boolean-mask indexing) run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", str(func))
        boolean_index = name == "__getitem__" and any(
            isinstance(arg, torch.Tensor) and arg.dtype == torch.bool for arg in args[1:])
        if name in SYNCING or boolean_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["starft", "flyp", "carot", "ft", "carft", "lipsumft"])
def test_a_training_step_never_reads_the_device(name: str) -> None:
    """No method's step reads a device value back (the loop reads the summed terms once per log row)."""
    method, batch = _method_and_batch(name)
    with _SyncCounter() as probe:  # the counter sees a sync: trimming a batch to its own longest caption
        trim_tokens(method.caption_tokens)
    assert {"nonzero", "__int__"} <= set(probe.calls)
    with _SyncCounter() as counter:
        terms = method.training_step(batch, progress())
        sum(terms.values()).backward()
    assert counter.calls == []
