# One job per (metric, generation shard): per-image scores in Parquet.


rule score:
    input:
        unpack(tiny_metric_inputs),
        shard="results/images/{method}/{prompt_set}/shard-{shard}",
    output:
        "results/scores/{metric}/{method}/{prompt_set}/shard-{shard}.parquet",
    params:
        fingerprint=metric_fingerprint,
    log:
        "results/logs/score/{metric}/{method}/{prompt_set}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/score/{metric}/{method}/{prompt_set}/shard-{shard}.tsv"
    threads: 1
    shell:
        "{PYTHON} -m spo score --config {RESOLVED_CONFIG} --metric {wildcards.metric}"
        " --shards {input.shard} --models-root {MODELS_ROOT} --threads {threads}"
        " --out {output} > {log} 2>&1"
