# Tiny random-init stand-ins, saved in the real on-disk formats (only for `tiny` sources).


rule tiny_pipeline:
    output:
        directory(f"{MODELS_ROOT}/pipelines/{{model}}"),
    params:
        fingerprint=model_fingerprint,
    log:
        "results/logs/tiny_pipeline/{model}.log",
    benchmark:
        "results/benchmarks/tiny_pipeline/{model}.tsv"
    threads: job_threads("tiny_pipeline")
    resources:
        **job_resources("tiny_pipeline"),
    shell:
        "{PYTHON} -m spo tiny-model --config {RESOLVED_CONFIG} --model {wildcards.model}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule tiny_metric:
    output:
        directory(f"{MODELS_ROOT}/metrics/{{metric}}"),
    params:
        fingerprint=metric_fingerprint,
    log:
        "results/logs/tiny_metric/{metric}.log",
    benchmark:
        "results/benchmarks/tiny_metric/{metric}.tsv"
    threads: job_threads("tiny_metric")
    resources:
        **job_resources("tiny_metric"),
    shell:
        "{PYTHON} -m spo tiny-model --config {RESOLVED_CONFIG} --metric {wildcards.metric}"
        " --threads {threads} --out {output} > {log} 2>&1"
