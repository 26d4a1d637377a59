# Reports: results/tableN.{md,csv} from the metrics JSON only (stages.reports), the paper's
# number and the difference beside ours. workflow_config.yaml is the validated config the report
# CLI reads (rewritten, and the tables rebuilt, when the config changes).


localrules:
    workflow_config,
    report,


rule workflow_config:
    output:
        f"{RESULTS}/workflow_config.yaml",
    log:
        f"{RESULTS}/logs/report/workflow_config.log",
    params:
        text=workflow_yaml,
    conda:
        "../../environment.yml"
    shell:
        "printf '%s' {params.text:q} > {output} 2> {log}"


rule report:
    input:
        config=f"{RESULTS}/workflow_config.yaml",
        metrics=table_metrics,
    output:
        markdown=report(f"{RESULTS}/table{{number}}.md", category="Tables"),
        csv=report(f"{RESULTS}/table{{number}}.csv", category="Tables"),
    log:
        f"{RESULTS}/logs/report/table{{number}}.log",
    params:
        python=PYTHON,
    conda:
        "../../environment.yml"
    shell:
        "{params.python} -m stages.reports --config {input.config} --table {wildcards.number} > {log} 2>&1"
