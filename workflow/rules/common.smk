# Helpers of the rules (functions and settings only, no rules): each maps a job's wildcards to the
# TrainConfig of its run (RUNS, built from the validated config by stages.plan) and from there to arguments.
#
# What snakemake records of a job decides when it reruns (params, inputs, the command's text):
# only what changes results goes there. Execution settings (loader workers, device, batch size of
# evaluation, cache folders, where the data lies) reach commands through `execution` params that
# are functions of `resources`, which snakemake counts as derived and does not record
# (docs/workflow.md, "When a job reruns"; tests/test_demo.py checks that changing them reruns nothing).

import shlex

import yaml

from stages.methods import method_spec


# `python -m stages.training` options for the execution settings kept out of train.yaml (the same
# for every run of the grid).
TRAIN_EXECUTION = " ".join(
    f"--set {shlex.quote(pair)}" for pair in plan.execution_overrides(next(iter(RUNS.values())))
) if RUNS else ""
# `python -m stages.evaluation` options that change no number.
EVAL_EXECUTION = " ".join(
    [f"--data-root {shlex.quote(WF.data_root.as_posix())}", f"--batch-size {WF.eval_batch_size}", f"--workers {WF.workers}"]
    + ([] if WF.eval_image_cache is None else [f"--image-cache {shlex.quote(WF.eval_image_cache.as_posix())}"])
)


def train_execution(wildcards, resources) -> str:
    """TRAIN_EXECUTION, as a params function snakemake does not record (it takes `resources`).

    --exit-with-parent: a job ended outright (snakemake killed, SLURM's SIGKILL to the job's shell)
    never leaves its trainer running beside the next attempt."""
    return f"{TRAIN_EXECUTION} --exit-with-parent"


def eval_execution(wildcards, resources) -> str:
    """EVAL_EXECUTION, as a params function snakemake does not record (it takes `resources`)."""
    return EVAL_EXECUTION


def run_dir_of(wildcards) -> RunDir:
    """The run directory the wildcards spell."""
    return RunDir.at(WF.results, wildcards)


def run_dir(wildcards) -> str:
    """The path of the run directory the wildcards spell."""
    return str(run_dir_of(wildcards).path)


def run_of(wildcards):
    """The TrainConfig of the wildcards' run directory (a path outside the grid is an error)."""
    path = run_dir(wildcards)
    if path not in RUNS:
        raise WorkflowError(f"{path} is not a run of the configured grid; `snakemake -n` lists the planned jobs")
    return RUNS[path]


def run_yaml(wildcards) -> str:
    """The YAML text of the run's TrainConfig, execution settings aside (a change here retrains the run)."""
    return plan.run_yaml(run_of(wildcards))


def run_bank(wildcards) -> list:
    """The run's descriptor bank as an ancient() input (never retrain because a bank was touched)."""
    run = run_of(wildcards)
    return [] if plan.bank_name(WF, run) == "-" else [ancient(run.spurious.bank.as_posix())]


def demo_inputs(wildcards) -> list[str]:
    """The demo's data splits and pretrained weights when the config builds them (else nothing)."""
    if WF.demo is None:
        return []
    return [f"{WF.data_root.as_posix()}/fmnist-demo/info.json", WF.demo.weights.as_posix()]


def train_resources() -> dict:
    """SLURM geometry of a train job (its GPUs, or, over several nodes, one srun task per GPU) and its
    warning signal before the time limit."""
    train = WF.resources.train
    # Not `B:` (the batch shell only: the plugin's `sbatch --wrap` shell is /bin/sh, which dies of it
    # and takes the job down) and not USR1 (SLURM sends it to every process of the job step, the
    # jobstep's snakemake included, which has no handler for it and dies): SIGTERM, which snakemake
    # takes as "finish the running job", the trainer as "checkpoint and exit 75" (docs/workflow.md,
    # "Interrupted training jobs"). The executor ignores slurm_extra outside SLURM.
    # --open-mode=append: the job's SLURM log keeps every instance of a requeued job, not only the last.
    warning = f" --signal=TERM@{train.signal_lead_s}" if train.signal_lead_s else ""
    signal = {"slurm_extra": f"--open-mode=append{warning}"}
    if train.nodes == 1:
        return {"gpu": train.gpu, **signal}
    # `mpi: srun` makes the jobstep plugin run the command in the batch step, where srun starts the ranks.
    geometry = {"tasks_per_node": train.gpu} if train.gpu > 1 else {"tasks": train.nodes}
    return {"nodes": train.nodes, "gres": f"gpu:{train.gpu}", "mpi": "srun", **geometry, **signal}


def launcher(wildcards, resources, threads) -> str:
    """The train job's command up to the module: ``exec python -m stages.requeue ... --`` (the job's shell
    becomes the supervisor that requeues an interrupted SLURM job, stages/requeue.py), then the trainer's
    interpreter: python; torchrun over the job's GPUs (DDP inside one node); or srun, one rank per GPU, over nodes.

    A params function of `resources`, which snakemake does not record: the rule's command text stays
    as it was, so finished runs do not rerun for it (docs/workflow.md, "When a job reruns").
    """
    # Requeue only a job of a cluster executor (remote mode; stages.requeue also needs $SLURM_JOB_ID):
    # a local run inside someone's salloc or batch script is theirs to restart.
    slurm = " --slurm" if workflow.remote_exec else ""
    supervisor = f"exec python -m stages.requeue{slurm} --run-dir {shlex.quote(run_dir(wildcards))} --"
    return f"{supervisor} {trainer_launcher(resources, threads)}"


