"""The tiny DAG's wall-clock and its critical path, read from a finished run (nothing is run here).

Input: a Snakemake working directory whose ``results/benchmarks/**.tsv`` were written by a full
run (``--dag-run``; default ``/tmp/dagrun`` when it has them, else the repository). Each TSV is one
job: its rule is the first path component, its wildcards the rest (``generate/<method>/<prompt
set>/shard-<n>``); its ``s`` column is the job's wall-clock seconds.

Dependency structure (assumption, derived from the rule names, the wildcards and the run's config,
mirroring ``workflow/rules/*.smk``):

    tiny_pipeline/<model>, tiny_metric/<metric>, spm_tiny_pickscore      no inputs
    spm_pairs/<dataset>/<split>      <- tiny_pipeline/<spm.datasets.<dataset>.tiny.model>
    spm_latents/<dataset>/<split>/<model> <- tiny_pipeline/<model>
    train_spm/<run>                  <- spm_pairs/<spm.runs.<run>.data>/*, spm_tiny_pickscore,
                                        tiny_pipeline/<spm.runs.<run>.model>
    train/<method>                   <- tiny_pipeline/<methods.<method>.model>
                                        (+ train_spm/<preference.run> for an spm preference)
    generate/<method>/<set>/shard-n  <- tiny_pipeline/<model> (+ train/<method> when trained)
    score/<group>/<method>/<set>/shard-n <- generate/<method>/<set>/shard-n, tiny_metric/<each
                                        metric of the group: all of them for 'all-metrics'>
    tables                           <- every score job

When the run's ``.snakemake/metadata`` is there, the edges Snakemake actually recorded (each
output's input list) are compared with these, and the run's real wall-clock (first job start to
last job end) is taken from it; otherwise from the Snakemake log's "Elapsed time".

Critical path = the longest chain by the sum of the jobs' ``s``: the wall-clock the DAG would take
with unlimited cores and the same per-job times. With C cores the wall-clock is at least
max(critical path, total job-seconds / C).
"""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path
from typing import Any

from bench.common import REPO


def default_run_dir() -> Path | None:
    for candidate in (Path("/tmp/dagrun"), REPO):
        if (candidate / "results" / "benchmarks").is_dir():
            return candidate
    return None


def read_jobs(run: Path) -> dict[str, dict[str, float]]:
    jobs = {}
    root = run / "results" / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        key = str(tsv.relative_to(root))[:-len(".tsv")]
        with tsv.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows:  # repeated benchmarks: the first row
            jobs[key] = {k: float(v) for k, v in rows[0].items() if k != "h:m:s" and v not in ("", "NA", "-")}
    return jobs


def run_config(run: Path) -> dict[str, Any]:
    import yaml

    resolved = sorted((run / "results" / "config").glob("*.yaml"), key=lambda p: p.stat().st_mtime)
    if resolved:
        return yaml.safe_load(resolved[-1].read_text())
    from spo.config import load_config

    return load_config([run / "config" / "config.yaml"], root=run)


def derived_edges(jobs: dict[str, Any], config: dict[str, Any]) -> dict[str, set[str]]:
    methods = config.get("methods", {})
    spm = config.get("spm", {}) or {}
    metrics = list(config.get("metrics", {}))
    deps: dict[str, set[str]] = {j: set() for j in jobs}

    def add(job, dep):
        if dep in jobs:
            deps[job].add(dep)

    for job in jobs:
        parts = job.split("/")
        rule = parts[0]
        if rule == "spm_pairs":
            add(job, f"tiny_pipeline/{spm['datasets'][parts[1]]['tiny']['model']}")
        elif rule == "spm_latents":
            add(job, f"tiny_pipeline/{parts[3]}")
        elif rule == "train_spm":
            r = spm["runs"][parts[1]]
            for other in jobs:
                if other.startswith(f"spm_pairs/{r['data']}/") or other.startswith(f"spm_latents/{r['data']}/"):
                    add(job, other)
            add(job, "spm_tiny_pickscore")
            add(job, f"tiny_pipeline/{r['model']}")
        elif rule == "train":
            m = methods[parts[1]]
            add(job, f"tiny_pipeline/{m['model']}")
            pref = (m.get("train") or {}).get("preference", {})
            if str(pref.get("name", "")).startswith("spm"):
                add(job, f"train_spm/{pref['run']}")
        elif rule == "generate":
            m = methods[parts[1]]
            add(job, f"tiny_pipeline/{m['model']}")
            if "train" in m:
                add(job, f"train/{parts[1]}")
        elif rule == "score":
            add(job, "generate/" + "/".join(parts[2:]))
            group = metrics if parts[1] == "all-metrics" else [parts[1]]
            for metric in group:
                add(job, f"tiny_metric/{metric}")
        elif rule == "tables":
            for other in jobs:
                if other.startswith("score/"):
                    add(job, other)
    return deps


_OUTPUT_TO_JOB = [
    (r"results/models/pipelines/(.+)", r"tiny_pipeline/\1"),
    (r"results/models/metrics/(.+)", r"tiny_metric/\1"),
    (r"results/models/spm-init/pickscore", "spm_tiny_pickscore"),
    (r"results/spm/pairs/(.+)", r"spm_pairs/\1"),
    (r"results/models/spm/(.+)", r"train_spm/\1"),
    (r"results/train/(.+)", r"train/\1"),
    (r"results/images/(.+)", r"generate/\1"),
    (r"results/scores/(.+)\.parquet", r"score/\1"),
    (r"results/tables/.+", "tables"),
]


