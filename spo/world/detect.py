"""An analytic detector for the tiny world: does an image show what its caption asks for?

Per image and attribute (background colour, object colour, shape, size) it answers right or wrong;
``all`` is every attribute right. It is the tiny world's stand-in for GenEval's detector (Table 3)
and a metric like the others (``spo.metrics.adherence``).

How it reads an image (32 px, RGB):
1. background: the median colour of the one-pixel border;
2. object: pixels whose colour is far from the background (> ``OBJECT_DISTANCE`` in RGB [0, 1]);
   no object (fewer than ``MIN_PIXELS``) makes colour, shape and size wrong; its outline is where
   pixels are at least half-way from the background to the object's colour;
3. colours are named by hue where saturated (> ``CHROMATIC_SATURATION``), else by brightness
   (white / gray / black), at the centres of ``grammar.COLOURS``;
4. shape: the template (ellipse, rectangle, upward triangle) fitted to the object's bounding box
   that overlaps the object mask best (intersection over union);
5. size: the bounding box's longer side against the midpoint between the size words' ranges.
"""

from __future__ import annotations

import colorsys

import numpy as np

from spo.world.grammar import COLOURS, SIZES, Scene, WorldSpec, parse_caption

ATTRIBUTES = ("background", "colour", "shape", "size")
OBJECT_DISTANCE = 0.2
MIN_PIXELS = 4
CHROMATIC_SATURATION = 0.3


def name_colour(rgb: np.ndarray, names) -> str:
    """The nearest of ``names`` to an RGB colour in [0, 1]: by hue when saturated, else brightness."""
    h, s, v = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    chromatic = [n for n in names if COLOURS[n][1] > 0]
    achromatic = [n for n in names if COLOURS[n][1] == 0]
    if (s > CHROMATIC_SATURATION and v > 0.15 and chromatic) or not achromatic:
        def hue_gap(n):
            d = abs(h * 360.0 - COLOURS[n][0]) % 360.0
            return min(d, 360.0 - d)
        return min(chromatic, key=hue_gap)
    return min(achromatic, key=lambda n: abs(v - COLOURS[n][2]))


def _templates(h0: int, h1: int, w0: int, w1: int, size: int) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = (h0 + h1) / 2, (w0 + w1) / 2
    ry, rx = max((h1 - h0) / 2, 0.5), max((w1 - w0) / 2, 0.5)
    ellipse = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    rect = (np.abs(x - cx) <= rx) & (np.abs(y - cy) <= ry)
    depth = (y - h0) / (h1 - h0 + 1e-9)
    triangle = (depth >= 0) & (depth <= 1) & (np.abs(x - cx) <= rx * depth)
    return {"circle": ellipse, "square": rect, "triangle": triangle}


def read_scene(image: np.ndarray, spec: WorldSpec) -> dict:
    """What the detector sees: ``background``, ``colour``, ``shape``, ``size`` (None when absent).

    Args:
        image: (H, W, 3) uint8 or float in [0, 1].
    """
    img = np.asarray(image, dtype=np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    size = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, axis=0)
    out = {"background": name_colour(bg, spec.backgrounds), "colour": None, "shape": None, "size": None}
    distance = np.linalg.norm(img - bg, axis=-1)
    mask = distance > OBJECT_DISTANCE
    if mask.sum() < MIN_PIXELS:
        return out
    core = distance >= 0.5 * (distance.max() + OBJECT_DISTANCE)  # away from blended edges
    colour = np.median(img[core if core.sum() >= 2 else mask], axis=0)
    out["colour"] = name_colour(colour, spec.colours)
    # An edge pixel blends object and background in proportion to its coverage: pixels at least
    # half-way to the object's colour are the shape (a blur, antialiasing or a VAE, spreads the
    # faint fringe but keeps the half-way contour).
    half = distance > 0.5 * max(float(np.linalg.norm(colour - bg)), OBJECT_DISTANCE)
    if half.sum() >= MIN_PIXELS:
        mask = half
    rows, cols = np.nonzero(mask)
    h0, h1, w0, w1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    templates = _templates(h0, h1, w0, w1, size)
    iou = {name: (mask & t).sum() / max((mask | t).sum(), 1) for name, t in templates.items()
           if name in spec.shapes}
    out["shape"] = max(iou, key=iou.get)
    side = max(h1 - h0, w1 - w0) / size
    bounds = sorted((SIZES[z], z) for z in spec.sizes)
    # between consecutive size ranges, the midpoint of the gap decides
    out["size"] = bounds[-1][1]
    for (rng_a, name_a), (rng_b, _) in zip(bounds, bounds[1:]):
        if side < (rng_a[1] + rng_b[0]) / 2:
            out["size"] = name_a
            break
    return out


def adherence(image: np.ndarray, caption: str, spec: WorldSpec) -> dict[str, float] | None:
    """1.0 / 0.0 per attribute of ``ATTRIBUTES`` and ``all``; None for a caption outside the grammar."""
    scene = parse_caption(caption, spec)
    if scene is None:
        return None
    seen = read_scene(image, spec)
    right = {a: float(seen[a] == getattr(scene, a)) for a in ATTRIBUTES}
    right["all"] = float(all(right.values()))
    return right


def scene_of(caption: str, spec: WorldSpec) -> Scene:
    scene = parse_caption(caption, spec)
    if scene is None:
        raise ValueError(f"caption {caption!r} is not of the world's grammar "
                         f"('a <size> <colour> <shape> on a <background> background')")
    return scene
