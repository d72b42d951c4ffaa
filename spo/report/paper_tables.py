"""The paper's Tables 1, 2 and 4-9 rebuilt from our per-image scores, beside the paper's numbers.

A method fills a row with ``methods.<name>.paper: {table: N, row: <key>}`` (row keys are those of
``data/paper/tables.yaml``). A table uses one prompt set for all its rows: the first of
``paper_tables.prompt_sets`` (default: the evaluated prompt sets in config order) that every one
of its methods is evaluated on. Per row and metric we report the paper's value, our mean, ours -
paper and our bootstrap CI over prompts (``spo.tables.summarise``), as
``results/paper_tables/table<N>.{csv,md,tex}`` (``spo.report.paper_tables_render`` writes them).

The numbers come only from the score files given: a method of a table whose scores are missing
stops the build with its name and config key, never a table with a hole. A table none of whose
rows has a method is written with the paper's column only and says "not run".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from spo.config import (evaluated_methods, evaluated_pairs, evaluated_prompt_sets, method_spec,
                        metric_spec, model_spec, paper_tables_settings, tables_settings)
from spo.report.paper_numbers import PaperNumbers, PaperTable, load_paper_numbers

# Tables rebuilt here: Table 3 (GenEval) is spo/report/geneval.py's.
REBUILT_TABLES = (1, 2, 4, 5, 6, 7, 8, 9)

# Our metric columns: (scorer, label, the paper column it is compared with, note). The paper's
# "HPSV2" is compared with both of our HPS versions; v2.1 is most likely what the paper used
# (PAPER.md §2; the paper does not say). Colourfulness is the tiny world's analytic preference.
METRIC_COLUMNS = (
    ("pickscore", "PickScore", "PickScore", ""),
    ("hpsv2.1", "HPSv2.1", "HPSV2", "paper's HPSV2 (most likely v2.1)"),
    ("hpsv2", "HPSv2.0", "HPSV2", "paper's HPSV2 (likely not v2.0)"),
    ("imagereward", "ImageReward", "ImageReward", ""),
    ("aesthetic", "Aesthetic", "Aesthetic", ""),
    ("colorfulness", "Colourfulness (analytic)", None, "no paper value"),
    ("adherence", "Adherence (detector)", None, "no paper value"),
)


class PaperTableError(ValueError):
    """A paper table cannot be built honestly; the message names the method and config key."""


@dataclass(frozen=True)
class MetricColumn:
    metric: str           # the key of config `metrics`
    label: str
    paper_column: str | None
    note: str
    decimals: int


@dataclass(frozen=True)
class TablePlan:
    number: int
    rows: dict[str, str | None]          # paper row key -> method (None: not in the config)
    prompt_set: str | None               # None: no row has a method

    @property
    def methods(self) -> list[str]:
        return [m for m in self.rows.values() if m is not None]

    @property
    def run(self) -> bool:
        return bool(self.methods)


def plan_tables(config: dict[str, Any], numbers: PaperNumbers,
                tables: Sequence[int] = REBUILT_TABLES) -> dict[int, TablePlan]:
    """Which method fills which row and on which prompt set; ``PaperTableError`` lists every
    problem (unknown table or row, a row claimed twice, no common prompt set, a required table
    with an empty row). Only evaluated methods fill rows (a profile may inherit methods it does not
    run), but every method's ``paper`` key is checked."""
    errors: list[str] = []
    rows: dict[int, dict[str, str | None]] = {n: {r.key: None for r in numbers.tables[n].rows}
                                              for n in tables}
    evaluated = set(evaluated_methods(config))
    for method in config["methods"]:
        for ref in method_spec(config, method).paper_refs():
            key = f"methods.{method}.paper"
            table, row = ref["table"], ref["row"]
            if table not in numbers.tables:
                errors.append(f"config key '{key}' names table {table}; the paper's tables are "
                              f"{', '.join(map(str, sorted(numbers.tables)))}")
            elif table not in rows:
                errors.append(f"config key '{key}' names table {table}, which is not rebuilt from "
                              f"scores here (rebuilt: {', '.join(map(str, tables))})")
            elif row not in rows[table]:
                errors.append(f"config key '{key}' names row '{row}' of table {table}; its rows: "
                              f"{', '.join(rows[table])}")
            elif method not in evaluated:
                continue
            elif rows[table][row] is not None:
                errors.append(f"config keys 'methods.{rows[table][row]}.paper' and '{key}' both "
                              f"fill row '{row}' of table {table}; one method per row")
            else:
                rows[table][row] = method
    pairs = set(evaluated_pairs(config, scored=True))
    options = paper_tables_settings(config)
    candidates = list(options.prompt_sets or evaluated_prompt_sets(config, scored=True))
    required = set(options.require)
    plans = {}
    for number in tables:
        methods = [m for m in rows[number].values() if m is not None]
        prompt_set = None
        if methods:
            common = [p for p in candidates if all((m, p) in pairs for m in methods)]
            if not common:
                errors.append(f"table {number}: its methods {methods} are not all evaluated on one "
                              f"of the prompt sets {candidates} (config 'paper_tables.prompt_sets'); "
                              f"add an `evaluate` group with these methods and one of them")
            else:
                prompt_set = common[0]
        empty = [r for r, m in rows[number].items() if m is None]
        if number in required and empty:
            errors.append(f"config key 'paper_tables.require' lists table {number}, but no method "
                          f"fills its rows {empty}: add `paper: {{table: {number}, row: <row>}}` to "
                          f"the methods that do")
        plans[number] = TablePlan(number, rows[number], prompt_set)
    for number in required - set(tables):
        errors.append(f"config key 'paper_tables.require' lists table {number}, which is not "
                      f"rebuilt from scores here (rebuilt: {', '.join(map(str, tables))})")
    if errors:
        raise PaperTableError("paper tables:\n  " + "\n  ".join(errors))
    return plans


