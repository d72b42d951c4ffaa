"""What a loaded config says, read from its mappings: which (method, prompt set) pairs the DAG
evaluates, and the per-prompt-set / per-method generation settings with their fallbacks.

Imports nothing from ``spo``: the config check (spo.config) and the light registries it calls
(spo.report.figure_registry) both use these without an import cycle. ``spo.config`` re-exports
them for existing callers.
"""

from __future__ import annotations

from typing import Any


def evaluation_groups(config: dict[str, Any]) -> list[dict[str, list[str]]]:
    """``evaluate`` as a list of {methods, prompt_sets} groups (one mapping is one group)."""
    groups = config["evaluate"]
    return [groups] if isinstance(groups, dict) else list(groups)


def evaluated_pairs(config: dict[str, Any], *, scored: bool = False) -> list[tuple[str, str]]:
    """Every (method, prompt set) the DAG generates, in config order, no repeats.

    ``scored=True``: only those it also scores and tabulates. An ``evaluate`` group with
    ``score: false`` is images only (the qualitative figure grids, which the paper never scores);
    a pair in both kinds of group is scored.
    """
    seen: dict[tuple[str, str], None] = {}
    for group in evaluation_groups(config):
        if scored and not group.get("score", True):
            continue
        for method in group["methods"]:
            for prompt_set in group["prompt_sets"]:
                seen[(method, prompt_set)] = None
    return list(seen)


def evaluated_prompt_sets(config: dict[str, Any], *, scored: bool = False) -> list[str]:
    return list(dict.fromkeys(p for _, p in evaluated_pairs(config, scored=scored)))


def evaluated_methods(config: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(m for m, _ in evaluated_pairs(config)))


def images_per_prompt(config: dict[str, Any], prompt_set: str) -> int:
    return config["prompt_sets"][prompt_set].get(
        "images_per_prompt", config["generation"]["images_per_prompt"])


def inference_steps(config: dict[str, Any], prompt_set: str) -> int:
    """DDIM steps for a prompt set: its own ``num_inference_steps`` (GenEval's protocol is 50
    where the paper's Tables 1-2 use 20), else ``generation.num_inference_steps``."""
    return int(config["prompt_sets"][prompt_set].get(
        "num_inference_steps", config["generation"]["num_inference_steps"]))


def method_guidance_scale(config: dict[str, Any], method: str) -> float:
    return float(config["methods"][method].get(
        "guidance_scale", config["generation"]["guidance_scale"]))
