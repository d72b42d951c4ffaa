"""Tables: per (method, prompt set, metric) mean, std, n and a bootstrap CI over prompts.

Written under ``results/tables/`` as ``<prompt_set>.csv`` (long form, one row per method and
metric) and ``<prompt_set>.md`` (one row per method, one column per metric, with its version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from spo.config import (evaluated_methods, evaluated_prompt_sets, method_spec, prompt_set_spec,
                        tables_settings)
from spo.io import write_text_atomic
from spo.stats import bootstrap_mean_ci, paired_bootstrap_diff_ci, replicated_mean_ci

SUMMARY_COLUMNS = ["prompt_set", "method", "metric", "metric_version", "mean", "std", "n_images",
                   "n_prompts", "ci_low", "ci_high", "confidence"]
DELTA_COLUMNS = ["baseline", "delta", "delta_ci_low", "delta_ci_high", "n_paired_prompts"]


def summarise(scores: pd.DataFrame, *, samples: int, confidence: float, seed: int) -> pd.DataFrame:
    """Aggregate per-image scores (``spo.score.SCORE_COLUMNS``) into ``SUMMARY_COLUMNS`` rows."""
    rows = []
    keys = ["prompt_set", "method", "metric", "metric_version"]
    for (prompt_set, method, metric, version), group in scores.groupby(keys, sort=True):
        per_prompt = group.groupby("prompt_id")["score"].mean().to_numpy()
        low, high = bootstrap_mean_ci(per_prompt, samples=samples, confidence=confidence, seed=seed)
        rows.append({"prompt_set": prompt_set, "method": method, "metric": metric,
                     "metric_version": version, "mean": group["score"].mean(),
                     "std": group["score"].std(ddof=1) if len(group) > 1 else 0.0,
                     "n_images": len(group), "n_prompts": len(per_prompt), "ci_low": low,
                     "ci_high": high, "confidence": confidence})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def baseline_deltas(scores: pd.DataFrame, baselines: dict[str, str], *, samples: int,
                    confidence: float, seed: int) -> pd.DataFrame:
    """Paired difference of each method to its baseline, per prompt set and metric.

    Pairs are matched prompts (per-prompt mean over images; both methods use the same seeds), and
    the CI is a paired bootstrap over prompts, so shared prompt difficulty cancels out.
    Returns rows with ``prompt_set, method, metric`` plus ``DELTA_COLUMNS``.
    """
    per_prompt = scores.groupby(["prompt_set", "method", "metric", "prompt_id"])["score"].mean()
    rows = []
    for (prompt_set, method, metric), _ in scores.groupby(["prompt_set", "method", "metric"]):
        base = baselines.get(method)
        if base is None or (prompt_set, base, metric) not in per_prompt.index.droplevel(3):
            continue
        mine, theirs = per_prompt[(prompt_set, method, metric)], per_prompt[(prompt_set, base, metric)]
        common = mine.index.intersection(theirs.index)
        diff, low, high = paired_bootstrap_diff_ci(mine[common].to_numpy(), theirs[common].to_numpy(),
                                                   samples=samples, confidence=confidence, seed=seed)
        rows.append({"prompt_set": prompt_set, "method": method, "metric": metric, "baseline": base,
                     "delta": diff, "delta_ci_low": low, "delta_ci_high": high,
                     "n_paired_prompts": len(common)})
    return pd.DataFrame(rows, columns=["prompt_set", "method", "metric", *DELTA_COLUMNS])


def replicate_rows(scores: pd.DataFrame, replicates: dict[str, Sequence[str]],
                   baselines: dict[str, str], *, confidence: float) -> pd.DataFrame:
    """One row per (prompt set, pooled name, metric): several runs of one recipe as replicates.

    ``replicates`` maps a pooled row's name to the methods that are its independent runs (one
    recipe, other seeds; ``tables.replicates`` in the config). Its ``mean`` and ``delta`` average
    the runs over the prompts every run and the baseline share; their CIs count the run-to-run
    variation as well as the prompts' (``spo.stats.replicated_mean_ci``), which a single run's
    paired CI over prompts cannot. Returns ``SUMMARY_COLUMNS`` + ``DELTA_COLUMNS`` + ``runs``.
    """
    per_prompt = scores.groupby(["prompt_set", "method", "metric", "prompt_id"])["score"].mean()
    have = set(per_prompt.index.droplevel(3))
    rows = []
    for name, members in replicates.items():
        base = baselines.get(members[0])
        for prompt_set, metric in sorted({(p, m) for p, _, m in have}):
            if not all((prompt_set, m, metric) in have for m in members):
                continue
            runs = [per_prompt[(prompt_set, m, metric)] for m in members]
            common = runs[0].index
            for run in runs[1:]:
                common = common.intersection(run.index)
            paired = base is not None and (prompt_set, base, metric) in have
            if paired:
                common = common.intersection(per_prompt[(prompt_set, base, metric)].index)
            values = np.stack([run[common].to_numpy() for run in runs])
            mean, low, high = replicated_mean_ci(values, confidence=confidence)
            member_scores = scores[(scores["prompt_set"] == prompt_set) & (scores["metric"] == metric)
                                   & scores["method"].isin(members)]
            row = {"prompt_set": prompt_set, "method": name, "metric": metric,
                   "metric_version": member_scores["metric_version"].iloc[0], "mean": mean,
                   "std": member_scores["score"].std(ddof=1), "n_images": len(member_scores),
                   "n_prompts": len(common), "ci_low": low, "ci_high": high,
                   "confidence": confidence, "runs": len(members)}
            if paired:
                theirs = per_prompt[(prompt_set, base, metric)][common].to_numpy()
                delta, d_low, d_high = replicated_mean_ci(values - theirs, confidence=confidence)
                row.update(baseline=base, delta=delta, delta_ci_low=d_low, delta_ci_high=d_high,
                           n_paired_prompts=len(common))
            rows.append(row)
    return pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *DELTA_COLUMNS, "runs"])


def table_method_order(config: dict[str, Any]) -> list[str]:
    """The evaluated methods in config order, each pooled row right after its last run."""
    order = list(evaluated_methods(config))
    for name, members in tables_settings(config).replicates.items():
        # validated: every run is an evaluated method (spo.config._replicate_errors)
        order.insert(max(order.index(m) for m in members) + 1, name)
    return order


def to_markdown(summary: pd.DataFrame, title: str, method_order: Sequence[str] = ()) -> str:
    """One row per method; each cell 'mean [low, high]'; column names carry the metric version."""
    summary = summary.copy()
    summary["column"] = summary["metric"] + " (" + summary["metric_version"] + ")"
    summary["cell"] = [f"{m:.4g} [{lo:.4g}, {hi:.4g}]"
                       for m, lo, hi in zip(summary["mean"], summary["ci_low"], summary["ci_high"])]
    wide = summary.pivot(index="method", columns="column", values="cell")
    order = [m for m in method_order if m in wide.index] + sorted(set(wide.index) - set(method_order))
    wide = wide.loc[order]
    n = summary.groupby("method")["n_images"].max()
    conf = summary["confidence"].iloc[0]
    from spo.environment import LOCK_FILE, short_lock_hash

    lines = [f"# {title}", "",
             f"Environment: `{LOCK_FILE}` {short_lock_hash()} (sha256 prefix; provenance.json "
             f"of every output has the full hash).", "",
             f"Mean score per method, with the {conf:.0%} bootstrap CI over prompts in brackets.", "",
             "| method | n images | " + " | ".join(wide.columns) + " |",
             "|---|---|" + "---|" * len(wide.columns)]
    for method, row in wide.iterrows():
        lines.append(f"| {method} | {n[method]} | " + " | ".join(row.fillna("-")) + " |")
    if "delta" in summary and summary["delta"].notna().any():
        deltas = summary.dropna(subset=["delta"]).copy()
        deltas["cell"] = [f"{d:+.4g} [{lo:+.4g}, {hi:+.4g}]" for d, lo, hi in
                          zip(deltas["delta"], deltas["delta_ci_low"], deltas["delta_ci_high"])]
        wide = deltas.pivot(index="method", columns="column", values="cell")
        base = deltas.groupby("method")["baseline"].first()
        lines += ["", f"Paired difference to the method's baseline (same prompts and seeds), "
                      f"{conf:.0%} bootstrap CI over prompts:", "",
                  "| method | baseline | " + " | ".join(wide.columns) + " |",
                  "|---|---|" + "---|" * len(wide.columns)]
        for method, row in wide.loc[[m for m in order if m in wide.index]].iterrows():
            lines.append(f"| {method} | {base[method]} | " + " | ".join(row.fillna("-")) + " |")
    pooled = summary[summary.get("runs", pd.Series(1, index=summary.index)) > 1]
    if not pooled.empty:
        lines += ["", "Rows over several runs (" + ", ".join(
            f"{m}: {int(r)} runs" for m, r in pooled.groupby("method")["runs"].first().items())
            + "): the mean of independent runs of one recipe; their CIs count the run-to-run "
              "variation as well as the prompts' (Student's t with "
              "Welch-Satterthwaite degrees of freedom, `spo.stats.replicated_mean_ci`). Each run's own row is above it."]
    return "\n".join(lines) + "\n"


def build_tables(config: dict[str, Any], score_files: Sequence[str | Path],
                 out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every score file, write ``<prompt_set>.csv`` and ``.md`` per evaluated prompt set."""
    scores = pd.concat([pd.read_parquet(f) for f in score_files], ignore_index=True)
    opts = tables_settings(config)
    summary = summarise(scores, samples=opts.bootstrap_samples, confidence=opts.confidence,
                        seed=opts.seed)
    baselines = {m: method_spec(config, m).baseline for m in config["methods"]
                 if method_spec(config, m).baseline}
    deltas = baseline_deltas(scores, baselines, samples=opts.bootstrap_samples,
                             confidence=opts.confidence, seed=opts.seed)
    summary = summary.merge(deltas, on=["prompt_set", "method", "metric"], how="left")
    summary = summary.assign(runs=1)
    replicates = opts.replicates
    if replicates:
        pooled = replicate_rows(scores, replicates, baselines, confidence=opts.confidence)
        summary = pd.concat([summary, pooled], ignore_index=True)
    from spo.environment import short_lock_hash

    summary = summary.assign(environment_lock=short_lock_hash())
    out = {}
    for prompt_set in evaluated_prompt_sets(config, scored=True):
        part = summary[summary["prompt_set"] == prompt_set]
        if part.empty:
            raise ValueError(f"no scores for prompt set '{prompt_set}'; the score files given were "
                             f"{[str(f) for f in score_files]}")
        csv_path = Path(out_dir) / f"{prompt_set}.csv"
        write_text_atomic(csv_path, part.to_csv(index=False, float_format="%.6g"))
        label = prompt_set_spec(config, prompt_set).label_or(prompt_set)
        write_text_atomic(Path(out_dir) / f"{prompt_set}.md",
                          to_markdown(part, f"{label} ({config['profile']} profile)",
                                      table_method_order(config)))
        out[prompt_set] = part
    return out
