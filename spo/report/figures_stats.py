"""Figures of numbers: automatic Figure 6, generic-vs-aesthetic disagreement, SPM accuracy against
t and training curves (the compute table: spo/report/figures_compute.py).

Figure 6 (automatic): for each metric, each image of the SPO method is paired with the image of
the opponent for the same prompt and image index (hence the same initial noise seed); the pair is
a win when SPO's score is higher by more than ``draw_tolerance`` x the metric's standard deviation
(pooled over both methods' images on that prompt set), a loss when lower by more, a draw otherwise.
The default tolerance is 0.1 standard deviation. The paper's human user-study percentages
(PAPER.md §4, "Fig. 6 numbers") are drawn beside them, labelled as such.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from spo import layout

from spo.report.figures_common import (FigureError, check_methods, figure_spec, matplotlib_pyplot,
                                       paper_data, save_figure, short, sidecar, write_data)

# PAPER.md §4, "Fig. 6 numbers" (%, SPO win / draw / opponent win; SDXL, 300 prompts from
# PartiPrompt and HPSv2, human raters). Used only when data/paper/figure6.* does not exist.
PAPER_FIGURE6 = {
    "diffusion-dpo": {"General preference": (52.8, 20.13, 27.07), "Visual appeal": (58.27, 19.23, 22.5),
                      "Prompt alignment": (33.67, 41.93, 24.4)},
    "base": {"General preference": (63.17, 13.53, 23.3), "Visual appeal": (76.93, 5.76, 17.3),
             "Prompt alignment": (51.33, 18.3, 30.37)},
}
# The user study's questions: data/paper/tables.yaml's keys -> the paper's wording.
QUESTIONS = {"general_preference": "General preference", "visual_appeal": "Visual appeal",
             "prompt_alignment": "Prompt alignment"}


def win_draw_loss(mine: pd.DataFrame, theirs: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """Win / draw / loss of ``mine`` against ``theirs`` on matched (prompt_id, image_index) images.

    Args:
        mine, theirs: score rows of one metric (columns prompt_id, image_index, score).
        tolerance: in units of the pooled standard deviation of all scores of both.
    Returns:
        counts and percentages, ``n`` matched images, ``tolerance_abs`` in score units.
    """
    keys = ["prompt_id", "image_index"]
    both = mine[keys + ["score"]].merge(theirs[keys + ["score"]], on=keys, suffixes=("_a", "_b"))
    if both.empty:
        raise FigureError("no image pairs with the same prompt_id and image_index in the two score sets")
    pooled = np.concatenate([both["score_a"].to_numpy(), both["score_b"].to_numpy()])
    tol = float(tolerance * pooled.std(ddof=1)) if len(pooled) > 1 else 0.0
    diff = both["score_a"].to_numpy() - both["score_b"].to_numpy()
    win, loss = int((diff > tol).sum()), int((diff < -tol).sum())
    n = len(diff)
    draw = n - win - loss
    return {"n": n, "win": win, "draw": draw, "loss": loss, "win_pct": 100 * win / n,
            "draw_pct": 100 * draw / n, "loss_pct": 100 * loss / n, "tolerance_abs": tol,
            "n_prompts": int(both["prompt_id"].nunique())}


def paper_figure6(root: str | Path = ".") -> tuple[dict, str]:
    """The paper's human percentages {diffusion-dpo | base: {question: (win, draw, loss)}}: from
    data/paper/tables.yaml (``user_study``) when present, else the constant PAPER_FIGURE6."""
    data, source = paper_data(root)
    if not data or "user_study" not in data:
        return PAPER_FIGURE6, "PAPER.md §4 (constant in spo/report/figures_stats.py)"
    out = {}
    for comparison in data["user_study"]["comparisons"]:
        key = "diffusion-dpo" if "diffusion-dpo" in comparison["key"] else "base"
        out[key] = {QUESTIONS.get(q, q): (r["win"], r["draw"], r["loss"])
                    for q, r in comparison["results"].items()}
    return out, f"{source} (user_study; PAPER.md §4)"


def figure6(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
            root: str | Path = ".") -> dict[str, Any]:
    """Automatic win / draw / loss rates of ``method`` against each opponent, per metric."""
    spec = figure_spec(config, name)
    method, prompt_set = spec.method, spec.prompt_set
    opponents = spec.opponent_list()
    check_methods(config, name, "method / opponents", [method] + [o.method for o in opponents])
    tolerance = float(spec.draw_tolerance)
    scores = pd.concat([pd.read_parquet(f) for f in inputs], ignore_index=True)
    scores = scores[scores["prompt_set"] == prompt_set]
    metrics = list(spec.metrics or sorted(scores["metric"].unique()))
    rows = []
    for opp in opponents:
        for metric in metrics:
            part = scores[scores["metric"] == metric]
            mine, theirs = part[part["method"] == method], part[part["method"] == opp.method]
            if mine.empty or theirs.empty:
                missing = method if mine.empty else opp.method
                raise FigureError(f"figure '{name}': no '{metric}' scores of '{missing}' on "
                                  f"'{prompt_set}' among the inputs")
            rows.append({"method": method, "opponent": opp.method, "paper_comparison": opp.paper,
                         "metric": metric, "version": part["metric_version"].iloc[0],
                         **win_draw_loss(mine, theirs, tolerance)})
    table = pd.DataFrame(rows)
    from spo.io import write_text_atomic

    write_text_atomic(sidecar(out, ".csv"), table.to_csv(index=False, float_format="%.4g"))
    human, source = paper_figure6(root)
    plt = matplotlib_pyplot()
    fig, axes = plt.subplots(1, len(opponents), figsize=(6.5 * len(opponents), 0.45 * (len(metrics) + 4) + 1.2),
                             squeeze=False)
    colours = ("#2b8cbe", "#bdbdbd", "#e34a33")
    for ax, opp in zip(axes[0], opponents):
        part = table[table["opponent"] == opp.method]
        labels = [f"{m} (automatic, n={n})" for m, n in zip(part["metric"], part["n"])]
        values = [tuple(r) for r in part[["win_pct", "draw_pct", "loss_pct"]].to_numpy()]
        for criterion, triple in (human.get(opp.paper) or {}).items():
            labels.append(f"paper, human: {criterion}")
            values.append(tuple(triple))
        y = np.arange(len(labels))[::-1]
        left = np.zeros(len(labels))
        for k, (what, colour) in enumerate(zip(("SPO wins", "draw", "opponent wins"), colours)):
            width = np.array([v[k] for v in values])
            ax.barh(y, width, left=left, color=colour, label=what)
            for yy, l, w in zip(y, left, width):
                if w >= 6:
                    ax.text(l + w / 2, yy, f"{w:.0f}", ha="center", va="center", fontsize=7)
            left += width
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of paired images (automatic) / of votes (paper)")
        ax.set_title(f"{config['methods'][method].get('label', method)} vs "
                     f"{config['methods'][opp.method].get('label', opp.method)}", fontsize=8)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    fig.suptitle(f"Win / draw / loss on {prompt_set} (draw: |Δ| ≤ {tolerance:g} σ of the metric); "
                 f"human bars: {short(source, 60)}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return write_data(out, {"figure": name, "prompt_set": prompt_set, "draw_tolerance_sd": tolerance,
                            "paper_source": source, "rows": rows})


def disagreement(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                 root: str | Path = ".", models_root: str | Path = layout.MODELS_ROOT) -> dict[str, Any]:
    """How often the pair label and an aesthetic predictor disagree, per split, with examples.

    Only decisive pairs count (label 0 or 1, predictor scores not equal). ``inputs`` are the pairs
    folders ``results/spm/pairs/<dataset>/<split>``.
    """
    import io

    from PIL import Image

    from spo.config_blocks import metric_spec
    from spo.metrics import build_scorer, resolve_weights
    from spo.spm.data import read_pairs

    spec = figure_spec(config, name)
    predictor = spec.predictor
    if predictor not in config["metrics"]:
        raise FigureError(f"config key 'figures.{name}.predictor' names '{predictor}', which is not "
                          f"under 'metrics'; defined: {', '.join(sorted(config['metrics']))}")
    mspec = metric_spec(config, predictor)
    weights = resolve_weights(mspec, tiny_root=str(Path(models_root) / "metrics" / predictor))
    scorer = build_scorer(mspec.scorer_of(predictor), mspec, device="cpu", weights=weights)
    max_pairs, n_examples = int(spec.max_pairs), int(spec.examples)
    rng = np.random.default_rng(int(spec.seed))
    results, examples = [], []
    for folder in inputs:
        split = Path(folder).name
        pairs = read_pairs([folder], check_images=False)
        pairs = pairs[pairs["label"].isin([0.0, 1.0])]
        if len(pairs) > max_pairs:
            pairs = pairs.iloc[np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
        score = {}
        for col in ("image_0", "image_1"):
            vals = []
            for start in range(0, len(pairs), 32):
                part = pairs.iloc[start:start + 32]
                ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in part[col]]
                vals += list(np.asarray(scorer(ims, list(part["prompt"])), dtype=float))
            score[col] = np.array(vals)
        pred = np.sign(score["image_0"] - score["image_1"])
        decisive = pred != 0
        label = np.where(pairs["label"].to_numpy() == 1.0, 1.0, -1.0)
        disagree = decisive & (pred != label)
        results.append({"split": split, "pairs": int(decisive.sum()),
                        "disagree": int(disagree.sum()),
                        "disagree_pct": 100.0 * disagree.sum() / max(1, decisive.sum())})
        for i in np.flatnonzero(disagree)[:n_examples - len(examples)]:
            row = pairs.iloc[i]
            won = "image_0" if row["label"] == 1.0 else "image_1"
            lost = "image_1" if won == "image_0" else "image_0"
            examples.append({"split": split, "prompt": row["prompt"], "pair_id": str(row["pair_id"]),
                             "label_winner": np.asarray(Image.open(io.BytesIO(row[won])).convert("RGB")),
                             "label_loser": np.asarray(Image.open(io.BytesIO(row[lost])).convert("RGB")),
                             "score_winner": float(score[won][i]), "score_loser": float(score[lost][i])})
    plt = matplotlib_pyplot()
    n_ex = max(1, len(examples))
    fig = plt.figure(figsize=(max(6.0, 1.8 * n_ex), 5.2))
    grid = fig.add_gridspec(3, n_ex, height_ratios=[1.2, 1, 1])
    ax = fig.add_subplot(grid[0, :])
    ax.bar([r["split"] for r in results], [r["disagree_pct"] for r in results], color="#e34a33")
    for i, r in enumerate(results):
        ax.text(i, r["disagree_pct"], f"{r['disagree_pct']:.1f}% of {r['pairs']}", ha="center",
                va="bottom", fontsize=7)
    ax.set_ylabel("% disagree")
    ax.set_ylim(0, max([r["disagree_pct"] for r in results] + [1.0]) * 1.3)
    ax.set_title(f"Pair label vs {predictor} on spm pairs '{spec.dataset}'", fontsize=8)
    for c, ex in enumerate(examples):
        for r, (key, skey) in enumerate((("label_winner", "score_winner"), ("label_loser", "score_loser"))):
            a = fig.add_subplot(grid[1 + r, c])
            a.imshow(ex[key], interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            a.set_xlabel(f"{predictor} {ex[skey]:.3g}", fontsize=6)
            if c == 0:
                a.set_ylabel("label: preferred" if r == 0 else "label: rejected", fontsize=7)
            if r == 0:
                a.set_title(short(f"{ex['split']}: {ex['prompt']}", 28), fontsize=6)
    fig.tight_layout()
    save_figure(fig, out)
    return write_data(out, {"figure": name, "dataset": spec.dataset, "predictor": predictor,
                            "predictor_version": scorer.version, "splits": results,
                            "examples": [{k: v for k, v in e.items() if not k.startswith("label_")}
                                         for e in examples]})


def _method_label(config: dict[str, Any], method: str) -> str:
    """The method's label; its name where it has none, or where this config has no such method."""
    from spo.config_blocks import method_spec

    return method_spec(config, method).label_or(method) if method in config["methods"] else method


