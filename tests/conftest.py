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


def pytest_configure(config):
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


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
    from spo.config import load_config

    return load_config([repo_root / "config" / "config.yaml"], root=repo_root)
