"""Adding a method is one new file (docs/extending.md): a throwaway method module dropped into a copy of
the package is validated, trained through the CLI, and planned by a workflow dry run, nothing else changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The whole method: spec (uses λ, has its own options block), options model, class. Nothing else.
THROWAWAY = '''"""L2-SP (throwaway, tests only): FLYP + λ · scale · Σ‖θ − θ₀‖², pulling the student towards its start."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from stages.methods._base import Method, MethodContext, Progress
from stages.methods._spec import MethodSpec, register_method
from stages.strict import Strict
from stages.collectives import gather_batch
from stages.losses import ClipLoss


class L2spOptions(Strict):
    """L2-SP's coefficient."""

    scale: float = Field(1.0, ge=0, description="multiplies λ")


@register_method(MethodSpec(name="l2sp", display="L2-SP", summary="FLYP + λ·‖θ − θ₀‖²", uses_lambda=True,
                            options=L2spOptions))
class L2SP(Method):
    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.clip_loss = ClipLoss()
        self.start = [parameter.detach().clone() for parameter in self.student.parameters()]

    def training_step(self, batch: dict[str, Tensor], progress: Progress) -> dict[str, Tensor]:
        image, text = gather_batch(*self.clip_features(batch["image"], batch["label"]))
        distance = sum(((p - p0) ** 2).sum() for p, p0 in zip(self.student.parameters(), self.start))
        return {"clip": self.clip_loss(image, text, self.student.logit_scale.exp()),
                "l2sp": self.settings.lam * self.options.scale * distance}
'''


def _copy_with_throwaway_method(tmp_path: Path) -> Path:
    """A copy of the repository's package, workflow and configs, plus stages/methods/l2sp.py."""
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("stages", "workflow", "config", "descriptor_banks"):
        shutil.copytree(REPO / folder, copy / folder, ignore=ignore)
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    (copy / "stages" / "methods" / "l2sp.py").write_text(THROWAWAY)
    return copy


def _imagefolder(root: Path) -> None:
    """<root>/imagefolder/{train,test}/<class>/: 4 solid-colour images per class."""
    for split in ("train", "test"):
        for name, colour in (("red_square", (200, 30, 30)), ("blue_circle", (30, 30, 200))):
            folder = root / "imagefolder" / split / name
            folder.mkdir(parents=True)
            for index in range(4):
                Image.new("RGB", (32, 32), tuple(c + 5 * index for c in colour)).save(folder / f"{index}.png")


def _run(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(copy)}
    return subprocess.run([sys.executable, *args], cwd=copy, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)


def test_a_new_method_is_one_file_through_the_cli_and_the_workflow(tmp_path: Path) -> None:
    copy = _copy_with_throwaway_method(tmp_path)
    _imagefolder(tmp_path / "data")

    # 1. The training CLI: its options block validates, it trains, logs its term and records itself.
    config = {"model": {"name": "TinyCLIP-test", "pretrained": "none"}, "method": "l2sp", "lam": 0.5,
              "options": {"l2sp": {"scale": 2.0}},
              "data": {"train_set": "imagefolder", "data_root": str(tmp_path / "data"), "workers": 0},
              "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": 4}, "tracking": []}
    (tmp_path / "l2sp.yaml").write_text(yaml.safe_dump(config))
    trained = _run(copy, "-m", "stages.training", "--config", str(tmp_path / "l2sp.yaml"), "--out",
                   str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stdout
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert rows and all("loss_l2sp" in row and "loss_clip" in row for row in rows)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["method"] == "l2sp" and record["config"]["options"]["l2sp"] == {"scale": 2.0}
    typo = _run(copy, "-m", "stages.training", "--config", str(tmp_path / "l2sp.yaml"), "--out",
                str(tmp_path / "typo"), "--set", "options.l2sp.scael=1")
    assert typo.returncode == 2 and "l2sp.scael" in typo.stdout

    # 2. A workflow dry run plans it over a λ sweep (its λ slot in the run dirs), beside zero-shot.
    workflow = yaml.safe_load((copy / "config" / "imagefolder.yaml").read_text())
    workflow.update(results=str(tmp_path / "results"), data_root=str(tmp_path / "data"),
                    archs={"TinyCLIP-test": "none"}, options={"l2sp": {"scale": 0.5}})
    table = workflow["tables"][1]
    table.update(methods=["zeroshot", "l2sp"], lams=[0.1, 1.0])
    workflow["train_sets"]["imagefolder"].update(val_split=None, select="last")
    table["columns"] = [column for column in table["columns"] if column["label"] == "Test"]
    table.update(rows=["method", "lam"], alphas=[], id_column=None)
    (tmp_path / "workflow.yaml").write_text(yaml.safe_dump(workflow))
    dry = _run(copy, "-m", "snakemake", "-n", "--configfile", str(tmp_path / "workflow.yaml"), "--",
               str(tmp_path / "results" / "table1.md"))
    assert dry.returncode == 0, dry.stdout
    for lam in ("lam0.1", "lam1"):
        assert f"imagefolder/l2sp/-/-/{lam}/seed0/best.pt" in dry.stdout
    jobs = dict(re.findall(r"^(train|evaluate|report)\s+(\d+)$", dry.stdout, flags=re.MULTILINE))
    assert jobs == {"train": "2", "evaluate": "3", "report": "1"}  # zero-shot is evaluated, never trained