def spm_accuracy(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                 root: str | Path = ".") -> dict[str, Any]:
    """Pairwise accuracy against t of each SPM run (untrained and trained), with the ceiling."""
    from spo.spm.settings import spm_run

    frames = [pd.read_csv(f) for f in inputs]
    if not frames:
        raise FigureError(f"figure '{name}': no validation CSV among the inputs")
    table = pd.concat(frames, ignore_index=True)
    plt = matplotlib_pyplot()
    runs = list(dict.fromkeys(table["run"]))
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        part = table[table["run"] == run]
        for stage, style in (("init", "o--"), ("final", "o-")):
            s = part[part["stage"] == stage].sort_values("t")
            if len(s):
                ax.plot(s["t"], s["accuracy"], style, label=f"{stage} (step {int(s['step'].iloc[0])})")
        ceil = part[part["stage"] == "final"].sort_values("t")
        if "ceiling" in ceil and ceil["ceiling"].notna().any():
            ax.plot(ceil["t"], ceil["ceiling"], "k:", label="ceiling (label statistic on x̂0)")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_xlabel("t")
        ax.set_ylabel("pairwise accuracy")
        ax.set_ylim(0.3, 1.02)
        label = spm_run(config, run).label if run in ((config.get("spm") or {}).get("runs") or {}) else None
        label = run if label is None else label
        ax.set_title(f"{label} (n={int(part['pairs'].max())} pairs)", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out)
    return write_data(out, {"figure": name, "rows": table.to_dict(orient="records")})


