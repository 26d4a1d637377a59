"""The GPU readiness check in its CPU smoke mode: every section runs, the JSON and summary say so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from stages.training.gpucheck import accumulation, main
from stages.training.gpucheck.settings import SMOKE

SECTIONS = {"step", "data", "end_to_end", "accumulation"}
RECORD_KEYS = {"mode", "preset", "device", "precision", "started_at", "machine", "workers", "gpu_plan", "plan",
               "sections", "verdict", "ok", "budget_s", "wall_s", "work_dir", "overlapped_end_to_end"}


def test_smoke_run_exercises_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench" / "gpu_check-smoke.json"
    assert main(["--smoke", "--workers", "2", "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 0
    record = json.loads(out.read_text())
    assert set(record) == RECORD_KEYS and record["ok"] and record["mode"] == "smoke"
    assert set(record["sections"]) == SECTIONS
    step, data, e2e, accum = (record["sections"][name] for name in ("step", "data", "end_to_end", "accumulation"))
    assert step["status"] == data["status"] == e2e["status"] == "ok"
    assert set(step["result"]["methods"]) == {"ft", "flyp", "starft", "starft-reference"}
    assert data["result"]["samples_timed"] == SMOKE.data.samples and data["result"]["images_per_s"] > 0
    assert data["result"]["workers"] == 2
    verdict = record["verdict"]
    assert verdict["bound"] in ("data-bound", "compute-bound") and set(verdict["methods"]) == set(step["result"]["methods"])
    starft = verdict["methods"]["starft"]
    assert starft["headroom"] == pytest.approx(data["result"]["images_per_s"] / starft["step_samples_per_s"])
    commands = e2e["result"]["commands"]
    assert set(commands) == {"train", "evaluate", "report"} and all(c["ok"] for c in commands.values())
    assert "torch.distributed.run --standalone --nproc_per_node 1 -m stages.training" in commands["train"]["command"]
    facts = e2e["result"]["facts"]
    assert facts["train"]["world_size"] == 1 and facts["train"]["device"] == "cpu"
    assert facts["evaluate"]["n"] == 32 and "| StarFT |" in facts["report"]["markdown"]
    if "--accum-compare" in accumulation.bench_help():  # after issue 25 part 1 is merged
        assert accum["status"] == "ok"
    else:
        assert accum["status"] == "skipped" and "not available in this checkout" in accum["result"]["reason"]
    printed = capsys.readouterr().out
    assert "on a GPU it would measure" in printed and "ViT-B-16, batch 256, bf16" in printed
    assert "1 x 512 vs 8 x 64" in printed and "Data-bound or compute-bound" in printed
    assert out.with_suffix(".md").read_text() in printed


def test_accumulation_runs_the_bench_flag_once_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the merge: the flag is found in --help, the command line is the agreed one, its JSON is kept."""
    fake = tmp_path / "fake_bench.py"
    fake.write_text("import json, sys\nargs = sys.argv[1:]\nout = args[args.index('--out') + 1]\n"
                    "json.dump({'argv': args, 'one_step': {'peak_memory_mb': 1.0}}, open(out, 'w'))\n")
    monkeypatch.setattr(accumulation, "bench_help", lambda: "  --accum-compare  1 x B vs k x B/k\n")
    monkeypatch.setattr(accumulation, "BENCH_COMMAND", [sys.executable, str(fake)])
    result = accumulation.exact_accumulation_compare(SMOKE.accumulation, "cpu", "fp32", tmp_path / "work")
    assert result["status"] == "ok"
    argv = result["result"]["argv"]
    assert argv[0] == "--accum-compare" and argv[argv.index("--batch-size") + 1] == "8"
    assert argv[argv.index("--micro-batch") + 1] == "2" and argv[argv.index("--arch") + 1] == "TinyCLIP-test"


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_without_cuda_it_fails_fast_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "CUDA is not available" in error and "--smoke" in error
    assert not (tmp_path / "x.json").exists()
