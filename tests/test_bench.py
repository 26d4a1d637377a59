"""The benchmark CLI on the tiny config, and the parity of its reference-style StarFT with ours."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from conftest import TEST_DESCRIPTORS, move_student_off_teacher, progress, tiny_config
from stages.methods import MethodContext
from stages.methods.starft import StarFT
from stages.models import create_clip
from stages.training.bench import ReferenceStarFT, main, peak_flops, synthetic_batch

CLASSNAMES = ["tench", "great white shark", "golden retriever", "space shuttle", "ice cream"]
METHOD_KEYS = {"step_time_s", "step_times_s", "samples_per_s", "flops_per_step", "tflops_per_s", "mfu",
               "state_memory_mb", "peak_memory_mb", "peak_memory_checkpointed_mb"}


def test_bench_cli_writes_json_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "TinyCLIP-test.json"
    main(["--arch", "TinyCLIP-test", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--classes", "10",
          "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"ft", "flyp", "starft", "starft-reference"}
    for record in result["methods"].values():
        assert set(record) == METHOD_KEYS
        assert len(record["step_times_s"]) == 2 and record["samples_per_s"] > 0 and record["flops_per_step"] > 0
        assert record["mfu"] is None and record["peak_memory_mb"] is None  # CPU
        assert record["peak_memory_checkpointed_mb"] is None
    methods = result["methods"]
    # Executed FLOPs follow the design: the reference runs 77-token texts and a teacher text forward.
    assert methods["ft"]["flops_per_step"] < methods["flyp"]["flops_per_step"] < methods["starft"]["flops_per_step"]
    assert methods["starft"]["flops_per_step"] < methods["starft-reference"]["flops_per_step"]
    assert set(result["ratios"]) == {"starft_over_flyp", "reference_over_starft"}
    assert all(value > 0 for value in result["ratios"].values())
    assert result["eval"]["images_per_s"] > 0 and result["process_peak_memory_mb"] > 0
    assert result["precision"] == "fp32" and result["descriptors"] == 58
    summary = out.with_suffix(".md").read_text()
    assert "starft / flyp" in summary and "| starft-reference |" in summary
    assert "grad checkpointing" in summary and "not measured (CPU; CUDA only)" in summary


def test_reference_step_equals_optimised_starft_step() -> None:
    """Cache, trimming, fused text forward and inference-mode teacher change nothing but the speed."""
    torch.manual_seed(0)
    bundle = create_clip("TinyCLIP-test", None)
    config = tiny_config("starft", lam=0.7, spurious__decay="none")

    def context() -> MethodContext:
        return MethodContext.from_config(dataclasses.replace(bundle, model=copy.deepcopy(bundle.model)), CLASSNAMES,
                                         config, total_steps=10)

    optimised, reference = StarFT(context()), ReferenceStarFT(context())
    for method in (optimised, reference):
        move_student_off_teacher(method, seed=2)  # the same noise: still identical students
    assert not hasattr(reference, "teacher_text")
    batch = synthetic_batch(torch.Generator().manual_seed(1), 12, bundle.image_size, len(CLASSNAMES),
                            len(TEST_DESCRIPTORS), torch.device("cpu"))
    results = []
    for method in (optimised, reference):
        terms = method.training_step(batch, progress())
        assert set(terms) == {"clip", "star"} and terms["star"] > 1e-3
        loss = sum(terms.values())
        results.append((terms, loss, torch.autograd.grad(loss, method.trainable_parameters())))
    (terms, loss, grads), (ref_terms, ref_loss, ref_grads) = results
    for name in terms:
        torch.testing.assert_close(terms[name], ref_terms[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(ref_grads)
    for grad, ref_grad in zip(grads, ref_grads):  # fp32 summation-order noise is ~5e-6 at most here
        assert grad.abs().max() > 1e-3 or ref_grad.abs().max() == 0
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_mfu_peak_table_and_override() -> None:
    assert peak_flops("NVIDIA H200", None)[0] == 989e12
    assert peak_flops("NVIDIA H100 PCIe", None)[0] == 756e12  # the PCIe entry wins over plain H100
    assert peak_flops("NVIDIA H100 80GB HBM3", None)[0] == 989e12
    unknown, source = peak_flops("NVIDIA GeForce RTX 3090", None)
    assert unknown is None and "--peak-tflops" in source
    assert peak_flops(None, None)[0] is None  # CPU
    assert peak_flops(None, 100.0) == (100e12, "--peak-tflops")


def test_mfu_is_executed_flops_over_time_and_peak(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    main(["--arch", "TinyCLIP-test", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--classes", "5",
          "--device", "cpu", "--methods", "flyp,starft", "--peak-tflops", "0.5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["peak_flops"] == 0.5e12
    for record in result["methods"].values():
        assert record["mfu"] == pytest.approx(record["flops_per_step"] / record["step_time_s"] / 0.5e12)
        assert record["tflops_per_s"] == pytest.approx(record["mfu"] * 0.5)

