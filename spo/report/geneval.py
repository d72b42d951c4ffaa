"""GenEval (Table 3): our image shards in GenEval's folder layout, and GenEval's own results summarised.

GenEval (djghosh13/geneval, MIT; Ghosh et al. 2023) scores 553 object-centric prompts with a
Mask2Former detector (mmdetection 2.x, mmcv-full 1.7) that cannot be installed from PyPI here, so the
DAG stops at the images: ``geneval_layout`` writes them in GenEval's layout, the user runs GenEval's
``evaluation/evaluate_images.py`` on that folder, puts its ``results.jsonl`` at the documented path
and the DAG imports and summarises it (``geneval_table``). Without it Table 3 says so instead of
failing.

Layout (GenEval README, "Image generation")::

    <outdir>/<index:05d>/metadata.jsonl     the index-th line of evaluation_metadata.jsonl (json.dump)
    <outdir>/<index:05d>/samples/<i:04d>.png
    <outdir>/provenance.json                 not a digit folder: evaluate_images.py skips it

``index`` is the prompt's line in ``evaluation_metadata.jsonl``; our prompt ids for GenEval are that
index zero-padded (data/prompts/geneval.tsv), so a subset (the tiny profile's one prompt per task)
keeps GenEval's folder names. Seeds are ours (``spo.seeds.image_seed``), not GenEval's
``seed_everything(42)`` per prompt; GenEval's scoring does not depend on them.

Summary (GenEval ``evaluation/summary_scores.py``): per task tag the share of correct images, in
the order tags first appear in ``results.jsonl``; overall = mean of the task scores. The table
gives them in percent as the paper's Table 3 does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from spo import layout
from spo.io import atomic_path, provenance, sha256_file, write_json_atomic, write_text_atomic

# djghosh13/geneval@d927da8e42fde2b1b5cd743da4df5ff83c1654ff:prompts/evaluation_metadata.jsonl (the
# last commit that touched the file; unchanged at af4902f, March 2025), shipped in data/prompts/geneval/.
METADATA_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"
N_PROMPTS = 553
# GenEval's tags, in the paper's Table 3 column order, with its column names.
TASKS = {"single_object": "Single Obj", "two_object": "Two Obj", "counting": "Counting",
         "colors": "Colors", "position": "Position", "color_attr": "Attr. Binding"}
# The tiny world's detector (geneval.detector: adherence): one "task" per attribute it checks.
DETECTOR_TASKS = {"adherence": {"background": "Background", "colour": "Colour", "shape": "Shape",
                                "size": "Size"}}
# Snakemake patterns (and `geneval.results`' default) from spo/layout.py's one definition.
RESULTS_PATTERN = layout.geneval_results_file("{method}")
LAYOUT_PATTERN = layout.geneval_layout_dir("{method}")
# PAPER.md §3, Table 3 (SDXL; the SDXL row with CFG 5.0 and 50 steps).
PAPER_TABLE3 = {
    "SDXL†": [97.50, 71.21, 39.06, 84.04, 11.00, 17.75, 53.43],
    "Diff.-DPO": [99.06, 80.81, 46.56, 88.30, 13.25, 29.50, 59.58],
    "SPO": [97.81, 73.48, 41.25, 85.64, 13.00, 20.00, 55.20],
}


class GenEvalError(ValueError):
    """A GenEval input (metadata, shards, results.jsonl) is not what the layout expects."""


def read_metadata(path: str | Path, sha256: str | None = METADATA_SHA256) -> list[dict[str, Any]]:
    """The lines of ``evaluation_metadata.jsonl`` as dicts, after checking the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise GenEvalError(f"GenEval metadata '{path}' does not exist; fix `geneval.metadata.path`")
    if sha256 and sha256_file(path) != sha256:
        raise GenEvalError(f"checksum mismatch for '{path}': expected sha256 {sha256}, found "
                           f"{sha256_file(path)}; restore it from data/prompts/geneval/")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not {"tag", "prompt"} <= set(row):
            raise GenEvalError(f"'{path}' line {i + 1} lacks 'tag' or 'prompt'")
    return rows


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no copy of 2,212 SDXL images
    except OSError:
        shutil.copy2(src, dst)


