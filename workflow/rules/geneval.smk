# Table 3 (GenEval, PAPER.md §3): our images in GenEval's folder layout, and GenEval's own
# results.jsonl imported where the user put it (beside the layout by default: spo/layout.py).
# GenEval's detector (mmdetection 2.x + Mask2Former) does not install from PyPI, so it runs outside
# the DAG; without its results Table 3 says "GenEval not run" instead of failing.


rule geneval_layout:
    input:
        unpack(geneval_layout_inputs),
    output:
        directory(layout.geneval_layout_dir("{method}")),
    params:
        fingerprint=geneval_fingerprint,
    log:
        layout.log_file("geneval_layout", "{method}"),
    benchmark:
        layout.benchmark_file("geneval_layout", "{method}")
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-layout --config {RESOLVED_CONFIG} --method {wildcards.method}"
        " --shards {input.shards} --metadata {input.metadata} --out {output} > {log} 2>&1"


rule geneval_table:
    input:
        unpack(geneval_table_inputs),
    output:
        report(
            layout.table_file(layout.GENEVAL_TABLE, "csv"),
            caption="../report/table3_geneval.rst",
            category="Tables",
            subcategory="Table 3 (GenEval)",
            labels={"table": "Table 3 (GenEval)", "format": "CSV"},
        ),
        report(
            layout.table_file(layout.GENEVAL_TABLE, "md"),
            caption="../report/table3_geneval.rst",
            category="Tables",
            subcategory="Table 3 (GenEval)",
            labels={"table": "Table 3 (GenEval)", "format": "Markdown"},
        ),
    params:
        fingerprint=geneval_table_fingerprint,
        out_prefix=geneval_table_prefix,
    log:
        layout.log_file("geneval_table"),
    benchmark:
        layout.benchmark_file("geneval_table")
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-table --config {RESOLVED_CONFIG} --layouts {input.layouts}"
        " --out {params.out_prefix} > {log} 2>&1"


# The tiny profile (geneval.detector: adherence): the DAG scores its own layout with the tiny world's
# analytic detector, writing GenEval's results.jsonl format where a GenEval run would put it.
rule geneval_detect:
    input:
        layout=layout.geneval_layout_dir("{method}"),
    output:
        layout.geneval_results_file("{method}"),
    params:
        fingerprint=geneval_fingerprint,
    log:
        layout.log_file("geneval_detect", "{method}"),
    benchmark:
        layout.benchmark_file("geneval_detect", "{method}")
    localrule: True
    shell:
        "{PYTHON} -m spo geneval-detect --config {RESOLVED_CONFIG} --layout {input.layout}"
        " --out {output} > {log} 2>&1"
