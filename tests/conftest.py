"""Shared fixtures: offline hub, tiny models, and small training configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported anywhere

import pytest
import torch

from stages.config import TrainConfig


@pytest.fixture(autouse=True)
def _deterministic_threads() -> None:
    torch.set_num_threads(2)


def tiny_config(method: str = "starft", **overrides: object) -> TrainConfig:
    """A TinyCLIP-test run on the synthetic dataset: a few steps, no workers."""
    raw: dict = {
        "model": {"name": "TinyCLIP-test", "pretrained": "none"},
        "data": {"train_set": "synthetic", "train_split": "train:32", "workers": 0,
                 "head_templates": ["a photo of a {c}.", "a drawing of a {c}.", "a {c}."]},
        "method": method,
        "lam": 1.0,
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
