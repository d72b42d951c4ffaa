# Tiny random-init stand-ins, saved in the real on-disk formats (only for `tiny` sources).


rule tiny_pipeline:
    output:
        directory(layout.tiny_pipeline_dir("{model}")),
    params:
        fingerprint=model_fingerprint,
    log:
        layout.log_file("tiny_pipeline", "{model}"),
    benchmark:
        layout.benchmark_file("tiny_pipeline", "{model}")
    threads: job_threads("tiny_pipeline")
    resources:
        **job_resources("tiny_pipeline"),
    shell:
        "{PYTHON} -m spo tiny-model --config {RESOLVED_CONFIG} --model {wildcards.model}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule tiny_metric:
    output:
        directory(layout.tiny_metric_dir("{metric}")),
    params:
        fingerprint=metric_fingerprint,
    log:
        layout.log_file("tiny_metric", "{metric}"),
    benchmark:
        layout.benchmark_file("tiny_metric", "{metric}")
    threads: job_threads("tiny_metric")
    resources:
        **job_resources("tiny_metric"),
    shell:
        "{PYTHON} -m spo tiny-model --config {RESOLVED_CONFIG} --metric {wildcards.metric}"
        " --threads {threads} --out {output} > {log} 2>&1"
