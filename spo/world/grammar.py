"""The tiny world's grammar: which scenes exist, how they are captioned, which are held out.

A scene is one object (a shape of a size and a colour) on a plain background colour, rendered at
32 px (``spo.world.render``). Its caption follows one template::

    "a {size} {colour} {shape} on a {background} background"     e.g. "a large red circle on a white background"

The grammar is data (``WorldSpec``, from the config's ``world:`` block or the defaults below), so a
researcher can widen it; every value is checked with an error that names the key.
Held-out *combinations* (background, colour, shape) never appear in training captions or images:
evaluation on them measures composition, not memory.
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spo.config_spec import ConfigError, bad, show

# Hue (degrees), saturation and value of each named colour's centre. Chromatic object colours are
# jittered in saturation and value when rendered (``render.py``), never in hue beyond a few degrees,
# so "red" stays red while its colourfulness varies within a caption.
# Chromatic hues are at least 50 degrees apart: a measured VAE round trip confused orange with
# yellow (26 degrees apart) in 5 % of renders (docs/tiny-world.md).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.0, 0.90, 0.90), "yellow": (55.0, 0.90, 0.95), "green": (122.0, 0.85, 0.70),
    "cyan": (185.0, 0.85, 0.85), "blue": (232.0, 0.85, 0.90), "purple": (290.0, 0.70, 0.80),
    "white": (0.0, 0.0, 0.95), "gray": (0.0, 0.0, 0.50), "black": (0.0, 0.0, 0.08),
}
SHAPES = ("circle", "square", "triangle")
# Object side as a fraction of the image side, per size word. A small object spans 13-17 px at 32 px:
# smaller ones lost their corners in a measured VAE round trip (triangles read as circles).
SIZES: dict[str, tuple[float, float]] = {"small": (0.42, 0.52), "large": (0.64, 0.80)}


class WorldError(ConfigError):
    """A world config that cannot render: unknown colour or shape, size out of range (a
    ``ConfigError``: the message names the ``world.<key>``)."""


@dataclass(frozen=True)
class Scene:
    """One scene's words (what the caption says)."""

    shape: str
    colour: str
    background: str
    size: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} on a {self.background} background"

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.background, self.colour, self.shape)


@dataclass(frozen=True)
class WorldSpec:
    """The grammar's vocabulary and the held-out combinations.

    Attributes:
        colours: object colour words (keys of ``COLOURS``).
        backgrounds: background colour words (keys of ``COLOURS``); an object never has its
            background's colour.
        shapes: shape words (``SHAPES``); sizes: size words (keys of ``SIZES``).
        held_out: (background, colour, shape) combinations never trained on.
        image_size: pixels per side (32; 64 works, 4x the compute).
    """

    colours: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "purple")
    backgrounds: tuple[str, ...] = ("white", "gray", "black", "blue", "green", "red")
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = ("small", "large")
    held_out: tuple[tuple[str, str, str], ...] = field(default_factory=lambda: DEFAULT_HELD_OUT)
    image_size: int = 32

    def __post_init__(self):
        for key, values, allowed in (("colours", self.colours, COLOURS),
                                     ("backgrounds", self.backgrounds, COLOURS),
                                     ("shapes", self.shapes, SHAPES), ("sizes", self.sizes, SIZES)):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise WorldError(bad(f"world.{key}", list(values),
                                     f"it must be a non-empty list of {', '.join(allowed)}"
                                     + (f" ({', '.join(map(show, unknown))} is not)" if unknown else "")))
        for combo in self.held_out:
            bg, colour, shape = combo
            if bg not in self.backgrounds or colour not in self.colours or shape not in self.shapes \
                    or bg == colour:
                raise WorldError(bad("world.held_out", [list(c) for c in self.held_out],
                                     f"each entry must be a [background, colour, shape] of this "
                                     f"world, background != colour ({list(combo)} is not)"))
        if not 16 <= self.image_size <= 128 or self.image_size % 8:
            raise WorldError(bad("world.image_size", self.image_size,
                                 "it must be an integer in [16, 128], a multiple of 8"))

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> "WorldSpec":
        block = dict(block or {})
        if "held_out" in block:
            block["held_out"] = tuple(tuple(c) for c in block["held_out"])
        for key in ("colours", "backgrounds", "shapes", "sizes"):
            if key in block:
                block[key] = tuple(block[key])
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise WorldError("; ".join(f"config key 'world.{k}' is not allowed" for k in unknown)
                             + f"; allowed: {', '.join(cls.__dataclass_fields__)}")
        return cls(**block)

    def combinations(self) -> list[tuple[str, str, str]]:
        """Every (background, colour, shape) with colour != background, in a fixed order."""
        return [(b, c, s) for b, c, s in itertools.product(self.backgrounds, self.colours, self.shapes)
                if b != c]

    def scenes(self, *, held_out: bool) -> list[Scene]:
        """Every scene (all sizes) of the training (``held_out=False``) or held-out combinations."""
        keep = set(self.held_out)
        return [Scene(shape=s, colour=c, background=b, size=z)
                for b, c, s in self.combinations() if ((b, c, s) in keep) == held_out
                for z in self.sizes]


# 12 of the 99 default combinations (about 12 %): every shape, colour and background appears in
# training, only these triples do not.
DEFAULT_HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("white", "red", "triangle"), ("white", "blue", "square"), ("gray", "yellow", "circle"),
    ("gray", "purple", "triangle"), ("black", "cyan", "square"), ("black", "green", "circle"),
    ("blue", "yellow", "square"), ("blue", "purple", "circle"), ("green", "red", "circle"),
    ("green", "cyan", "triangle"), ("red", "blue", "triangle"), ("red", "green", "square"),
)


def parse_caption(caption: str, spec: WorldSpec) -> Scene | None:
    """The scene a caption asks for; None when it is not a caption of this world's grammar."""
    words = caption.strip().lower().split()
    # a {size} {colour} {shape} on a {background} background
    if len(words) != 8 or words[0] != "a" or words[4:6] != ["on", "a"] or words[7] != "background":
        return None
    size, colour, shape, background = words[1], words[2], words[3], words[6]
    if size not in spec.sizes or colour not in spec.colours or shape not in spec.shapes \
            or background not in spec.backgrounds:
        return None
    return Scene(shape=shape, colour=colour, background=background, size=size)


def colour_rgb(name: str, saturation: float = 1.0, value: float = 1.0) -> np.ndarray:
    """RGB in [0, 1] of a named colour with its saturation and value scaled (clipped to [0, 1])."""
    hue, sat, val = COLOURS[name]
    return np.array(colorsys.hsv_to_rgb(hue / 360.0, min(1.0, sat * saturation),
                                        min(1.0, val * value)))
