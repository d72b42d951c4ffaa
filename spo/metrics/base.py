"""The scorer interface shared by every metric."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
from PIL import Image


class ScorerError(RuntimeError):
    """A scorer cannot run: missing weights, mismatched keys, bad inputs."""


class Scorer(Protocol):
    """Scores images, optionally conditioned on their prompts.

    Attributes:
        name: the metric's registry name.
        version: the metric's version string, shown in table column names (``pickscore_v1``...).
        higher_is_better: direction of preference.
    """

    name: str
    version: str
    higher_is_better: bool

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """Return one float per image, shape (N,)."""
        ...


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way the reference scorers do (``Image.convert('RGB')``)."""
    return image if image.mode == "RGB" else image.convert("RGB")
