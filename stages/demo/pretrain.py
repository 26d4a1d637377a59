"""Pretrain the demo's tiny CLIP from scratch, so it starts with zero-shot skill and a mild bias.

Images are the ``pretrain`` split (all 10 Fashion-MNIST classes, each on its home background
more often than on the others, as web data is mildly biased);
each image gets one caption drawn per step: "a photo of a <class> <background>." (60 %),
"a photo of a <class>." (25 %) or "a photo of something <background>." (15 %), so the text
tower learns both the class words and the background phrases the descriptor bank uses. The
loss is the CLIP contrastive loss of training (losses.ClipLoss) on the trimmed text forward.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from stages.config import DemoSettings
from stages.data.source import build_dataset
from stages.demo.data import BACKGROUNDS, FMNIST_NAMES
from stages.io import atomic_torch_save
from stages.models.factory import create_clip
from stages.models.text import encode_text_trimmed
from stages.training.loop import warmup_cosine
from stages.losses import ClipLoss

_DEMO = DemoSettings()  # the workflow's demo settings own the defaults (config/config.yaml `demo:`)

CAPTION_MIX = (0.60, 0.25, 0.15)


def caption_table() -> tuple[list[str], np.ndarray]:
    """All captions and, per (class, background, kind), the index of its caption."""
    captions: list[str] = []
    index = np.zeros((len(FMNIST_NAMES), len(BACKGROUNDS), 3), dtype=np.int64)
    for c, name in enumerate(FMNIST_NAMES):
        for b, phrase in enumerate(BACKGROUNDS):
            for kind, caption in enumerate((f"a photo of a {name} {phrase}.", f"a photo of a {name}.",
                                            f"a photo of something {phrase}.")):
                if caption not in captions:
                    captions.append(caption)
                index[c, b, kind] = captions.index(caption)
    return captions, index


def pretrain(data_root: Path, out: Path, model_name: str = _DEMO.model, steps: int = _DEMO.pretrain_steps,
             batch_size: int = _DEMO.pretrain_batch_size, lr: float = _DEMO.pretrain_lr,
             seed: int = _DEMO.seed) -> dict[str, float]:
    """Train `model_name` from random weights on the pretrain split; write its weights to `out`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bundle = create_clip(model_name, None)
    model, tokenizer = bundle.model, bundle.tokenizer
    source = build_dataset("fmnist-demo", data_root, "pretrain")
    # The pretrain split's labels index all 10 Fashion-MNIST names in order.
    assert source.classnames == FMNIST_NAMES, source.classnames
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    images = (torch.from_numpy(np.asarray(source.images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
    labels = np.asarray(source.labels)
    backgrounds = np.asarray(source.metadata["backgrounds"])
    captions, caption_index = caption_table()
    tokens = tokenizer(captions)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(max(1, steps // 20), steps))
    loss_fn = ClipLoss()
    model.train()
    started = time.perf_counter()
    for _ in tqdm(range(steps), desc="pretrain demo CLIP", unit="step"):
        chosen = rng.choice(len(labels), size=batch_size, replace=False)
        kinds = rng.choice(3, size=batch_size, p=CAPTION_MIX)
        caption_ids = caption_index[labels[chosen], backgrounds[chosen], kinds]
        image_features = F.normalize(model.encode_image(images[chosen]), dim=-1)
        text_features = F.normalize(encode_text_trimmed(model, tokens[caption_ids]), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - started
    atomic_torch_save(out, {"state_dict": model.state_dict(), "model_name": model_name, "pretrained": None,
                            "method": "demo-pretrain", "step": steps})
    return {"seconds": seconds, "final_loss": float(loss), "logit_scale": float(model.logit_scale.exp())}
