"""Export to open_clip's Hub format: plain open_clip loads it with the run's features; push to a stand-in Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from huggingface_hub import ModelCard

from conftest import tiny_config
from hub_server import HubServer
from stages.evaluation.run import load_run
from stages.export import CONFIG, HEAD, HEAD_CLASSES, WEIGHTS, export_run
from stages.rundir import RunDir
from stages.training.loop import train

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter that never imports stages: the export alone must describe the model.
PLAIN_OPEN_CLIP = """
import sys, torch, open_clip
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
tokenizer = open_clip.get_tokenizer("local-dir:" + sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
model.eval()
with torch.no_grad():
    out = {"image": model.encode_image(inputs["images"]), "text": model.encode_text(tokenizer(inputs["texts"]))}
assert not any(name == "stages" or name.startswith("stages.") for name in sys.modules), "stages was imported"
torch.save(out, sys.argv[3])
"""


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny FT run (a head method) with one metrics JSON in its eval folder."""
    run = tmp_path_factory.mktemp("ft") / "run"
    train(tiny_config("ft", keep_checkpoints=True), run)  # ckpt/ kept: every file is loaded below
    (run / "eval").mkdir()
    (run / "eval" / "imagefolder-test.json").write_text(json.dumps({"benchmark": "imagefolder-test", "n": 16,
                                                                    "metrics": {"top1": 0.8125}}))
    return run


def _plain_open_clip_features(folder: Path, tmp_path: Path, images: torch.Tensor, texts: list[str]) -> dict:
    torch.save({"images": images, "texts": texts}, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", PLAIN_OPEN_CLIP, str(folder), str(tmp_path / "inputs.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path, env=env, timeout=120)
    return torch.load(tmp_path / "out.pt", weights_only=True)


def test_plain_open_clip_loads_the_export_with_the_runs_features(ft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    written = export_run(ft_run, out)
    assert {p.name for p in written} >= {WEIGHTS, CONFIG, "README.md", HEAD, HEAD_CLASSES}
    trained = RunDir(ft_run).load_model()
    model = trained.bundle.model.eval()
    torch.manual_seed(0)
    images, texts = torch.randn(3, 3, 32, 32), ["a photo of a red square.", "a blue triangle"]
    with torch.no_grad():
        ours = {"image": model.encode_image(images), "text": model.encode_text(trained.bundle.tokenizer(texts))}
    theirs = _plain_open_clip_features(out, tmp_path, images, texts)
    for key in ("image", "text"):
        assert torch.equal(theirs[key], ours[key]), key
    head = safetensors.torch.load_file(out / HEAD)["weight"]
    assert torch.equal(head, trained.head_weight) and json.loads((out / HEAD_CLASSES).read_text()) == trained.head_classnames
    config = json.loads((out / CONFIG).read_text())
    assert set(config) == {"model_cfg", "preprocess_cfg"} and "vision_cfg" in config["model_cfg"]
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "open_clip" and card.data.datasets == ["imagefolder"]
    assert card.data.metrics == ["top1"] and "81.25" in card.text and "StarFT" in card.text


def test_alpha_exports_the_wise_ft_interpolation(ft_run: Path, tmp_path: Path) -> None:
    export_run(ft_run, tmp_path / "wise", alpha=0.5)
    saved = safetensors.torch.load_file(tmp_path / "wise" / WEIGHTS)
    expected = load_run(ft_run, alpha=0.5)
    state = expected.bundle.model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    finetuned = RunDir(ft_run).load_model().bundle.model.state_dict()
    assert any(not torch.equal(saved[k], finetuned[k]) for k in saved if saved[k].is_floating_point())
    head = safetensors.torch.load_file(tmp_path / "wise" / HEAD)["weight"]
    assert torch.equal(head, expected.head_weight)
    assert not (tmp_path / "wise" / "README.md").read_text().count("81.25")  # eval/ holds no @alpha0.5 results


def test_push_uploads_every_file_to_the_hub_endpoint(ft_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": str(REPO)}
    with HubServer() as hub:
        env["HF_ENDPOINT"] = hub.url
        result = subprocess.run([sys.executable, "-m", "stages.export", "--run-dir", str(ft_run), "--out",
                                 str(tmp_path / "export"), "--push-to", "me/tiny-ft"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert hub.created == ["me/tiny-ft"] and "library_name: open_clip" in hub.validated_yaml
    assert set(hub.committed) == {WEIGHTS, CONFIG, "README.md", HEAD, HEAD_CLASSES, "export.json"}
    assert hub.committed[WEIGHTS] == (tmp_path / "export" / WEIGHTS).read_bytes()


def test_push_refuses_offline_mode_with_one_line(ft_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "stages.export", "--run-dir", str(ft_run), "--out",
                             str(tmp_path / "export"), "--push-to", "me/tiny-ft"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 2 and "HF_HUB_OFFLINE" in result.stderr


def test_every_file_of_a_run_dir_loads_with_weights_only(ft_run: Path, tmp_path: Path) -> None:
    checkpoints = sorted(ft_run.rglob("*.pt"))
    assert {p.relative_to(ft_run).as_posix() for p in checkpoints} >= {"best.pt", "ckpt/last.pt"}
    for path in checkpoints:
        torch.load(path, map_location="cpu", weights_only=True)
    rng = torch.load(ft_run / "ckpt" / "last.pt", weights_only=True)["rng"]
    assert rng["numpy"]["keys"].dtype == torch.int64 and rng["numpy"]["kind"] == "MT19937"
