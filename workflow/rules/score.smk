# One job per (scoring group, generation shard): per-image scores in Parquet. A scoring group is one
# metric (the default: one scorer per GPU job) or all metrics (`scoring.one_job_per_metric: false`,
# the tiny profile: one process start-up per shard instead of one per metric and shard).


rule score:
    input:
        unpack(tiny_metric_inputs),
        shard=layout.shard_dir("{method}", "{prompt_set}", "{shard}"),
    output:
        layout.score_file("{scoring}", "{method}", "{prompt_set}", "{shard}"),
    params:
        fingerprint=scoring_fingerprint,
        metrics=scoring_metrics,
    log:
        layout.log_file("score", "{scoring}/{method}/{prompt_set}/shard-{shard}"),
    benchmark:
        layout.benchmark_file("score", "{scoring}/{method}/{prompt_set}/shard-{shard}")
    threads: job_threads("score")
    resources:
        **job_resources("score"),
    shell:
        "{PYTHON} -m spo score --config {RESOLVED_CONFIG} --metric {params.metrics}"
        " --shards {input.shard} --models-root {MODELS_ROOT} --threads {threads}"
        " --out {output} > {log} 2>&1"
