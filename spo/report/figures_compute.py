"""The compute table: wall-clock seconds and GPU-hours per stage (from every job's benchmark TSV)
and per trained method (its training job plus its SPM run), beside the paper's GPU-hours and with
each method's preference gain per hour of its own jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from spo import layout

from spo.report.figure_registry import ComputeSettings, figure_settings
from spo.report.figures_common import matplotlib_pyplot, paper_data, save_figure, sidecar, write_data

# PAPER.md §1.6: 4 x A100 GPU-hours of training incl. the SPM (SPO), and Diffusion-DPO's.
PAPER_GPU_HOURS = {"sd15": {"spo": 80.0, "diffusion-dpo": 384.0},
                   "sdxl": {"spo": 234.0, "diffusion-dpo": 4800.0}}


def paper_gpu_hours(root: str | Path = ".") -> dict[str, dict[str, float]]:
    """{family: {spo, diffusion-dpo}} GPU-hours: data/paper/tables.yaml ``compute`` when present."""
    data, _ = paper_data(root)
    if not data or "compute" not in data:
        return PAPER_GPU_HOURS
    compute = data["compute"]
    return {family: {"spo": compute["num_gpus"] * (m["spo_finetune_hours"] + m["spm_train_hours"]),
                     "diffusion-dpo": m["diffusion_dpo_gpu_hours"]}
            for family, m in compute["models"].items()}


def _preference_gains(inputs: Sequence[str], metric: str) -> dict[str, dict[str, float]]:
    """method -> its paired difference to its baseline in ``metric``, from the summary tables
    among ``inputs`` (results/tables/<prompt set>.csv; the first table that has the method)."""
    out: dict[str, dict[str, float]] = {}
    for path in inputs:
        if not (str(path).endswith(".csv") and "/tables/" in str(path)):
            continue
        table = pd.read_csv(path)
        if "delta" not in table:
            continue
        rows = table[(table["metric"] == metric) & table["delta"].notna()]
        for r in rows.itertuples(index=False):
            out.setdefault(r.method, {"delta": float(r.delta), "delta_ci_low": float(r.delta_ci_low),
                                      "delta_ci_high": float(r.delta_ci_high)})
    return out


def compute_table(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                  root: str | Path = ".", gpus: dict[str, Any] | None = None,
                  benchmarks: str | Path = layout.BENCHMARKS_ROOT) -> dict[str, Any]:
    """Wall-clock seconds and GPU-hours per stage from the benchmark TSVs, and per trained method
    (its training plus its SPM run) beside the paper's GPU-hours (PAPER.md §1.6).

    ``gpus``: {stage: N} or {stage: {"default": N, <first wildcard of the job>: N}}, the GPUs each
    job held (the workflow passes what its rules asked for).
    """
    from spo.compute import read_benchmarks
    from spo.config import method_spec, model_spec, train_settings
    from spo.io import write_text_atomic

    gpus = gpus or {}

    def gpu_count(stage: str, job: str) -> int:
        value = gpus.get(stage, 0)
        if isinstance(value, dict):
            parts = job.split("/")
            for key in (parts[0], parts[-1]):
                if key in value:
                    return int(value[key])
            return int(value.get("default", 0))
        return int(value)

    records = read_benchmarks(benchmarks)
    records["gpus"] = [gpu_count(s, j) for s, j in zip(records["stage"], records["job"])]
    records["gpu_hours"] = records["seconds"] * records["gpus"] / 3600
    stages = records.groupby("stage").agg(jobs=("job", "size"), seconds=("seconds", "sum"),
                                          gpu_hours=("gpu_hours", "sum")).reset_index()
    methods, paper_hours = [], paper_gpu_hours(root)
    for method in config["methods"]:
        mspec = method_spec(config, method)
        if not mspec.trained:
            continue
        train = records[(records["stage"] == "train") & (records["job"] == method)]
        if train.empty:
            continue
        settings = train_settings(config, method)
        spm = records[(records["stage"] == "train_spm")
                      & (records["job"] == settings.preference.get("run", "\0"))]
        family = model_spec(config, mspec.model).family
        algorithm = settings.algorithm
        paper = paper_hours.get(family, {})
        methods.append({"method": method, "family": family, "algorithm": algorithm,
                        "train_seconds": float(train["seconds"].sum()),
                        "spm_seconds": float(spm["seconds"].sum()),
                        "gpu_hours": float(train["gpu_hours"].sum() + spm["gpu_hours"].sum()),
                        "paper_spo_gpu_hours": paper.get("spo"),
                        "paper_diffusion_dpo_gpu_hours": paper.get("diffusion-dpo")})
    spec = figure_settings(config, name) or ComputeSettings()  # no block: every default
    gains = _preference_gains(inputs, spec.metric)
    for m in methods:
        g = gains.get(m["method"])
        cost = m["train_seconds"] + m["spm_seconds"]
        m.update(gain=g["delta"] if g else None,
                 gain_ci=[g["delta_ci_low"], g["delta_ci_high"]] if g else None,
                 gain_per_hour=(3600 * g["delta"] / cost) if g and cost > 0 else None)
    per_method = pd.DataFrame(methods)
    write_text_atomic(sidecar(out, ".csv"), pd.concat([stages.assign(table="stage"),
                                                        per_method.assign(table="method")])
                      .to_csv(index=False, float_format="%.6g"))
    lines = [f"# Compute ({config['profile']} profile)", "",
             "Summed from results/benchmarks/**.tsv (wall-clock seconds of each job); GPU-hours = "
             "seconds x GPUs the job's rule asked for / 3600.", "",
             "| stage | jobs | wall-clock s | GPU-hours |", "|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.jobs} | {r.seconds:.1f} | {r.gpu_hours:.3g} |" for r in stages.itertuples()]
    lines += ["", "Per trained method (its training job plus its SPM run), beside the paper's 4 x A100 "
              "GPU-hours (PAPER.md §1.6: SPO 80 SD-1.5 / 234 SDXL incl. the SPM; Diffusion-DPO 384 / 4,800):",
              "", "| method | family | algorithm | train s | SPM s | GPU-hours | paper SPO GPU-h | "
              "paper Diffusion-DPO GPU-h |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['family']} | {r['algorithm']} | {r['train_seconds']:.1f} | "
              f"{r['spm_seconds']:.1f} | {r['gpu_hours']:.3g} | {r['paper_spo_gpu_hours']} | "
              f"{r['paper_diffusion_dpo_gpu_hours']} |" for r in methods]
    if any(r["gain"] is not None for r in methods):
        metric = spec.metric
        lines += ["", f"Gain per compute: each method's paired difference in `{metric}` to its base model "
                      f"(held-out prompts, 95 % CI) per hour of its own jobs (training plus its SPM "
                      f"run; one CPU core each in the tiny profile). The paper's counterpart: SPO "
                      f"used 20.8 % (SD-1.5) and 4.9 % (SDXL) of Diffusion-DPO's GPU-hours for a "
                      f"larger gain.", "",
                  f"| method | algorithm | Δ {metric} [95% CI] | train + SPM s | Δ per hour |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['algorithm']} | {r['gain']:+.3g} [{r['gain_ci'][0]:+.3g}, "
                  f"{r['gain_ci'][1]:+.3g}] | {r['train_seconds'] + r['spm_seconds']:.0f} | "
                  f"{r['gain_per_hour']:+.3g} |" for r in methods if r["gain"] is not None]
    write_text_atomic(sidecar(out, ".md"), "\n".join(lines) + "\n")
    plt = matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(stages) + 1.5))
    ax.barh(stages["stage"], stages["seconds"], color="#2b8cbe")
    for y, (s, g) in enumerate(zip(stages["seconds"], stages["gpu_hours"])):
        ax.text(s, y, f" {s:.0f} s, {g:.3g} GPU-h", va="center", fontsize=7)
    ax.set_xlabel("wall-clock seconds, summed over jobs")
    ax.set_title(f"Compute per stage ({config['profile']} profile)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)
    return write_data(out, {"figure": name, "stages": stages.to_dict(orient="records"),
                            "methods": methods})
