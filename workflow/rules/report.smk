# Reports: results/tableN.{md,csv} from the metrics JSON only (stages.reports), the paper's
# number and the difference beside ours; results/figure_<name>.png for the config's figures;
# results/all_results.{csv,jsonl}: one row per (run, benchmark, α), for your own plots;
# results/claims.{md,csv}: the config's claims, each a paired bootstrap interval and its verdict.
# workflow_config.yaml is the validated config the report CLI reads (rewritten, and the tables
# and figures rebuilt, when the config changes).


localrules:
    workflow_config,
    report,
    figure,
    all_results,
    claims,


rule workflow_config:
    output:
        f"{RESULTS}/workflow_config.yaml",
    log:
        f"{RESULTS}/logs/report/workflow_config.log",
    params:
        text=workflow_yaml,
    shell:
        "printf '%s' {params.text:q} > {output} 2> {log}"


rule report:
    input:
        config=f"{RESULTS}/workflow_config.yaml",
        metrics=table_metrics,
        bank_comparisons=table_bank_comparisons,
    output:
        markdown=report(f"{RESULTS}/table{{number}}.md", category="Tables"),
        csv=report(f"{RESULTS}/table{{number}}.csv", category="Tables"),
    log:
        f"{RESULTS}/logs/report/table{{number}}.log",
    shell:
        "python -m stages.reports --config {input.config} --table {wildcards.number} > {log} 2>&1"


# Beside a table of several descriptor banks (paper Table 12): each bank against the table's first
# (the reference) with `python -m stages.descriptors compare`, in the CLIP text space of the
# table's first arch (stages.plan.bank_comparisons). Banks are ancient() inputs, as for training.
rule bank_compare:
    wildcard_constraints:
        bank=r"[^/]+",
        reference=r"[^/]+",
    input:
        bank=lambda wildcards: ancient(WF.banks[bank_comparison(wildcards).bank].path.as_posix()),
        reference=lambda wildcards: ancient(WF.banks[bank_comparison(wildcards).reference].path.as_posix()),
    output:
        json=f"{RESULTS}/bank_compare/{{bank}}_vs_{{reference}}.json",
        markdown=report(f"{RESULTS}/bank_compare/{{bank}}_vs_{{reference}}.md", category="Bank comparisons"),
        png=report(f"{RESULTS}/bank_compare/{{bank}}_vs_{{reference}}.png", category="Bank comparisons"),
    log:
        f"{RESULTS}/logs/report/bank_compare/{{bank}}_vs_{{reference}}.log",
    params:
        options=lambda wildcards: (
            f"--concept {bank_comparison(wildcards).concept} --model {bank_comparison(wildcards).model}"
            f" --pretrained {shlex.quote(bank_comparison(wildcards).pretrained)}"
        ),
        out_dir=lambda wildcards, output: os.path.dirname(output.json),
    shell:
        "python -m stages.descriptors compare {input.bank:q} {input.reference:q} {params.options}"
        " --out {params.out_dir:q} --name {wildcards.bank}_vs_{wildcards.reference} > {log} 2>&1"


rule figure:
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    input:
        config=f"{RESULTS}/workflow_config.yaml",
        metrics=figure_metrics,
    output:
        report(f"{RESULTS}/figure_{{name}}.png", category="Figures"),
    log:
        f"{RESULTS}/logs/report/figure_{{name}}.log",
    shell:
        "python -m stages.reports --config {input.config} --figure {wildcards.name} > {log} 2>&1"


rule all_results:
    input:
        config=f"{RESULTS}/workflow_config.yaml",
        metrics=all_metrics,
    output:
        csv=report(f"{RESULTS}/all_results.csv", category="Tables"),
        jsonl=f"{RESULTS}/all_results.jsonl",
    log:
        f"{RESULTS}/logs/report/all_results.log",
    shell:
        "python -m stages.reports --config {input.config} --all-results > {log} 2>&1"


# The items files beside the metrics JSONs are written with each run's evaluation index (evaluate.smk).
rule claims:
    input:
        config=f"{RESULTS}/workflow_config.yaml",
        metrics=claims_metrics,
    output:
        markdown=report(f"{RESULTS}/claims.md", category="Tables"),
        csv=report(f"{RESULTS}/claims.csv", category="Tables"),
    log:
        f"{RESULTS}/logs/report/claims.log",
    shell:
        "python -m stages.reports --config {input.config} --claims > {log} 2>&1"
