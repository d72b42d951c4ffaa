"""Scoring stage: one metric over one or more generation shards, per-image scores in Parquet.

The scorer is built once per job (weights loaded once) and called on batches. Every generated
image is scored (one public evaluation script scores only the first of four images per prompt).
An image that cannot be decoded stops the job with its path and no output is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from spo import layout
from spo.generate import read_manifest
from spo.io import provenance, write_json_atomic, write_parquet_atomic

SCORE_COLUMNS = ["method", "prompt_set", "shard", "prompt_id", "image_index", "metric",
                 "metric_version", "score", "path"]


class ImageDecodeError(RuntimeError):
    """A generated image cannot be read."""


def open_image(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageDecodeError(
            f"cannot decode image '{path}' ({type(exc).__name__}: {exc}); the generation shard is "
            f"damaged: delete the folder '{Path(path).parent}' and rerun the DAG to regenerate "
            f"it") from exc


def score_manifest(scorer, manifest: pd.DataFrame, batch_size: int, metric: str) -> pd.DataFrame:
    """Score every row of ``manifest`` (absolute paths) in batches of ``batch_size``."""
    scores: list[float] = []
    for start in range(0, len(manifest), batch_size):
        part = manifest.iloc[start:start + batch_size]
        images = [open_image(p) for p in part["path"]]
        values = np.asarray(scorer(images, list(part["prompt"])), dtype=np.float64)
        if values.shape != (len(part),) or not np.all(np.isfinite(values)):
            raise RuntimeError(f"scorer '{metric}' returned {values.shape} values (non-finite: "
                               f"{int((~np.isfinite(values)).sum())}) for {len(part)} images")
        scores += values.tolist()
    out = manifest[["method", "prompt_set", "shard", "prompt_id", "image_index", "path"]].copy()
    out["metric"] = metric
    out["metric_version"] = scorer.version
    out["score"] = scores
    return out[SCORE_COLUMNS]


def check_scorer_dtypes(config: dict[str, Any], metrics: Sequence[str], device) -> None:
    """Each metric's ``metrics.<m>.dtype`` (default float32) must be one the device can store
    weights in (``spo.training.precision.check_dtype``: a CPU float32 / bfloat16, a GPU float32 /
    float16 / bfloat16 where supported); a ``ConfigError`` naming the key and those dtypes
    otherwise. A scorer runs in that dtype as its reference code does (weights and inputs cast,
    no autocast; heads that the references keep float stay float32: METRICS.md §3)."""
    from spo.config_blocks import metric_spec
    from spo.training.precision import check_dtype

    for metric in metrics:
        check_dtype(metric_spec(config, metric).dtype, device, key=f"metrics.{metric}.dtype")


def score_shards(config: dict[str, Any], metrics: str | Sequence[str], shard_dirs: Sequence[str | Path],
                 out_file: str | Path, *, models_root: str | Path, device: str | None = None) -> pd.DataFrame:
    """Score the images of ``shard_dirs`` with each of ``metrics`` and write one ``out_file``.

    Each scorer is built once (weights loaded once) and freed before the next one is built.
    Every metric's ``dtype`` is checked against the device before the first one loads
    (``check_scorer_dtypes``).
    """
    from spo.config_blocks import metric_spec
    from spo.devices import process_device
    from spo.metrics import build_scorer, resolve_weights
    from spo.world.settings import world_spec

    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    device = device or process_device()
    check_scorer_dtypes(config, metrics, device)
    manifest = pd.concat([read_manifest(d) for d in shard_dirs], ignore_index=True)
    frames, records = [], {}
    for metric in metrics:
        typed = metric_spec(config, metric)
        spec = config["metrics"][metric]  # the raw mapping: only the provenance records it
        world = None
        if typed.scorer_of(metric) == "adherence":  # the tiny world's detector reads its grammar
            spec = {**spec, "world": config.get("world")}
            world = world_spec(config)
        weights = resolve_weights(typed, tiny_root=str(Path(layout.tiny_metric_dir(metric, models_root))))
        scorer = build_scorer(typed.scorer_of(metric), typed, device=device, dtype=typed.dtype,
                              weights=weights, world=world)
        batch = 16 if typed.batch_size is None else typed.batch_size  # the scorers' own default: 8
        frames.append(score_manifest(scorer, manifest, batch, metric))
        records[metric] = {"spec": spec, "weights": weights, "version": scorer.version}
        del scorer
    frame = pd.concat(frames, ignore_index=True)
    write_parquet_atomic(out_file, frame)
    write_json_atomic(Path(str(out_file) + ".provenance.json"), provenance("score", {
        "metrics": records, "device": device, "shards": [str(d) for d in shard_dirs],
        "n_images": len(manifest)}))
    return frame
