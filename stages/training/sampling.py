"""What one optimiser step reads: the training samples, their per-sample seeds, the epoch order, the loader.

Every random draw of a sample (crop, a method's per-sample draw) is seeded by (seed, epoch, sample index)
and the epoch's order by (seed, epoch), so a resumed run draws exactly what it would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from stages.data.source import DatasetError, LabeledImages, load_image
from stages.training.interrupt import ignore_stop_signals


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class TrainingSamples(Dataset):
    """Samples addressed by ``(epoch, index)``; each one's crop and per-sample draw depend only on that key.

    With `skip_corrupt`, an unreadable image is replaced by the next readable one of the dataset (under
    the same key's seed), so every batch keeps its size: under DDP every rank's shard stays as large as
    the others' and every rank steps as often, and a resumed run draws the same replacements.
    """

    def __init__(self, source: LabeledImages, transform: Callable[[Any], torch.Tensor], seed: int,
                 draw: Callable[[], dict[str, int]] | None = None, skip_corrupt: bool = False) -> None:
        """`draw`: the method's per-sample draw (``Method.sample_draw``), called after the crop."""
        self.source, self.transform, self.seed, self.draw = source, transform, seed, draw
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        """The sample (``"skipped"``: the unreadable images it replaced), or ``{"corrupt": message}``."""
        epoch, index = key
        skipped: list[str] = []
        # fork_rng keeps the caller's global RNG untouched (workers=0 runs in the main process).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, epoch, index))
            for offset in range(len(self.source)):
                chosen = (index + offset) % len(self.source)
                try:
                    image = self.transform(load_image(self.source.images[chosen]))
                    break
                except DatasetError as error:
                    if not self.skip_corrupt:
                        return {"corrupt": str(error)}
                    skipped.append(str(error))
            else:
                return {"corrupt": f"{self.source.name}: no training image is readable ({skipped[0]})"}
            drawn = self.draw() if self.draw is not None else {}
        return {"image": image, "label": self.source.labels[chosen], **drawn, "skipped": skipped}


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch the samples; ``"corrupt"`` lists unreadable images that were not replaced (an error in the loop),
    ``"skipped"`` the ones that were (counted)."""
    readable = [{key: value for key, value in item.items() if key != "skipped"} for item in items
                if "corrupt" not in item]
    batch = default_collate(readable) if readable else {}
    batch["corrupt"] = [item["corrupt"] for item in items if "corrupt" in item]
    batch["skipped"] = [message for item in items for message in item.get("skipped", [])]
    return batch


class EpochSampler(Sampler):
    """This epoch's permutation (seeded by (seed, epoch)) from position `start` on, as (epoch, index) keys.

    With W ranks, rank r takes every W-th key from r on, so the r-th shards of the k-th
    micro-batches of all ranks together are exactly the k-th global batch. The permutation's last
    ``size % W`` keys are dropped so that every rank gets as many (the feature gather needs equal
    shards, and a rank running out early would leave the others waiting in a collective).
    """

    def __init__(self, size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, epoch, start
        self.rank, self.world_size = rank, world_size
        self.end = size - size % world_size

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.end, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # 2**32 - 1 is a key no sample index uses.
        generator = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, 2**32 - 1))
        order = torch.randperm(self.size, generator=generator)[:self.end][self.start + self.rank::self.world_size]
        return ((self.epoch, int(index)) for index in order)


def train_loader(samples: TrainingSamples, micro_batch: int, sampler: Sampler, workers: int,
                 device: torch.device, timeout: float = 0) -> DataLoader:
    """The training DataLoader of one epoch: `sampler`'s keys in micro-batches, `workers` processes,
    pinned memory on CUDA (the GPU readiness check, ``stages.training.gpucheck``, times this one)."""
    return DataLoader(samples, batch_size=micro_batch, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", collate_fn=collate_samples, worker_init_fn=ignore_stop_signals,
                      timeout=timeout if workers else 0)

