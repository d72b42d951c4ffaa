"""The tiny DAG through a real one-node SLURM and `snakemake --profile profiles/slurm`.

The cluster is started by scripts/slurm/start_local_slurm.sh (it installs Debian's slurm-wlm and
munge when they are missing, which needs root and apt). Without them the test is skipped with the
reason, unless SPO_REQUIRE_SLURM=1 (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.workflow
REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"
SLURM_ROOT = Path(os.environ.get("SPO_SLURM_ROOT", "/tmp/spo-slurm"))
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "data", "profiles"]
# Every SLURM job pays for two Snakemake start-ups (sbatch's and the jobstep's srun), about 10 s
# on 2 cores, so the SLURM run scores two metrics, not all of them: colourfulness (no network)
# and one tiny network metric. Table rows are per (method, metric) with a bootstrap seeded per
# row, so these rows must equal the same rows of the full local run.
SLURM_METRICS = ("colorfulness", "pickscore")
SLURM_METHODS = ("tiny-sd15-base", "tiny-sdxl-base")
SLURM_PROMPT_SETS = ["tiny-eval"]                 # scored and tabulated
SLURM_IMAGE_SETS = ["geneval-tiny"]                # images only (an `evaluate` group with score: false)


def _unavailable(reason: str):
    if os.environ.get("SPO_REQUIRE_SLURM") == "1":
        pytest.fail(f"SPO_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def local_slurm():
    """A running one-node SLURM: the environment to reach it. Stopped afterwards only if this
    fixture started it."""
    if os.name != "posix" or shutil.which("apt-get") is None and shutil.which("sbatch") is None:
        _unavailable("no sbatch and no apt-get to install slurm-wlm (Debian/Ubuntu only)")
    if shutil.which("sbatch") is None and os.geteuid() != 0:
        _unavailable("sbatch is missing and installing slurm-wlm needs root")
    status = subprocess.run(["bash", SCRIPTS / "start_local_slurm.sh", "status"],
                            capture_output=True, text=True)
    was_running = "slurmd running" in status.stdout and "slurmctld running" in status.stdout
    start = subprocess.run(["bash", SCRIPTS / "start_local_slurm.sh"], capture_output=True,
                           text=True, timeout=600)
    if start.returncode != 0:
        if shutil.which("sbatch") is None:
            _unavailable(f"slurm-wlm could not be installed:\n{start.stderr[-2000:]}")
        raise AssertionError(f"the local SLURM did not start:\n{start.stderr[-4000:]}")
    env = dict(os.environ, SLURM_CONF=str(SLURM_ROOT / "etc" / "slurm.conf"))
    yield env
    if not was_running:
        subprocess.run(["bash", SCRIPTS / "stop_local_slurm.sh"], capture_output=True, timeout=60)


def local_cluster_profile(profile: Path) -> None:
    """Point the copied profile at the local cluster: its partitions, no account (there is no
    accounting database), squeue for job states, short polling delays."""
    config = yaml.safe_load(profile.read_text())
    config["default-resources"]["slurm_partition"] = "debug"
    del config["default-resources"]["slurm_account"]
    # GPU-capable rules on the other partition, as a cluster with a GPU partition is set up.
    config["set-resources"] = {"generate": {"slurm_partition": "gpu"},
                               "score": {"slurm_partition": "gpu"}}
    config["slurm-status-command"] = "squeue"  # MinJobAge=600 >= 3 x the delay below
    config["slurm-init-seconds-before-status-checks"] = 2
    config["latency-wait"] = 5
    profile.write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    env = dict(env, HF_HUB_OFFLINE="1", SPO_THREADS="1", OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture()
def slurm_checkout(tmp_path):
    # Under /tmp, which is the shared file system of this one-node cluster.
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / name)
    local_cluster_profile(tmp_path / "profiles" / "slurm" / "config.yaml")
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config["metrics"] = {k: v for k, v in config["metrics"].items() if k in SLURM_METRICS}
    # Training (the SPM, SPO) is not what this test is about: the base models' rows only.
    config.pop("spm", None)
    for block in ("figures", "geneval"):  # they name trained methods; the tables stay
        config.pop(block, None)
    config["methods"] = {k: v for k, v in config["methods"].items() if k in SLURM_METHODS}
    config["tables"].pop("replicates", None)  # pooled rows of trained runs, not trained here
    config["evaluate"] = [{"methods": list(SLURM_METHODS), "prompt_sets": SLURM_PROMPT_SETS},
                          {"methods": list(SLURM_METHODS), "prompt_sets": SLURM_IMAGE_SETS,
                           "score": False}]
    (tmp_path / "config" / "slurm-test.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def test_tiny_dag_through_slurm_gives_the_local_tables(local_slurm, slurm_checkout,
                                                       tiny_dag_local):
    local_dir, local_seconds = tiny_dag_local
    start = time.perf_counter()
    proc = snakemake(slurm_checkout, local_slurm, "--profile", "profiles/slurm",
                     "--configfile", "config/slurm-test.yaml")
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    print(f"tiny DAG wall-clock: SLURM {seconds:.1f} s, local {local_seconds:.1f} s")

    # Every job went through sbatch: one SLURM log per job, in the profile's log folder.
    submitted = text.count("has been submitted with SLURM jobid")
    slurm_logs = list((slurm_checkout / "results/logs/slurm").rglob("*.log"))
    assert submitted >= 10 and len(slurm_logs) == submitted, (submitted, slurm_logs)
    assert list((slurm_checkout / "results/logs/slurm/rule_generate").rglob("*.log"))
    # images-only prompt sets: generated, never scored or tabulated (the tiny profile itself has
    # none since its figure grids show the evaluation images; this run adds one)
    for prompt_set in SLURM_IMAGE_SETS:
        assert (slurm_checkout / f"results/images/tiny-sdxl-base/{prompt_set}/shard-0/manifest.parquet").is_file()
        assert not (slurm_checkout / "results/tables" / f"{prompt_set}.csv").exists()
        assert not list((slurm_checkout / "results/scores").rglob(f"{prompt_set}/*.parquet"))

    # The per-prompt-set summary tables of the prompt sets both runs evaluate.
    tables = [local_dir / "results/tables" / f"{p}.csv" for p in SLURM_PROMPT_SETS]
    assert all(t.is_file() for t in tables), tables
    for local_csv in tables:
        slurm_csv = slurm_checkout / "results/tables" / local_csv.name
        local = pd.read_csv(local_csv)
        local = local[local.metric.isin(SLURM_METRICS)
                      & local.method.isin(SLURM_METHODS)].reset_index(drop=True)
        assert set(local.metric) == set(SLURM_METRICS)
        # Exact values; dtypes may differ only in the all-empty baseline columns (no trained
        # method in the SLURM run: pandas reads an all-empty column as float).
        pd.testing.assert_frame_equal(pd.read_csv(slurm_csv), local, check_exact=True,
                                      check_dtype=False)


def test_unknown_partition_stops_before_submission(local_slurm, slurm_checkout):
    proc = snakemake(slurm_checkout, local_slurm, "--profile", "profiles/slurm",
                     "--configfile", "config/slurm-test.yaml",
                     "--default-resources", "slurm_partition=CHANGE-ME-partition")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "slurm_partition 'CHANGE-ME-partition'" in text and "debug, gpu" in text, text[-3000:]
    assert "has been submitted" not in text
