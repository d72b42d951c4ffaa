# Config resolution and validation, target lists and input functions. No ML logic here.
import os
import sys
from pathlib import Path

from spo.config import ConfigError, evaluated_methods, evaluated_pairs, evaluated_prompt_sets, load_yaml, resolve_config, train_settings, validate_config
from spo.config import generation_spec, geneval_settings, method_spec, metric_spec, model_spec, prompt_set_spec, resources_override, scoring_settings
from spo import layout
from spo.source_kind import is_tiny
from spo.io import stable_hash, write_text_atomic

import yaml

# `config` holds whatever --configfile / --config gave (nothing: the embedded tiny default).
try:
    for _configfile in workflow.configfiles:  # Snakemake's own YAML reading lets a repeated key win
        load_yaml(_configfile)
    CONFIG = resolve_config(config, workflow.basedir)
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
# An install that is not the lock (requirements.lock) may give other numbers than the expected
# results: say which packages differ before the first job runs (each job's log repeats it).
from spo.environment import check_install, mismatch_message

if not workflow.remote_exec and check_install():
    logger.warning(f"WARNING: {mismatch_message(check_install())}")

RESOLVED_CONFIG = layout.resolved_config(stable_hash(CONFIG))


def write_resolved_config():
    if not Path(RESOLVED_CONFIG).exists():
        write_text_atomic(RESOLVED_CONFIG, yaml.safe_dump(CONFIG, sort_keys=False))


# Written when jobs are about to run (onstart: not on a dry run, `--list`, `--lint` or a run with
# nothing to do, which write nothing under results/), or by a job spawned on a cluster node.
if workflow.remote_exec:
    write_resolved_config()


# The tiny profile's job server (config key `job_server`, spo/job_server.py): local executor only;
# a server that fails to start is an error before any job runs.
JOB_SERVER = []


def start_job_server():
    plugin = workflow.executor_plugin
    if not CONFIG.get("job_server") or workflow.remote_exec or plugin is None or plugin.name != "local":
        return
    from spo import job_server

    try:
        server = job_server.start(layout.log_file("job_server"), python=PYTHON)
    except job_server.JobServerError as exc:
        raise WorkflowError(f"{exc}\n(set `job_server: false` in the config to run jobs directly)")
    JOB_SERVER.append(server)
    os.environ[job_server.ENV] = server.env_value
    logger.info(f"job server: every job runs as a fork of pid {server.process.pid} ({server.log_path})")


def stop_job_server():
    while JOB_SERVER:
        JOB_SERVER.pop().stop()


onstart:
    write_resolved_config()
    start_job_server()


onsuccess:
    stop_job_server()


onerror:
    stop_job_server()


PYTHON = sys.executable
# Stages that read many models under one root get it as --models-root (spo/layout.py names it).
MODELS_ROOT = layout.MODELS_ROOT


wildcard_constraints:
    method="[A-Za-z0-9][A-Za-z0-9_.-]*",
    prompt_set="[A-Za-z0-9][A-Za-z0-9_.-]*",
    metric="[A-Za-z0-9][A-Za-z0-9_.-]*",
    scoring="[A-Za-z0-9][A-Za-z0-9_.-]*",
    model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    shard="[0-9]+",
    checksum="[0-9a-f]{16}",


def n_shards(prompt_set):
    from spo.prompts import count_prompts, num_shards

    spec = prompt_set_spec(CONFIG, prompt_set)
    return num_shards(count_prompts(spec, workflow.basedir), generation_spec(CONFIG).shard_size)


def shard_dirs(method, prompt_set):
    return [layout.shard_dir(method, prompt_set, i) for i in range(n_shards(prompt_set))]


def all_shard_dirs():
    return [
        shard
        for method, prompt_set in evaluated_pairs(CONFIG)
        for shard in shard_dirs(method, prompt_set)
    ]


ALL_METRICS = "all-metrics"


def scoring_groups():
    """Scoring jobs: one per metric (clusters), or one for every metric (saves CPU start-ups)."""
    if scoring_settings(CONFIG).one_job_per_metric:
        return {metric: [metric] for metric in CONFIG["metrics"]}
    return {ALL_METRICS: list(CONFIG["metrics"])}


