"""The snakemake workflow: the paper grid's dry run, lint, schema, config errors, a tiny real run."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from stages import plan
from stages.config import ConfigError, TrainConfig, validate_workflow_config, workflow_schema
from stages.methods import _spec, method_names
from stages.reports.tables import build_table, markdown
from stages.rundir import OPTIONS_MARK, PATTERN, SLOTS, RunDir, run_slots
from stages.strict import Strict

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run snakemake in the repository root; stdout and stderr together."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*SNAKEMAKE, *args], cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run: rule -> job count."""
    stats = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in stats:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def test_schema_in_sync() -> None:
    stored = json.loads((REPO / "workflow/schemas/config.schema.json").read_text())
    assert stored == workflow_schema(), (
        "workflow/schemas/config.schema.json is stale; regenerate it with\n"
        "python -c \"import json; from stages.config import workflow_schema; "
        "print(json.dumps(workflow_schema(), indent=2, sort_keys=True))\" > workflow/schemas/config.schema.json"
    )


def test_paper_table2_dry_run_plans_the_grid(tmp_path: Path) -> None:
    result = snakemake("-n", "-q", "rules", "--configfile", "config/paper.yaml", "--config", f"results={tmp_path}",
                       "--", f"{tmp_path}/table2.md")
    assert result.returncode == 0, result.stdout
    # 2 archs x 6 trained methods x 3 seeds, plus zero-shot per arch: one evaluation job per run
    # (its 5 benchmarks in one process).
    assert job_counts(result.stdout) == {"train": 36, "run_config": 36, "evaluate": 38,
                                         "workflow_config": 1, "report": 1, "total": 112}


def test_paper_evaluations_share_the_decoded_crop_cache(tmp_path: Path) -> None:
    result = snakemake("-n", "-p", "--configfile", "config/paper.yaml", "--config", f"results={tmp_path}",
                       "--", f"{tmp_path}/table8.md")
    assert result.returncode == 0, result.stdout
    commands = [line for line in result.stdout.splitlines() if "-m stages.evaluation" in line]
    assert len(commands) == job_counts(result.stdout)["evaluate"] == 19  # 6 methods x 3 seeds + zero-shot
    # Each trained run's job sweeps the 11 WiSE-FT alphas on the 5 benchmarks (55 requests + 5 plain).
    assert sum(" imagenet-r@alpha0.3 " in line for line in commands) == 18
    assert all("--image-cache cache/eval_crops" in line for line in commands)


def test_paper_all_tables_dry_run_plans_the_grid(tmp_path: Path) -> None:
    result = snakemake("-n", "-q", "rules", "--configfile", "config/paper.yaml", "--config", f"results={tmp_path}")
    assert result.returncode == 0, result.stdout
    # Unique runs (ViT-B-16 unless noted, 3 seeds): Table 2 36 (B and L), Table 5 5 new train
    # sets x 6 methods x 3 = 90, Table 6 5 new variants x 3 = 15, Table 7 3 new concepts x 3 = 9,
    # Table 9 mask off x 3 = 3, Table 10 2 new λ x 3 = 6, Table 12 the Llama bank x 3 = 3.
    train = 36 + 90 + 15 + 9 + 3 + 6 + 3
    # One evaluation job per run (all its benchmarks and WiSE-FT alphas): the trained runs and the
    # zero-shot runs (ViT-B-16 on the 6 train sets, ViT-L-14 on ImageNet).
    evaluate = train + 7
    assert job_counts(result.stdout) == {
        "descriptor_bank": 1, "train": train, "run_config": train, "evaluate": evaluate, "all_results": 1,
        "workflow_config": 1, "report": 12, "figure": 4, "all": 1, "bank_compare": 1,
        "total": 2 * train + evaluate + 21,
    }  # report 12: Tables 2-12 and 31 (calibration); bank_compare: the Llama bank vs the official one (Table 12)
    assert train + evaluate <= 350  # the paper grid's compute jobs (1,779 with one job per benchmark and α)


# By design (docs/workflow.md, "Lint"): rules run in the environment snakemake runs in, so none declares one.
NO_SOFTWARE_LINT = "Specify a conda environment or container for each rule."


def test_lint_clean_but_for_rule_environments() -> None:
    result = snakemake("--lint")
    bullets = re.findall(r"^\s+\* (.+):$", result.stdout, flags=re.MULTILINE)
    assert set(bullets) == {NO_SOFTWARE_LINT}, result.stdout
    assert len(bullets) == result.stdout.count("Lints for rule "), result.stdout  # that lint alone, rule by rule


