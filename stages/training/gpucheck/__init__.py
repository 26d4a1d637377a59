"""GPU readiness check: on one GPU, offline, in under 8 minutes, will a real run be fast?

``python -m stages.training.gpucheck`` (or ``scripts/gpu_check.py``) runs four sections and writes
one JSON, ``results/bench/gpu_check.json``, with a markdown summary beside it (also printed):

1. ``step``: the training-step benchmark (``stages.training.bench``, reused as is): ft, flyp, starft
   and the reference-style starft on ViT-B-16, batch 256, bf16; samples/s, MFU, memory.
2. ``data``: a generated ImageNet-like JPEG folder (500 x 375) through the loop's own DataLoader
   and train transform with the machine's CPUs as workers: images/s (`data_path`).
3. ``end_to_end``: a tiny run through the CLIs on CUDA: ``torchrun --nproc_per_node 1 -m
   stages.training`` (bf16), ``python -m stages.evaluation``, ``python -m stages.reports --table 1``;
   return codes and output files checked (`end_to_end`).
4. ``accumulation``: exact contrastive accumulation, 1 x 512 vs 8 x 64, through the bench's
   ``--accum-compare`` when this checkout has it, else an explicit "not available" entry (`accumulation`).

Then the verdict: per method, the data path's images/s over the step's samples/s (``headroom``;
below 1 the run is data-bound) and the workers that would keep up.

``--smoke`` runs the same sections on CPU at tiny sizes (TinyCLIP-test, a few dozen small JPEGs,
2 training steps, fp32, torchrun with gloo) and lists what a GPU run would measure; CI runs it
(tests/test_gpu_check.py). Without ``--smoke`` and without CUDA it exits 2 at once with one line.
Each section that fails is recorded (error, traceback, log tails) and the others still run; the exit
status is 1 then. Sizes: ``stages.training.gpucheck.settings``. Reading the numbers: docs/bench.md.
"""

from stages.training.gpucheck.cli import main

__all__ = ["main"]
