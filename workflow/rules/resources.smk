# What each job asks a cluster for: GPUs, memory, wall time, CPUs. No ML logic here.
#
# snakemake-executor-plugin-slurm turns these resources into sbatch flags:
#   gpu -> --gpus=<n> (none when 0)   mem_mb -> --mem   runtime (minutes) -> --time
#   cpus_per_task -> --cpus-per-task (and the same number goes to the job as `threads`)
# Partition, account, GPU model, QoS and --signal are platform facts: they live in the profile
# (profiles/slurm/config.yaml), never here.
#
# A job that loads a real network (hub or local weights) gets the paper's size: one GPU per
# generation or scoring shard. A job that touches only tiny stand-ins, or a metric that loads no
# network (colourfulness), runs on CPU with gpu=0, so the tiny profile runs on any machine and
# through any SLURM. The config's optional `resources.<rule>.<key>` (spo/config_schema.yaml)
# overrides one number of one rule's jobs, whatever the job's kind.
import shutil
import subprocess
from collections import namedtuple

JobSize = namedtuple("JobSize", "gpu mem_mb runtime cpus_per_task")

# Sized for A100 80 GB nodes and the paper profile (config/paper.yaml): a generation shard is 50
# prompts x 4 images; SDXL at 1024 px takes about 10 minutes of that on one A100, SD-1.5 far less,
# so 2 h leaves room for model loading from a cold HF_HOME and a slower GPU. Host memory covers
# loading SDXL in fp32 before the cast (about 14 GB) with head room.
JOB_SIZES = {
    "generate": {"gpu": JobSize(1, 32000, 120, 4), "cpu": JobSize(0, 4000, 30, 1)},
    "score": {"gpu": JobSize(1, 24000, 60, 4), "cpu": JobSize(0, 4000, 30, 1)},
    "tiny_pipeline": {"cpu": JobSize(0, 4000, 30, 1)},
    "tiny_metric": {"cpu": JobSize(0, 4000, 30, 1)},
    # Bootstrap over prompts for every (method, metric): CPU only, memory for all score tables.
    "tables": {"cpu": JobSize(0, 8000, 30, 1)},
    # SPM training (PAPER.md §1.2, §1.6): 8 h (SD-1.5) and 29 h (SDXL) on 4 x A100.
    "train_spm": {"gpu": JobSize(4, 128000, 36 * 60, 16), "cpu": JobSize(0, 8000, 60, 1)},
    # VAE-encoding Pick-a-Pic's images once (a few hours on one GPU for 580k pairs at 1024 px).
    "spm_latents": {"gpu": JobSize(1, 64000, 12 * 60, 8), "cpu": JobSize(0, 8000, 60, 1)},
    # Pair tables: reading Parquet (real data), or generating the tiny pairs (CPU).
    "spm_pairs": {"cpu": JobSize(0, 16000, 4 * 60, 4)},
    "spm_tiny_pickscore": {"cpu": JobSize(0, 4000, 30, 1)},
    # SPO / MSPO LoRA training (PAPER.md §1.5-1.6): SD-1.5 took 12 h and SDXL 29.5 h on 4 x A100;
    # one job holds the node's GPUs. The tiny profile trains in minutes on one CPU core.
    "train": {"gpu": JobSize(4, 128000, 48 * 60, 16), "cpu": JobSize(0, 8000, 60, 1)},
    # The tiny world's pretraining parts (CPU, one core each: the shipped recipe's determinism).
    "pretrain_tiny": {"cpu": JobSize(0, 8000, 90, 1)},
}


def _is_tiny(source):
    from spo.models.sources import is_tiny_source

    return is_tiny_source(source)


