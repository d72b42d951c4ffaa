"""Colorfulness (Hasler and Suesstrunk 2003, metric M^(3)): the tiny profile's ground-truth preference.

    rg = R - G,   yb = (R + G) / 2 - B          (R, G, B in [0, 255])
    M  = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)

Reference: D. Hasler and S. Suesstrunk, "Measuring colourfulness in natural images", Proc. SPIE 5007,
Human Vision and Electronic Imaging VIII, 2003, eq. (3) and Table 2 (M^(3)). Population standard
deviations over all pixels. It needs no weights and no prompt, so it is an *analytic* preference:
SPM training and SPO on tiny models can be checked against a known ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from spo.metrics.base import to_rgb


def colorfulness_array(rgb: np.ndarray) -> np.ndarray:
    """Colorfulness of a batch of images.

    Args:
        rgb: (N, H, W, 3) or (H, W, 3), values in [0, 255] (any real dtype).

    Returns:
        (N,) float64 (or a 0-d array for one image), >= 0; about 0-150 for natural photos.
    """
    arr = np.asarray(rgb, dtype=np.float64)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB values, got shape {arr.shape}")
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    rg = (r - g).reshape(len(arr), -1)
    yb = (0.5 * (r + g) - b).reshape(len(arr), -1)
    std = np.sqrt(rg.std(axis=1) ** 2 + yb.std(axis=1) ** 2)
    mean = np.sqrt(rg.mean(axis=1) ** 2 + yb.mean(axis=1) ** 2)
    out = std + 0.3 * mean
    return out[0] if single else out


@dataclass
class ColorfulnessScorer:
    name: str = "colorfulness"
    version: str = "hasler2003_m3"
    higher_is_better: bool = True

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        # Images of different sizes are scored one by one; the statistic is size-independent.
        return np.array([float(colorfulness_array(np.asarray(to_rgb(im)))) for im in images])


def build(spec, *, device="cpu", dtype="float32", weights=None) -> ColorfulnessScorer:
    if weights:
        raise ValueError(f"metric 'colorfulness' takes no weights, got roles {sorted(weights)}")
    return ColorfulnessScorer()
