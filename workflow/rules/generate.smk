# One job per (method, prompt set, shard): PNGs and a Parquet manifest in one folder.


rule generate:
    input:
        unpack(generate_inputs),
    output:
        directory("results/images/{method}/{prompt_set}/shard-{shard}"),
    params:
        fingerprint=generate_fingerprint,
    log:
        "results/logs/generate/{method}/{prompt_set}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/generate/{method}/{prompt_set}/shard-{shard}.tsv"
    threads: job_threads("generate")
    resources:
        **job_resources("generate"),
    shell:
        "{PYTHON} -m spo generate --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --prompt-set {wildcards.prompt_set} --shard {wildcards.shard}"
        " --models-root {MODELS_ROOT} --threads {threads} --out {output} > {log} 2>&1"
