# Descriptor banks: (re)generate descriptor_banks/<slug>/v<N>.json with an LLM (docs/descriptors.md).
#
#   snakemake -c1 descriptor_banks/gpt-3.5-turbo/v1.json --config 'descriptors={model: gpt-3.5-turbo}'
#   snakemake -c1 descriptor_banks/llama-3.3-70b/v1.json \
#       --config 'descriptors={model: llama-3.3-70b-instruct, base_url: "http://127.0.0.1:8000/v1"}'
#
# Settings come from the config mapping `descriptors` (snakemake's --config takes it as YAML and
# merges it into the config file's; it does not accept dotted keys such as descriptors.model=).
# Names: backend, model, base_url, concepts (list or "a,b,c"; none: step 1 asks the LLM), runs,
# temperature, seed (stages.config.DescriptorsSettings); a setting left out is the generator's default
# (stages.descriptors.generate.GenerateConfig, shown by `python -m stages.descriptors generate --help`).
# The API key is read from OPENAI_API_KEY, never from the config. Answers are cached in .cache/llm,
# so a rerun replays them for free. Banks are immutable: the output is protected, and the CLI
# refuses different content over an existing version (write v<N+1> instead). Training rules
# should take banks as ancient() inputs.

rule descriptor_bank:
    output:
        protected("descriptor_banks/{slug}/v{version}.json"),
    log:
        f"{RESULTS}/logs/descriptors/{{slug}}/v{{version}}.log",
    wildcard_constraints:
        slug=r"[^/]+",
        version=r"\d+",
    params:
        arguments=descriptor_arguments,
    shell:
        "python -m stages.descriptors generate {params.arguments} --out {output} > {log} 2>&1"
