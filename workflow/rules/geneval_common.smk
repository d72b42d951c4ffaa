# Table 3 (GenEval): target lists and input functions for workflow/rules/geneval.smk. No ML logic
# here; the library is spo/report/geneval.py.
from spo.report.geneval import RESULTS_PATTERN  # `geneval.results`' default, from spo/layout.py

# The typed block (spo.config_blocks.GenevalSettings; what it names was checked at load, by
# spo.config.validate_config); the mapping itself only goes into the jobs' fingerprints.
GENEVAL = CONFIG.get("geneval") or {"enabled": False}
GENEVAL_SPEC = geneval_settings(CONFIG)
GENEVAL_ON = GENEVAL_SPEC is not None and GENEVAL_SPEC.enabled


def geneval_methods():
    return list(GENEVAL_SPEC.methods) if GENEVAL_ON else []


def geneval_layout_dirs():
    return [layout.geneval_layout_dir(m) for m in geneval_methods()]


def geneval_results_file(method):
    """Where the user puts GenEval's results.jsonl for a method (never written by the DAG)."""
    return (GENEVAL_SPEC.results or RESULTS_PATTERN).format(method=method)


def geneval_table_files():
    if not GENEVAL_ON:
        return []
    return [layout.table_file(layout.GENEVAL_TABLE, ext) for ext in ("csv", "md")]


def geneval_layout_inputs(wildcards):
    return {"shards": shard_dirs(wildcards.method, GENEVAL_SPEC.prompt_set),
            "metadata": GENEVAL_SPEC.metadata["path"]}


def geneval_table_inputs(wildcards):
    """The layouts, and each results.jsonl: the detector's (tiny profile, a DAG output), or what the
    user has put in place (a file that appears later changes the input set, so Snakemake reruns
    Table 3 and imports it)."""
    if GENEVAL_SPEC.detector:
        return {"layouts": geneval_layout_dirs(),
                "results": [layout.geneval_results_file(m) for m in geneval_methods()]}
    return {"layouts": geneval_layout_dirs(),
            "results": [f for m in geneval_methods() if Path(f := geneval_results_file(m)).is_file()]}


def geneval_table_prefix(wildcards, output):
    """The outputs' path without suffix: the stage writes <prefix>.csv and <prefix>.md."""
    return str(Path(output[0]).with_suffix(""))


def geneval_fingerprint(wildcards):
    from spo.config import images_per_prompt

    return stable_hash([GENEVAL, CONFIG["prompt_sets"][GENEVAL_SPEC.prompt_set],
                        images_per_prompt(CONFIG, GENEVAL_SPEC.prompt_set)])


def geneval_table_fingerprint(wildcards):
    return stable_hash([geneval_fingerprint(wildcards), CONFIG["generation"],
                        {m: CONFIG["methods"][m] for m in geneval_methods()}])
