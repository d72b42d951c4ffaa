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
        gpu=job_resource("generate", "gpu"),
        mem_mb=job_resource("generate", "mem_mb"),
        runtime=job_resource("generate", "runtime"),
        cpus_per_task=job_resource("generate", "cpus_per_task"),
    shell:
        "{PYTHON} -m spo generate --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --prompt-set {wildcards.prompt_set} --shard {wildcards.shard}"
        " --models-root {MODELS_ROOT} --threads {threads} --out {output} > {log} 2>&1"