def trainer_launcher(resources, threads) -> str:
    """python; torchrun over the job's GPUs (DDP inside one node); or srun, one rank per GPU, over nodes."""
    train = WF.resources.train
    if train.nodes > 1:  # geometry spelled out: the jobstep plugin strips SLURM_* before the shell runs
        return (f"srun --nodes {train.nodes} --ntasks-per-node {max(1, train.gpu)} --gres=gpu:{train.gpu}"
                f" --cpus-per-task {threads} --kill-on-bad-exit=1 python")
    if resources.gpu > 1:
        return f"python -m torch.distributed.run --standalone --nproc_per_node {resources.gpu}"
    return "python"


def trained_input(wildcards) -> list[str]:
    """The run's weights (nothing for a method that does not train: evaluated from its pretrained weights)."""
    return [run_dir_of(wildcards).best.as_posix()] if method_spec(run_of(wildcards).method).trains else []


def model_arguments(wildcards) -> str:
    """``--run-dir`` for a trained run; ``--model/--pretrained`` (heads cached in the run dir) for one that does not train."""
    run = run_of(wildcards)
    if method_spec(run.method).trains:
        return f"--run-dir {run_dir(wildcards)}"
    heads = run_dir_of(wildcards).heads.as_posix()
    return f"--model {run.model.name} --pretrained {run.model.pretrained} --head-cache {heads}"


def run_requests(wildcards) -> list[str]:
    """Every ``<benchmark>[@alpha<α>]`` the tables read of the run (its one evaluation job writes them all)."""
    path = run_dir(wildcards)
    if path not in EVAL_REQUESTS:
        raise WorkflowError(f"{path}: no table reads this run's metrics; `snakemake -n` lists the planned jobs")
    return EVAL_REQUESTS[path]


def run_benchmarks(wildcards) -> set[str]:
    """The benchmarks among the run's requests."""
    return {EvalRequest.parse(request).benchmark for request in run_requests(wildcards)}


def table_metrics(wildcards) -> list[str]:
    """The evaluation index of every run table `number` reads (its metrics files are written with it)."""
    number = int(wildcards.number)
    if number not in WF.tables:
        raise WorkflowError(f"table {number} is not in the config's tables ({sorted(WF.tables)})")
    return [path.as_posix() for path in plan.table_indexes(WF, number)]


def table_bank_comparisons(wildcards) -> list[str]:
    """The bank comparisons beside table `number` (a table of several banks: paper Table 12), if any."""
    return [path.as_posix() for comparison in plan.bank_comparisons(WF, int(wildcards.number))
            for path in comparison.outputs(WF.results)]


def bank_comparison(wildcards) -> "plan.BankComparison":
    """The comparison the wildcards name (bank, reference), as the config's tables ask for it."""
    for comparison in plan.bank_comparisons(WF):
        if (comparison.bank, comparison.reference) == (wildcards.bank, wildcards.reference):
            return comparison
    raise WorkflowError(f"no table compares bank {wildcards.bank!r} with {wildcards.reference!r}; a table with "
                        "'bank' in its rows and several banks compares each with its first")


def figure_metrics(wildcards) -> list[str]:
    """What the figure reads: its table's evaluation indexes; for training curves, its runs' weights
    (written after the training log, which is not a declared output); for Grad-CAM, the drawn models."""
    if wildcards.name not in WF.figures:
        raise WorkflowError(f"figure {wildcards.name!r} is not in the config's figures ({sorted(WF.figures)})")
    figure = WF.figures[wildcards.name]
    # Imported here, not at parse time: matplotlib, torch and grad-cam cost seconds per parse
    # (and every cluster job parses the Snakefile again).
    if figure.kind == "loss":
        from stages.reports.figures import loss_runs

        return [run.best.as_posix() for run in loss_runs(WF, figure)]
    if figure.kind == "gradcam":  # it runs the models on the benchmark's images (under data_root)
        from stages.reports.gradcam import figure_inputs

        return [path.as_posix() for path in figure_inputs(WF, wildcards.name)]
    return [path.as_posix() for path in plan.table_indexes(WF, figure.table)]


def all_metrics(wildcards) -> list[str]:
    """The evaluation index of every run any table reads (results/all_results.* flatten their metrics)."""
    return sorted({path.as_posix() for number in WF.tables for path in plan.table_indexes(WF, number)})


def claims_metrics(wildcards) -> list[str]:
    """The evaluation index of every run the config's claims compare (their items files are written with it)."""
    if WF.claims is None:
        raise WorkflowError("the config has no claims: results/claims.md is built only from a `claims` key")
    return [path.as_posix() for path in plan.claim_indexes(WF)]


def workflow_yaml(wildcards) -> str:
    """The validated config as YAML (what stages.reports reads), without the settings that change no report
    (plan.report_config: execution settings such as tracking or log_every rebuild no table)."""
    return yaml.safe_dump(plan.report_config(WF), sort_keys=False)


def descriptor_arguments(wildcards) -> str:
    """Options of `python -m stages.descriptors generate` from the validated `descriptors` settings."""
    settings = WF.descriptors.model_dump(exclude_none=True) if WF.descriptors is not None else {}
    arguments = []
    for name, value in settings.items():
        if name == "concepts" and not isinstance(value, str):
            value = ",".join(value)
        arguments += [f"--{name.replace('_', '-')}", str(value)]
    return " ".join(shlex.quote(argument) for argument in arguments)
