# Summary tables (mean, std, n, bootstrap CI over prompts) per evaluated prompt set.


rule tables:
    input:
        scores=score_files(),
    output:
        # Marked for the Snakemake report (workflow/report/): Tables > <prompt set>, as downloads;
        # workflow/rules/report.smk adds each table's inline HTML view.
        [
            report(
                f,
                caption="../report/tables.rst",
                category="Tables",
                subcategory=Path(f).stem,
                labels={"table": Path(f).stem, "format": Path(f).suffix.lstrip(".").upper()},
            )
            for f in table_files()
        ],
    params:
        fingerprint=tables_fingerprint,
        out_dir=tables_dir,
    log:
        layout.log_file("tables"),
    benchmark:
        layout.benchmark_file("tables")
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    shell:
        "{PYTHON} -m spo tables --config {RESOLVED_CONFIG} --scores {input.scores}"
        " --out {params.out_dir} > {log} 2>&1"
