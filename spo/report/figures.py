"""The paper's figures, one PNG each under ``results/figures/`` (``python -m spo figure <name>``).

Each figure has a block ``figures.<name>`` in the config (schema: spo/config_schema.yaml) and
writes ``<name>.png`` plus ``<name>.json`` (the numbers behind it; Figure 6 and the compute
table also a ``.csv``, the compute table a ``.md``):

    figure2          3 x 8 grid: base / Diffusion-DPO / SPO on the Table 10 prompts
    figure11         4 x 5 grid of the SPO model on the Table 11 prompts
    figure5          x̂0 win / lose pairs chosen by the SPM while training (train.dump_examples)
    figure6          automatic win / draw / loss per metric beside the paper's user study
    disagreement     generic pair label vs an aesthetic predictor on the SPM pairs (supplement Fig. 9)
    lora_transfer    a trained LoRA on another model of the same family (the paper's Glyph-ByT5 figure)
    spm_accuracy     SPM pairwise accuracy against t, with the ceiling
    training_curves  loss, ratios and preference score per round, one column per method
    compute          wall-clock / GPU-hours per stage and per method beside the paper's
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from spo.report.figures_common import FigureError, MissingImagesError  # noqa: F401 (re-export)
from spo.report import figures_grids as grids
from spo.report import figures_stats as stats
# Moved to spo.figure_refs (the config check needs them; importing this module from spo.config
# closed the cycle config -> figures -> generate -> config); re-exported for existing callers.
from spo.figure_refs import check_figures, figure_methods, trained_methods  # noqa: F401

FIGURES: dict[str, Callable[..., dict[str, Any]]] = {
    "figure2": grids.prompt_grid,
    "figure11": grids.prompt_grid,
    "figure5": grids.win_lose_pairs,
    "figure6": stats.figure6,
    "disagreement": stats.disagreement,
    "lora_transfer": grids.lora_transfer,
    "spm_accuracy": stats.spm_accuracy,
    "training_curves": stats.training_curves,
    "compute": stats.compute_table,
}


def make_figure(config: dict[str, Any], name: str, inputs: Sequence[str | Path], out: str | Path,
                **kwargs) -> dict[str, Any]:
    """Build figure ``name`` from ``inputs`` into ``out`` (a .png); returns the numbers behind it."""
    if name not in FIGURES:
        raise FigureError(f"unknown figure '{name}'; available: {', '.join(FIGURES)}")
    if not str(out).endswith(".png"):
        raise FigureError(f"figure output '{out}' must be a .png file")
    return FIGURES[name](config, name, [str(i) for i in inputs], out, **kwargs)
