"""Shared pieces of the paper's figures: reading generated images, grids, atomic figure output.

Every figure is computed from files the DAG wrote (generation shards, score Parquet, training
logs, SPM validation CSVs, benchmark TSVs); nothing plotted is a constant, except reference numbers
quoted from the paper, which are always labelled as the paper's.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from spo import layout

# Defined with the registry (which the workflow imports without pandas); the figures raise them.
from spo.report.figure_registry import FigureError, MissingImagesError  # noqa: F401


def matplotlib_pyplot():
    """pyplot on the non-interactive Agg backend (jobs run without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_spec(config: dict[str, Any], name: str) -> Any:
    """``figures.<name>`` of the config as its typed settings (``spo.report.figure_registry``:
    ``Figure.settings``), or a FigureError naming what is defined."""
    from spo.report.figure_registry import figure_settings

    figures = config.get("figures") or {}
    if name not in figures:
        raise FigureError(f"config key 'figures.{name}' is missing; defined figures: "
                          f"{', '.join(sorted(figures)) or 'none'} (config/config.yaml shows each)")
    return figure_settings(config, name)


def check_methods(config: dict[str, Any], name: str, key: str, methods: Iterable[str]) -> None:
    missing = [m for m in methods if m not in config["methods"]]
    if missing:
        raise FigureError(f"config key 'figures.{name}.{key}' names {missing}, which are not under "
                          f"'methods'; defined: {', '.join(sorted(config['methods']))}")


def read_manifests(shard_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """All manifests of the given generation shards, ``path`` absolute (missing shard: an error)."""
    from spo.generate import read_manifest

    frames = [read_manifest(d) for d in shard_dirs]
    if not frames:
        return pd.DataFrame(columns=["method", "prompt_set", "prompt_id", "image_index", "prompt", "path"])
    return pd.concat(frames, ignore_index=True)


def prompt_order(config: dict[str, Any], prompt_set: str, root: str | Path = ".") -> pd.DataFrame:
    """The prompt set's (prompt_id, prompt) rows in file order."""
    from spo.config_blocks import prompt_set_spec
    from spo.prompts import load_prompt_set

    if prompt_set not in config["prompt_sets"]:
        raise FigureError(f"prompt set '{prompt_set}' is not under 'prompt_sets'; defined: "
                          f"{', '.join(sorted(config['prompt_sets']))}")
    return load_prompt_set(prompt_set_spec(config, prompt_set), root)[["prompt_id", "prompt"]]


def image_table(manifest: pd.DataFrame, methods: Sequence[str], prompts: pd.DataFrame,
                prompt_set: str, figure: str, image_index: int = 0) -> dict[str, list[str]]:
    """{method: [image path per prompt, in ``prompts`` order]}; MissingImagesError naming every
    (method, prompt) without an image."""
    part = manifest[(manifest["prompt_set"] == prompt_set) & (manifest["image_index"] == image_index)]
    problems, table = [], {}
    for method in methods:
        mine = part[part["method"] == method].set_index("prompt_id")["path"]
        missing = [(pid, text) for pid, text in zip(prompts["prompt_id"], prompts["prompt"])
                   if pid not in mine.index]
        if missing:
            listed = ", ".join(f"{pid} ({short(text, 40)!r})" for pid, text in missing)
            problems.append(f"method '{method}' has no image {image_index} for {len(missing)} of "
                            f"{len(prompts)} prompts: {listed}")
        else:
            table[method] = [mine[pid] for pid in prompts["prompt_id"]]
    if problems:
        raise MissingImagesError(
            f"figure '{figure}' (prompt set '{prompt_set}'): " + "; ".join(problems)
            + f". Generate them: snakemake {layout.shard_dir('<method>', prompt_set, 0)} ...")
    return table


def short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


def wrap(text: str, width: int = 24, lines: int = 3) -> str:
    return "\n".join(textwrap.wrap(short(text, width * lines), width)[:lines])


def load_rgb(path: str | Path) -> np.ndarray:
    from spo.score import open_image

    return np.asarray(open_image(path).convert("RGB"))


def colorfulness(pixels: np.ndarray) -> float:
    """Hasler & Suesstrunk colourfulness of one 8-bit (H, W, 3) image (spo.metrics.colorfulness)."""
    from spo.metrics.colorfulness import colorfulness_array

    return float(np.asarray(colorfulness_array(pixels.astype(np.float64))).reshape(-1)[0])


def draw_grid(cells: list[list[np.ndarray | None]], out: str | Path, *, row_labels=(),
              col_labels=(), cell_captions=None, title: str = "", cell_inches: float = 1.7) -> None:
    """An image grid (rows x columns of equal-size cells) saved as a PNG."""
    plt = matplotlib_pyplot()
    n_rows, n_cols = len(cells), max(len(r) for r in cells)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + 1.2,
                                                      cell_inches * n_rows + 0.9),
                             squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = cells[r][c] if c < len(cells[r]) else None
            if image is None:
                ax.axis("off")
                continue
            ax.imshow(image, interpolation="nearest")
            if cell_captions and cell_captions[r][c]:
                ax.set_xlabel(cell_captions[r][c], fontsize=6)
            if r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=6)
            if c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out)


def save_figure(fig, out: str | Path, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically (a killed job leaves no half-written file)."""
    from spo.io import atomic_path

    plt = matplotlib_pyplot()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def sidecar(out: str | Path, suffix: str) -> Path:
    """``results/figures/x.png`` -> ``results/figures/x<suffix>`` (the data behind the figure)."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def write_data(out: str | Path, data: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind a figure, as ``<figure stem>.json`` beside it; returns ``data``."""
    from spo.io import write_text_atomic

    write_text_atomic(sidecar(out, ".json"), json.dumps(data, indent=1, default=_plain) + "\n")
    return data


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


PAPER_DATA = Path("data") / "paper" / "tables.yaml"


def paper_data(root: str | Path) -> tuple[dict | None, str]:
    """The paper's numbers as data (data/paper/tables.yaml under ``root``) and that path, or
    ``(None, "")`` where the checkout has no such file (the figures then use their constants)."""
    import yaml

    path = Path(root) / PAPER_DATA
    return (yaml.safe_load(path.read_text()), str(PAPER_DATA)) if path.is_file() else (None, "")