def write_layout(shard_dirs: Sequence[str | Path], metadata: Sequence[dict[str, Any]],
                 out_dir: str | Path, *, images_per_prompt: int | None = None) -> pd.DataFrame:
    """Write generation shards (PNG + manifest.parquet) in GenEval's layout, atomically.

    ``prompt_id`` must be the prompt's line index in the metadata (``00000``...) and its prompt text
    that line's ``prompt``. Returns one row per image (index, sample, source path).
    """
    from spo.generate import read_manifest

    frames = [read_manifest(d) for d in shard_dirs]
    if not frames:
        raise GenEvalError("no generation shards given")
    manifest = pd.concat(frames, ignore_index=True)
    rows = []
    with atomic_path(out_dir, is_dir=True) as tmp:
        for pid, group in manifest.groupby("prompt_id", sort=True):
            if not str(pid).isdigit() or int(pid) >= len(metadata):
                raise GenEvalError(f"prompt id '{pid}' is not a line index of the GenEval metadata "
                                   f"({len(metadata)} lines); use data/prompts/geneval*.tsv")
            index = int(pid)
            meta = metadata[index]
            if group["prompt"].iloc[0] != meta["prompt"]:
                raise GenEvalError(f"prompt {pid} is '{group['prompt'].iloc[0]}' in the shards but "
                                   f"'{meta['prompt']}' in the GenEval metadata")
            group = group.sort_values("image_index")
            if images_per_prompt is not None and len(group) != images_per_prompt:
                raise GenEvalError(f"prompt {pid} has {len(group)} images, expected "
                                   f"{images_per_prompt}")
            folder = tmp / f"{index:05d}"
            (folder / "samples").mkdir(parents=True)
            with open(folder / "metadata.jsonl", "w", encoding="utf-8") as handle:
                json.dump(meta, handle)  # as GenEval's diffusers_generate.py writes it
            for sample, row in enumerate(group.itertuples()):
                name = f"{sample:04d}.png"
                _link_or_copy(Path(row.path), folder / "samples" / name)
                rows.append({"index": index, "prompt_id": pid, "tag": meta["tag"],
                             "sample": name, "image_index": row.image_index, "seed": row.seed,
                             "source": row.path})
        table = pd.DataFrame(rows)
        first = manifest.iloc[0]
        write_json_atomic(tmp / "provenance.json", provenance("geneval-layout", {
            "method": first["method"], "prompt_set": first["prompt_set"],
            "prompts": int(table["index"].nunique()), "images": len(table),
            "num_inference_steps": int(first["num_inference_steps"]),
            "guidance_scale": float(first["guidance_scale"]),
            "height": int(first["height"]), "width": int(first["width"]),
            "shards": [str(d) for d in shard_dirs]}))
    return table


def read_results(path: str | Path) -> pd.DataFrame:
    """GenEval's ``results.jsonl`` (one line per image: tag, correct, metadata, ...)."""
    path = Path(path)
    try:
        frame = pd.read_json(path, orient="records", lines=True)
    except ValueError as exc:
        raise GenEvalError(f"'{path}' is not GenEval's results.jsonl (JSON lines): {exc}") from exc
    missing = {"tag", "correct", "metadata"} - set(frame.columns)
    if frame.empty or missing:
        raise GenEvalError(f"'{path}' is not GenEval's results.jsonl: "
                           + (f"it lacks the keys {sorted(missing)}" if missing else "it is empty"))
    frame["correct"] = frame["correct"].astype(bool)
    return frame


def summarise_results(frame: pd.DataFrame) -> dict[str, Any]:
    """GenEval's summary_scores.py, as numbers: task scores and overall (fractions in [0, 1])."""
    tasks = {tag: float(part["correct"].mean()) for tag, part in frame.groupby("tag", sort=False)}
    return {
        "images": int(len(frame)),
        "prompts": int(frame.groupby("metadata").ngroups),
        "correct_images": float(frame["correct"].mean()),
        "correct_prompts": float(frame.groupby("metadata")["correct"].any().mean()),
        "tasks": tasks,
        "overall": float(sum(tasks.values()) / len(tasks)),
    }


def results_path(method: str, pattern: str = RESULTS_PATTERN) -> str:
    return pattern.format(method=method)


def detect_layout(layout_dir: str | Path, spec, out_file: str | Path) -> pd.DataFrame:
    """Score a GenEval layout with the tiny world's detector into GenEval's ``results.jsonl``
    format: one line per (image, attribute), ``tag`` the attribute, ``correct`` its verdict.
    ``spec``: the world's grammar (``spo.world.settings.world_spec(config)``)."""
    import numpy as np
    from PIL import Image

    from spo.world.detect import ATTRIBUTES, adherence
    rows = []
    for folder in sorted(p for p in Path(layout_dir).iterdir() if p.is_dir() and p.name.isdigit()):
        meta_line = (folder / "metadata.jsonl").read_text(encoding="utf-8").strip()
        prompt = json.loads(meta_line)["prompt"]
        for sample in sorted((folder / "samples").glob("*.png")):
            with Image.open(sample) as image:
                right = adherence(np.asarray(image.convert("RGB")), prompt, spec)
            if right is None:
                raise GenEvalError(f"'{folder / 'metadata.jsonl'}': prompt {prompt!r} is not a caption "
                                   f"of the tiny world; geneval.detector 'adherence' scores world prompts only")
            for attribute in ATTRIBUTES:
                rows.append({"filename": str(sample), "tag": attribute, "prompt": prompt,
                             "correct": bool(right[attribute]), "metadata": meta_line})
    frame = pd.DataFrame(rows)
    with atomic_path(out_file) as tmp:
        frame.to_json(tmp, orient="records", lines=True)
    return frame