def _job_kind(rule_name, wildcards):
    """'gpu' when the job loads a real network, else 'cpu'."""
    if rule_name in ("generate", "train"):
        method = method_spec(CONFIG, wildcards.method)
        sources = [model_spec(CONFIG, method.model).source]
        # A transferred LoRA (`lora: {path}` into another method's training output) is a DAG
        # output, not a checkpoint to size for: its training was sized by the models it read.
        transferred = transferred_lora_method(wildcards.method) is not None
        sources += [getattr(method, key) for key in ("unet", "lora")
                    if getattr(method, key) is not None and not (key == "lora" and transferred)]
        return "cpu" if all(_is_tiny(s) for s in sources) else "gpu"
    if rule_name in ("spm_latents", "train_spm"):
        model = wildcards.model if rule_name == "spm_latents" else _spm_run(wildcards.run)["model"]
        return "cpu" if _is_tiny(model_spec(CONFIG, model).source) else "gpu"
    if rule_name == "score":
        weights = [
            source
            for metric in metric_group(wildcards.scoring)
            for source in metric_spec(CONFIG, metric).weights.values()
        ]
        return "gpu" if any(not _is_tiny(s) for s in weights) else "cpu"
    return "cpu"


def job_size(rule_name, wildcards):
    """One job's resources: the defaults above, then the config's `resources.<rule_name>`."""
    if rule_name not in JOB_SIZES:
        raise WorkflowError(
            f"no cluster sizing for '{rule_name}': add it to JOB_SIZES in workflow/rules/resources.smk"
        )
    size = JOB_SIZES[rule_name][_job_kind(rule_name, wildcards)]._asdict()
    size.update(resources_override(CONFIG, rule_name))
    _check_slurm_partitions_once()
    return size


def job_resource(rule_name, key):
    """A resource callable for `resources:` (Snakemake calls it per job with the wildcards)."""

    def resource(wildcards):
        return job_size(rule_name, wildcards)[key]

    resource.__name__ = f"{rule_name}_{key}"
    return resource


def job_resources(rule_name):
    """The four `resources:` entries of a rule, for `resources: **job_resources("<rule>")`."""
    return {key: job_resource(rule_name, key) for key in JobSize._fields}


def job_threads(rule_name):
    """`threads:` equal to the CPUs asked for, so the job uses what SLURM gave it."""
    return job_resource(rule_name, "cpus_per_task")


# --- Bad input caught before submission: a partition the cluster lacks. -----------------------
# sbatch would reject it only job by job, after the DAG is built and other jobs are queued. The
# check runs once, in the process that submits (not inside jobs, not in dry runs), and only for
# the slurm executor: it is called from the resource callables because the executor is known only
# after the Snakefile is parsed.
_PARTITIONS_CHECKED = []


def _requested_partitions():
    """{where: partition} from the profile's default-resources and set-resources."""
    settings = workflow.resource_settings
    found = {"default-resources": (settings.default_resources or {}).get("slurm_partition")}
    for rule_name, mapping in (settings.overwrite_resources or {}).items():
        found[f"set-resources {rule_name}"] = mapping.get("slurm_partition")
    # Profile values arrive as Resource objects holding the raw (possibly quoted) expression.
    raw = {where: getattr(value, "raw", value) for where, value in found.items()}
    return {where: str(value).strip("'\"") for where, value in raw.items() if value is not None}


def _check_slurm_partitions_once():
    if _PARTITIONS_CHECKED:
        return
    _PARTITIONS_CHECKED.append(True)
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or workflow.remote_exec or workflow.dryrun:
        return
    if shutil.which("sinfo") is None:
        return  # the plugin itself reports a missing SLURM client
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    available = sorted({p.strip().rstrip("*") for p in proc.stdout.split() if p.strip()})
    if proc.returncode != 0 or not available:
        return  # no answer from the cluster: leave it to sbatch
    for where, partition in _requested_partitions().items():
        if partition not in available:
            raise WorkflowError(
                f"the profile's {where} asks for slurm_partition '{partition}', which this cluster "
                f"lacks (sinfo lists: {', '.join(available)}); set slurm_partition in "
                "profiles/slurm/config.yaml or pass --default-resources slurm_partition=<name>"
            )
