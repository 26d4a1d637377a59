# StarFT pipeline: descriptor banks -> training runs -> metrics JSON -> results/tableN.{md,csv}.
#
#   snakemake --cores 8 results/table2.md                       # embedded default (config/config.yaml)
#   snakemake --configfile config/paper.yaml --profile workflow/profiles/slurm -- results/table2.md
#
# The config is validated by the pydantic models of stages.config before any job (a bad key stops
# the parse, naming it); datasets under data_root are verified against their manifests at parse time (a partial
# one stops even a dry run) and every needed one in onstart (dry runs skip it). See docs/workflow.md.

import os
import shlex
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from stages import plan
from stages.config import ConfigError, validate_workflow_config
from stages.rundir import PATTERN, EvalRequest, RunDir

min_version("9.0")

# Snakemake would merge the Snakefile's configfile with the command line's: load the default
# only when no --configfile is given.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


try:
    WF = validate_workflow_config(config, ", ".join(map(str, workflow.configfiles)) or "--config")
    # A bank file that is missing may come from the descriptor rule (descriptor_banks/<model>/v<N>.json).
    plan.check_references(WF, generated_banks=True)
except ConfigError as error:
    raise WorkflowError(f"{error}\nFix the config key named above; nothing was run.")
# Data readiness, before any job is planned (dry runs included): every dataset the config reads that is
# under data_root must verify against its manifest (cached; absent ones are onstart's, so -n plans anywhere).
if workflow.is_main_process:
    try:
        warning = plan.check_data_ready(WF, *plan.config_data(WF), present_only=True)
    except ConfigError as error:
        raise WorkflowError(f"{error}\nNothing was run.")
    if warning:
        print(warning, file=sys.stderr)

# Rules call `python`: the interpreter running snakemake, whatever path started it (`snakemake`,
# `python -m snakemake`, a symlinked venv). Its folder goes first on PATH in every job's shell
# instead of being spelled into commands or params, which snakemake records: a recorded
# interpreter path would rerun every finished job the day the venv is reached through another
# path (docs/workflow.md, "When a job reruns").
shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:\"$PATH\"; ")
RESULTS = WF.results.as_posix()
RUNS = plan.runs_by_dir(WF)
EVAL_REQUESTS = plan.eval_requests(WF)
print("archs planned:", ", ".join(sorted({f"{run.model.name} ({run.model.pretrained})" for run in RUNS.values()})),
      file=sys.stderr)
# One run directory, slot by slot (stages/rundir.py): <arch>-<pretrained>/<train_set>/<method>/<variant>/<bank>-<concept>/lam<λ>/seed<s>,
# and its files as wildcard patterns (RUN_DIR.best, RUN_DIR.train_yaml, ...); logs use the same slots.
RUN = PATTERN
RUN_DIR = RunDir.pattern(WF.results)


wildcard_constraints:
    arch=r"[^/]+",
    train_set=r"[^/]+",
    method=r"[^/]+",
    variant=r"[^/]+",
    bank_concept=r"[^/]+",
    lam=r"[^/]+",
    seed=r"[^/]+",
    benchmark=r"[^/@]+",
    alpha=r"[0-9.]+",
    number=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/descriptors.smk"


if WF.demo is not None:

    include: "workflow/rules/demo.smk"


rule all:
    input:
        [f"{RESULTS}/table{number}.md" for number in WF.tables],
        [f"{RESULTS}/figure_{name}.png" for name in WF.figures],
        f"{RESULTS}/all_results.csv",
        [f"{RESULTS}/claims.md"] if WF.claims is not None else [],
    default_target: True


onstart:
    try:
        jobs = list(workflow.dag.needrun_jobs())
        plan.check_data(
            WF,
            train_sets={run_of(job.wildcards).data.train_set for job in jobs if job.rule.name == "train"},
            benchmarks={benchmark for job in jobs if job.rule.name == "evaluate"
                        for benchmark in run_benchmarks(job.wildcards)},
        )
        plan.check_data_ready(
            WF,
            train_sets={run_of(job.wildcards).data.train_set for job in jobs if job.rule.name == "train"},
            benchmarks={benchmark for job in jobs if job.rule.name == "evaluate"
                        for benchmark in run_benchmarks(job.wildcards)},
            present_only=False,
        )
    except ConfigError as error:
        raise WorkflowError(str(error))
