"""Which methods and prompt sets the ``figures`` block names: what the config check at load and
the workflow's input functions need of the figures, without importing the figure code (that
imports the image and score readers, which import ``spo.config``: a cycle)."""

from __future__ import annotations

from typing import Any


def trained_methods(config: dict[str, Any]) -> list[str]:
    return [m for m, spec in config["methods"].items() if "train" in spec]


def figure_methods(config: dict[str, Any], name: str) -> list[str]:
    """The methods whose outputs a figure reads (for the workflow's input functions)."""
    spec = (config.get("figures") or {}).get(name) or {}
    if name in ("figure2", "figure11"):
        return list(spec.get("rows", []))
    if name == "figure5":
        return list(spec.get("methods", []))
    if name == "figure6":
        return [spec["method"]] + [o["method"] for o in spec.get("opponents", [])] if spec else []
    if name == "lora_transfer":
        return [spec["base_method"], spec["transfer_method"]] if spec else []
    if name == "training_curves":
        return list(spec.get("methods") or trained_methods(config))
    return []


def check_figures(config: dict[str, Any]) -> list[str]:
    """Cross references of the ``figures`` block the schema cannot express (one message each)."""
    out = []
    figures = config.get("figures") or {}
    for name in figures:
        missing = [m for m in figure_methods(config, name) if m not in config["methods"]]
        if missing:
            out.append(f"config key 'figures.{name}' names methods {missing}, which are not under "
                       f"'methods'")
        prompt_set = figures[name].get("prompt_set")
        if prompt_set is not None and prompt_set not in config["prompt_sets"]:
            out.append(f"config key 'figures.{name}.prompt_set' names '{prompt_set}', which is not "
                       f"under 'prompt_sets'")
    for name in ("figure5", "training_curves"):
        untrained = [m for m in figure_methods(config, name)
                     if m in config["methods"] and "train" not in config["methods"][m]]
        if untrained:
            out.append(f"config key 'figures.{name}' names {untrained}, which are not trained here")
    return out
