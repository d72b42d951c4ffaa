# The figure rules, one per block of the config's `figures:` (input functions and targets:
# workflow/rules/figures_common.smk; snakemake --lint wants rules and functions apart).

for _figure in FIGURE_NAMES:

    rule:
        name:
            f"figure_{_figure}"
        input:
            data=figure_inputs(_figure),
            weights=figure_weight_inputs(_figure),
        output:
            **figure_outputs(_figure),
        params:
            name=_figure,
            fingerprint=stable_hash([CONFIG["figures"][_figure], CONFIG["profile"]]),
            extra=figure_extra_args(_figure),
        log:
            f"results/logs/figures/{_figure}.log",
        benchmark:
            f"results/benchmarks/figures/{_figure}.tsv"
        threads: 1
        resources:
            gpu=job_resource("tables", "gpu"),
            mem_mb=job_resource("tables", "mem_mb"),
            runtime=job_resource("tables", "runtime"),
            cpus_per_task=job_resource("tables", "cpus_per_task"),
        shell:
            "{PYTHON} -m spo figure {params.name} --config {RESOLVED_CONFIG} --inputs {input.data}"
            " --models-root {MODELS_ROOT} {params.extra} --threads {threads} --out {output.png}"
            " > {log} 2>&1"
