"""Create or load an open_clip model by ``(name, pretrained)``.

``pretrained`` is one of: ``None``/``"none"`` (random weights, for tests and the demo's own
pretraining), an open_clip tag such as ``"openai"`` or ``"laion400m_e32"`` (fetched through
huggingface_hub, cached by it), or a path to a local checkpoint file (a state dict, or one of our
``best.pt``/``ckpt/last.pt`` files). Names may also use open_clip's ``hf-hub:`` and ``local-dir:``
schemas. The tiny architectures under ``stages/models/configs/`` are registered on import.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from stages.data.transforms import eval_transform, train_transform
from stages.errors import PipelineError

CONFIG_DIR = Path(__file__).with_name("configs")
NO_WEIGHTS = ("", "none", "random")


class ModelLoadError(PipelineError, RuntimeError):
    """The requested weights could not be found or loaded."""


def register_tiny_configs() -> None:
    """Register the JSON architectures shipped in ``stages/models/configs`` with open_clip (idempotent)."""
    if not all(path.stem in open_clip.list_models() for path in CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(CONFIG_DIR)


register_tiny_configs()


@dataclass
class ClipBundle:
    """A model with everything needed to feed it."""

    model: nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    name: str
    pretrained: str | None

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)


ACCEPTED_WEIGHTS = ("a PyTorch state dict or checkpoint saved with torch.save (.pt/.pth/.bin; a dict of tensors, "
                    "or {'state_dict': ...} like a run's weights file), or a .safetensors file")


@dataclass
class LoadedModel:
    """A model ready to evaluate: weights, its trained head if any, and its identity in metrics JSON.

    The head maps unit image features to logits, ``normalize(f(x)) @ head_weight.T``; `identity`
    is what metrics files record as ``model`` (name, pretrained, run dir, checkpoint, its sha256, α).
    """

    bundle: ClipBundle
    head_weight: torch.Tensor | None
    head_classnames: list[str] | None
    identity: dict[str, Any]


def read_checkpoint(path: Path) -> Any:
    """`torch.load` a file (a ``.safetensors`` file with safetensors); a broken file is one-line `ModelLoadError`.

    The error names the file, says it is not a checkpoint / state dict / safetensors file, and
    lists the accepted formats: never torch's advice to retry with ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                return load_file(path, device="cpu")
            except SafetensorError as error:
                raise ValueError(str(error)) from error
        return torch.load(path, map_location="cpu", weights_only=True)
    # Bytes that are not a checkpoint make torch's weights-only unpickler fail in any of these ways
    # (IndexError and KeyError: an opcode that pops or looks up what garbage never pushed).
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError, KeyError,
            zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if reason.startswith("Weights only load failed"):
            reason = "it holds Python objects besides tensors, which are never unpickled"
        raise ModelLoadError(
            f"{path} is not a readable checkpoint, state dict or safetensors file ({reason[:160]}); "
            f"accepted: {ACCEPTED_WEIGHTS}"
        ) from None


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a raw state dict, a safetensors file or one of our checkpoint files."""
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        raise ModelLoadError(f"{path} does not hold a state dict (found {type(payload).__name__}); "
                             f"accepted: {ACCEPTED_WEIGHTS}")
    # Checkpoints saved from DataParallel/DDP wrappers carry a 'module.' prefix.
    return {key.removeprefix("module."): value for key, value in payload.items()}


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    """Logging filter: False for open_clip's "No pretrained weights loaded ... initialized randomly"."""
    return not record.getMessage().startswith("No pretrained weights loaded")


@contextmanager
def _no_random_init_warning(active: bool) -> Iterator[None]:
    """Silence open_clip's random-initialisation warning while building a model whose weights we load next."""
    root = logging.getLogger()
    if active:
        root.addFilter(_drop_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_drop_random_init_warning)


def create_clip(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> ClipBundle:
    """Build an open_clip model and its tokenizer and train/eval transforms.

    Raises ModelLoadError with the fix when the name is unknown, a local file is missing, or a
    pretrained tag cannot be fetched (e.g. offline: pass a local checkpoint file instead).
    """
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip architecture {name!r}; see open_clip.list_models() "
            f"or add a JSON config to {CONFIG_DIR}"
        )
    tag = None if pretrained is None or pretrained.lower() in NO_WEIGHTS else pretrained
    local_file = Path(tag) if tag is not None and (os.sep in tag or Path(tag).suffix) else None
    if local_file is not None and not local_file.is_file():
        raise ModelLoadError(f"pretrained checkpoint file {local_file} does not exist")
    try:
        with _no_random_init_warning(local_file is not None):
            model = open_clip.create_model(
                name,
                pretrained=None if local_file is not None else tag,
                cache_dir=cache_dir,
                require_pretrained=tag is not None and local_file is None,
            )
    except RuntimeError as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
        raise ModelLoadError(
            f"could not load weights {tag!r} for {name!r}"
            f"{' (HF_HUB_OFFLINE is set, so nothing is downloaded)' if offline else ''}: {error}. "
            "Fix: put the weights on disk and pass the file as pretrained "
            "(e.g. pretrained: /models/ViT-B-16-openai.pt), or use 'local-dir:/path' as the name, "
            "or run where the Hugging Face hub is reachable"
        ) from error
    if local_file is not None:
        missing, unexpected = model.load_state_dict(_state_dict_from_file(local_file), strict=False)
        if missing or unexpected:
            raise ModelLoadError(
                f"{local_file} does not fit {name!r}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
    model.to(device)
    tokenizer = open_clip.get_tokenizer(name)
    cfg = model.visual.preprocess_cfg
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        preprocess_train=train_transform(size, cfg["mean"], cfg["std"]),
        preprocess_val=eval_transform(size, cfg["mean"], cfg["std"]),
        name=name,
        pretrained=pretrained,
    )
