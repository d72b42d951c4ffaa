"""Image figures: the qualitative grids (Figures 2 and 11), the LoRA transfer grid and Figure 5.

* ``prompt_grid``: rows = methods (``figures.<name>.rows``), columns = the prompt set's prompts in
  file order (Figure 2: 3 x 8 on the Table 10 prompts); with ``columns`` set, each method's prompts
  wrap into rows of that many (Figure 11: one method, 20 prompts, 4 x 5).
* ``lora_transfer``: the same layout with two rows, the target model and the target model with
  another model's trained LoRA (the paper's Glyph-ByT5-SDXL + SPO-SDXL LoRA figure).
* ``win_lose_pairs``: Figure 5, the x̂0 win / lose pairs the SPM chose while training, dumped by
  the trainer (``train.dump_examples``) into ``examples/`` of the method's training output
  (``spo.layout.train_dir``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spo import layout
from spo.config_blocks import method_spec, model_spec, prompt_set_spec

from spo.report.figure_registry import GridSettings
from spo.report.figures_common import (FigureError, check_methods, colorfulness, draw_grid,
                                       figure_spec, image_table, load_rgb, prompt_order,
                                       read_manifests, short, wrap, write_data)


def method_label(config: dict[str, Any], method: str) -> str:
    return method_spec(config, method).label_or(method)


def _grid_cells(table: dict[str, list[str]], methods: Sequence[str], n_prompts: int,
                columns: int) -> tuple[list[list[np.ndarray]], list[str], list[list[str]]]:
    """Cells (each method's prompts wrapped into rows of ``columns``), row labels, index map."""
    cells, row_methods, index = [], [], []
    for method in methods:
        for start in range(0, n_prompts, columns):
            stop = min(start + columns, n_prompts)
            cells.append([load_rgb(p) for p in table[method][start:stop]])
            row_methods.append(method)
            index.append(list(range(start, stop)))
    return cells, row_methods, index


def prompt_grid(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                root: str | Path = ".") -> dict[str, Any]:
    """Figure 2 / Figure 11: generated images of ``rows`` methods on ``prompt_set``.

    Args:
        inputs: generation shard folders (``results/images/<method>/<prompt_set>/shard-<i>``).
    Returns:
        the data written beside the PNG: grid ``shape`` (rows, columns), the image of each cell,
        and each row's mean colourfulness of its images (computed from the PNGs).
    """
    return _prompt_grid(config, name, figure_spec(config, name), inputs, out, root)


def _prompt_grid(config: dict[str, Any], name: str, spec: GridSettings, inputs: Sequence[str],
                 out: str | Path, root: str | Path, title: str | None = None) -> dict[str, Any]:
    """``prompt_grid`` of the typed grid ``spec``; ``title`` None: the prompt set and the rows."""
    methods, prompt_set = list(spec.rows), spec.prompt_set
    check_methods(config, name, "rows", methods)
    prompts = prompt_order(config, prompt_set, root)
    if spec.prompts:  # a grid of the first N prompts of a larger set (the tiny profile's)
        prompts = prompts.iloc[:int(spec.prompts)]
    table = image_table(read_manifests(inputs), methods, prompts, prompt_set, name)
    columns = int(spec.columns or len(prompts))
    cells, row_methods, index = _grid_cells(table, methods, len(prompts), columns)
    one_method = len(methods) == 1
    captions = [[wrap(prompts["prompt"].iloc[i], 26, 2) if one_method else "" for i in idx]
                for idx in index]
    col_labels = [] if one_method else [wrap(t, 24, 3) for t in prompts["prompt"][:columns]]
    row_labels = [wrap(method_label(config, m), 16, 3) for m in row_methods]
    colour = {m: float(np.mean([colorfulness(load_rgb(p)) for p in table[m]])) for m in methods}
    label = prompt_set_spec(config, prompt_set).label_or(prompt_set)
    draw_grid(cells, out, row_labels=row_labels, col_labels=col_labels, cell_captions=captions,
              title=title if title is not None else
              f"{label}: " + " / ".join(method_label(config, m) for m in methods))
    return write_data(out, {
        "figure": name, "prompt_set": prompt_set, "rows": methods,
        "shape": [len(cells), max(len(r) for r in cells)],
        "cells": [[{"method": m, "prompt_id": prompts["prompt_id"].iloc[i],
                    "path": str(table[m][i])} for i in idx] for m, idx in zip(row_methods, index)],
        "mean_colorfulness": colour})


def lora_transfer(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                  root: str | Path = ".") -> dict[str, Any]:
    """Target model vs target model + another method's trained LoRA, same prompts and seeds.

    ``figures.lora_transfer``: ``lora_method`` (whose LoRA), ``target_model``, ``base_method`` (the
    target model alone), ``transfer_method`` (the target model with ``lora: {path:
    train_dir(<lora_method>)}``, ``spo.layout``) and ``prompt_set``.
    """
    spec = figure_spec(config, name)
    base, transfer, lora_method = spec.base_method, spec.transfer_method, spec.lora_method
    check_methods(config, name, "base_method / transfer_method / lora_method", [base, transfer, lora_method])
    problems = []
    for key, method in (("base_method", base), ("transfer_method", transfer)):
        if method_spec(config, method).model != spec.target_model:
            problems.append(f"'figures.{name}.{key}' is '{method}', whose model is "
                            f"'{method_spec(config, method).model}', not the target_model "
                            f"'{spec.target_model}'")
    try:  # the one parser of a LoRA-transfer path (the config check at load runs it too)
        transferred = layout.lora_transfer_method(config, transfer)
    except layout.LayoutError:
        transferred = None
    if transferred != lora_method:
        problems.append(f"'methods.{transfer}.lora' must be {{path: {layout.train_dir(lora_method)}}} "
                        f"(the LoRA of lora_method), got {method_spec(config, transfer).lora!r}")
    if not method_spec(config, lora_method).trained:
        problems.append(f"'figures.{name}.lora_method' is '{lora_method}', which is not trained here")
    if problems:
        raise FigureError("config: " + "; ".join(problems))
    grid = GridSettings(prompt_set=spec.prompt_set, rows=[base, transfer], columns=spec.columns)
    data = _prompt_grid(config, name, grid, inputs, out, root,
                        title=f"LoRA of {method_label(config, lora_method)} on "
                              f"{_model_label(config, spec.target_model)}")
    data.update({"lora_method": lora_method, "target_model": spec.target_model,
                 "lora_model": method_spec(config, lora_method).model})
    return write_data(out, data)


def _model_label(config: dict[str, Any], model: str) -> str:
    label = model_spec(config, model).label if model in config["models"] else None
    return model if label is None else label


def read_examples(train_dir: str | Path) -> list[dict[str, Any]]:
    """The trainer's Figure 5 dump: ``examples/index.json`` entries with absolute image paths."""
    folder = Path(train_dir) / "examples"
    index = folder / "index.json"
    if not index.is_file():
        raise FigureError(f"'{index}' does not exist: the method trained without dumping x̂0 pairs; "
                          f"set its 'train.dump_examples' (e.g. 4) and retrain it")
    entries = json.loads(index.read_text())
    for e in entries:
        e["win"], e["lose"] = str(folder / e["win"]), str(folder / e["lose"])
    return entries


def win_lose_pairs(config: dict[str, Any], name: str, inputs: Sequence[str], out: str | Path,
                   root: str | Path = ".") -> dict[str, Any]:
    """Figure 5: per method two rows (preferred on top, dispreferred below), one column per pair:
    ``pairs`` of the first dumped round, then ``pairs`` of the last, each captioned with t and
    the preference model's two scores."""
    spec = figure_spec(config, name)
    methods = list(spec.methods)
    check_methods(config, name, "methods", methods)
    per_side = int(spec.pairs)
    by_dir = {Path(d).name: d for d in inputs}
    cells, captions, rows, chosen = [], [], [], {}
    for method in methods:
        if method not in by_dir:
            raise FigureError(f"figure '{name}': no training folder of '{method}' among the inputs {list(inputs)}")
        entries = read_examples(by_dir[method])
        rounds = sorted({e["round"] for e in entries})
        picked = [e for r in dict.fromkeys([rounds[0], rounds[-1]])
                  for e in [x for x in entries if x["round"] == r][:per_side]]
        chosen[method] = [{k: v for k, v in e.items()} for e in picked]
        cells += [[load_rgb(e["win"]) for e in picked], [load_rgb(e["lose"]) for e in picked]]
        captions += [[f"round {e['round']}, t={e['t']}\nwin {e['score_win']:.3g}" for e in picked],
                     [f"{short(e['prompt'], 22)}\nlose {e['score_lose']:.3g}" for e in picked]]
        rows += [wrap(f"{method_label(config, method)}: preferred", 16, 3),
                 wrap(f"{method_label(config, method)}: dispreferred", 16, 3)]
    draw_grid(cells, out, row_labels=rows, cell_captions=captions,
              title="Win-lose x̂0 pairs chosen by the preference model during training")
    return write_data(out, {"figure": name, "methods": methods,
                            "shape": [len(cells), max(len(r) for r in cells)], "pairs": chosen,
                            "win_above_lose": {m: float(np.mean([e["score_win"] > e["score_lose"]
                                                                 for e in chosen[m]])) for m in methods}})
