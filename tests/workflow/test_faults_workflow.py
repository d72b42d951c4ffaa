"""Issue 20, the workflow side, through Snakemake dry runs on a copy of the workflow (a few seconds
each): a dry run writes nothing under results/, a repeated key in a --configfile is an error, the
missing-tiny-model hint is a command that runs, and the SLURM profile asks for the signal that
lets a training checkpoint before its time limit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults-workflow")
    for name in ("Snakefile", "workflow", "config", "data", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    return work


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_dry_run_writes_nothing_under_results_and_a_run_writes_the_config(checkout):
    shutil.rmtree(checkout / "results", ignore_errors=True)
    proc = snakemake(checkout, "-n", "--cores", "1")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert not (checkout / "results").exists()  # before: results/config/<hash>.yaml
    # Jobs that run read the resolved config: it is written when they start (--touch runs none).
    proc = snakemake(checkout, "--cores", "1", "--touch", "results/models/spm-init/pickscore")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(list((checkout / "results" / "config").glob("*.yaml"))) == 1
    shutil.rmtree(checkout / "results")


def test_the_missing_tiny_model_hint_is_a_snakemake_command_that_runs(checkout, monkeypatch):
    from spo.models.sources import SourceError, local_root

    monkeypatch.chdir(checkout)
    with pytest.raises(SourceError) as err:  # the SPM's initialisation, a DAG-built tiny PickScore
        local_root({"tiny": {"seed": 0}}, Path("results/models/spm-init/pickscore/model"))
    command = str(err.value).split("`")[1]
    assert command == "snakemake --cores 1 results/models/spm-init/pickscore", command
    proc = snakemake(checkout, "-n", *command.split()[1:])
    assert proc.returncode == 0 and "spm_tiny_pickscore" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


def test_a_repeated_key_in_a_configfile_stops_the_dag_naming_file_and_key(checkout, tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("seed: 1\ngeneration:\n  eta: 0.0\nseed: 2\n")
    proc = snakemake(checkout, "-n", "--cores", "1", "--configfile", str(bad))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"'{bad}' gives the key 'seed' twice" in text, text[-3000:]


def test_the_slurm_profile_signals_trainings_ahead_of_their_time_limit(checkout):
    proc = snakemake(checkout, "-n", "--profile", "profiles/slurm")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    leads = {}
    for block in re.split(r"\n(?=\[)", text):
        rule = re.search(r"^rule (\w+):", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res and rule.group(1) in ("train", "train_spm"):
            extra = re.search(r"slurm_extra=--signal=USR1@(\d+)", res.group(1))
            leads.setdefault(rule.group(1), set()).add(int(extra.group(1)) if extra else None)
    assert leads.get("train") and leads["train"] == {600}, leads
    assert leads.get("train_spm", {600}) == {600}, leads


def test_the_checkpoint_folder_changes_with_the_preference_models_config(checkout, tmp_path):
    """Before, only `train:`, the model, seed and resolution chose the folder: a changed
    `spm.pickscore` reran the job, which then resumed the old run's checkpoints."""
    def checkpoints(extra: str) -> str:
        path = tmp_path / "probe.yaml"
        path.write_text("extends: config/config.yaml\nmethods:\n  fp-probe:\n    model: tiny-sd15\n"
                        "    train: {prompts: tiny-train, preference: {name: pickscore}}\n" + extra)
        proc = snakemake(checkout, "results/train/fp-probe", "-n", "-p", "--cores", "1",
                         "--configfile", str(path))
        found = re.search(r"--checkpoints (\S+)", proc.stdout)
        assert proc.returncode == 0 and found, (proc.stdout + proc.stderr)[-3000:]
        return found.group(1)

    before = checkpoints("")
    after = checkpoints("spm:\n  pickscore:\n    model: {path: elsewhere/pickscore}\n")
    assert before.startswith("results/checkpoints/train/fp-probe/") and before != after
