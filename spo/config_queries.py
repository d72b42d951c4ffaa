"""What a loaded config says, read from its typed blocks: which (method, prompt set) pairs the DAG
evaluates, and the per-prompt-set / per-method generation settings with their fallbacks.

Imports only the typed blocks (``spo.config_blocks``, torch-free): the config check (spo.config)
and the light registries it calls (spo.report.figure_registry) both use these without an import
cycle. ``spo.config`` re-exports them for existing callers.
"""

from __future__ import annotations

from typing import Any

from spo.config_blocks import evaluate_groups, generation_spec, method_spec, prompt_set_spec


def evaluated_pairs(config: dict[str, Any], *, scored: bool = False) -> list[tuple[str, str]]:
    """Every (method, prompt set) the DAG generates, in config order, no repeats.

    ``scored=True``: only those it also scores and tabulates. An ``evaluate`` group with
    ``score: false`` is images only (the qualitative figure grids, which the paper never scores);
    a pair in both kinds of group is scored.
    """
    seen: dict[tuple[str, str], None] = {}
    for group in evaluate_groups(config):
        if scored and not group.score:
            continue
        for method in group.methods:
            for prompt_set in group.prompt_sets:
                seen[(method, prompt_set)] = None
    return list(seen)


def evaluated_prompt_sets(config: dict[str, Any], *, scored: bool = False) -> list[str]:
    return list(dict.fromkeys(p for _, p in evaluated_pairs(config, scored=scored)))


def evaluated_methods(config: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(m for m, _ in evaluated_pairs(config)))


def images_per_prompt(config: dict[str, Any], prompt_set: str) -> int:
    own = prompt_set_spec(config, prompt_set).images_per_prompt
    return generation_spec(config).images_per_prompt if own is None else own


def inference_steps(config: dict[str, Any], prompt_set: str) -> int:
    """DDIM steps for a prompt set: its own ``num_inference_steps`` (GenEval's protocol is 50
    where the paper's Tables 1-2 use 20), else ``generation.num_inference_steps``."""
    own = prompt_set_spec(config, prompt_set).num_inference_steps
    return int(generation_spec(config).num_inference_steps if own is None else own)


def method_guidance_scale(config: dict[str, Any], method: str) -> float:
    own = method_spec(config, method).guidance_scale
    return float(generation_spec(config).guidance_scale if own is None else own)
