"""Render the tiny world's scenes: deterministic, seeded, antialiased, 32 px.

Each scene is drawn at ``SUPERSAMPLE`` x the output size and box-filtered down, so edges are
antialiased like a photograph's. Within one caption the render varies: the object's exact size
(within its size word's range), its position, and the saturation / value of both colours. That
variation is what a preference model acts on (colourfulness differs between two renders of one
caption), and what the pretrained models learn to sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spo.world.grammar import COLOURS, SIZES, Scene, colour_rgb

SUPERSAMPLE = 4
# Jitter ranges (multipliers of the colour's own saturation / value).
OBJECT_SATURATION = (0.55, 1.0)
OBJECT_VALUE = (0.75, 1.05)
BACKGROUND_SATURATION = (0.45, 1.0)
BACKGROUND_VALUE = (0.8, 1.05)
ACHROMATIC_VALUE = (0.9, 1.1)
HUE_JITTER_DEG = 4.0
MARGIN = 0.06  # fraction of the side kept free between the object and the image border


@dataclass(frozen=True)
class Layout:
    """The continuous draw of one render: side and centre in [0, 1] image units, colours in RGB [0, 1]."""

    side: float
    cx: float
    cy: float
    object_rgb: tuple[float, float, float]
    background_rgb: tuple[float, float, float]


def _jittered(name: str, rng: np.random.Generator, sat_range, val_range) -> np.ndarray:
    hue, sat, _ = COLOURS[name]
    if sat == 0.0:  # white, gray, black: brightness only
        return np.clip(colour_rgb(name, 1.0, rng.uniform(*ACHROMATIC_VALUE)), 0, 1)
    import colorsys

    h = (hue + rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)) / 360.0 % 1.0
    s = min(1.0, sat * rng.uniform(*sat_range))
    v = min(1.0, COLOURS[name][2] * rng.uniform(*val_range))
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def draw_layout(scene: Scene, rng: np.random.Generator) -> Layout:
    """Draw the continuous parts of a render of ``scene`` from ``rng``."""
    lo, hi = SIZES[scene.size]
    side = rng.uniform(lo, hi)
    free = 1.0 - 2 * MARGIN - side
    cx = MARGIN + side / 2 + rng.uniform(0, max(free, 0.0))
    cy = MARGIN + side / 2 + rng.uniform(0, max(free, 0.0))
    obj = _jittered(scene.colour, rng, OBJECT_SATURATION, OBJECT_VALUE)
    bg = _jittered(scene.background, rng, BACKGROUND_SATURATION, BACKGROUND_VALUE)
    return Layout(side, cx, cy, tuple(obj), tuple(bg))


def shape_mask(shape: str, size: int, side: float, cx: float, cy: float) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` on a ``size`` x ``size`` grid (antialiased by supersampling).

    ``side`` and the centre are in image units ([0, 1]); a triangle points up, its base and height
    equal to ``side``; a circle's diameter and a square's side equal ``side``.
    """
    n = size * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n
    x, y = np.meshgrid(coords, coords)
    r = side / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    elif shape == "triangle":
        depth = (y - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
        inside = (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= r * depth)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, layout: Layout, size: int = 32) -> np.ndarray:
    """The image of ``scene`` drawn with ``layout``: (size, size, 3) uint8."""
    cover = shape_mask(scene.shape, size, layout.side, layout.cx, layout.cy)[..., None]
    image = (1 - cover) * np.array(layout.background_rgb) + cover * np.array(layout.object_rgb)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def render_many(scenes: list[Scene], seed: int, size: int = 32) -> np.ndarray:
    """Render ``scenes`` with one generator seeded by ``seed``: (N, size, size, 3) uint8.

    The same (scenes, seed, size) always gives the same bytes (numpy's PCG64 and float64 math).
    """
    rng = np.random.default_rng(seed)
    return np.stack([render(s, draw_layout(s, rng), size) for s in scenes])
