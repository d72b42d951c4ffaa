# Config resolution and validation, target lists and input functions. No ML logic here.
import sys
from pathlib import Path

from spo.config import ConfigError, resolve_extends, validate_config
from spo.io import stable_hash, write_text_atomic

import yaml

# `config` holds whatever --configfile / --config gave (nothing: the embedded tiny default).
try:
    CONFIG = resolve_extends(config, workflow.basedir)
    validate_config(CONFIG)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# Every job reads the resolved config from a content-addressed file (never rewritten), and carries
# a fingerprint of the part it depends on as a param: editing one model reruns that model's jobs.
#
# `snakemake --lint` findings we keep, on purpose:
# - "Shell command directly uses variable PYTHON / RESOLVED_CONFIG / MODELS_ROOT": as params they
#   would be rerun triggers. PYTHON is this interpreter (so `.venv/bin/snakemake` works without
#   activating the venv) and changes with the install location, RESOLVED_CONFIG changes with *any*
#   config edit; either would rerun every job. What a job depends on is its `fingerprint` param.
# - "Specify a conda environment or container for each rule": every rule runs the same `spo`
#   package in one environment (environment.yml / pyproject.toml); a per-rule conda env would build
#   the multi-GB torch stack once per rule hash for no isolation gain.
RESOLVED_CONFIG = f"results/config/{stable_hash(CONFIG)}.yaml"
if not Path(RESOLVED_CONFIG).exists():
    write_text_atomic(RESOLVED_CONFIG, yaml.safe_dump(CONFIG, sort_keys=False))
PYTHON = sys.executable
MODELS_ROOT = "results/models"


wildcard_constraints:
    method="[A-Za-z0-9][A-Za-z0-9_.-]*",
    prompt_set="[A-Za-z0-9][A-Za-z0-9_.-]*",
    metric="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard="[0-9]+",


def n_shards(prompt_set):
    from spo.prompts import count_prompts, num_shards

    spec = CONFIG["prompt_sets"][prompt_set]
    return num_shards(count_prompts(spec, workflow.basedir), CONFIG["generation"]["shard_size"])


def shard_dirs(method, prompt_set):
    return [
        f"results/images/{method}/{prompt_set}/shard-{i}" for i in range(n_shards(prompt_set))
    ]


def all_shard_dirs():
    return [
        shard
        for method in CONFIG["evaluate"]["methods"]
        for prompt_set in CONFIG["evaluate"]["prompt_sets"]
        for shard in shard_dirs(method, prompt_set)
    ]


def score_files():
    return [
        f"results/scores/{metric}/{method}/{prompt_set}/shard-{i}.parquet"
        for metric in CONFIG["metrics"]
        for method in CONFIG["evaluate"]["methods"]
        for prompt_set in CONFIG["evaluate"]["prompt_sets"]
        for i in range(n_shards(prompt_set))
    ]


def table_files():
    return [
        f"results/tables/{prompt_set}.{ext}"
        for prompt_set in CONFIG["evaluate"]["prompt_sets"]
        for ext in ("csv", "md")
    ]


def tiny_model_inputs(wildcards):
    """The DAG-built tiny pipeline a method needs (nothing for hub or local models)."""
    model = CONFIG["methods"][wildcards.method]["model"]
    if "tiny" in CONFIG["models"][model]["source"]:
        return {"model": f"{MODELS_ROOT}/pipelines/{model}"}
    return {}


def prompt_file_inputs(wildcards):
    source = CONFIG["prompt_sets"][wildcards.prompt_set]["source"]
    return {"prompts": source["path"]} if "path" in source else {}


def generate_inputs(wildcards):
    return {**tiny_model_inputs(wildcards), **prompt_file_inputs(wildcards)}


def tiny_metric_inputs(wildcards):
    weights = CONFIG["metrics"][wildcards.metric].get("weights") or {}
    if any("tiny" in source for source in weights.values()):
        return {"weights": f"{MODELS_ROOT}/metrics/{wildcards.metric}"}
    return {}


def tables_dir(wildcards, output):
    return str(Path(output[0]).parent)


def generate_fingerprint(wildcards):
    from spo.generate import generation_settings

    return stable_hash(generation_settings(CONFIG, wildcards.method, wildcards.prompt_set))


def model_fingerprint(wildcards):
    return stable_hash(CONFIG["models"][wildcards.model])


def metric_fingerprint(wildcards):
    return stable_hash(CONFIG["metrics"][wildcards.metric])


def tables_fingerprint(wildcards):
    return stable_hash([CONFIG["tables"], CONFIG["evaluate"], CONFIG["profile"]])
