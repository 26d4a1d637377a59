# Evaluation: one job per (run, benchmark), and per (run, benchmark, α) for WiSE-FT sweeps.
# Metrics land in <run dir>/eval/<benchmark>.json and <run dir>/eval/<benchmark>@alpha<α>.json.
# Zero-shot runs are never trained: their job scores the pretrained weights directly.


rule evaluate:
    input:
        trained_input,
        demo_inputs,
    output:
        f"{RESULTS}/runs/{RUN}/eval/{{benchmark}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{RUN}/{{benchmark}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN}/{{benchmark}}.tsv"
    threads: WF.resources.evaluate.threads
    resources:
        gpu=WF.resources.evaluate.gpu,
        mem_mb=lambda wildcards, attempt: WF.resources.evaluate.mem_mb * attempt,
        runtime=WF.resources.evaluate.runtime,
    retries: WF.resources.retries
    params:
        workers=WF.workers,
        python=PYTHON,
        data_root=WF.data_root.as_posix(),
        batch_size=WF.eval_batch_size,
        model=model_arguments,
        image_cache=image_cache_argument,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m stages.evaluation --benchmark {wildcards.benchmark} --data-root {params.data_root}"
        " --batch-size {params.batch_size} --workers {params.workers} --out {output} {params.model} {params.image_cache}"
        " > {log} 2>&1"


rule evaluate_wise:
    input:
        trained_input,
        demo_inputs,
    output:
        f"{RESULTS}/runs/{RUN}/eval/{{benchmark}}@alpha{{alpha}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{RUN}/{{benchmark}}@alpha{{alpha}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN}/{{benchmark}}@alpha{{alpha}}.tsv"
    threads: WF.resources.evaluate.threads
    resources:
        gpu=WF.resources.evaluate.gpu,
        mem_mb=lambda wildcards, attempt: WF.resources.evaluate.mem_mb * attempt,
        runtime=WF.resources.evaluate.runtime,
    retries: WF.resources.retries
    params:
        workers=WF.workers,
        python=PYTHON,
        data_root=WF.data_root.as_posix(),
        batch_size=WF.eval_batch_size,
        model=model_arguments,
        image_cache=image_cache_argument,
    conda:
        "../../environment.yml"
    shell:
        "OMP_NUM_THREADS={threads} {params.python} -m stages.evaluation --benchmark {wildcards.benchmark} --data-root {params.data_root}"
        " --batch-size {params.batch_size} --workers {params.workers} --out {output} {params.model}"
        " --alpha {wildcards.alpha} {params.image_cache} > {log} 2>&1"
