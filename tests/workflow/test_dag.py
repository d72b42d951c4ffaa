"""The tiny DAG through Snakemake itself: run once per session, then checked from every side.

These tests run the real `snakemake` command on a copy of the repository's workflow files, the way
a researcher does after cloning (README command 1), and time it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.workflow
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "data"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", SPO_THREADS="1", OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=workdir, env=_env(), capture_output=True,
                          text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def jobs_run(proc) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a run executed, from Snakemake's own report."""
    out = []
    text = proc.stdout + proc.stderr
    for block in re.split(r"\n(?=\[)", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule and rule.group(1) != "all":
            wild = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            out.append((rule.group(1), wild.group(1) if wild else ""))
    return out


@pytest.fixture(scope="session")
def checkout(tiny_dag_local) -> Path:
    return tiny_dag_local[0]


@pytest.fixture(scope="session")
def tiny_run(tiny_dag_local):
    return tiny_dag_local


@pytest.fixture(scope="session")
def config(checkout):
    from spo.config import load_config

    return load_config([checkout / "config/config.yaml"], root=checkout)


def test_tiny_dag_produces_every_table(tiny_run, checkout, config):
    from spo.config import evaluated_pairs

    _, seconds = tiny_run
    print(f"tiny DAG wall-clock: {seconds:.1f} s")
    pairs = evaluated_pairs(config, scored=True)
    # images-only prompt sets (the figure grids): generated, never scored or tabulated
    images_only = {p for _, p in evaluated_pairs(config)} - {p for _, p in pairs}
    assert images_only == set()  # the tiny grids show the evaluation images (figures.*.prompts)
    for prompt_set in images_only:
        assert list((checkout / "results/images").glob(f"*/{prompt_set}/shard-0/manifest.parquet"))
        assert not (checkout / f"results/tables/{prompt_set}.csv").exists()
        assert not list((checkout / "results/scores").rglob(f"{prompt_set}/*.parquet"))
    for prompt_set in {p for _, p in pairs}:
        table = pd.read_csv(checkout / f"results/tables/{prompt_set}.csv")
        pooled = set((config["tables"].get("replicates") or {}))
        assert set(table.method) == {m for m, p in pairs if p == prompt_set} | pooled
        assert set(table.metric) == set(config["metrics"])
        assert (table.ci_low <= table["mean"]).all() and (table["mean"] <= table.ci_high).all()
        assert (checkout / f"results/tables/{prompt_set}.md").read_text().startswith("# ")
    # Every rule left a log and a benchmark record.
    assert list((checkout / "results/benchmarks/generate").rglob("*.tsv"))
    assert (checkout / "results/logs/tables.log").exists()


def _delta(checkout, method, metric="colorfulness", prompt_set="tiny-eval"):
    table = pd.read_csv(checkout / f"results/tables/{prompt_set}.csv")
    row = table[(table.method == method) & (table.metric == metric)].iloc[0]
    return row.delta, row.delta_ci_low, row.delta_ci_high


def _controls(checkout, family, trained):
    """(analytic, negated, random) deltas; the random control pools its independent runs
    (tables.replicates), whose CI counts the run-to-run variation; each run is printed too."""
    up = _delta(checkout, f"tiny-{family}-{trained}-colorfulness")
    down = _delta(checkout, f"tiny-{family}-{trained}-negated")
    null = _delta(checkout, f"tiny-{family}-{trained}-random")
    runs = [_delta(checkout, f"tiny-{family}-{trained}-random-s{s}") for s in range(3)]
    print(f"{family} {trained}: analytic {up}, negated {down}, random (3 runs pooled) {null}, "
          f"each run {runs}")
    return up, down, null


def test_spo_moves_the_analytic_preference_as_its_sign_says(tiny_run, checkout):
    """SPO on the tiny SD-1.5 family, held-out prompts, paired with the base model: up with the
    preference, down with it negated, and no significant move under a random preference."""
    up, down, null = _controls(checkout, "sd15", "spo")
    assert up[1] > 0, up
    assert down[2] < 0, down
    assert null[1] <= 0 <= null[2], null


def test_mspo_moves_the_analytic_preference_as_its_sign_says(tiny_run, checkout):
    """MSPO on the tiny SDXL family, the same three controls as SPO."""
    up, down, null = _controls(checkout, "sdxl", "mspo")
    assert up[1] > 0, up
    assert down[2] < 0, down
    assert null[1] <= 0 <= null[2], null


def test_every_method_raises_the_preference(tiny_run, checkout):
    """Issue 16's 'Done means': SPO with the tiny SPM, MSPO, Diffusion-DPO, DDPO and D3PO each raise
    the preference on held-out prompts with a CI excluding zero."""
    for method in ("tiny-sd15-spo", "tiny-sdxl-mspo-colorfulness", "tiny-sd15-diffusion-dpo",
                   "tiny-sd15-ddpo", "tiny-sd15-d3po"):
        delta = _delta(checkout, method)
        print(f"{method}: colourfulness delta {delta}")
        assert delta[1] > 0, (method, delta)


def test_adherence_is_reported_beside_the_preference(tiny_run, checkout, config):
    """Every trained method's adherence change is in the table (a method that trades adherence
    away shows it), and the shipped base models follow held-out captions >= 80 % per attribute."""
    table = pd.read_csv(checkout / "results/tables/tiny-eval.csv")
    pooled = config["tables"].get("replicates") or {}
    trained = [m for m in table.method.unique()
               if m in pooled or "train" in config["methods"][m]]
    for method in trained:
        row = table[(table.method == method) & (table.metric == "adherence")]
        assert len(row) == 1 and not pd.isna(row.delta.iloc[0]), method
    for base in ("tiny-sd15-base", "tiny-sdxl-base"):
        means = table[table.method == base].set_index("metric")["mean"]
        print(base, means.filter(like="adherence").round(3).to_dict())
        for attribute in ("background", "colour", "shape", "size"):
            assert means[f"adherence-{attribute}"] >= 0.8, (base, attribute, means[f"adherence-{attribute}"])


def test_tiny_spm_is_accurate_at_t0(tiny_run, checkout):
    val = pd.read_csv(checkout / "results/spm/tiny-sd15-spm/validation.csv")
    print(val.to_string())
    at0 = val[val.t == 0].set_index("stage").accuracy
    assert at0["final"] >= 0.75, at0


def test_table3_is_scored_by_the_world_detector(tiny_run, checkout, config):
    """Table 3's tiny column: the GenEval layout scored in the DAG by the world's detector."""
    table = pd.read_csv(checkout / "results/tables/table3_geneval.csv").set_index("method")
    for method in config["geneval"]["methods"]:
        row = table.loc[method]
        assert row["status"] == "imported", row
        parts = [row[c] for c in ("Background", "Colour", "Shape", "Size")]
        assert row["Overall"] == pytest.approx(sum(parts) / 4)
        assert row["n_images"] == 24 * 2


def test_jobs_ran_as_forks_of_the_job_server(tiny_run, checkout):
    """The tiny profile's `job_server: true`: the server started, every job reached it (a job that
    could not would say so in its log and run directly), and it stopped with the run."""
    server_log = (checkout / "results/logs/job_server.log").read_text()
    socket_path = re.search(r"listening at (\S+)", server_log)
    assert socket_path, server_log
    logs = list((checkout / "results/logs").rglob("*.log"))
    assert len(logs) > 100
    unreached = [p for p in logs if "job server" in p.read_text(errors="replace") and p.name != "job_server.log"]
    assert not unreached, unreached
    assert not Path(socket_path.group(1)).exists()


def test_second_run_does_nothing(tiny_run, checkout):
    proc = snakemake(checkout, "--cores", "2")
    assert "Nothing to be done" in proc.stdout + proc.stderr, jobs_run(proc)


def test_deleted_shard_reruns_alone_and_bit_identically(tiny_run, checkout):
    shard = checkout / "results/images/tiny-sdxl-base/tiny-eval/shard-0"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shard.glob("*.png")}
    shutil.rmtree(shard)
    proc = snakemake(checkout, "--cores", "2")
    ran = jobs_run(proc)
    rules = sorted(rule for rule, _ in ran)
    # One scoring job per shard for all metrics in the tiny profile (scoring.one_job_per_metric).
    # Exactly that shard and its scores are redone; what is rerun besides are summaries that read
    # every score file (tables, their HTML views, paper tables, figures), never other shards.
    downstream = {"tables", "table_html", "paper_tables"} | {r for r in rules if r.startswith("figure_")}
    assert rules.count("generate") == 1 and rules.count("score") == 1, ran
    assert {"generate", "score", "tables"} <= set(rules) <= {"generate", "score"} | downstream, ran
    assert all("tiny-sdxl-base" in w and "tiny-eval" in w for r, w in ran if r in ("generate", "score"))
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shard.glob("*.png")}
    assert after == before and len(after) == 48  # 24 held-out prompts x 2 images


