"""One error path for every command (stages.cli): a bad input is one stderr line naming it and the fix, exit 2.

Each case feeds one CLI what a new user gets wrong and checks: exit status 2, exactly one line on
stderr, starting ``error:``, naming the file or setting and saying the fix, no traceback. The
commands run in-process through their ``main(argv)`` (the wrapper is part of it); the traceback
check of a real process is the one subprocess case at the end.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
BROKEN_YAML = "optim:\n  lr: [0.001\nseed: 1\n"


@dataclass
class Case:
    module: str
    """The ``python -m`` module whose ``main`` runs."""
    argv: Callable[[Path], list[str]]
    names: Callable[[Path], list[str]]
    """What the line must contain: the file or setting, and the fix."""
    setup: Callable[[Path, pytest.MonkeyPatch], None] = lambda tmp, monkeypatch: None


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _finished_run_with_a_broken_record(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp / "c.yaml", yaml.safe_dump(tiny_config("flyp", optim__epochs=1).model_dump(mode="json")))
    _write(tmp / "run" / "best.pt", "weights")
    _write(tmp / "run" / "run.json", "{not json")


def _wandb_config(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as where it is not installed
    _write(tmp / "c.yaml", yaml.safe_dump(tiny_config("flyp", optim__epochs=1, tracking=["wandb"])
                                          .model_dump(mode="json")))


def _no_hub_token(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


CASES = {
    "training-yaml-syntax": Case(
        "stages.training", lambda t: ["--config", str(_write(t / "c.yaml", BROKEN_YAML)), "--out", str(t / "run")],
        lambda t: [f"training config {t / 'c.yaml'} is not valid YAML", "line 3", "fix the syntax"]),
    "training-wandb-missing": Case(
        "stages.training", lambda t: ["--config", str(t / "c.yaml"), "--out", str(t / "run")],
        lambda t: ["tracking: wandb", "pip install wandb, or drop wandb from tracking"], _wandb_config),
    "training-record-not-json": Case(
        "stages.training", lambda t: ["--config", str(t / "c.yaml"), "--out", str(t / "run")],
        lambda t: [f"run record {t / 'run' / 'run.json'} is not valid JSON", "retrain the run (--force)"],
        _finished_run_with_a_broken_record),
    "training-set-value": Case(
        "stages.training", lambda t: ["--print-config", "--config", str(_write(t / "c.yaml", "seed: 1\n")),
                                      "--set", "optim.lr"],
        lambda t: ["--set expects key=value", "optim.lr"]),
    "evaluation-not-a-run": Case(
        "stages.evaluation", lambda t: ["--benchmark", "waterbirds", "--data-root", str(t), "--out", str(t / "m.json"),
                                        "--run-dir", str(t / "nowhere")],
        lambda t: [f"{t / 'nowhere' / 'run.json'} is missing", "python -m stages.training --config"]),
    "evaluation-bad-request": Case(
        "stages.evaluation", lambda t: ["--requests", "waterbirds@alphahalf", "--eval-dir", str(t), "--data-root",
                                        str(t), "--model", "TinyCLIP-test", "--pretrained", "none"],
        lambda t: ["request 'waterbirds@alphahalf'", "expected <benchmark>@alpha<α>"]),
    "descriptors-validate-not-a-bank": Case(
        "stages.descriptors", lambda t: ["validate", str(_write(t / "notes.json", '{"title": "my notes"}'))],
        lambda t: [f"{t / 'notes.json'} is not a descriptor bank", "python -m stages.descriptors generate"]),
    "descriptors-generate-no-model": Case(
        "stages.descriptors", lambda t: ["generate", "--backend", "transformers", "--concepts", "background",
                                         "--out", str(t / "b.json")],
        lambda t: ["--model is required for the transformers backend"]),
    "export-push-without-token": Case(
        "stages.export", lambda t: ["--run-dir", str(t / "run"), "--out", str(t / "export"), "--push-to", "me/tiny"],
        lambda t: ["no Hugging Face token found", "HF_TOKEN", "huggingface-cli login", "nothing was written"],
        _no_hub_token),
    "reports-yaml-syntax": Case(
        "stages.reports", lambda t: ["--config", str(_write(t / "w.yaml", BROKEN_YAML)), "--table", "2"],
        lambda t: [f"workflow config {t / 'w.yaml'} is not valid YAML", "fix the syntax"]),
    "data-check-missing-root": Case(
        "stages.data", lambda t: ["check", "--dataset", "imagefolder", "--data-root", str(t / "nowhere")],
        lambda t: [str(t / "nowhere")]),
    "data-prepare-all-without-config": Case(
        "stages.data", lambda t: ["prepare", "--all"], lambda t: ["--all needs --config CONFIG"]),
    "data-verify-missing-config": Case(
        "stages.data", lambda t: ["verify", "--all", "--config", str(t / "missing.yaml")],
        lambda t: [f"--config {t / 'missing.yaml'}"]),
    "demo-bad-size": Case(
        "stages.demo", lambda t: ["data", "--data-root", str(t), "--size", "train=many"],
        lambda t: ["--size 'train=many'", "expected SPLIT=N"]),
    "plan-yaml-syntax": Case(
        "stages.plan", lambda t: ["--config", str(_write(t / "w.yaml", BROKEN_YAML))],
        lambda t: [f"workflow config {t / 'w.yaml'} is not valid YAML"]),
    "bench-missing-bank": Case(
        "stages.training.bench.cli", lambda t: ["--arch", "TinyCLIP-test", "--bank", str(t / "nobank.json"),
                                                "--out", str(t / "b.json")],
        lambda t: [f"descriptor bank {t / 'nobank.json'} does not exist", "python -m stages.descriptors generate"]),
}
MAINS = {"stages.training": "stages.training.__main__", "stages.descriptors": "stages.descriptors.__main__",
         "stages.export": "stages.export.__main__", "stages.reports": "stages.reports.__main__",
         "stages.data": "stages.data.__main__", "stages.demo": "stages.demo.__main__",
         "stages.evaluation": "stages.evaluation.run"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    case.setup(tmp_path, monkeypatch)
    main = importlib.import_module(MAINS.get(case.module, case.module)).main
    status = main(case.argv(tmp_path))
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for expected in case.names(tmp_path):
        assert expected in lines[0], (expected, lines[0])
    if name == "export-push-without-token":
        assert not (tmp_path / "export").exists()  # refused before anything was written


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "stages.training", "--config", str(_write(tmp_path / "c.yaml",
                           BROKEN_YAML)), "--print-config"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: training config {tmp_path / 'c.yaml'} is not valid YAML: "
                                        "expected ',' or ']', but got ':' (line 3, column 5); fix the syntax "
                                        "(indentation, a missing ':' or an unclosed quote or bracket)"]
