"""Shared fixtures: offline hub, tiny models, and small training configs."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported anywhere

import pytest
import torch

import fakes
from stages.config import TrainConfig
from stages.descriptors.bank import ConceptEntry, DescriptorBank, GeneratorInfo, write_bank
from stages.methods import Progress

# The background descriptors of the tests' small bank (tiny_config's spurious.bank).
TEST_DESCRIPTORS = ["{} in the snow.", "{} on the beach.", "blurred {}.", "{} under a blue sky."]

# The coloured-noise imagefolder of tiny_config (a plain function, called in tests and fixtures):
# written once per session by `_colour_data`.
COLOUR_SPLITS = {"train": 32, "val": 16, "test": 16}
_colour_root: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _colour_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    _colour_root.append(fakes.colour_folder(tmp_path_factory.mktemp("colours"), COLOUR_SPLITS))


def colour_root() -> Path:
    """The data root holding ``imagefolder/{train,val,test}`` of coloured-noise images (`COLOUR_SPLITS`)."""
    return _colour_root[0]


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _private_check_stamps(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image-check stamps (stages.data.check) of each test in a folder of its own, never the user's cache."""
    monkeypatch.setenv("STAGES_CHECK_STAMPS", str(tmp_path_factory.mktemp("check-stamps")))


@functools.cache
def test_bank() -> Path:
    """A bank file whose background concept is TEST_DESCRIPTORS (written once per test session)."""
    path = Path(tempfile.mkdtemp(prefix="test-bank-")) / "test-bank.json"
    write_bank(path, DescriptorBank(source="tests", generator=GeneratorInfo(backend="published", model="tests"),
                                    concepts={"background": ConceptEntry(descriptors=TEST_DESCRIPTORS)},
                                    created_at="2026-01-01T00:00:00Z"))
    return path


def progress(step: int = 0, epoch: int = 0, total_steps: int = 10, epochs: int = 2) -> Progress:
    """Where a step stands, for calling a method's `training_step` outside the loop."""
    return Progress(step=step, epoch=epoch, total_steps=total_steps, epochs=epochs)


def tiny_config(method: str = "starft", **overrides: object) -> TrainConfig:
    """A TinyCLIP-test run on the coloured-noise imagefolder (`colour_root`): a few steps, no workers, the test bank."""
    raw: dict = {
        "model": {"name": "TinyCLIP-test", "pretrained": "none"},
        "data": {"train_set": "imagefolder", "data_root": str(colour_root()), "train_split": "train", "workers": 0,
                 "head_templates": ["a photo of a {c}.", "a drawing of a {c}.", "a {c}."]},
        "method": method,
        "lam": 1.0,
        "spurious": {"bank": str(test_bank())},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 2, "batch_size": 8, "max_steps_per_epoch": 2},
        "checkpoint_every": 1,
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return TrainConfig.model_validate(raw)


def move_student_off_teacher(method: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Add seeded noise to a method's student: at initialisation it equals its frozen teacher, where
    the Star term and its gradient are ~0 and a parity test of them could not fail."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in method.student.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def carot_loss_py_schedule(num_batches: int, epochs: int, ema_up_freq: int, m_sche_src: float, m_sche_tar: float,
                           m_warm_up: float) -> tuple[list[tuple[int, float]], list[int]]:
    """CaRot's src/models/carot_loss.py loop (L127-234), transcribed: the EMA updates as (optimiser steps taken,
    momentum) and the 0-based steps whose loss includes distillation."""
    updates, distilled, total = [], [], num_batches * epochs
    for epoch in range(epochs):
        for i in range(num_batches):
            step = i + epoch * num_batches
            if step > 0:
                distilled.append(step)
            # ... loss.backward(); optimizer.step() ...
            if (step % ema_up_freq) == 0 or step == num_batches * epochs:
                if step < total * m_warm_up:
                    m = ((m_sche_tar - m_sche_src) / (total * m_warm_up)) * step + m_sche_src
                else:
                    m = m_sche_tar
                updates.append((step + 1, m))
    return updates, distilled