def _job_of(path: str) -> str | None:
    for pattern, repl in _OUTPUT_TO_JOB:
        if re.fullmatch(pattern, path):
            return re.sub(pattern, repl, path)
    return None


def recorded(run: Path) -> tuple[dict[str, set[str]], dict[str, tuple[float, float]]] | None:
    """Edges and (start, end) times of each job from Snakemake's metadata records."""
    meta = run / ".snakemake" / "metadata"
    if not meta.is_dir():
        return None
    edges: dict[str, set[str]] = {}
    times: dict[str, tuple[float, float]] = {}
    for f in meta.iterdir():
        try:
            out = base64.b64decode(f.name + "=" * (-len(f.name) % 4)).decode()
            record = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError):
            continue
        job = _job_of(out)
        if job is None:
            continue
        edges.setdefault(job, set()).update(j for j in map(_job_of, record.get("input", [])) if j)
        if record.get("starttime") and record.get("endtime"):
            s, e = times.get(job, (float("inf"), 0.0))
            times[job] = (min(s, record["starttime"]), max(e, record["endtime"]))
    return edges, times


def critical_path(jobs: dict[str, dict[str, float]], deps: dict[str, set[str]]) -> tuple[float, list[str]]:
    finish: dict[str, float] = {}
    best_pred: dict[str, str | None] = {}

    def visit(job):
        if job in finish:
            return finish[job]
        pred, start = None, 0.0
        for dep in deps.get(job, ()):
            f = visit(dep)
            if f > start:
                pred, start = dep, f
        finish[job] = start + jobs[job]["s"]
        best_pred[job] = pred
        return finish[job]

    end = max(jobs, key=visit)
    chain, node = [], end
    while node is not None:
        chain.append(node)
        node = best_pred[node]
    return finish[end], chain[::-1]


def log_facts(run: Path) -> dict[str, Any]:
    logs = sorted((run / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return {}
    text = logs[-1].read_text()
    facts: dict[str, Any] = {"log": str(logs[-1])}
    if m := re.search(r"Provided cores: (\d+)", text):
        facts["cores"] = int(m.group(1))
    if m := re.search(r"Elapsed time: (\d+):(\d+):([\d.]+)", text):
        facts["elapsed_s"] = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if m := re.search(r"Date: (.+)", text):
        facts["date"] = m.group(1).strip()
    if m := re.search(r"(\d+) of (\d+) steps \(100%\) done", text):
        facts["complete"] = True
    return facts


def run(dag_run: str | None = None) -> dict[str, Any]:
    run_dir = Path(dag_run) if dag_run else default_run_dir()
    if run_dir is None or not (run_dir / "results" / "benchmarks").is_dir():
        return {"skipped": "no finished DAG run with results/benchmarks found (pass --dag-run DIR)"}
    jobs = read_jobs(run_dir)
    config = run_config(run_dir)
    deps = derived_edges(jobs, config)
    length, chain = critical_path(jobs, deps)
    facts = log_facts(run_dir)
    cores = facts.get("cores", 2)
    total = sum(j["s"] for j in jobs.values())
    by_rule: dict[str, dict[str, float]] = {}
    for key, j in jobs.items():
        r = by_rule.setdefault(key.split("/")[0], {"jobs": 0, "s": 0.0, "cpu_time": 0.0})
        r["jobs"] += 1
        r["s"] += j["s"]
        r["cpu_time"] += j.get("cpu_time", 0.0)
    out: dict[str, Any] = {
        "run_dir": str(run_dir), "jobs": len(jobs), "cores": cores, "log": facts,
        "total_job_s": total, "total_cpu_s": sum(j.get("cpu_time", 0.0) for j in jobs.values()),
        "critical_path_s": length,
        "critical_path": [{"job": j, "s": jobs[j]["s"]} for j in chain],
        "lower_bound_s": max(length, total / cores),
        "by_rule": by_rule,
    }
    rec = recorded(run_dir)
    if rec:
        edges, times = rec
        missing = {j: sorted(edges[j] - deps.get(j, set())) for j in edges if edges[j] - deps.get(j, set())}
        extra = {j: sorted(deps[j] - edges.get(j, set())) for j in deps if j in edges and deps[j] - edges[j]}
        out["metadata_check"] = {"jobs_with_records": len(edges), "edges_missing_in_derivation": missing,
                                 "edges_not_recorded": extra, "match": not missing and not extra}
        if times:
            start = min(s for s, _ in times.values())
            end = max(e for _, e in times.values())
            out["wall_clock_s"] = end - start
            rec_len, rec_chain = critical_path(jobs, {j: edges.get(j, set()) & set(jobs) for j in jobs})
            out["critical_path_recorded_edges_s"] = rec_len
    if "wall_clock_s" not in out and "elapsed_s" in facts:
        out["wall_clock_s"] = facts["elapsed_s"]
    return out


def startup_cost(reps: int = 3) -> dict[str, float]:
    """Wall and CPU seconds of one job process's imports (torch, diffusers, transformers, spo)."""
    import resource
    import statistics
    import subprocess
    import sys
    import time

    code = ("import torch; from diffusers import StableDiffusionPipeline; "
            "from transformers import CLIPTextModel; import spo.generate, spo.score")
    walls, cpus = [], []
    for _ in range(reps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        tic = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        walls.append(time.perf_counter() - tic)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}
