"""Shared fixtures: tiny scorer weights built once per session, single-threaded torch, no hub."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # any stray hub access fails loudly

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

SCORERS = ("pickscore", "hpsv2", "hpsv2.1", "aesthetic", "imagereward")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """scorer -> {role: path} of tiny weights written by ``save_tiny_weights`` (seed 0)."""
    from spo.metrics.tiny import save_tiny_weights

    root = tmp_path_factory.mktemp("tiny_metrics")
    return {name: {role: str(p) for role, p in save_tiny_weights(name, root / name, seed=0).items()}
            for name in SCORERS}


@pytest.fixture(scope="session")
def scorers(tiny_weights):
    """The tiny scorers as the DAG builds them (float32, batch 3)."""
    from spo.metrics import build_scorer

    return {name: build_scorer(name, {"batch_size": 3}, weights=tiny_weights[name]) for name in SCORERS}


@pytest.fixture(scope="session")
def scorers64(tiny_weights):
    """The same in float64, so parity with the reference is a statement about formulas, not rounding."""
    from spo.metrics import build_scorer

    return {name: build_scorer(name, {"batch_size": 4}, dtype="float64", weights=tiny_weights[name])
            for name in SCORERS}


def _noise(rng, h, w, mode="RGB"):
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return im if mode == "RGB" else im.convert(mode)


@pytest.fixture(scope="session")
def images():
    """Noise images of assorted modes and sizes (odd, portrait, landscape, the model's own 32 px)."""
    rng = np.random.default_rng(0)
    ims = [_noise(rng, 32, 32), _noise(rng, 45, 71), _noise(rng, 71, 45), _noise(rng, 33, 50, "L"),
           _noise(rng, 40, 40, "P"), _noise(rng, 37, 64, "CMYK")]
    rgba = np.concatenate([rng.integers(0, 256, (50, 29, 3)), rng.integers(0, 256, (50, 29, 1))], -1)
    ims.append(Image.fromarray(rgba.astype(np.uint8), "RGBA"))
    return ims


@pytest.fixture(scope="session")
def prompts(images):
    base = ["a photo of a cat", "A RED dog &amp; a “blue” cat", "painting, 4k!!", "",
            "an extremely long prompt " * 20, "the dog", "über café naïve"]
    return (base * 2)[: len(images)]
