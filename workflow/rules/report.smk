# The Snakemake report (`snakemake --report results/report.html`): each results table is also
# rendered as a self-contained HTML page, because the report shows HTML inline but offers CSV and
# Markdown only as downloads. Captions live in workflow/report/ (paths below are relative to this
# file); the global description is workflow/report/workflow.rst (the Snakefile's `report:`).


rule table_html:
    input:
        "results/{kind}/{table}.csv",
    output:
        report(
            "results/report/{kind}/{table}.html",
            caption="../report/table_html.rst",
            category="Tables",
            subcategory=report_table_subcategory,
            labels=report_table_labels,
        ),
    log:
        "results/logs/table_html/{kind}/{table}.log",
    benchmark:
        "results/benchmarks/table_html/{kind}/{table}.tsv"
    wildcard_constraints:
        kind="tables|paper_tables",
        table="[A-Za-z0-9][A-Za-z0-9_.-]*",
    localrule: True
    shell:
        "{PYTHON} -m spo table-html --config {RESOLVED_CONFIG} --csv {input} --out {output}"
        " > {log} 2>&1"
