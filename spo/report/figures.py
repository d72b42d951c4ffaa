"""The paper's figures, one PNG each under ``results/figures/`` (``python -m spo figure <name>``).

Each figure has a block ``figures.<name>`` in the config (schema: spo/config_schema.yaml) and
writes ``<name>.png`` plus ``<name>.json`` (the numbers behind it) and the sidecars its registry
entry lists. What each figure is, draws, reads and takes: spo/report/figure_registry.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# FigureError, MissingImagesError: re-exported (callers catch them from here).
from spo.report.figure_registry import (FIGURES, FigureError, MissingImagesError,  # noqa: F401
                                        figure_methods)


def make_figure(config: dict[str, Any], name: str, inputs: Sequence[str | Path], out: str | Path,
                **kwargs) -> dict[str, Any]:
    """Build figure ``name`` from ``inputs`` into ``out`` (a .png); returns the numbers behind it.

    ``kwargs``: the figure's ``extra`` keyword arguments (``FIGURES[name].extra``).
    """
    if name not in FIGURES:
        raise FigureError(f"unknown figure '{name}'; available: {', '.join(FIGURES)}")
    if not str(out).endswith(".png"):
        raise FigureError(f"figure output '{out}' must be a .png file")
    return FIGURES[name].draw_function()(config, name, [str(i) for i in inputs], out, **kwargs)


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
    for name in (n for n, figure in FIGURES.items() if figure.trained_only):
        untrained = [m for m in figure_methods(config, name)
                     if m in config["methods"] and "train" not in config["methods"][m]]
        if untrained:
            out.append(f"config key 'figures.{name}' names {untrained}, which are not trained here")
    return out
