# Evaluation: one job per run. It scores every benchmark any table reads of the run, and each
# WiSE-FT α of it, in one process (checkpoint loaded once, images decoded once, heads built once
# per text tower) and writes <run dir>/eval/<benchmark>.json, <run dir>/eval/<benchmark>@alpha<α>.json
# and, last, <run dir>/eval/index.json (the declared output). The metrics files are not declared:
# snakemake would delete them before a rerun, and a rerun (a benchmark or an α added to a table)
# keeps every file already computed from the same checkpoint and computes only the new ones.
# Zero-shot runs are never trained: their job scores the pretrained weights directly.
# `metrics` names what every metrics file holds (stages.evaluation.benchmarks.ALWAYS_METRICS): when
# it grows (ECE and NLL were added), snakemake's params trigger reruns each evaluation job once,
# which recomputes the files that lack the new metrics (and keeps none of them: see is_current).
# Beside each metrics file goes its per-item outcomes, <request>.items.npz (the bootstrap intervals of
# results/claims.md read them), not declared either, for the same reason. `items_file` names that file:
# adding it reruns each evaluation job finished before items files existed, once; the job scores the
# run again only for the missing items files and keeps every metrics JSON whose numbers come out
# equal, byte for byte (stages.evaluation.run.write_evaluation).

from stages.evaluation.benchmarks import ALWAYS_METRICS
from stages.rundir import ITEMS_SUFFIX


rule evaluate:
    input:
        trained_input,
        demo_inputs,
    output:
        RUN_DIR.eval_index.as_posix(),
    log:
        f"{RESULTS}/logs/evaluate/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN}.tsv"
    threads: WF.resources.evaluate.threads
    resources:
        gpu=WF.resources.evaluate.gpu,
        mem_mb=lambda wildcards, attempt: WF.resources.evaluate.mem_mb * attempt,
        runtime=WF.resources.evaluate.runtime,
    retries: WF.resources.retries
    params:
        model=model_arguments,
        requests=run_requests,
        metrics=" ".join(ALWAYS_METRICS),
        items_file=ITEMS_SUFFIX,
        eval_dir=lambda wildcards, output: os.path.dirname(output[0]),
        execution=eval_execution,
    shell:
        "OMP_NUM_THREADS={threads} python -m stages.evaluation {params.model} --eval-dir {params.eval_dir}"
        " --requests {params.requests} {params.execution} > {log} 2>&1"