@pytest.mark.parametrize(("edit", "key"), [
    (lambda c: c["tables"][2].__setitem__("methods", ["zeroshot", "magic"]), "tables.2.methods.1"),
    (lambda c: c["tables"][2].__setitem__("lams", [-0.5]), "tables.2.lams.0"),
    (lambda c: c["banks"]["official-code"].__setitem__("path", "descriptor_banks/missing.json"), "banks.official-code"),
    (lambda c: c["tables"][2]["columns"][0].__setitem__("benchmark", "imagenet-z"), "tables.2.columns.0.benchmark"),
    (lambda c: c.__setitem__("learning_rate", 1.0), "learning_rate"),
    # A table's options sweep: each entry's problem named down to the key, with the reason.
    (lambda c: c["tables"][2].__setitem__("options", [{}, {"carot": {"distil": 1.0}}]),
     "tables.2.options[1].carot.distil: Extra inputs are not permitted"),
    (lambda c: c["tables"][2].__setitem__("options", [{"carot": {"distill": -1}}]),
     "tables.2.options[0].carot.distill: Input should be greater than or equal to 0"),
    (lambda c: c["tables"][2].__setitem__("options", [{"carot": {"ema_every": "often"}}]),
     "tables.2.options[0].carot.ema_every: Input should be a valid integer"),
    (lambda c: c["tables"][2].__setitem__("options", [{"magic": {"weight": 1}}]),
     "tables.2.options[0].magic: not one of this table's methods"),
    (lambda c: c["tables"][2].__setitem__("options", [{"starft": {"weight": 1}}]),
     "tables.2.options[0].starft: not a method with options; those are ['carft', "),
    (lambda c: c["tables"][10].__setitem__("options", [{"carot": {"distill": 1.0}}]),
     "tables.10.options[0].carot: not one of this table's methods ['starft']"),
])
def test_bad_config_names_the_key(edit, key: str) -> None:
    config = load("config.yaml")
    edit(config)
    with pytest.raises(ConfigError, match=re.escape(key)):
        plan.check_references(validate_workflow_config(config), generated_banks=True)


def _options_sweep(config: dict, number: int, methods: list[str], options: list[dict]) -> dict:
    """`config` with table `number` sweeping `options` over `methods`, its rows labelled by method and options
    (without the config's claims, which compare one run per method and seed of the tables as they were)."""
    config = copy.deepcopy(config)
    config["tables"][number].update(methods=methods, options=options, rows=["method", "options"])
    config.pop("claims", None)
    return config


def test_table_options_sweep_trains_each_value_in_its_own_run_dir() -> None:
    base = load("config.yaml")
    base["seeds"] = [0, 1]
    swept = validate_workflow_config(_options_sweep(base, 2, ["zeroshot", "flyp", "carot"],
                                                    [{"carot": {"distill": 0.5}}, {"carot": {"distill": 1.0}}]))
    planned = plan.runs_by_dir(swept)  # run dir -> config: what the workflow maps a job's wildcards back to
    carot = {str(RunDir.of(run, swept.results).path): run for run in plan.table_runs(swept, 2) if run.method == "carot"}
    assert all(planned[path] == run for path, run in carot.items())
    # 2 values x 2 seeds: 4 run dirs, each with its value in its config and its train.yaml.
    variants = {(Path(path).parts[-4], run.seed): run.options["carot"].distill for path, run in carot.items()}
    assert variants == {("opts_distill-0.5", 0): 0.5, ("opts_distill-0.5", 1): 0.5,
                        ("opts_distill-1", 0): 1.0, ("opts_distill-1", 1): 1.0}
    assert all(f"distill: {run.options['carot'].distill}" in plan.run_yaml(run) for run in carot.values())
    # Rows: one per swept value; the methods the sweep does not name have one row with the workflow's options.
    rows = {cell.row for cell in plan.table_cells(swept, 2)}
    assert rows == {("zeroshot", "-"), ("flyp", "-"), ("carot", "distill=0.5"), ("carot", "distill=1")}
    recorded = validate_workflow_config(yaml.safe_load(yaml.safe_dump(plan.report_config(swept))))
    assert recorded.tables[2].options == swept.tables[2].options  # what the reports read back
    text = markdown(build_table(swept, 2))  # no metrics yet: every value missing, the rows labelled
    assert "| method | options |" in text and "| CaRot | distill=0.5 |" in text and "| CaRot | distill=1 |" in text

    # Adding the sweep only adds run dirs: every run of the config without it is still planned, the same run.
    unswept = plan.runs_by_dir(validate_workflow_config(base))
    assert all(planned[path] == run for path, run in unswept.items())
    assert all(OPTIONS_MARK in Path(path).parts[-4] for path in set(planned) - set(unswept))
    # An entry that sets the workflow's own value is the unswept run, in the unswept run dir.
    same = validate_workflow_config(_options_sweep(base, 2, ["carot"], [{}, {"carot": {"distill": 1.5}}]))
    assert plan.runs_by_dir(same) == unswept


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_configs_without_an_options_sweep_keep_their_run_dirs(name: str) -> None:
    """No table of the shipped configs sweeps options: no run dir spells any, every one is the PATTERN of its
    slots, and the runs whose options are the method's defaults are the runs they were before sweeps existed."""
    config = validate_workflow_config(load(name), f"config/{name}")
    runs = plan.runs_by_dir(config)
    assert runs and all(run.swept_options == [] for run in runs.values())
    for path, run in runs.items():
        relative = Path(path).relative_to(config.results / "runs")
        assert OPTIONS_MARK not in run_slots(run)["variant"].split("_"), path
        assert len(relative.parts) == len(SLOTS) and str(relative) == PATTERN.format(**run_slots(run))
        assert RunDir.at(config.results, dict(zip(SLOTS, relative.parts))).path == Path(path)
        assert "swept_options" not in plan.run_yaml(run)  # train.yaml: the text it had
    # workflow_config.yaml (what the report rules record) as well: no rebuilt report.
    assert all("options" not in table for table in plan.report_config(config)["tables"].values())


