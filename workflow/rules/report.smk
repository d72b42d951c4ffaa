# The Snakemake report (`snakemake --report results/report.html`): each results table is also
# rendered as a self-contained HTML page, because the report shows HTML inline but offers CSV and
# Markdown only as downloads. Captions live in workflow/report/ (paths below are relative to this
# file); the global description is workflow/report/workflow.rst (the Snakefile's `report:`).


rule table_html:
    input:
        layout.table_file("{table}", "csv", kind="{kind}"),
    output:
        report(
            layout.report_table_html("{kind}", "{table}"),
            caption="../report/table_html.rst",
            category="Tables",
            subcategory=report_table_subcategory,
            labels=report_table_labels,
        ),
    log:
        layout.log_file("table_html", "{kind}/{table}"),
    benchmark:
        layout.benchmark_file("table_html", "{kind}/{table}")
    wildcard_constraints:
        kind="|".join(layout.TABLE_KINDS),
        table="[A-Za-z0-9][A-Za-z0-9_.-]*",
    localrule: True
    shell:
        "{PYTHON} -m spo table-html --config {RESOLVED_CONFIG} --csv {input} --out {output}"
        " > {log} 2>&1"
