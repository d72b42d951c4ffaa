"""Prompt adherence in the tiny world: the analytic detector (``spo.world.detect``) as a metric.

One score per image: 1.0 when the image shows the caption's ``attribute`` (``background``,
``colour``, ``shape``, ``size``), or all of them (``all``, the default), else 0.0; a table's mean
is the share of images that adhere. It is the tiny world's stand-in for GenEval's detector
(Table 3). Config::

    metrics:
      adherence: {scorer: adherence}                            # every attribute right
      adherence-shape: {scorer: adherence, attribute: shape}

The world's grammar is the config's ``world`` block, typed (``spo.world.settings.world_spec``;
the scoring stage passes it in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from spo.metrics.base import ScorerError, to_rgb
from spo.world.detect import ATTRIBUTES, adherence
from spo.world.grammar import WorldSpec

CHOICES = ("all", *ATTRIBUTES)


@dataclass
class AdherenceScorer:
    world: WorldSpec
    attribute: str = "all"
    name: str = "adherence"
    version: str = "tiny-world-detector-v1"
    higher_is_better: bool = True

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        out = []
        for image, prompt in zip(images, prompts):
            right = adherence(np.asarray(to_rgb(image)), prompt, self.world)
            if right is None:
                raise ScorerError(f"metric 'adherence': the prompt {prompt!r} is not a caption of "
                                  f"the tiny world's grammar ('a <size> <colour> <shape> on a "
                                  f"<background> background'); score only the world's prompt sets")
            out.append(right[self.attribute])
        return np.asarray(out, dtype=np.float64)


def build(spec, *, device="cpu", dtype="float32", weights=None,
          world: WorldSpec | None = None) -> AdherenceScorer:
    """``spec``: the typed ``metrics.<name>`` (its ``attribute`` checked at load); ``world``: the
    world's grammar (None: the default world)."""
    if weights:
        raise ScorerError(f"metric 'adherence' takes no weights, got roles {sorted(weights)}")
    attribute = spec.attribute
    if attribute not in CHOICES:  # MetricSpec's choices and the detector's attributes must agree
        raise ScorerError(f"config key 'metrics.<name>.attribute' is {attribute!r}; allowed: "
                          f"{', '.join(CHOICES)}")
    return AdherenceScorer(world=WorldSpec.from_config({}) if world is None else world,
                           attribute=attribute,
                           name="adherence" if attribute == "all" else f"adherence-{attribute}")