def metric_group(name):
    return scoring_groups()[name]


def score_files():
    return [
        layout.score_file(group, method, prompt_set, i)
        for group in scoring_groups()
        for method, prompt_set in evaluated_pairs(CONFIG, scored=True)
        for i in range(n_shards(prompt_set))
    ]


def table_files():
    return [
        layout.table_file(prompt_set, ext)
        for prompt_set in evaluated_prompt_sets(CONFIG, scored=True)
        for ext in ("csv", "md")
    ]


def model_inputs(model):
    """What loading `models.<model>` reads that the DAG knows of: the tiny pipeline it builds, or
    the manifest of the shipped tiny world (a rebuilt world reruns its users); nothing for hub or
    other local models."""
    from spo.models.sources import shipped_manifest

    spec = model_spec(CONFIG, model)
    if is_tiny(spec.source):
        return {"model": layout.tiny_pipeline_dir(model)}
    parts = (spec.source, spec.vae, spec.unet)
    manifests = {shipped_manifest(part) for part in parts if part is not None} - {None}
    return {"world": sorted(manifests)} if manifests else {}


def tiny_model_inputs(wildcards):
    return model_inputs(method_spec(CONFIG, wildcards.method).model)


def prompt_source_inputs(prompt_set):
    """The local file a prompt set is read from: shipped, or fetched by rule fetch_prompts."""
    from spo.prompts import fetched_prompt_file

    source = prompt_set_spec(CONFIG, prompt_set).source
    if "path" in source:
        return {"prompts": source["path"]}
    if "url" in source:
        return {"prompts": str(fetched_prompt_file(source))}
    return {}


def prompt_file_inputs(wildcards):
    return prompt_source_inputs(wildcards.prompt_set)


def fetch_prompt_set(wildcards):
    """The prompt set whose `url` source is stored under this checksum name."""
    for name in CONFIG["prompt_sets"]:
        if prompt_set_spec(CONFIG, name).source.get("url", {}).get("sha256", "")[:16] == wildcards.checksum:
            return name
    raise WorkflowError(f"no prompt set with a url source of sha256 {wildcards.checksum}...")


def transferred_lora_method(method):
    """The trained method whose LoRA `methods.<method>.lora: {path}` loads (LoRA transfer), or
    None; a path into the training outputs that names no trained method stops the DAG."""
    try:
        return layout.lora_transfer_method(CONFIG, method)
    except layout.LayoutError as exc:
        raise WorkflowError(str(exc)) from None


def generate_inputs(wildcards):
    """What generating a shard reads. `lora`: the method's own training output, passed to the
    stage as --lora; `transferred_lora`: another method's training output that the method's
    config `lora: {path}` names (LoRA transfer), only waited for: the stage reads that path from
    the config like any released LoRA."""
    inputs = {**tiny_model_inputs(wildcards), **prompt_file_inputs(wildcards)}
    if method_spec(CONFIG, wildcards.method).trained:
        inputs["lora"] = layout.train_dir(wildcards.method)
    transferred = transferred_lora_method(wildcards.method)
    if transferred is not None:
        inputs["transferred_lora"] = layout.train_dir(transferred)
    return inputs


def generate_lora_arg(wildcards, input):
    """--lora <the method's training output> for a trained method, nothing for the others."""
    return f"--lora {input.lora}" if "lora" in input.keys() else ""


def train_inputs(wildcards):
    """What training a method reads: its base model, training prompts and preference model."""
    train = train_settings(CONFIG, wildcards.method)  # the typed block the config check parsed
    inputs = tiny_model_inputs(wildcards)
    if train.algorithm == "diffusion-dpo":
        # Offline: the train split of the pair dataset (prompts and labels included; the tiny
        # pairs carry their latents, real ones are VAE-encoded by the trainer).
        inputs["pairs"] = layout.spm_pairs_dir(train.algorithm_settings().data, "train")
        return inputs
    inputs.update(prompt_source_inputs(train.prompts))
    preference = train.preference
    if preference.get("name") in ("spm", "spm-no-step") and "run" in preference:
        inputs["preference"] = layout.spm_model_dir(preference["run"])
    # `pickscore` without a `path` reads the SPM's initialisation; the tiny one is a DAG output.
    spm_init = ((CONFIG.get("spm") or {}).get("pickscore") or {}).get("model", {})
    if preference.get("name") == "pickscore" and "path" not in preference and is_tiny(spm_init):
        inputs["preference"] = layout.pickscore_init_dir()
    return inputs


