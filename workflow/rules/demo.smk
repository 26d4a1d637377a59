# The embedded demo's own inputs (config key `demo:`): Fashion-MNIST splits on injected
# backgrounds under data_root, and a tiny CLIP pretrained here from scratch (stages/demo).


rule demo_data:
    output:
        f"{WF.data_root.as_posix()}/fmnist-demo/info.json",
    log:
        f"{RESULTS}/logs/demo/data.log",
    params:
        # <data_root>/fmnist-demo/info.json -> <data_root>
        data_root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        options=" ".join(
            [f"--seed {WF.demo.seed}", f"--correlation {WF.demo.correlation}",
             f"--pretrain-correlation {WF.demo.pretrain_correlation}"]
            + [f"--size {split}={count}" for split, count in WF.demo.sizes.items()]
        ),
    shell:
        "python -m stages.demo data --data-root {params.data_root} {params.options} > {log} 2>&1"


rule demo_pretrain:
    input:
        f"{WF.data_root.as_posix()}/fmnist-demo/info.json",
    output:
        WF.demo.weights.as_posix(),
    log:
        f"{RESULTS}/logs/demo/pretrain.log",
    threads: 2
    params:
        data_root=lambda wildcards, input: os.path.dirname(os.path.dirname(input[0])),
        options=(
            f"--model {WF.demo.model} --steps {WF.demo.pretrain_steps} --batch-size {WF.demo.pretrain_batch_size}"
            f" --lr {WF.demo.pretrain_lr} --seed {WF.demo.seed}"
        ),
    shell:
        "OMP_NUM_THREADS={threads} python -m stages.demo pretrain --data-root {params.data_root}"
        " --out {output} {params.options} > {log} 2>&1"
