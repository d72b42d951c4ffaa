# Target list and report labels of workflow/rules/report.smk (functions only, as `snakemake --lint`
# wants).


def report_table_html_files():
    """The tables shown inline in the report: one per evaluated prompt set, Table 3 (GenEval), and
    the paper-vs-ours tables (workflow/rules/paper_tables.smk)."""
    files = [layout.report_table_html(layout.TABLES, name)
             for name in evaluated_prompt_sets(CONFIG, scored=True)]
    if geneval_table_files():
        files.append(layout.report_table_html(layout.TABLES, layout.GENEVAL_TABLE))
    files += [
        layout.report_table_html(layout.PAPER_TABLES, Path(f).stem)
        for f in globals().get("PAPER_TABLE_FILES", [])
        if f.endswith(".csv")
    ]
    return files


TABLE_TITLES = {layout.GENEVAL_TABLE: "Table 3 (GenEval)"}


def report_table_title(kind, name):
    """The report subcategory of a table: the one its CSV and Markdown files are filed under."""
    if kind == layout.PAPER_TABLES:
        return f"Table {name.removeprefix('table')} (paper vs ours)"
    return TABLE_TITLES.get(name, name)


def report_table_subcategory(wildcards):
    return report_table_title(wildcards.kind, wildcards.table)


def report_table_labels(wildcards):
    return {"table": report_table_title(wildcards.kind, wildcards.table), "format": "HTML (view)"}