def metric_columns(config: dict[str, Any], table: PaperTable) -> list[MetricColumn]:
    """Our metric columns for ``table``, in METRIC_COLUMNS order, for the metrics the config scores."""
    by_scorer: dict[str, str] = {}
    for name in config["metrics"]:
        # one column per scorer: a scorer with variants (adherence per attribute) shows its "all"
        spec = metric_spec(config, name)
        if spec.attribute == "all":
            by_scorer.setdefault(spec.scorer_of(name), name)
    paper_cols = {c.key: c for c in table.columns}
    out = []
    for scorer, label, paper_column, note in METRIC_COLUMNS:
        if scorer in by_scorer:
            decimals = paper_cols[paper_column].decimals if paper_column in paper_cols else 2
            out.append(MetricColumn(by_scorer[scorer], label, paper_column, note, decimals))
    return out


def is_comparable(config: dict[str, Any], plan: TablePlan) -> bool:
    """Our numbers are comparable with the paper's only for real (not tiny) base models."""
    from spo.models.sources import is_tiny_source

    return not any(is_tiny_source(model_spec(config, method_spec(config, m).model).source)
                   for m in plan.methods)


def baseline_gains(config: dict[str, Any], plan: TablePlan, scores: pd.DataFrame) -> dict:
    """(method, metric) -> paired difference to the method's ``baseline`` on the table's prompt
    set, with its bootstrap CI (``spo.tables.baseline_deltas``): each row's effect, the number a
    miniature can be compared on when the paper's absolute values cannot."""
    from spo.tables import baseline_deltas

    baselines = {m: method_spec(config, m).baseline for m in plan.methods}
    baselines = {m: b for m, b in baselines.items() if b}
    if not baselines or scores.empty or plan.prompt_set is None:
        return {}
    opts = tables_settings(config)
    wanted = set(baselines) | set(baselines.values())
    part = scores[(scores["prompt_set"] == plan.prompt_set) & scores["method"].isin(wanted)]
    deltas = baseline_deltas(part, baselines, samples=opts.bootstrap_samples,
                             confidence=opts.confidence, seed=opts.seed)
    return {(r.method, r.metric): r._asdict() for r in deltas.itertuples(index=False)}


def read_scores(score_files: Sequence[str | Path]) -> pd.DataFrame:
    from spo.score import SCORE_COLUMNS

    if not score_files:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return pd.concat([pd.read_parquet(f) for f in score_files], ignore_index=True)