class ScaleOptions(Strict):
    """The options of a method that exists in one test only (spurious captions and options: no shipped one has both)."""

    scale: float = Field(1.0, ge=0)
    frozen: bool = False


def test_options_and_spurious_variants_share_the_variant_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method with spurious captions and an options block: its variant spells both, switches first."""
    method_names()  # the registry discovered before one spec joins it for this test
    monkeypatch.setitem(_spec._SPECS, "starft_scaled", _spec.MethodSpec(
        name="starft_scaled", display="StarFT scaled", summary="test only", uses_spurious=True, options=ScaleOptions))
    run = TrainConfig(method="starft_scaled", options={"starft_scaled": {"scale": 0.25, "frozen": True}},
                      swept_options=["frozen", "scale"])
    assert run_slots(run)["variant"] == "suffix-spurious_mask-on_decay-epoch_opts_scale-0.25_frozen-on"
    unswept = run.model_copy(update={"swept_options": []})
    assert run_slots(unswept)["variant"] == "suffix-spurious_mask-on_decay-epoch"
    with pytest.raises(ValueError, match=re.escape("swept_options: ['scal'] are not options of starft_scaled")):
        TrainConfig(method="starft_scaled", swept_options=["scal"])


def test_options_sweep_dry_run_plans_one_train_job_per_value_and_seed(tmp_path: Path) -> None:
    """tests/configs/demo-tiny.yaml with Table 2 sweeping CaRot's distill over two seeds: snakemake -n plans
    4 CaRot train jobs in 4 run dirs (each train.yaml with its value) beside FLYP's 2; stages.plan plans them too."""
    config = yaml.safe_load((REPO / "tests" / "configs" / "demo-tiny.yaml").read_text())
    results = tmp_path / "results"
    config.update(results=str(results), data_root=str(results / "demo/data"), seeds=[0, 1],
                  archs={"TinyCLIP-demo": str(results / "demo/TinyCLIP-demo.pt")})
    config["demo"]["weights"] = str(results / "demo/TinyCLIP-demo.pt")
    del config["tables"][3]
    config = _options_sweep(config, 2, ["zeroshot", "flyp", "carot"],
                            [{"carot": {"distill": 0.5}}, {"carot": {"distill": 1.0}}])
    path = tmp_path / "swept.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "-p", "--configfile", str(path), "--", f"{results}/table2.md")
    assert result.returncode == 0, result.stdout
    counts = job_counts(result.stdout)
    assert (counts["train"], counts["run_config"], counts["evaluate"]) == (6, 6, 7)
    trained = set(re.findall(r"output: \S+/fmnist-demo/(\S+)/best\.pt", result.stdout))
    assert trained == {f"{method}/{variant}/-/-/seed{seed}" for seed in (0, 1)
                       for method, variant in (("flyp", "-"), ("carot", "opts_distill-0.5"), ("carot", "opts_distill-1"))}
    assert result.stdout.count("distill: 0.5") == result.stdout.count("distill: 1.0") == 3  # 2 train.yaml + report's

    done = subprocess.run([sys.executable, "-m", "stages.plan", "--config", str(path)], cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0 and "7 runs (6 trained" in done.stdout, done.stdout


def test_bad_config_stops_snakemake_before_any_job(tmp_path: Path) -> None:
    config = load("config.yaml")
    config["tables"][2]["methods"] = ["magic"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "1", "--configfile", str(path), "--config", f"results={tmp_path}/results")
    assert result.returncode != 0
    assert "tables.2.methods.0" in result.stdout and "nothing was run" in result.stdout
    assert not (tmp_path / "results").exists()


def test_missing_data_root_stops_before_any_job(tmp_path: Path) -> None:
    result = snakemake("--cores", "1", "--configfile", "config/paper.yaml", "--config",
                       f"results={tmp_path}/results", f"data_root={tmp_path}/nodata", "--", f"{tmp_path}/results/table3.md")
    assert result.returncode != 0
    assert "data_root: imagenet" in result.stdout and "Needed by train_sets.imagenet" in result.stdout
    assert not (tmp_path / "results").exists()


def test_own_data_config_runs_end_to_end_on_a_folder_tree(tmp_path: Path) -> None:
    """config/imagefolder.yaml, shrunk to the tiny model on CPU, over a fake imagefolder/ tree."""
    import fakes

    for split, per_class in (("train", 4), ("val", 2), ("test", 2)):
        for label, folder in enumerate(["red_square", "green_circle", "blue_triangle"]):
            for n in range(per_class):
                fakes.image(tmp_path / "data" / "imagefolder" / split / folder / f"{n}.jpg", 80 * label + n)
    config = yaml.safe_load((REPO / "config/imagefolder.yaml").read_text())
    config.update(results=str(tmp_path / "results"), data_root=str(tmp_path / "data"), archs={"TinyCLIP-test": "none"},
                  device="cpu", workers=0, eval_image_cache=str(tmp_path / "crops"), eval_batch_size=8,
                  resources={"train": {"gpu": 0, "mem_mb": 1000, "runtime": 10, "threads": 1},
                             "evaluate": {"gpu": 0, "mem_mb": 1000, "runtime": 10, "threads": 1}})
    config["train_sets"]["imagefolder"]["optim"] = {"lr": 1e-3, "warmup_steps": 1, "epochs": 2, "batch_size": 4,
                                                    "max_steps_per_epoch": 1}
    config["tables"][1].update(methods=["zeroshot", "flyp"], alphas=[0.0, 1.0])
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "-q", "--configfile", str(tmp_path / "own.yaml"), "--",
                       f"{tmp_path}/results/table1.md", timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    table = (tmp_path / "results" / "table1.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "method" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["Zeroshot", "FLYP", "FLYP"], table
    assert all(len(re.findall(r"\| \d+\.\d\d (?=\|)", row)) == 2 for row in rows), table  # one seed: no "± 0.00"
    assert len(list((tmp_path / "crops").glob("imagefolder-*.npy"))) == 2  # val and test, decoded once each


def test_disk_plan_of_the_paper_grid() -> None:
    """`python -m stages.plan` plans the runs `snakemake -n` plans, with open_clip's parameter counts."""
    # The formula's counts are open_clip's own: the models built on the meta device (shapes only).
    # ViT-B-16's 149,620,737 is open_clip's published 149.62 M (docs/model_profile.csv).
    for name in ("ViT-B-16", "ViT-L-14", "TinyCLIP-test"):
        assert plan.clip_parameters(plan.model_config(name)) == plan.meta_parameters(name), name
    b16 = plan.model_parameters("ViT-B-16")
    assert b16.total == 149_620_737 and b16.visual == 86_192_640

    config = validate_workflow_config(load("paper.yaml"), "config/paper.yaml")
    runs = plan.disk_plan(config)
    trained = [item for item in runs if item.final]
    # The grid of test_paper_all_tables_dry_run_plans_the_grid: 162 trained runs, 7 zero-shot (no copy).
    assert (len(runs), len(trained)) == (162 + 7, 162)
    assert all(item.peak == item.final == 0 for item in runs if item.run.method == "zeroshot")
    flyp = next(item for item in runs if item.run.method == "flyp" and item.run.model.name == "ViT-B-16")
    # best.pt: one fp32 copy; peak: + one resumable checkpoint (weights + 2 AdamW moments) + the one being written.
    assert flyp.final == 4 * b16.total and flyp.peak == 4 * b16.total + 2 * 4 * 3 * b16.total
    carot = next(item for item in runs if item.run.method == "carot" and item.run.model.name == "ViT-B-16")
    assert carot.peak == flyp.peak + 2 * 4 * b16.total  # its EMA teacher rides in the checkpoint
    bf16 = plan.run_disk(flyp.run.model_copy(update={"save_dtype": "bf16"}), b16, None)
    assert bf16.final == 2 * b16.total

    done = subprocess.run([sys.executable, "-m", "stages.plan", "--config", "config/paper.yaml", "--jobs", "50"],
                          cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == 0, done.stdout
    assert "169 runs (162 trained" in done.stdout and "peak with 50 training job(s) at once" in done.stdout, done.stdout
    final = sum(item.final for item in runs)
    assert f"final (all runs finished): {final / 1e9:.1f} GB" in done.stdout, done.stdout


def test_signal_lead_must_leave_training_time() -> None:
    config = load("config.yaml")
    config["resources"]["train"].update(runtime=5, signal_lead_s=300)
    with pytest.raises(ConfigError, match=r"train\.signal_lead_s \(300 s\) must be shorter than train\.runtime"):
        validate_workflow_config(config)


# A changed value for every execution setting (stages.config.EXECUTION_FIELDS, and the workflow's own).
EXECUTION_CHANGES = {
    "device": "cpu", "compile": True, "checkpoint_every": 7, "checkpoint_minutes": 5.0, "keep_checkpoints": True,
    "max_nonfinite_steps": 3, "lock_wait_s": 9.0, "tracking": ["tensorboard", "wandb"], "grad_checkpointing": True,
    "log_every": 7, "data.workers": 1, "data.data_root": None, "data.check": "decode",
    "workers": 1, "eval_batch_size": 8, "eval_image_cache": "elsewhere/crops", "resources": {"retries": 3},
}


def _with_execution_change(config: dict, dotted: str, value: object) -> dict:
    """`config` with one execution setting changed (``data.*`` ones in every train set)."""
    config = json.loads(json.dumps(config))
    if dotted == "data.data_root":  # where the data lies is the workflow's data_root; Grad-CAM reads it, so it stays
        return config
    if dotted.startswith("data."):
        key = dotted.split(".", 1)[1]
        if key == "workers":
            return config  # the workflow's `workers`, set for every run
        for spec in config["train_sets"].values():
            spec[key] = value
        return config
    config[dotted] = value
    return config


@pytest.mark.parametrize("dotted", list(EXECUTION_CHANGES))
def test_execution_settings_rebuild_no_report(dotted: str) -> None:
    """What the report rules record (workflow_config's params: plan.report_config) and what every run and
    evaluation job records (train.yaml, requests) ignore execution settings: none rebuilds a table."""
    from stages.config import EXECUTION_FIELDS

    assert set(EXECUTION_FIELDS) | set(plan.WORKFLOW_EXECUTION) <= set(EXECUTION_CHANGES)  # a new one is tested here
    base = validate_workflow_config(load("config.yaml"))
    changed = validate_workflow_config(_with_execution_change(load("config.yaml"), dotted, EXECUTION_CHANGES[dotted]))
    assert plan.report_config(changed) == plan.report_config(base)
    assert yaml.safe_dump(plan.report_config(changed), sort_keys=False) == yaml.safe_dump(plan.report_config(base),
                                                                                          sort_keys=False)
    assert {path: plan.run_yaml(run) for path, run in plan.runs_by_dir(changed).items()} == \
        {path: plan.run_yaml(run) for path, run in plan.runs_by_dir(base).items()}
    assert plan.eval_requests(changed) == plan.eval_requests(base)


def test_a_result_setting_does_rebuild_reports() -> None:
    config = load("config.yaml")
    config["seeds"] = [0, 1, 2, 3]
    assert plan.report_config(validate_workflow_config(config)) != plan.report_config(
        validate_workflow_config(load("config.yaml")))


def test_the_report_rules_record_plan_report_config() -> None:
    """workflow_config (the one rule whose params carry the config into reports) writes plan.report_config."""
    common = (REPO / "workflow/rules/common.smk").read_text()
    body = common[common.index("def workflow_yaml"):].split("\ndef ", 1)[0]
    assert "plan.report_config(WF)" in body
