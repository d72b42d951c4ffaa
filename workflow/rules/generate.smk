# One job per (method, prompt set, shard): PNGs and a Parquet manifest in one folder.


rule generate:
    input:
        unpack(generate_inputs),
    output:
        directory(layout.shard_dir("{method}", "{prompt_set}", "{shard}")),
    params:
        fingerprint=generate_fingerprint,
        lora=generate_lora_arg,
    log:
        layout.log_file("generate", "{method}/{prompt_set}/shard-{shard}"),
    benchmark:
        layout.benchmark_file("generate", "{method}/{prompt_set}/shard-{shard}")
    threads: job_threads("generate")
    resources:
        **job_resources("generate"),
    shell:
        "{PYTHON} -m spo generate --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --prompt-set {wildcards.prompt_set} --shard {wildcards.shard}"
        " --models-root {MODELS_ROOT} {params.lora} --threads {threads} --out {output} > {log} 2>&1"
