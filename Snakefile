# spo-repro: the whole paper as one DAG.
#   snakemake --cores all                                   embedded tiny profile (CPU, minutes)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
# The logic lives in the `spo` package; rules are thin `python -m spo <stage>` calls.
from snakemake.utils import min_version

min_version("9.0")

# `snakemake --report results/report.html`: one self-contained HTML file (tables, figures, captions,
# run times, rule graph) that opens offline; workflow/report/ holds its texts.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/paper_tables.smk"
include: "workflow/rules/spm_common.smk"
include: "workflow/rules/spm.smk"
include: "workflow/rules/figures_common.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/geneval_common.smk"
include: "workflow/rules/geneval.smk"
include: "workflow/rules/report_common.smk"
include: "workflow/rules/report.smk"


# Shards and scores are targets too, not only the tables: Snakemake (since 7.7) does not rebuild a
# deleted intermediate file while everything downstream of it exists, and a researcher who deletes
# a bad shard expects it (and only what depends on it) to be rebuilt.
rule all:
    input:
        table_files(),
        PAPER_TABLE_FILES,
        score_files(),
        all_shard_dirs(),
        spm_files(),
        figure_files(),
        geneval_layout_dirs(),
        geneval_table_files(),
        report_table_html_files(),
    default_target: True
