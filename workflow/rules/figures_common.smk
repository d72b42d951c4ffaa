# The paper's figures (issue 7): one job per block of the config's `figures` section, each a thin
# `python -m spo figure <name>` call (spo/report/figures.py). Outputs: <name>.png
# (layout.figure_file; in the Snakemake report, category "Figures", caption
# workflow/report/figure_<name>.rst) and <name>.json, the numbers behind it. What each figure reads, writes and takes comes from the
# figure registry (spo/report/figure_registry.py); this file only turns that into paths.
import json
from types import SimpleNamespace

from spo.report.figure_registry import FIGURES as FIGURE_REGISTRY

FIGURE_NAMES = list(CONFIG.get("figures") or {})


def figure_files():
    return [layout.figure_file(name, "png") for name in FIGURE_NAMES]


def _score_files_of(methods, prompt_set):
    return [
        layout.score_file(group, method, prompt_set, i)
        for group in scoring_groups()
        for method in methods
        for i in range(n_shards(prompt_set))
    ]


def _tiny_metric_weights(metric):
    """A metric's tiny weights, which a rule builds (nothing for hub / local weights)."""
    weights = metric_spec(CONFIG, metric).weights if metric in CONFIG["metrics"] else {}
    return [layout.tiny_metric_dir(metric)] if any(is_tiny(s) for s in weights.values()) else []


# The paths of each kind of file a figure reads (spo.report.figure_registry.KINDS).
FIGURE_READS = {
    "shards": lambda r: [s for m in r.names for s in shard_dirs(m, r.prompt_set)],
    "scores": lambda r: _score_files_of(r.names, r.prompt_set),
    "trained": lambda r: [layout.train_dir(m) for m in r.names],
    "spm_pairs": lambda r: [layout.spm_pairs_dir(r.dataset, split) for split in r.names],
    "spm_validation": lambda r: [layout.spm_validation_csv(run) for run in r.names],
    "tables": lambda r: table_files(),
    "all_scores": lambda r: score_files(),
    "spm_outputs": lambda r: spm_files(),
    "figures": lambda r: [layout.figure_file(name, "png") for name in r.names],
    "metric_weights": lambda r: [p for metric in r.names for p in _tiny_metric_weights(metric)],
    "paper_numbers": lambda r: [f for f in ["data/paper/tables.yaml"] if Path(f).is_file()],
}


def _figure_paths(name, passed):
    reads = [r for r in FIGURE_REGISTRY[name].read_list(CONFIG) if r.passed == passed]
    unknown = sorted({r.kind for r in reads} - set(FIGURE_READS))
    if unknown:
        raise WorkflowError(f"figures.{name} reads {unknown}: no paths for them in FIGURE_READS "
                            f"(workflow/rules/figures_common.smk)")
    return [path for r in reads for path in FIGURE_READS[r.kind](r)]


def figure_inputs(name):
    """What figure `name` reads and is given after --inputs (eager: figure outputs have no
    wildcards)."""
    return _figure_paths(name, passed=True)


def figure_weight_inputs(name):
    """What figure `name` waits for but finds itself: the tiny weights of the disagreement
    figure's predictor (under --models-root), the paper's numbers (data/paper/tables.yaml)."""
    return _figure_paths(name, passed=False)


def _trained_methods():
    """Trained methods the run evaluates (a profile may define more than it runs)."""
    return [m for m in evaluated_methods(CONFIG) if method_spec(CONFIG, m).trained]


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
        size.update(resources_override(CONFIG, stage))
        return size["gpu"]

    out = {}
    for stage in JOB_SIZES:
        if stage in keys:
            wildcard, values = keys[stage]
            out[stage] = {v: gpus(stage, SimpleNamespace(**{wildcard: v})) for v in values}
        else:
            out[stage] = gpus(stage, SimpleNamespace())
    return json.dumps(out, separators=(",", ":"))


# The figure options (spo.report.figure_registry.ARGUMENTS) the rule passes where a figure takes
# them; --models-root is passed to every figure, --benchmarks keeps its default (the rules' benchmarks).
FIGURE_OPTIONS = {"gpus": lambda: f"--gpus '{compute_gpus()}'"}


def figure_extra_args(name):
    return " ".join(FIGURE_OPTIONS[a]() for a in FIGURE_REGISTRY[name].extra if a in FIGURE_OPTIONS)


def figure_outputs(name):
    out = {
        "png": report(layout.figure_file(name, "png"), category="Figures",
                      caption=f"../report/{FIGURE_REGISTRY[name].caption}"),
        "data": layout.figure_file(name, "json"),
    }
    for ext in FIGURE_REGISTRY[name].sidecars:
        out[ext.strip(".")] = layout.figure_file(name, ext.strip("."))
    return out