CURVES = (("loss", ("loss",)), ("ratio p/p_ref", ("ratio_win", "ratio_lose")),
          ("preference score mean", ("score_mean",)))


def training_curves(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                    root: str | Path = ".") -> dict[str, Any]:
    """Loss, win / lose ratios and the sampled candidates' mean score per round, one column per
    trained method (``log.jsonl`` in its training output, ``spo.layout.train_dir``)."""
    plt = matplotlib_pyplot()
    fig, axes = plt.subplots(len(CURVES), len(inputs), figsize=(3.2 * len(inputs), 6.5),
                             squeeze=False, sharex="col")
    data = {}
    for c, folder in enumerate(inputs):
        method = Path(folder).name
        path = Path(folder) / "log.jsonl"
        if not path.is_file():
            raise FigureError(f"'{path}' does not exist: '{folder}' is not a finished training output")
        log = pd.DataFrame([json.loads(l) for l in path.read_text().splitlines() if l.strip()])
        x = "round" if "round" in log else "step"  # offline trainers (Diffusion-DPO) log steps
        per_round = log.groupby(x).mean(numeric_only=True)
        data[method] = {k: per_round[k].round(6).tolist() for k in per_round
                        if k in ("loss", "ratio_win", "ratio_lose", "score_mean")}
        for r, (title, keys) in enumerate(CURVES):
            ax = axes[r][c]
            for key in keys:
                if key in per_round and per_round[key].notna().any():
                    ax.plot(per_round.index, per_round[key], label=key)
            if r == 0:
                ax.set_title(short(_method_label(config, method), 40), fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
            if len(keys) > 1:
                ax.legend(fontsize=6)
            ax.tick_params(labelsize=6)
        axes[-1][c].set_xlabel(x, fontsize=7)
    fig.tight_layout()
    save_figure(fig, out)
    return write_data(out, {"figure": name, "per_round_means": data})
