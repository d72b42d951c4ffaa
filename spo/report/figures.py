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
                                        check_figures, figure_methods)


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
