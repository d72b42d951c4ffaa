"""Shared test set-up: one torch thread, no network, tiny models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Before any heavy import: the hub is never reached from tests, and 2 threads on this 2-core
# machine are slower than 1 whenever the other core is busy (STACK.md G9).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SPO_THREADS", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """One mark to deselect, `slow` (`pytest -m "not slow"`: the quick loop, under 3 minutes):
    every test that runs Snakemake on the tiny DAG (the `workflow` mark, or a fixture that starts
    the session's DAG run) is slow without saying so; others carry `@pytest.mark.slow` by hand."""
    for item in items:
        if item.get_closest_marker("workflow") or "tiny_dag_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process state (device, precision) per process, and a job runs one
    stage per process; tests run many in one, some pinned to the CPU on a GPU machine: each test
    starts from none, as a job does (spo.training.loop.accelerator_on refuses a mixed one)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """``<root>/pipelines/tiny-sd15`` and ``<root>/pipelines/tiny-sdxl``, built once."""
    from spo.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("models")
    save_tiny_pipeline("sd15", root / "pipelines" / "tiny-sd15", seed=1)
    save_tiny_pipeline("sdxl", root / "pipelines" / "tiny-sdxl", seed=2)
    return root


@pytest.fixture()
def tiny_config(repo_root):
    """config/config.yaml with RANDOM-init tiny stand-ins in place of the shipped tiny world
    (``tiny: {seed}`` sources, what the ``tiny_models`` fixture builds): unit and integration tests
    need the real classes and formats, not the pretrained weights (the workflow tests run those)."""
    from spo.config import load_config

    return random_init_config(load_config([repo_root / "config" / "config.yaml"], root=repo_root))


@pytest.fixture(scope="session")
def random_init():
    """The function ``random_init_config`` (tests that load a config themselves)."""
    return random_init_config


RANDOM_INIT_SEEDS = {"tiny-sd15": 1, "tiny-sdxl": 2, "tiny-sdxl-b": 3}


def random_init_config(config):
    """``config`` with its tiny-world sources replaced by random-init ``tiny`` ones, and its prompt
    sets by the generic test prompts (data/prompts/tiny_*.tsv, the paper's figure prompts), in
    place: what unit and integration tests were written against; the world's own prompts, metrics
    and detector are tested in tests/world and by the workflow tests."""
    generic = {"tiny-train": ("tiny_train.tsv", None), "tiny-eval": ("tiny_eval.tsv", None),
               "figure2": ("figure2.tsv", 1), "figure11": ("figure11.tsv", 1),
               "geneval-tiny": ("geneval_tiny.tsv", 4)}
    for name, (file, per_prompt) in generic.items():
        spec = {**config["prompt_sets"].get(name, {}), "source": {"path": f"data/prompts/{file}"}}
        spec.pop("images_per_prompt", None)
        if per_prompt:
            spec["images_per_prompt"] = per_prompt
        config["prompt_sets"][name] = spec
    for name in [m for m, spec in config["metrics"].items() if spec.get("scorer") == "adherence"]:
        del config["metrics"][name]
    if config.get("geneval"):
        config["geneval"].pop("detector", None)
        config["geneval"]["metadata"] = {
            "path": "data/prompts/geneval/evaluation_metadata.jsonl",
            "sha256": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"}
    if config.get("spm"):
        for dataset in config["spm"]["datasets"].values():
            if "tiny" in dataset:
                dataset["tiny"]["prompts"] = "data/prompts/tiny_train.tsv"
    for name, seed in RANDOM_INIT_SEEDS.items():
        if name in config["models"]:
            config["models"][name] = {"family": config["models"][name]["family"],
                                      "source": {"tiny": {"seed": seed}}}
    tiny_pickscore = {"model": {"tiny": {"seed": 5}}, "processor": {"tiny": {"seed": 5}}}
    if config.get("spm"):
        config["spm"]["pickscore"] = tiny_pickscore
    if "pickscore" in config["metrics"]:
        config["metrics"]["pickscore"]["weights"] = {"model": {"tiny": {"seed": 0}},
                                                     "processor": {"tiny": {"seed": 0}}}
    return config


@pytest.fixture(scope="session")
def tiny_dag_local(repo_root, tmp_path_factory):
    """The tiny DAG run locally once per session (`snakemake --cores 2`) on a fresh copy of the
    workflow files: ``(workdir, seconds)``. Tests that compare another way of running the DAG
    (tests/workflow/test_slurm_dag.py: through SLURM) against a local run share this one run."""
    import shutil
    import subprocess
    import sys
    import time

    reuse = os.environ.get("SPO_TINY_DAG_REUSE")
    if reuse:  # a developer's shortcut: the finished run in that folder, not run again (never in CI)
        if os.environ.get("CI"):
            raise AssertionError("SPO_TINY_DAG_REUSE is set under CI: CI runs the tiny DAG itself")
        return Path(reuse), float("nan")
    work = tmp_path_factory.mktemp("tiny-dag-local")
    for name in ("Snakefile", "workflow", "config", "data"):
        src = repo_root / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", SPO_THREADS="1", OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"local tiny DAG failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return work, time.perf_counter() - start
