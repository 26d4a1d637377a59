"""Section 3: one tiny run through the command-line entry points, as the workflow runs them.

A workflow config (colour imagefolder, one method, one table) is planned with ``stages.plan`` (the
Snakefile's own functions); its run is trained with ``torchrun --standalone --nproc_per_node 1 -m
stages.training`` (NCCL on CUDA, gloo on CPU) at the preset's precision, evaluated with ``python -m
stages.evaluation --requests`` and tabulated with ``python -m stages.reports --table 1``. Every
command's return code, wall time and log tail are kept, and the files each one must leave behind
are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import stages
from stages import plan
from stages.config import validate_workflow_config
from stages.data.synthetic import colour_folder
from stages.rundir import RunDir
from stages.training.gpucheck.settings import EndToEndSettings

REPO = Path(stages.__file__).resolve().parents[1]
BANK = REPO / "descriptor_banks" / "official-code.json"


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """The environment of the CLIs: this checkout first on PYTHONPATH, offline hub."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_command(command: list[str], log: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one CLI with its output in `log`; its return code (124: timed out), wall time and log tail."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        try:
            returncode = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                        timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            returncode = 124
    return {"command": " ".join(command), "returncode": returncode, "wall_s": time.perf_counter() - started,
            "log": str(log), "log_tail": log.read_text(errors="replace")[-1500:]}


def workflow_config(settings: EndToEndSettings, work: Path, device: str, precision: str) -> dict[str, Any]:
    """The tiny workflow: ``settings.method`` on the colour imagefolder, scored on imagefolder-test."""
    return {
        "results": str(work / "results"), "data_root": str(work / "data"),
        "archs": {settings.arch: "none"}, "seeds": [0],
        "banks": {"official-code": {"path": str(BANK), "label": "official background bank"}},
        "train_sets": {"imagefolder": {
            "val_split": "val", "select": "val", "caption_template": "a photo of a {c}.",
            "head_templates": ["a photo of a {c}.", "a drawing of a {c}."], "lam": 1.0,
            "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": settings.batch_size,
                      "max_steps_per_epoch": settings.steps},
        }},
        "precision": precision, "device": device, "workers": settings.workers,
        "eval_batch_size": settings.eval_batch_size, "checkpoint_every": 1,
        "tables": {1: {"title": "GPU check: tiny end-to-end run", "train_sets": ["imagefolder"],
                       "methods": [settings.method],
                       "variants": [{"decay": "step"}],  # one epoch: the per-epoch decay would zero λ
                       "columns": [{"label": "Test", "benchmark": "imagefolder-test"}],
                       "paper": False}},
    }


def run_end_to_end(settings: EndToEndSettings, work: Path, device: str, precision: str,
                   timeout_s: float = 240.0) -> dict[str, Any]:
    """Train, evaluate, tabulate; ``status`` ok when every command exits 0 and left its files."""
    work.mkdir(parents=True, exist_ok=True)
    colour_folder(work / "data", dict(settings.counts))
    raw = workflow_config(settings, work, device, precision)
    config_path = work / "workflow.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = validate_workflow_config(raw, str(config_path))
    (run,) = plan.table_runs(config, 1)
    run_dir = RunDir.of(run, config.results)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.train_yaml.write_text(plan.run_yaml(run))
    requests = plan.eval_requests(config)[str(run_dir.path)]
    env = subprocess_env(threads=1 if device == "cpu" else None)
    python = sys.executable
    overrides = [item for pair in plan.execution_overrides(run) for item in ("--set", pair)]
    commands = {
        "train": [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                  "stages.training", "--config", str(run_dir.train_yaml), "--out", str(run_dir.path), *overrides],
        "evaluate": [python, "-m", "stages.evaluation", "--run-dir", str(run_dir.path), "--eval-dir",
                     str(run_dir.eval_dir), "--requests", *requests, "--data-root", str(config.data_root),
                     "--batch-size", str(settings.eval_batch_size), "--workers", str(settings.workers),
                     "--device", device],
        "report": [python, "-m", "stages.reports", "--config", str(config_path), "--table", "1",
                   "--out-dir", str(work / "tables")],
    }
    expected = {
        "train": [run_dir.best, run_dir.record_path, run_dir.log],
        "evaluate": [run_dir.eval_index, *(run_dir.metrics(request) for request in requests)],
        "report": [work / "tables" / "table1.md", work / "tables" / "table1.csv"],
    }
    stages_run: dict[str, Any] = {}
    status = "ok"
    for name, command in commands.items():
        outcome = run_command(command, work / f"{name}.log", timeout_s, env)
        outcome["missing_outputs"] = [str(path) for path in expected[name] if not path.exists()]
        outcome["ok"] = outcome["returncode"] == 0 and not outcome["missing_outputs"]
        stages_run[name] = outcome
        if not outcome["ok"]:
            status = "failed"
            break  # the next command needs this one's files
    facts: dict[str, Any] = {}
    if stages_run["train"]["ok"]:
        record = json.loads(run_dir.record_path.read_text())
        log_rows = [json.loads(line) for line in run_dir.log.read_text().splitlines() if line.strip()]
        facts["train"] = {"device": record.get("device"), "world_size": record.get("world_size"),
                          "precision": run.precision, "total_steps": record.get("total_steps"),
                          "log_rows": len(log_rows),
                          "last_loss": next((row["loss"] for row in reversed(log_rows) if "loss" in row), None)}
    if stages_run.get("evaluate", {}).get("ok"):
        metrics = json.loads(run_dir.metrics(requests[0]).read_text())
        facts["evaluate"] = {"request": requests[0], "n": metrics.get("n"), "metrics": metrics.get("metrics"),
                             "images_per_s": metrics.get("images_per_s")}
    if stages_run.get("report", {}).get("ok"):
        facts["report"] = {"table": str(work / "tables" / "table1.md"),
                           "markdown": (work / "tables" / "table1.md").read_text()}
    return {"status": status, "work_dir": str(work), "run_dir": str(run_dir.path), "method": settings.method,
            "arch": settings.arch, "device": device, "precision": precision, "commands": stages_run, "facts": facts}
