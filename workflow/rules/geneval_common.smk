# Table 3 (GenEval): target lists and input functions for workflow/rules/geneval.smk. No ML logic
# here; the library is spo/report/geneval.py.
from spo.report.geneval import RESULTS_PATTERN  # `geneval.results`' default, from spo/layout.py

GENEVAL = CONFIG.get("geneval") or {"enabled": False}


def _check_geneval():
    if not GENEVAL["enabled"]:
        return
    if GENEVAL["prompt_set"] not in CONFIG["prompt_sets"]:
        raise WorkflowError(f"geneval.prompt_set '{GENEVAL['prompt_set']}' is not a key of prompt_sets")
    unknown = [m for m in GENEVAL["methods"] if m not in CONFIG["methods"]]
    if unknown:
        raise WorkflowError(f"geneval.methods names {unknown}, which are not keys of methods")


_check_geneval()


def geneval_methods():
    return list(GENEVAL["methods"]) if GENEVAL["enabled"] else []


def geneval_layout_dirs():
    return [layout.geneval_layout_dir(m) for m in geneval_methods()]


def geneval_results_file(method):
    """Where the user puts GenEval's results.jsonl for a method (never written by the DAG)."""
    return GENEVAL.get("results", RESULTS_PATTERN).format(method=method)


def geneval_table_files():
    if not GENEVAL["enabled"]:
        return []
    return [layout.table_file(layout.GENEVAL_TABLE, ext) for ext in ("csv", "md")]


def geneval_layout_inputs(wildcards):
    return {"shards": shard_dirs(wildcards.method, GENEVAL["prompt_set"]),
            "metadata": GENEVAL["metadata"]["path"]}


def geneval_table_inputs(wildcards):
    """The layouts, and each results.jsonl: the detector's (tiny profile, a DAG output), or what the
    user has put in place (a file that appears later changes the input set, so Snakemake reruns
    Table 3 and imports it)."""
    if GENEVAL.get("detector"):
        return {"layouts": geneval_layout_dirs(),
                "results": [layout.geneval_results_file(m) for m in geneval_methods()]}
    return {"layouts": geneval_layout_dirs(),
            "results": [f for m in geneval_methods() if Path(f := geneval_results_file(m)).is_file()]}


def geneval_table_prefix(wildcards, output):
    """The outputs' path without suffix: the stage writes <prefix>.csv and <prefix>.md."""
    return str(Path(output[0]).with_suffix(""))


def geneval_fingerprint(wildcards):
    from spo.config import images_per_prompt

    return stable_hash([GENEVAL, CONFIG["prompt_sets"][GENEVAL["prompt_set"]],
                        images_per_prompt(CONFIG, GENEVAL["prompt_set"])])


def geneval_table_fingerprint(wildcards):
    return stable_hash([geneval_fingerprint(wildcards), CONFIG["generation"],
                        {m: CONFIG["methods"][m] for m in geneval_methods()}])