def test_lint_findings_are_only_the_justified_ones(checkout):
    proc = snakemake(checkout, "--lint", check=False)
    findings = set(re.findall(r"^\s+\* (.*?):?$", proc.stdout + proc.stderr, re.M))
    justified = {
        "Shell command directly uses variable PYTHON from outside of the rule",
        "Shell command directly uses variable RESOLVED_CONFIG from outside of the rule",
        "Shell command directly uses variable MODELS_ROOT from outside of the rule",
        "Specify a conda environment or container for each rule.",
    }
    assert findings <= justified, findings - justified
    assert "justified" not in findings  # the comment in common.smk names each of these


def test_paper_profile_dry_runs_without_weights(checkout):
    proc = snakemake(checkout, "-n", "--configfile", "config/paper.yaml")
    text = proc.stdout + proc.stderr
    # 500 prompts in shards of 50 for both base models, plus the two figure prompt sets.
    for method in ("sd15-base", "sdxl-base"):
        for shard in range(10):
            assert f"results/images/{method}/pickapic-val/shard-{shard}" in text
    assert "tiny_pipeline" not in text  # real models are loaded, never built


def test_bad_config_stops_the_dag_with_the_key(checkout, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generation:\n  num_inferenc_steps: 3\n")
    proc = snakemake(checkout, "-n", "--configfile", str(bad), check=False)
    assert proc.returncode != 0
    assert "generation.num_inferenc_steps" in proc.stdout + proc.stderr


def test_released_profile_plans_every_released_row(tmp_path):
    """`snakemake -n --configfile config/released.yaml` plans generation and scoring of every row
    of config/released.yaml on every shard of the paper's prompts, and trains none of them.

    Fast (a dry run, no tiny DAG): the workflow runs from the repository with a scratch working
    directory; `data` is linked in because rule inputs name it relative to the working directory.
    """
    import yaml

    from spo.config import evaluated_pairs, load_config

    repo = Path(__file__).resolve().parents[2]
    released = yaml.safe_load((repo / "config/released.yaml").read_text())
    rows = list(released["methods"])
    config = load_config([repo / "config/released.yaml"], root=repo)
    pairs = evaluated_pairs(config)
    assert {m for m, _ in pairs} == set(rows)  # every released row is evaluated, nothing else
    (tmp_path / "data").symlink_to(repo / "data")
    proc = snakemake(tmp_path, "-n", "--nolock", "--snakefile", str(repo / "Snakefile"),
                     "--configfile", str(repo / "config/released.yaml"))
    planned = set(jobs_run(proc))
    shards = config["prompt_sets"]["pickapic-val"]["count"] // config["generation"]["shard_size"]
    assert shards == 10
    for method, prompt_set in pairs:
        for shard in range(shards):
            where = f"method={method}, prompt_set={prompt_set}, shard={shard}"
            assert ("generate", where) in planned, where
            for metric in config["metrics"]:  # paper profile: one scoring job per metric
                assert ("score", f"scoring={metric}, {where}") in planned, (metric, where)
    assert not [w for rule, w in planned if rule == "train" and any(f"method={m}" == w for m in rows)]
    assert ("tables", "") in planned


def test_the_run_reproduces_the_expected_results(tiny_run, checkout, config, repo_root):
    """Exact on the lock and this CPU family, else within expected.TOLERANCE; every difference printed."""
    from spo import expected

    want = expected.load(repo_root / expected.DEFAULT_FILE)
    got = expected.collect(checkout / "results", config)
    exact, why = expected.exact_comparison_applies(want)
    diffs = expected.compare(want, got, exact=exact)
    print(f"expected results: {'exact' if exact else 'tolerance'} comparison ({why}); "
          f"{len(diffs)} difference(s)")
    for line in diffs:
        print("  " + line)
    assert not diffs, (f"the tiny run differs from {expected.DEFAULT_FILE} "
                       f"({'exact' if exact else 'tolerance'} comparison: {why}):\n  "
                       + "\n  ".join(diffs[:40]) + f"\nif the change is intended: `{expected.COMMAND}` "
                       f"on a finished run, then `python -m spo.expected readme`")
