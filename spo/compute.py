"""Compute accounting: GPU-hours per stage from Snakemake's ``benchmark:`` records.

Every rule writes ``results/benchmarks/<stage>/<wildcards...>.tsv`` (or ``<stage>.tsv`` for a
rule with one job); column ``s`` is the job's wall-clock seconds, one row per benchmark repeat.
A benchmark file does not say how many GPUs the job held, so the caller passes that in:

* a mapping ``{stage: GPUs per job}``, the same numbers the rules asked the cluster for
  (``workflow/rules/resources.smk``: ``job_size(rule, wildcards)["gpu"]``, or the config's
  ``resources.<rule>.gpu``); CPU-only stages map to 0; or
* a callable ``gpus(stage, job) -> int`` for stages whose GPU count differs per job (``job`` is
  the record's path below the stage, without ``.tsv``, e.g. ``sd15-base/pickapic-val/shard-3``).

GPU-hours = seconds x GPUs / 3600, summed over jobs (and over repeats: each repeat held the GPUs).
From the command line::

    python -m spo.compute results/benchmarks --gpus generate=1 score=1 tiny_pipeline=0 \\
        tiny_metric=0 tables=0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from spo.layout import BENCHMARKS_ROOT

GpuCount = Mapping[str, int] | Callable[[str, str], int]


class ComputeError(ValueError):
    """A benchmark record or a GPU count is missing or malformed; the message names it."""


def read_benchmarks(root: str | os.PathLike) -> pd.DataFrame:
    """One row per benchmark file: ``stage``, ``job``, ``seconds`` (summed over repeats)."""
    root = Path(root)
    if not root.is_dir():
        raise ComputeError(f"benchmark folder '{root}' does not exist: run the workflow first "
                           "(every rule writes results/benchmarks/...)")
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root).with_suffix("")
        stage, job = rel.parts[0], "/".join(rel.parts[1:])
        try:
            frame = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ComputeError(f"benchmark file '{path}' is not a Snakemake benchmark TSV: {exc}")
        if "s" not in frame.columns or frame.empty:
            raise ComputeError(f"benchmark file '{path}' has no runtime rows (column 's'); "
                               "delete it and rerun its job")
        rows.append({"stage": stage, "job": job, "seconds": float(frame["s"].sum())})
    return pd.DataFrame(rows, columns=["stage", "job", "seconds"])


def _gpus_for(gpus: GpuCount, stage: str, job: str) -> int:
    if callable(gpus):
        count = gpus(stage, job)
    elif stage in gpus:
        count = gpus[stage]
    else:
        raise ComputeError(f"stage '{stage}' has benchmark records but no GPU count: pass "
                           f"gpus={{'{stage}': N}} (0 for a CPU-only stage)")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ComputeError(f"GPU count of stage '{stage}' (job '{job}') must be an integer >= 0, "
                           f"got {count!r}")
    return count


def gpu_hours(root: str | os.PathLike, gpus: GpuCount) -> pd.DataFrame:
    """Per stage: ``jobs``, ``runtime_hours`` and ``gpu_hours``, indexed by stage (sorted)."""
    records = read_benchmarks(root)
    records["gpus"] = [_gpus_for(gpus, s, j) for s, j in zip(records.stage, records.job)]
    records["runtime_hours"] = records.seconds / 3600
    records["gpu_hours"] = records.runtime_hours * records.gpus
    table = records.groupby("stage").agg(jobs=("job", "size"),
                                         runtime_hours=("runtime_hours", "sum"),
                                         gpu_hours=("gpu_hours", "sum"))
    return table.sort_index()


def _parse_gpus(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        stage, sep, count = item.partition("=")
        if not sep or not count.isdigit():
            raise ComputeError(f"--gpus entry '{item}' must be <stage>=<GPUs per job>, "
                               "e.g. generate=1")
        out[stage] = int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spo.compute", description=__doc__.split("\n")[0])
    parser.add_argument("benchmarks", nargs="?", default=BENCHMARKS_ROOT)
    parser.add_argument("--gpus", nargs="+", default=[], metavar="STAGE=N",
                        help="GPUs per job of each stage (every stage with records needs one)")
    args = parser.parse_args(argv)
    try:
        table = gpu_hours(args.benchmarks, _parse_gpus(args.gpus))
    except ComputeError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(table.to_string(float_format=lambda x: f"{x:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