def train_fingerprint(wildcards):
    """The config of everything a training reads: its `train:` block, base model, seed and
    resolution, and the config of its prompt set, preference model (`spm.runs.<run>` with its
    data, `spm.pickscore`) or pair dataset. The trainer also records the content of each input in
    the checkpoint folder (spo/training/checkpoints.py: claim) and resumes only on a match.
    What is hashed are the config's mappings; the typed blocks only choose which."""
    method, spm = method_spec(CONFIG, wildcards.method), CONFIG.get("spm") or {}
    train = train_settings(CONFIG, wildcards.method)
    inputs = {}
    if train.algorithm == "diffusion-dpo":
        inputs["pairs"] = (spm.get("datasets") or {}).get(train.algorithm_settings().data)
    else:
        inputs["prompts"] = prompt_set_spec(CONFIG, train.prompts).source
        preference = train.preference
        run = (spm.get("runs") or {}).get(preference.get("run"))
        if preference.get("name") in ("spm", "spm-no-step") and run is not None:
            inputs["spm_run"] = [run, (spm.get("datasets") or {}).get(run.get("data")), spm.get("pickscore")]
        if preference.get("name") == "pickscore" and "path" not in preference:
            inputs["pickscore"] = spm.get("pickscore")
    return stable_hash([method.train, CONFIG["models"][method.model], CONFIG["seed"],
                        generation_spec(CONFIG).resolution, inputs])


def train_checkpoints(wildcards):
    # One folder per training fingerprint: a run whose `train:` block, base model, prompts or
    # preference model config changed must start afresh, not resume the old run's checkpoints.
    return layout.train_checkpoints(wildcards.method, train_fingerprint(wildcards))


def train_launcher(wildcards, resources):
    """'' for one process; accelerate's launcher with one process per GPU the job was given."""
    gpus = int(resources.gpu)
    if gpus <= 1:
        return ""
    return f"accelerate.commands.launch --multi_gpu --num_processes {gpus} -m "


def tiny_metric_inputs(wildcards):
    from spo.models.sources import shipped_manifest

    weights = {m: metric_spec(CONFIG, m).weights for m in metric_group(wildcards.scoring)}
    return {
        "weights": [layout.tiny_metric_dir(m) for m, w in weights.items()
                    if any(is_tiny(s) for s in w.values())],
        # weights of the shipped tiny world (the tiny PickScore): a rebuilt world rescores
        "world": sorted({shipped_manifest(s) for w in weights.values() for s in w.values()} - {None}),
    }


def scoring_metrics(wildcards):
    return " ".join(metric_group(wildcards.scoring))


def generate_fingerprint(wildcards):
    from spo.generate import generation_settings

    return stable_hash(generation_settings(CONFIG, wildcards.method, wildcards.prompt_set))


def model_fingerprint(wildcards):
    return stable_hash(CONFIG["models"][wildcards.model])


def metric_fingerprint(wildcards):
    return stable_hash(CONFIG["metrics"][wildcards.metric])


def scoring_fingerprint(wildcards):
    return stable_hash([CONFIG["metrics"][m] for m in metric_group(wildcards.scoring)])


def tables_fingerprint(wildcards):
    return stable_hash([CONFIG["tables"], CONFIG["evaluate"], CONFIG["profile"],
                        {m: method_spec(CONFIG, m).baseline for m in CONFIG["methods"]}])


def tables_dir(wildcards, output):
    return str(Path(output[0]).parent)


# The tiny world's pretraining (workflow/rules/pretrain.smk).
def pretrain_fingerprint(wildcards=None):
    return stable_hash(CONFIG.get("world") or {})


def pretrain_checkpoints(wildcards):
    # one folder per recipe: a changed `world` block starts afresh instead of resuming stale state
    return layout.pretrain_checkpoints(pretrain_fingerprint(), wildcards.part)
