"""Image metrics behind one interface, chosen by name from a registry.

Every scorer is built once per job by ``build_scorer`` and then called on batches::

    scorer = build_scorer("colorfulness", spec=metric_spec(config, "colorfulness"), device="cpu",
                          dtype="float32")
    scores = scorer(images, prompts)      # list[PIL.Image], list[str] -> np.ndarray (N,) float64

The registry maps a name to "module:factory" and imports lazily, so that validating a config
does not import torch. Adding a metric = one module with a factory plus one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from spo.metrics.base import Scorer, ScorerError

# name -> "module:factory". The factory takes (spec, device, dtype, weights) and returns a Scorer;
# ``spec`` is the typed ``metrics.<name>`` (spo.config_blocks.MetricSpec). adherence also takes ``world``.
_REGISTRY: dict[str, str] = {
    "colorfulness": "spo.metrics.colorfulness:build",
    "adherence": "spo.metrics.adherence:build",
    "pickscore": "spo.metrics.pickscore:build",
    "hpsv2": "spo.metrics.hpsv2:build",
    "hpsv2.1": "spo.metrics.hpsv2:build_v21",
    "aesthetic": "spo.metrics.aesthetic:build",
    "imagereward": "spo.metrics.imagereward:build",
}


def registered_scorers() -> list[str]:
    return sorted(_REGISTRY)


def build_scorer(name: str, spec: Any = None, *, device: str = "cpu", dtype: str = "float32",
                 weights: dict[str, str] | None = None, world: Any = None) -> Scorer:
    """Build the scorer registered as ``name``.

    Args:
        name: a registry name (``registered_scorers()``).
        spec: the metric's typed config entry (``spo.config.metric_spec(config, metric)``); a
            mapping (or None: every default) is parsed as ``metrics.<name>`` first, so a bad key
            is a ``ConfigError``.
        device, dtype: where and in which precision the scorer's model runs.
        weights: role -> local path of each checkpoint the scorer needs, already resolved.
        world: the tiny world's grammar (``spo.world.settings.world_spec``), for ``adherence``.
    """
    from spo.config_blocks import MetricSpec
    from spo.config_spec import parse

    if name not in _REGISTRY:
        raise KeyError(f"unknown scorer '{name}'; available: {', '.join(registered_scorers())}")
    if not isinstance(spec, MetricSpec):
        spec = parse(MetricSpec, spec, f"metrics.{name}")
    module_name, factory_name = _REGISTRY[name].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    extra = {} if world is None else {"world": world}
    return factory(spec, device=device, dtype=dtype, weights=weights or {}, **extra)


__all__ = ["Scorer", "ScorerError", "build_scorer", "registered_scorers"]


def resolve_weights(metric_spec: Any, tiny_root: str | None = None) -> dict[str, str]:
    """Resolve each ``weights.<role>`` source of a metric to a local file or folder.

    ``metric_spec``: the typed ``metrics.<name>`` (``MetricSpec``), or its config mapping.

    A role with ``file:`` resolves to that file (sha256-checked when given), any other to a folder
    (a hub snapshot limited to ``allow_patterns``, a local path, or ``<tiny_root>/<role>``).
    """
    from pathlib import Path

    from spo.models.sources import fetch_file, snapshot

    out = {}
    given = metric_spec.get("weights") if isinstance(metric_spec, dict) else metric_spec.weights
    for role, spec in (given or {}).items():  # each source: a mapping the schema checked
        tiny_dir = Path(tiny_root) / role if tiny_root else None
        if spec.get("file"):
            out[role] = str(fetch_file(spec, tiny_dir=tiny_dir))
        else:
            out[role] = str(snapshot(spec, tiny_dir=tiny_dir, allow_patterns=spec.get("allow_patterns")))
    return out
