# spo-repro: the whole paper as one DAG.
#   snakemake --cores all                                   embedded tiny profile (CPU, minutes)
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
# The logic lives in the `spo` package; rules are thin `python -m spo <stage>` calls.
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/resources.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/spm_common.smk"
include: "workflow/rules/spm.smk"


# Shards and scores are targets too, not only the tables: Snakemake (since 7.7) does not rebuild a
# deleted intermediate file while everything downstream of it exists, and a researcher who deletes
# a bad shard expects it (and only what depends on it) to be rebuilt.
rule all:
    input:
        table_files(),
        score_files(),
        all_shard_dirs(),
        spm_files(),
    default_target: True