def build_table3(methods: Sequence[str], labels: dict[str, str], *, expected_images: int,
                 layouts: dict[str, str], results_pattern: str = RESULTS_PATTERN,
                 settings: dict[str, Any] | None = None,
                 tasks: dict[str, str] | None = None) -> tuple[pd.DataFrame, str]:
    """Table 3 rows (one per method) and its Markdown. A method without results is 'missing'.

    ``tasks``: tag -> column (GenEval's six by default; the tiny detector's attributes)."""
    tasks = tasks or TASKS
    per_image = len(tasks) if tasks is not TASKS else 1  # the detector writes a line per attribute
    rows, notes = [], []
    for method in methods:
        path = Path(results_path(method, results_pattern))
        row: dict[str, Any] = {"method": method, "label": labels.get(method, method),
                               "results": str(path), "layout": layouts.get(method, "")}
        if not path.is_file():
            row["status"] = "missing"
            notes.append(f"GenEval not run for {method}: put results.jsonl at {path} (run "
                         f"`python evaluation/evaluate_images.py {row['layout'] or '<layout>'} "
                         f"--outfile {path} --model-path <detector folder>` in a GenEval checkout, "
                         f"paths relative to the workflow directory)")
        else:
            summary = summarise_results(read_results(path))
            row.update({name: 100 * summary["tasks"][tag] if tag in summary["tasks"] else None
                        for tag, name in tasks.items()})
            row["Overall"] = 100 * summary["overall"]
            images = summary["images"] // per_image
            row.update(n_images=images, n_prompts=summary["prompts"], sha256=sha256_file(path))
            unknown = sorted(set(summary["tasks"]) - set(tasks))
            absent = [t for t in tasks if t not in summary["tasks"]]
            if images != expected_images or unknown or absent:
                row["status"] = "imported (incomplete)"
                notes.append(f"{method}: {images} images in {path}, the layout has "
                             f"{expected_images}" + (f"; tasks absent: {absent}" if absent else "")
                             + (f"; unknown tags {unknown}" if unknown else ""))
            else:
                row["status"] = "imported"
        rows.append(row)
    columns = ["method", "label", "status", *tasks.values(), "Overall", "n_images", "n_prompts",
               "results", "sha256", "layout"]
    table = pd.DataFrame(rows).reindex(columns=columns)
    return table, table3_markdown(table, notes, settings or {}, tasks)


def _cell(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def table3_markdown(table: pd.DataFrame, notes: Iterable[str], settings: dict[str, Any],
                    tasks: dict[str, str] | None = None) -> str:
    from spo.environment import LOCK_FILE, short_lock_hash

    tasks = tasks or TASKS
    cols = [*tasks.values(), "Overall"]
    lines = ["# Table 3: GenEval", "", f"Environment: `{LOCK_FILE}` {short_lock_hash()}.", ""]
    scored_by = ("scored by GenEval's own detector outside this DAG (imported), summarised as "
                 "GenEval's summary_scores.py (overall = mean of the six task scores), in %."
                 if tasks is TASKS else
                 "scored in the DAG by the tiny world's analytic detector (spo/world/detect.py; the "
                 "tiny stand-in for GenEval's detector): per attribute the share of images that show "
                 "it, overall = mean of the attributes, in %. NOT comparable with the paper's tasks.")
    if settings:
        lines += ["Generated with " + ", ".join(f"{k} {v}" for k, v in settings.items())
                  + "; " + scored_by, ""]
    lines += ["| method | status | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row in table.itertuples(index=False):
        values = dict(zip(table.columns, row))
        lines.append(f"| {values['label']} | {values['status']} | "
                     + " | ".join(_cell(values[c]) for c in cols) + " |")
    paper_cols = [*TASKS.values(), "Overall"]
    lines += ["", "Paper (SPO, Table 3; SDXL† with CFG 5.0 and 50 steps):", "",
              "| method | " + " | ".join(paper_cols) + " |", "|---|" + "---|" * len(paper_cols)]
    for name, values in PAPER_TABLE3.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    notes = list(notes)
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_table3(config: dict[str, Any], layouts: dict[str, str], out_prefix: str | Path) -> pd.DataFrame:
    """``<out_prefix>.csv`` and ``.md`` for the config's ``geneval`` block."""
    from spo.config import (geneval_settings, images_per_prompt, inference_steps,
                            method_guidance_scale, method_spec, prompt_set_spec)
    from spo.prompts import count_prompts

    spec = geneval_settings(config)
    methods = list(spec.methods)
    n_prompts = count_prompts(prompt_set_spec(config, spec.prompt_set))
    per_prompt = images_per_prompt(config, spec.prompt_set)
    labels = {m: method_spec(config, m).label_or(m) for m in methods}
    settings = {"prompt set": f"{spec.prompt_set} ({n_prompts} prompts)",
                "images per prompt": per_prompt,
                "steps": inference_steps(config, spec.prompt_set),
                "CFG": "/".join(sorted({f"{method_guidance_scale(config, m):g}" for m in methods}))}
    table, markdown = build_table3(methods, labels, expected_images=n_prompts * per_prompt,
                                   layouts=layouts,
                                   results_pattern=spec.results or RESULTS_PATTERN,
                                   settings=settings, tasks=DETECTOR_TASKS.get(spec.detector))
    out_prefix = Path(out_prefix)
    with atomic_path(out_prefix.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(out_prefix.with_suffix(".md"), markdown)
    return table
