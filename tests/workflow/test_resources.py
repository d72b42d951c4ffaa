"""What each rule asks a cluster for (workflow/rules/resources.smk), seen through dry runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "data", "profiles"]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    work = tmp_path_factory.mktemp("resources")
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    return work


def dry_run(workdir: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each job]} from `snakemake -n`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=\[)", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res and rule.group(1) != "all":
            jobs.setdefault(rule.group(1), []).append(dict(kv.split("=", 1)
                                                           for kv in res.group(1).split(", ")))
    return jobs


def test_tiny_profile_asks_for_no_gpu(checkout):
    """The shipped tiny world's models are `path:` sources, yet tiny: every job is a 1-CPU job
    (a real local checkpoint would be sized for GPUs, and its training launched on 4)."""
    jobs = dry_run(checkout, "--cores", "2")
    for rule in ("generate", "score", "tables", "train", "train_spm"):
        assert all(r["gpu"] == "0" and r["cpus_per_task"] == "1" for r in jobs[rule]), rule
    assert "tiny_pipeline" not in jobs and "tiny_metric" not in jobs  # nothing random-init


@pytest.mark.slow
def test_paper_profile_through_the_slurm_profile_shows_every_gpu_job(checkout):
    jobs = dry_run(checkout, "--profile", "profiles/slurm", "--configfile", "config/paper.yaml")
    generate = jobs["generate"]
    # Every evaluated (method, prompt set) shard of the paper profile, plus the generation that
    # figures and GenEval ask for beside the evaluation groups.
    from spo.config import evaluated_pairs, load_config
    from spo.prompts import count_prompts, num_shards

    config = load_config([checkout / "config" / "paper.yaml"], root=checkout)
    shards = sum(num_shards(count_prompts(config["prompt_sets"][p], checkout),
                            config["generation"]["shard_size"]) for _, p in evaluated_pairs(config))
    assert shards >= 4 * (10 + 1 + 1) and len(generate) >= shards, (len(generate), shards)
    for r in generate:
        assert (r["gpu"], r["mem_mb"], r["runtime"], r["cpus_per_task"]) == ("1", "32000", "120", "4")
        assert r["slurm_partition"] == "CHANGE-ME-partition"  # the profile's placeholder
    # A metric that loads a network scores on a GPU; colourfulness loads none and stays on CPU.
    assert {r["gpu"] for r in jobs["score"]} == {"0", "1"}
    # Training jobs hold a node's 4 GPUs (the paper's 4 x A100), SPM and SPO alike.
    for rule in ("train", "train_spm"):
        assert jobs[rule] and {r["gpu"] for r in jobs[rule]} == {"4"}, rule


def test_config_resources_override_one_number(checkout, tmp_path):
    override = tmp_path / "big.yaml"
    override.write_text("extends: config/paper.yaml\n"
                        "resources:\n  generate: {gpu: 2, runtime: 240}\n  tables: {mem_mb: 999}\n")
    jobs = dry_run(checkout, "--cores", "2", "--configfile", str(override))
    assert {(r["gpu"], r["runtime"], r["mem_mb"]) for r in jobs["generate"]} == {("2", "240", "32000")}
    assert jobs["tables"][0]["mem_mb"] == "999"


def test_mistyped_resource_key_is_named(checkout, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  generate: {gpus: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
                          cwd=checkout, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "resources.generate.gpus" in proc.stdout + proc.stderr
