# Training: one job per run of the grid (arch, train set, method, variant, bank-concept, λ, seed).
#
# run_config writes the run's resolved TrainConfig as <run dir>/train.yaml, execution settings aside
# (rewritten, and the run retrained, only when what the run computes changes); train calls
# `python -m stages.training` on it with the execution settings as --set options (train_execution).
# best.pt is the only declared output: ckpt/last.pt survives a failed attempt, so a retry resumes.
#
# Interruptions (docs/workflow.md, "Interrupted training jobs"): the job's shell execs
# `python -m stages.requeue` (params.launcher), which runs the trainer. SIGTERM/SIGUSR1/SIGINT make
# the trainer finish its step, checkpoint and exit 75. Under the SLURM executor the job then
# requeues itself (same job id: the executor keeps tracking it, no `retries` are spent, SLURM never
# runs two instances of one job); SLURM sends the SIGTERM resources.train.signal_lead_s before the
# time limit (slurm_extra, train_resources). Under the local executor the job fails with
# "interrupted, resumable: rerun the same command to resume": there the signal came from the
# user (Ctrl-C, kill), who asked to stop, not to go on.


localrules:
    run_config,


rule run_config:
    output:
        RUN_DIR.train_yaml.as_posix(),
    log:
        f"{RESULTS}/logs/run_config/{RUN}.log",
    params:
        text=run_yaml,
    shell:
        "printf '%s' {params.text:q} > {output} 2> {log}"


rule train:
    input:
        config=RUN_DIR.train_yaml.as_posix(),
        bank=run_bank,
        demo=demo_inputs,
    output:
        RUN_DIR.best.as_posix(),
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN}.tsv"
    threads: WF.resources.train.threads
    resources:
        **train_resources(),
        mem_mb=lambda wildcards, attempt: WF.resources.train.mem_mb * attempt,
        runtime=WF.resources.train.runtime,
    retries: WF.resources.retries
    params:
        launcher=launcher,
        run_dir=run_dir,
        execution=train_execution,
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} -m stages.training --config {input.config} --out {params.run_dir}"
        " {params.execution} > {log} 2>&1"
