# Table 3 (GenEval, PAPER.md §3): our images in GenEval's folder layout, and GenEval's own
# results.jsonl imported where the user put it (results/geneval/<method>/results.jsonl by default).
# GenEval's detector (mmdetection 2.x + Mask2Former) does not install from PyPI, so it runs outside
# the DAG; without its results Table 3 says "GenEval not run" instead of failing.


rule geneval_layout:
    input:
        unpack(geneval_layout_inputs),
    output:
        directory(LAYOUT_PATTERN),
    params:
        fingerprint=geneval_fingerprint,
    log:
        "results/logs/geneval_layout/{method}.log",
    benchmark:
        "results/benchmarks/geneval_layout/{method}.tsv"
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-layout --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --shards {input.shards} --metadata {input.metadata} --out {output} > {log} 2>&1"


rule geneval_table:
    input:
        unpack(geneval_table_inputs),
    output:
        report(
            "results/tables/table3_geneval.csv",
            caption="../report/table3_geneval.rst",
            category="Tables",
            subcategory="Table 3 (GenEval)",
            labels={"table": "Table 3 (GenEval)", "format": "CSV"},
        ),
        report(
            "results/tables/table3_geneval.md",
            caption="../report/table3_geneval.rst",
            category="Tables",
            subcategory="Table 3 (GenEval)",
            labels={"table": "Table 3 (GenEval)", "format": "Markdown"},
        ),
    params:
        fingerprint=geneval_table_fingerprint,
    log:
        "results/logs/geneval_table.log",
    benchmark:
        "results/benchmarks/geneval_table.tsv"
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-table --config {RESOLVED_CONFIG} --layouts {input.layouts}"
        " --out results/tables/table3_geneval > {log} 2>&1"


# The tiny profile (geneval.detector: adherence): the DAG scores its own layout with the tiny world's
# analytic detector, writing GenEval's results.jsonl format where a GenEval run would put it.
rule geneval_detect:
    input:
        layout=LAYOUT_PATTERN,
    output:
        RESULTS_PATTERN,
    params:
        fingerprint=geneval_fingerprint,
    log:
        "results/logs/geneval_detect/{method}.log",
    benchmark:
        "results/benchmarks/geneval_detect/{method}.tsv"
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-detect --config {RESOLVED_CONFIG} --layout {input.layout}"
        " --out {output} > {log} 2>&1"
