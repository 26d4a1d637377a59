"""Exact accumulation (gradient caching): B samples as k micro-batches = one B-sample step, for every method.

Float64 on TinyCLIP-test, through the loop's own `optimizer_step`; the gradients compared are the
ones the optimiser applied. Independent accumulation is shown to differ for the coupled methods
(so the comparison can fail), and 2 gloo ranks x 2 exact micro-batches equal one process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fakes
from conftest import move_student_off_teacher, progress, tiny_config
from stages.config import TrainConfig, without_execution
from stages.data.source import load_image
from stages.methods import MethodContext, build_method, method_names, method_spec
from stages.models import create_clip
from stages.training.distributed import DistInfo
from stages.training.loop import Optimisation, optimizer_step, resolve_accumulation

SAMPLES = 8


def _method_and_batch(name: str, config: TrainConfig | None = None,
                      ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], TrainConfig]:
    """`name` in float64 on 8 images; `config` built by the caller in spawned ranks (tiny_config needs the
    session's fixtures)."""
    config = config or tiny_config(name, lam=0.7, spurious__decay="none")
    torch.manual_seed(0)
    bundle = create_clip("TinyCLIP-test", None)
    source = fakes.colour_images("train", SAMPLES)
    method = build_method(name, MethodContext.from_config(bundle, source.classnames, config, total_steps=4))
    move_student_off_teacher(method)  # else the Star and distillation terms sit at their ~0 minimum
    method.double()
    images = torch.stack([bundle.preprocess_val(load_image(image)) for image in source.images]).double()
    batch = {"image": images, "label": torch.tensor(source.labels), "descriptor_index": torch.arange(SAMPLES) % 3}
    return method, batch, config


def _step(method: torch.nn.Module, config: TrainConfig, group: list[dict[str, torch.Tensor]], accum: str,
          dist_info: DistInfo = DistInfo()) -> tuple[float, list[torch.Tensor]]:
    """One optimiser step of `method` over `group`: the summed terms and the applied gradients (the weights are
    put back after it: a state-dict copy is much cheaper than a deep copy of the method and its tokenizer)."""
    weights = {key: value.clone() for key, value in method.state_dict().items()}
    config = config.model_copy(update={"optim": config.optim.model_copy(
        update={"accum_steps": len(group), "accum": accum, "batch_size": SAMPLES})})
    parts = Optimisation.build(method, config, total_steps=4, device=torch.device("cpu"), dist_info=dist_info)
    torch.manual_seed(5)  # the same per-step draws (Lipsum-FT's random texts) in every run
    result = optimizer_step(parts, group, progress(step=1))  # a step after the first: CaRot distils
    assert result.applied
    gradients = [p.grad.clone() for p in method.trainable_parameters()]
    method.load_state_dict(weights)
    return float(sum(result.terms.values())), gradients


def _split(batch: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
    size = SAMPLES // k
    return [{key: value[i * size:(i + 1) * size] for key, value in batch.items()} for i in range(k)]


def _max_difference(got: tuple[float, list[torch.Tensor]], want: tuple[float, list[torch.Tensor]]) -> float:
    return max([abs(got[0] - want[0])] + [(g - w).abs().max().item() for g, w in zip(got[1], want[1])])


@pytest.mark.parametrize("name", method_names())
def test_exact_accumulation_is_the_whole_batch_step(name: str) -> None:
    method, batch, config = _method_and_batch(name)
    if not method.spec.trains:
        assert method.trainable_parameters() == []  # nothing to accumulate
        return
    assert method.splits_step()
    whole = _step(method, config, [batch], "exact")
    exact = _step(method, config, _split(batch, 4), "exact")
    independent = _step(method, config, _split(batch, 4), "independent")
    exact_diff, independent_diff = _max_difference(exact, whole), _max_difference(independent, whole)
    print(f"{name}: exact 4 x 2 vs 1 x 8 max abs diff {exact_diff:.1e}; independent {independent_diff:.1e}")
    assert exact_diff < 1e-10
    if method.spec.couples_samples:
        assert independent_diff > 1e-4  # a different loss: the comparison above can fail
    else:  # per-sample terms: independent accumulation is already exact
        assert independent_diff < 1e-10


def test_auto_is_exact_for_coupled_methods_and_one_micro_batch_is_the_plain_step() -> None:
    for name in method_names():
        if not method_spec(name).trains:
            continue
        method = build_method(name, MethodContext.from_config(create_clip("TinyCLIP-test", None), ["a", "b"],
                                                              tiny_config(name), total_steps=4))
        config = tiny_config(name, optim__accum_steps=2)
        assert resolve_accumulation(config, method) == ("exact" if method_spec(name).couples_samples else "independent")
        assert resolve_accumulation(tiny_config(name, optim__accum="exact"), method) == "independent"  # 1 micro-batch
    # accum is not part of a run's identity when there is one micro-batch (no rerun, resume unchanged).
    assert "accum" not in without_execution(tiny_config("flyp").model_dump(mode="json"))["optim"]
    assert "accum" in without_execution(tiny_config("flyp", optim__accum_steps=2).model_dump(mode="json"))["optim"]


DDP_METHODS = ("starft", "carot")


def _worker(rank: int, world_size: int, configs: list[TrainConfig], init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    for config in configs:
        method, batch, config = _method_and_batch(config.method, config)
        # Rank r's k-th micro-batch is its shard of the k-th slice of the global batch, as the loop's sampler.
        group = [{key: value[rank::world_size] for key, value in micro.items()} for micro in _split(batch, 2)]
        loss, grads = _step(method, config, group, "exact", DistInfo(rank, world_size))
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"{config.method}-rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_times_two_exact_micro_batches_equal_one_process(tmp_path: Path) -> None:
    """StarFT (Star's masked columns over the global batch) and CaRot (distillation, penalties on the weights)."""
    wholes, configs = {}, []
    for name in DDP_METHODS:
        method, batch, config = _method_and_batch(name)
        wholes[name] = _step(method, config, [batch], "exact")
        configs.append(config)
    mp.spawn(_worker, args=(2, configs, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for name in DDP_METHODS:
        for rank in range(2):
            result = torch.load(tmp_path / f"{name}-rank{rank}.pt", weights_only=True)
            difference = _max_difference((result["loss"], result["grads"]), wholes[name])
            print(f"{name} 2 ranks x 2 micro-batches, rank {rank}: max abs diff {difference:.1e}")
            assert difference < 1e-10


def test_bench_accum_setting_reports_time_and_memory() -> None:
    """One setting of ``--accum-compare`` (the CLI runs each in its own process), in-process and tiny."""
    from stages.training.bench.accum import measure_setting, settings
    from stages.training.bench.cli import parse_args

    args = parse_args(["--accum-compare", "--arch", "TinyCLIP-test", "--batch-size", "8", "--micro-batch", "4",
                       "--steps", "1", "--warmup", "1", "--classes", "4", "--device", "cpu"])
    assert [label for label, _, _ in settings(8, 4)] == ["1x8", "2x4-exact", "2x4-independent"]
    result = measure_setting(args, 2, "exact")
    assert result["accum"] == "exact" and result["micro_batch"] == 4 and result["method"] == "starft"
    assert result["step_time_s"] > 0 and result["peak_memory_mb"] >= 0
