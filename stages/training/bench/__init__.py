"""Training-step benchmark: ft, flyp, starft and a reference-style starft, side by side.

``python -m stages.training.bench --arch ViT-B-16 --batch-size 8 --steps 3`` builds every method from
the same random weights (throughput does not depend on them), feeds them the same synthetic
batches (random images of the model's input size, labels uniform over ``--classes`` ImageNet
class names, descriptor indices uniform over the bank's concept), and times the whole training
step with the loop's own ``optimizer_step``: forward and loss under the run's precision, backward,
gradient norm, AdamW and schedule steps.
The methods are interleaved step by step (the order rotating every round) so that a busy or
throttled machine slows them alike and the ratios stay fair.

``starft-reference`` is StarFT's step as the official code runs it (see
:class:`ReferenceStarFT`); ``ratios.reference_over_starft`` is what our optimisations buy,
``ratios.starft_over_flyp`` what the Star term costs on top of FLYP.

Output ``results/bench/<arch>.json`` (keys: ``arch``, ``device``, ``device_name``,
``precision``, ``batch_size``, ``steps``, ``warmup``, ``classes``, ``descriptors``, ``lam``,
``compile``, ``torch``, ``threads``, ``peak_flops``, ``peak_source``, ``methods``, ``eval``,
``process_peak_memory_mb``, ``ratios``, ``targets``) and a markdown summary beside it. Per
method: ``step_time_s`` (median), ``step_times_s``, ``samples_per_s``, ``flops_per_step``,
``tflops_per_s``, ``mfu`` (CUDA with a known peak only), ``state_memory_mb`` (its own weights,
buffers, teacher, caches and optimiser state), ``peak_memory_mb`` (CUDA: state plus the
step's peak allocation above what was allocated before it, i.e. the peak if it ran alone;
None on CPU, where only the process-wide RSS high-water ``process_peak_memory_mb`` exists) and
``peak_memory_checkpointed_mb`` (the same for one more step with the student's gradient
checkpointing on, the training option ``grad_checkpointing``; None on CPU).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on each method's first
(eager, untimed warm-up) step: the matmuls, convolutions and attention actually executed, forward and backward (for
StarFT: student image fwd+bwd, student text fwd+bwd at the trimmed length, teacher image fwd).
MFU divides them by the step time and the device's dense bf16 peak.

Modules: ``reference`` (the official-code StarFT step), ``timing`` (building a method and timing
its step, memory), ``flops`` (FLOP counting, device peaks), ``run`` (the interleaved rounds and
the result record), ``report`` (the markdown summary), ``cli`` (options, files).
"""

from stages.training.bench.cli import main
from stages.training.bench.flops import peak_flops
from stages.training.bench.reference import ReferenceStarFT
from stages.training.bench.run import synthetic_batch

__all__ = ["ReferenceStarFT", "main", "peak_flops", "synthetic_batch"]
