"""Tables: per (method, prompt set, metric) mean, std, n and a bootstrap CI over prompts.

Written under ``results/tables/`` as ``<prompt_set>.csv`` (long form, one row per method and
metric) and ``<prompt_set>.md`` (one row per method, one column per metric, with its version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from spo.config import evaluated_methods, evaluated_prompt_sets
from spo.io import write_text_atomic
from spo.stats import bootstrap_mean_ci, paired_bootstrap_diff_ci

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
    return "\n".join(lines) + "\n"


def build_tables(config: dict[str, Any], score_files: Sequence[str | Path],
                 out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every score file, write ``<prompt_set>.csv`` and ``.md`` per evaluated prompt set."""
    scores = pd.concat([pd.read_parquet(f) for f in score_files], ignore_index=True)
    opts = config["tables"]
    summary = summarise(scores, samples=opts["bootstrap_samples"], confidence=opts["confidence"],
                        seed=opts["seed"])
    baselines = {m: spec["baseline"] for m, spec in config["methods"].items() if spec.get("baseline")}
    deltas = baseline_deltas(scores, baselines, samples=opts["bootstrap_samples"],
                             confidence=opts["confidence"], seed=opts["seed"])
    summary = summary.merge(deltas, on=["prompt_set", "method", "metric"], how="left")
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
        label = config["prompt_sets"][prompt_set].get("label", prompt_set)
        write_text_atomic(Path(out_dir) / f"{prompt_set}.md",
                          to_markdown(part, f"{label} ({config['profile']} profile)",
                                      evaluated_methods(config)))
        out[prompt_set] = part
    return out
