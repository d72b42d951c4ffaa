"""The preference-model interface and its registry.

A preference model maps decoded images, their prompts and the timestep of the latent they were
predicted from to one score per image (higher = preferred)::

    scores = model(images, prompts, timesteps)
    # images: (N, 3, H, W) float in [0, 1]; prompts: N strings; timesteps: (N,) long in [0, 999]
    # scores: (N,) float32 on images.device

Registry names (config ``preference.name``):
    colorfulness       analytic ground truth of the tiny profile (Hasler & Suesstrunk 2003)
    neg-colorfulness   the same, negated: SPO must then lower colourfulness (a sign control)
    random             i.i.d. N(0, 1) scores: a null control, SPO must not move the metric
and, added by the preference-model modules: ``spm`` (step-aware), ``spm-no-step`` (trained without
the time input) and ``pickscore`` (ignores t).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, Sequence

if TYPE_CHECKING:
    import torch
# torch is imported where it is used: the config check at DAG start (and every light stage) reads
# the registry's names without paying torch's import (about 1.2 s a process).


class PreferenceModel(Protocol):
    step_aware: bool

    def __call__(self, images: torch.Tensor, prompts: Sequence[str],
                 timesteps: torch.Tensor) -> torch.Tensor:
        ...


def colorfulness_torch(images: torch.Tensor) -> torch.Tensor:
    """Hasler & Suesstrunk M^(3) on a batch; equals ``spo.metrics.colorfulness`` on 8-bit images.

    Args:
        images: (N, 3, H, W) in [0, 1].
    Returns:
        (N,) float32.
    """
    import torch

    rgb = images.float() * 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rg = (r - g).flatten(1)
    yb = (0.5 * (r + g) - b).flatten(1)
    std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False))
    mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2)
    return std + 0.3 * mean


class AnalyticPreference:
    """An image statistic as the preference (no prompt, no timestep)."""

    step_aware = False

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def __call__(self, images, prompts, timesteps):
        return self.sign * colorfulness_torch(images)


class RandomPreference:
    """Scores drawn i.i.d. from N(0, 1) with its own seeded generator: the null control."""

    step_aware = False

    def __init__(self, seed: int = 0):
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images, prompts, timesteps):
        import torch

        return torch.randn(len(images), generator=self.generator).to(images.device)


def _analytic(spec, **_):
    return AnalyticPreference(1.0)


def _negated(spec, **_):
    return AnalyticPreference(-1.0)


def _random(spec, **_):
    return RandomPreference(int(spec.get("seed", 0)))


# name -> factory or "module:factory" (imported lazily; heavy models live in their own modules).
PREFERENCE_MODELS: dict[str, Any] = {
    "colorfulness": _analytic,
    "neg-colorfulness": _negated,
    "random": _random,
    "spm": "spo.preference.spm:build_spm",
    "spm-no-step": "spo.preference.spm:build_spm_no_step",
    "pickscore": "spo.preference.spm:build_pickscore",
}


def registered_preferences() -> list[str]:
    return sorted(PREFERENCE_MODELS)


def build_preference(spec: dict[str, Any], *, device: str = "cpu", dtype: str = "float32",
                     models_root: str | None = None) -> PreferenceModel:
    """Build the preference model ``spec['name']`` (other spec keys are the model's options)."""
    name = spec.get("name")
    if name not in PREFERENCE_MODELS:
        raise KeyError(f"config key 'preference.name' is {name!r}; allowed values: "
                       f"{', '.join(registered_preferences())}")
    factory = PREFERENCE_MODELS[name]
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(spec, device=device, dtype=dtype, models_root=models_root)
