# The paper's Tables 1, 2 and 4-9 beside ours (issue 7): for each row the paper's number, our mean,
# ours - paper and our bootstrap CI over prompts, as layout.paper_table_file(<N>, csv / md / tex).
# Rows come from `methods.<name>.paper: {table, row}`, the paper's numbers from
# data/paper/tables.yaml (spo/report/paper_numbers.py); one job per table reads only the score
# files of that table's rows (spo/report/paper_tables.py). A table with no row in the config is
# still written, with the paper's numbers only, and says "not run".
from spo.report.paper_numbers import PaperNumbersError, load_paper_numbers
from spo.report.paper_tables import REBUILT_TABLES, PaperTableError, plan_tables

PAPER_NUMBERS = "data/paper/tables.yaml"
# Checked at DAG start: an unknown table or row, a row filled twice, or methods with no common
# prompt set stop the workflow here, naming the config key.
try:
    PAPER_TABLE_PLANS = plan_tables(CONFIG, load_paper_numbers(Path(workflow.basedir) / PAPER_NUMBERS))
except (PaperTableError, PaperNumbersError) as exc:
    raise WorkflowError(str(exc)) from None
PAPER_TABLE_FILES = [
    layout.paper_table_file(n, ext) for n in REBUILT_TABLES for ext in ("csv", "md", "tex")
]
PAPER_TABLE_TITLES = {
    n: load_paper_numbers(Path(workflow.basedir) / PAPER_NUMBERS).tables[n].title
    for n in REBUILT_TABLES
}


rule paper_tables:
    input:
        numbers=PAPER_NUMBERS,
        scores=lambda wildcards: [
            layout.score_file(group, method, plan.prompt_set, i)
            for plan in [PAPER_TABLE_PLANS[int(wildcards.table)]]
            for group in scoring_groups()
            for method in plan.methods
            for i in range(n_shards(plan.prompt_set))
        ],
    output:
        csv=report(
            layout.paper_table_file("{table}", "csv"),
            caption="../report/table_paper.rst",
            category="Tables",
            subcategory="Table {table} (paper vs ours)",
            labels={"table": "Table {table} (paper vs ours)", "format": "CSV"},
        ),
        md=report(
            layout.paper_table_file("{table}", "md"),
            caption="../report/table_paper.rst",
            category="Tables",
            subcategory="Table {table} (paper vs ours)",
            labels={"table": "Table {table} (paper vs ours)", "format": "Markdown"},
        ),
        tex=layout.paper_table_file("{table}", "tex"),
    params:
        fingerprint=lambda wildcards: stable_hash(
            [
                PAPER_TABLE_PLANS[int(wildcards.table)].rows,
                PAPER_TABLE_PLANS[int(wildcards.table)].prompt_set,
                CONFIG["tables"],
                CONFIG["profile"],
                {m: metric_spec(CONFIG, m).scorer_of(m) for m in CONFIG["metrics"]},
            ]
        ),
        title=lambda wildcards: PAPER_TABLE_TITLES[int(wildcards.table)],
        out_dir=tables_dir,  # the outputs' folder (common.smk)
    log:
        layout.log_file("paper_tables", "table{table}"),
    benchmark:
        layout.benchmark_file("paper_tables", "table{table}")
    wildcard_constraints:
        table="|".join(str(n) for n in REBUILT_TABLES),
    threads: job_threads("tables")
    resources:
        **job_resources("tables"),
    shell:
        "{PYTHON} -m spo paper-tables --config {RESOLVED_CONFIG} --paper-numbers {input.numbers}"
        " --tables {wildcards.table} --scores {input.scores} --out {params.out_dir} > {log} 2>&1"
