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
            layout.log_file("figures", _figure),
        benchmark:
            layout.benchmark_file("figures", _figure)
        threads: 1
        resources:
            **job_resources("tables"),
        shell:
            "{PYTHON} -m spo figure {params.name} --config {RESOLVED_CONFIG} --inputs {input.data}"
            " --models-root {MODELS_ROOT} {params.extra} --threads {threads} --out {output.png}"
            " > {log} 2>&1"
