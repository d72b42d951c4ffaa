"""CSV, Markdown and LaTeX renderings of one rebuilt paper table (spo.report.paper_tables).

Each rendering carries the same header: the paper's caption and source, which config produced our
numbers (profile, resolved config hash, prompt set, bootstrap settings), which metric versions
(both HPS versions, and which one the paper most likely used), and whether the paper's numbers are
comparable at all (not for the tiny profile).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from spo import layout
from spo.config_blocks import prompt_set_spec, tables_settings
from spo.io import write_text_atomic
from spo.report.paper_numbers import PaperNumbers, PaperTable

NOT_COMPARABLE = "not comparable ({profile} profile)"


def _fmt(value: float, decimals: int, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def header_lines(config: dict[str, Any], numbers: PaperNumbers, plan, frame: pd.DataFrame,
                 config_hash: str, short: bool = False) -> list[str]:
    """The header as plain sentences (Markdown inline code marks kept; LaTeX strips them).

    ``short``: for a LaTeX caption, without the paper's caption and the notes on its metrics.
    """
    table = numbers.tables[plan.number]
    profile = config["profile"]
    opts = tables_settings(config)
    lines = [f"Paper: {table.cite()}." if short else
             f"Paper: \"{table.caption}\" ({table.cite()}). Paper setting: {table.setting}."]
    from spo.environment import LOCK_FILE, short_lock_hash

    config_line = (f"profile `{profile}`, resolved config `{config_hash}` "
                   f"({layout.resolved_config(config_hash)}), environment `{LOCK_FILE}` "
                   f"{short_lock_hash()}")
    if not plan.run:
        lines.append(f"**Not run**: no method of this config ({config_line}) fills a row of this "
                     f"table (`methods.<name>.paper: {{table: {plan.number}, row: <key>}}`); only "
                     f"the paper's numbers are shown.")
        return lines
    ours = frame[frame["status"] == "ours"]
    n_prompts = int(ours["n_prompts"].max())
    n_images = int(ours["n_images"].max())
    label = prompt_set_spec(config, plan.prompt_set).label_or(plan.prompt_set)
    lines.append(f"Ours: {config_line}; prompt set `{plan.prompt_set}` ({label}): {n_prompts} "
                 f"prompts, {n_images} images per row; mean over images; {opts.confidence:.0%} "
                 f"percentile bootstrap CI over prompts ({opts.bootstrap_samples} resamples, "
                 f"seed {opts.seed}). Computed from the per-image score files only.")
    versions = ours.groupby("metric_label", sort=False)["metric_version"].first()
    parts = [f"{lab} `{ver}`" for lab, ver in versions.items()]
    if short:
        lines.append("Metric versions (ours): " + "; ".join(parts) + "; the paper's HPSV2 is most "
                     "likely v2.1 (not stated).")
    else:
        lines.append("Metric versions (ours): " + "; ".join(parts) + ". Both HPS versions are shown; "
                     f"the paper's HPSV2 column: {numbers.metric_versions['HPSV2']}. Paper's "
                     f"ImageReward: {numbers.metric_versions['ImageReward']}. Paper's Aesthetic: "
                     f"{numbers.metric_versions['Aesthetic']}.")
    if not bool(frame["comparable"].iloc[0]):
        lines.append(f"Paper columns: **{NOT_COMPARABLE.format(profile=profile)}**: our rows come "
                     f"from the tiny world's models (data/tiny-world), so no ours − paper difference "
                     f"is computed; compare the effects instead: Δ base is each row's paired "
                     f"difference to its base model with its CI, the paper's rows differ from "
                     f"their base model as the paper's own columns show. PickScore is the tiny "
                     f"PickScore; HPS, ImageReward and Aesthetic are random-init stand-ins (their "
                     f"code runs, their numbers mean nothing).")
    else:
        lines.append("Δ = ours − paper (our mean minus the paper's printed value); the CI is ours; "
                     "Δ base = paired difference to the row's base model, with its CI.")
    empty = [r for r, m in plan.rows.items() if m is None]
    if empty:
        lines.append(f"Rows not run (no method of this config fills them): "
                     f"{', '.join(f'`{r}`' for r in empty)}.")
    if table.notes and not short:
        lines.append(f"Note (paper): {table.notes}")
    return lines


def _wide_rows(table: PaperTable, plan, frame: pd.DataFrame, comparable: bool, profile: str):
    """(header cells, body rows) of the wide table; ``cells`` are plain strings."""
    if not plan.run:
        head = [table.row_header] + [f"{c.label} (paper)" for c in table.columns]
        body = [[row.label] + [_fmt(row.values[c.key], c.decimals) for c in table.columns]
                for row in table.rows]
        return head, body, None
    metrics = frame.drop_duplicates("metric")[["metric", "metric_label", "paper_column"]]
    decimals = {c.key: c.decimals for c in table.columns}
    paper_label = "paper" if comparable else f"paper [{NOT_COMPARABLE.format(profile=profile)}]"
    head = [table.row_header, "config method", "prompts"]
    groups = []
    for _, m in metrics.iterrows():
        groups.append(m["metric_label"])
        head += [f"{m['metric_label']} {paper_label}", f"{m['metric_label']} ours",
                 f"{m['metric_label']} ours − paper", f"{m['metric_label']} 95% CI",
                 f"{m['metric_label']} Δ base [95% CI]"]
    body = []
    for row in table.rows:
        part = frame[frame["row"] == row.key].set_index("metric")
        method = plan.rows[row.key]
        n = part["n_prompts"].max() if method else 0
        cells = [row.label, method or "— (not run)", str(int(n)) if method else "—"]
        for _, m in metrics.iterrows():
            d = decimals.get(m["paper_column"], 2)
            if m["metric"] not in part.index:
                cells += ["—"] * 5
                continue
            r = part.loc[m["metric"]]
            ci = (f"[{_fmt(r['ci_low'], d + 1)}, {_fmt(r['ci_high'], d + 1)}]"
                  if r["status"] == "ours" else "—")
            gain = (f"{_fmt(r['gain'], d + 1, sign=True)} [{_fmt(r['gain_ci_low'], d + 1, sign=True)}, "
                    f"{_fmt(r['gain_ci_high'], d + 1, sign=True)}]"
                    if "gain" in r and not pd.isna(r["gain"]) else "—")
            cells += [_fmt(r["paper"], d), _fmt(r["ours"], d + 1), _fmt(r["delta"], d + 1, sign=True),
                      ci, gain]
        body.append(cells)
    return head, body, groups


def to_markdown(config, numbers, plan, frame, config_hash) -> str:
    table = numbers.tables[plan.number]
    comparable = bool(frame["comparable"].iloc[0]) if len(frame) else True
    head, body, _ = _wide_rows(table, plan, frame, comparable, config["profile"])
    lines = [f"# Table {plan.number} (paper v3): {table.title}", ""]
    lines += [f"- {line}" for line in header_lines(config, numbers, plan, frame, config_hash)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}", "−": "$-$", "Δ": r"$\Delta$", "—": "---", "†": r"\dag{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _tex_sentence(line: str) -> str:
    import re

    line = line.replace("**", "")
    parts = re.split(r"`([^`]*)`", line)
    return "".join(tex_escape(p) if i % 2 == 0 else r"\texttt{" + tex_escape(p) + "}"
                   for i, p in enumerate(parts))


def to_latex(config, numbers, plan, frame, config_hash) -> str:
    table = numbers.tables[plan.number]
    comparable = bool(frame["comparable"].iloc[0]) if len(frame) else True
    head, body, groups = _wide_rows(table, plan, frame, comparable, config["profile"])
    latex_labels = {row.label: row.latex for row in table.rows if row.latex}
    lines = [f"% Table {plan.number} of arXiv 2406.04314v3 rebuilt by spo-repro "
             f"(spo/report/paper_tables.py). Needs \\usepackage{{booktabs,graphicx}}."]
    lines += ["% " + line for line in header_lines(config, numbers, plan, frame, config_hash)]
    lines += [r"\begin{table}[t]", r"\centering",
              r"\caption{" + tex_escape(f"Table {plan.number} (paper v3): {table.title}.") + " "
              + " ".join(_tex_sentence(s) for s in header_lines(config, numbers, plan, frame,
                                                                config_hash, short=True)) + "}",
              rf"\label{{tab:paper-{plan.number}}}", r"\resizebox{\textwidth}{!}{%"]
    if groups is None:
        lines.append(r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}")
        lines += [r"\toprule", " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
    else:
        lines.append(r"\begin{tabular}{lll" + "rrrcc" * len(groups) + "}")
        lines.append(r"\toprule")
        lines.append(" & & & " + " & ".join(rf"\multicolumn{{5}}{{c}}{{{tex_escape(g)}}}"
                                            for g in groups) + r" \\")
        lines.append(" ".join(rf"\cmidrule(lr){{{4 + 5 * i}-{8 + 5 * i}}}" for i in range(len(groups))))
        paper = "paper" if comparable else r"paper\textsuperscript{*}"
        sub = [tex_escape(h) for h in head[:3]] + [paper, "ours", r"$\Delta$", r"95\% CI",
                                                    r"$\Delta$ base"] * len(groups)
        lines += [" & ".join(sub) + r" \\", r"\midrule"]
    for cells in body:
        first = latex_labels.get(cells[0], tex_escape(cells[0]))
        lines.append(" & ".join([first] + [tex_escape(c) for c in cells[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if groups is not None and not comparable:
        lines.append(r"\\[2pt]{\footnotesize * " + tex_escape(NOT_COMPARABLE.format(
            profile=config["profile"])) + r"; $\Delta$ = ours $-$ paper is not computed.}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(out_dir: Path, config: dict[str, Any], numbers: PaperNumbers, plan,
                frame: pd.DataFrame, config_hash: str) -> None:
    stem = out_dir / f"table{plan.number}"
    from spo.environment import short_lock_hash

    csv = frame.assign(profile=config["profile"], config_hash=config_hash,
                       environment_lock=short_lock_hash(), paper_version="v3",
                       paper_source=numbers.tables[plan.number].cite())
    write_text_atomic(stem.with_suffix(".csv"), csv.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(stem.with_suffix(".md"), to_markdown(config, numbers, plan, frame, config_hash))
    write_text_atomic(stem.with_suffix(".tex"), to_latex(config, numbers, plan, frame, config_hash))