def table_frame(config: dict[str, Any], numbers: PaperNumbers, plan: TablePlan,
                scores: pd.DataFrame) -> pd.DataFrame:
    """The long table: one record per (paper row, our metric column); paper-only rows if not run."""
    from spo.tables import summarise

    table = numbers.tables[plan.number]
    opts = tables_settings(config)
    columns = metric_columns(config, table)
    comparable = is_comparable(config, plan)
    gains = baseline_gains(config, plan, scores)
    records = []
    for row in table.rows:
        method = plan.rows[row.key]
        summary = None
        if method is not None:
            mine = scores[(scores["method"] == method) & (scores["prompt_set"] == plan.prompt_set)]
            where = (f"table {plan.number} row '{row.key}' needs method '{method}' (config key "
                     f"'methods.{method}.paper') on prompt set '{plan.prompt_set}'")
            if mine.empty:
                raise PaperTableError(f"{where}, but the score files given have no scores for it; "
                                      f"run its generation and scoring (rule score) first")
            missing = sorted({c.metric for c in columns} - set(mine["metric"]))
            if missing:
                raise PaperTableError(f"{where}, but its scores lack metric(s) {missing}")
            summary = summarise(mine, samples=opts.bootstrap_samples,
                                confidence=opts.confidence, seed=opts.seed).set_index("metric")
            if not summary.index.is_unique:
                raise PaperTableError(f"{where}, but its scores mix metric versions: "
                                      f"{summary['metric_version'].to_dict()}")
        for col in (columns if method is not None else
                    [c for c in columns if c.paper_column is not None]):
            paper = row.values.get(col.paper_column, np.nan) if col.paper_column else np.nan
            rec = {"table": plan.number, "row": row.key, "row_label": row.label,
                   "method": method or "", "prompt_set": plan.prompt_set or "",
                   "metric": col.metric, "metric_label": col.label,
                   "paper_column": col.paper_column or "", "paper": paper,
                   "metric_version": "", "ours": np.nan, "delta": np.nan, "ci_low": np.nan,
                   "ci_high": np.nan, "confidence": opts.confidence, "n_prompts": 0,
                   "n_images": 0, "comparable": comparable, "status": "not run", "baseline": "",
                   "gain": np.nan, "gain_ci_low": np.nan, "gain_ci_high": np.nan}
            if summary is not None:
                s = summary.loc[col.metric]
                rec.update(metric_version=s["metric_version"], ours=s["mean"], ci_low=s["ci_low"],
                           ci_high=s["ci_high"], n_prompts=int(s["n_prompts"]),
                           n_images=int(s["n_images"]), status="ours")
                if comparable and not np.isnan(paper):
                    rec["delta"] = s["mean"] - paper
                gain = gains.get((method, col.metric))
                if gain is not None:
                    rec.update(baseline=gain["baseline"], gain=gain["delta"],
                               gain_ci_low=gain["delta_ci_low"], gain_ci_high=gain["delta_ci_high"])
            records.append(rec)
    return pd.DataFrame(records)


def build_paper_tables(config: dict[str, Any], score_files: Sequence[str | Path], out_dir: str | Path,
                       *, tables: Sequence[int] = REBUILT_TABLES,
                       numbers_path: str | Path | None = None) -> dict[int, pd.DataFrame]:
    """Write ``table<N>.{csv,md,tex}`` under ``out_dir`` for each of ``tables``."""
    from spo.io import stable_hash
    from spo.report.paper_tables_render import write_table

    numbers = load_paper_numbers(numbers_path)
    unknown = [n for n in tables if n not in REBUILT_TABLES]
    if unknown:
        raise PaperTableError(f"tables {unknown} are not rebuilt from scores (rebuilt: {REBUILT_TABLES})")
    plans = plan_tables(config, numbers)
    scores = read_scores(score_files)
    config_hash = stable_hash(config)
    out = {}
    for number in tables:
        frame = table_frame(config, numbers, plans[number], scores)
        write_table(Path(out_dir), config, numbers, plans[number], frame, config_hash)
        out[number] = frame
    return out
