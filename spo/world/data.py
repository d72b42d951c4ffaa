"""The tiny world's training data: rendered scenes and their captions, deterministic given a seed."""

from __future__ import annotations

import numpy as np
import torch

from spo.world.grammar import Scene, WorldSpec
from spo.world.render import render_many


def sample_scenes(spec: WorldSpec, n: int, seed: int, *, held_out: bool = False) -> list[Scene]:
    """``n`` scenes drawn uniformly (with replacement) from the training (or held-out) scenes."""
    pool = spec.scenes(held_out=held_out)
    rng = np.random.default_rng([seed, 1 if held_out else 0])
    return [pool[i] for i in rng.integers(0, len(pool), n)]


def render_dataset(spec: WorldSpec, n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """``n`` training renders: their captions and the images as (n, 3, S, S) float32 in [-1, 1]."""
    scenes = sample_scenes(spec, n, seed)
    images = render_many(scenes, seed=seed, size=spec.image_size)
    return [s.caption for s in scenes], to_model_range(images)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def step_generator(seed: int, part: str, step: int) -> torch.Generator:
    """The generator of one training step: a pure function of (seed, part, step), so a resumed
    run draws exactly what an uninterrupted one draws."""
    from spo.seeds import image_seed

    return torch.Generator().manual_seed(image_seed(seed, f"pretrain/{part}", step))
