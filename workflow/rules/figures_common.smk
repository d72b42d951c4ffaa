# The paper's figures (issue 7): one job per block of the config's `figures` section, each a thin
# `python -m spo figure <name>` call (spo/report/figures.py). Outputs: results/figures/<name>.png
# (in the Snakemake report, category "Figures", caption workflow/report/figure_<name>.rst) and
# <name>.json, the numbers behind it.
import json
from types import SimpleNamespace

FIGURE_NAMES = list(CONFIG.get("figures") or {})
# Sidecars beyond the PNG and its JSON.
FIGURE_EXTRA = {"figure6": [".csv"], "compute": [".csv", ".md"]}


def _figure_spec(name):
    return CONFIG["figures"][name]


def figure_files():
    return [f"results/figures/{name}.png" for name in FIGURE_NAMES]


def _score_files_of(methods, prompt_set):
    return [
        f"results/scores/{group}/{method}/{prompt_set}/shard-{i}.parquet"
        for group in scoring_groups()
        for method in methods
        for i in range(n_shards(prompt_set))
    ]


def _trained_methods():
    """Trained methods the run evaluates (a profile may define more than it runs)."""
    return [m for m in evaluated_methods(CONFIG) if "train" in CONFIG["methods"][m]]


def figure_inputs(name):
    """What figure `name` reads (eager: figure outputs have no wildcards)."""
    from spo.report.figures import figure_methods

    spec = _figure_spec(name)
    if name in ("figure2", "figure11", "lora_transfer"):
        return [s for m in figure_methods(CONFIG, name) for s in shard_dirs(m, spec["prompt_set"])]
    if name in ("figure5", "training_curves"):
        return [f"results/train/{m}" for m in figure_methods(CONFIG, name)]
    if name == "figure6":
        return _score_files_of(figure_methods(CONFIG, name), spec["prompt_set"])
    if name == "disagreement":
        splits = spec.get("splits") or ["train", "validation"]
        return [f"results/spm/pairs/{spec['dataset']}/{split}" for split in splits]
    if name == "spm_accuracy":
        runs = spec.get("runs") or list(((CONFIG.get("spm") or {}).get("runs") or {}))
        return [f"results/spm/{run}/validation.csv" for run in runs]
    if name == "compute":  # last: after every job whose benchmark it sums
        others = [f for f in figure_files() if f != "results/figures/compute.png"]
        trained = [f"results/train/{m}" for m in _trained_methods()]
        return table_files() + score_files() + spm_files() + trained + others
    raise WorkflowError(f"figures.{name}: no input rule for this figure in workflow/rules/figures.smk")


def figure_weight_inputs(name):
    """The tiny weights of the disagreement figure's predictor (nothing for hub / local weights),
    and the paper's numbers (data/paper/tables.yaml) for the figures that quote them."""
    if name in ("figure6", "compute"):
        return [f for f in ["data/paper/tables.yaml"] if Path(f).is_file()]
    if name != "disagreement":
        return []
    metric = _figure_spec(name)["predictor"]
    weights = (CONFIG["metrics"].get(metric) or {}).get("weights") or {}
    return [f"{MODELS_ROOT}/metrics/{metric}"] if any("tiny" in s for s in weights.values()) else []


def compute_gpus():
    """{stage: {first wildcard or default: GPUs}} as the rules asked for them (compute figure)."""
    keys = {
        "generate": ("method", list(CONFIG["methods"])),
        "train": ("method", _trained_methods()),
        "score": ("scoring", list(scoring_groups())),
        "train_spm": ("run", list(((CONFIG.get("spm") or {}).get("runs") or {}))),
        "spm_latents": ("model", list(CONFIG["models"])),
    }

    def gpus(stage, wildcards):
        # job_size without its one-time SLURM partition check, which must run at submission.
        size = JOB_SIZES[stage][_job_kind(stage, wildcards)]._asdict()
        size.update((CONFIG.get("resources") or {}).get(stage, {}))
        return size["gpu"]

    out = {}
    for stage in JOB_SIZES:
        if stage in keys:
            wildcard, values = keys[stage]
            out[stage] = {v: gpus(stage, SimpleNamespace(**{wildcard: v})) for v in values}
        else:
            out[stage] = gpus(stage, SimpleNamespace())
    return json.dumps(out, separators=(",", ":"))


def figure_outputs(name):
    out = {
        "png": report(f"results/figures/{name}.png", category="Figures",
                      caption=f"../report/figure_{name}.rst"),
        "data": f"results/figures/{name}.json",
    }
    for ext in FIGURE_EXTRA.get(name, []):
        out[ext.strip(".")] = f"results/figures/{name}{ext}"
    return out


