"""Generation stage: one shard of a prompt set through one method, PNGs plus a Parquet manifest.

Output folder (written atomically: a job killed midway leaves nothing)::

    <out>/<prompt_id>_<image_index>.png
    <out>/manifest.parquet     one row per image (columns in MANIFEST_COLUMNS)
    <out>/provenance.json      resolved settings, package versions, git commit

Every image has its own ``torch.Generator`` seeded by ``spo.seeds.image_seed``, so the images do
not depend on the shard size or on which other prompts share a batch (up to floating-point
reduction order, which is fixed for a given shard and batch size).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from spo import layout
from spo.config import (generation_spec, images_per_prompt, inference_steps, method_guidance_scale,
                        method_spec, prompt_set_spec)
from spo.io import atomic_path, provenance, stable_hash, write_json_atomic, write_parquet_atomic
from spo.prompts import load_prompt_set, shard_slice
from spo.seeds import image_seed

log = logging.getLogger(__name__)


class GenerationError(RuntimeError):
    """A shard cannot be generated as asked (the method's weights make the sampler diverge)."""


def check_pixels(images, config: dict[str, Any], method: str, names: list[str]) -> None:
    """Raise on non-finite pixels (a diverged model decodes to NaN, which PNG would store as
    black): no such image is written, so none is ever scored. ``images``: (N, H, W, 3) floats."""
    import numpy as np

    bad = [n for n, img in zip(names, images) if not np.isfinite(img).all()]
    if not bad:
        return
    method_cfg = method_spec(config, method)
    if method_cfg.trained:
        trained = layout.train_dir(method)  # the DAG's target, which the fix deletes and rebuilds
        fix = (f"its LoRA ({trained}) makes the sampler diverge: retrain it with a "
               f"lower 'methods.{method}.train.lr' (now {method_cfg.train.get('lr', 'the default')}), "
               f"delete {trained} and rerun `snakemake --cores 1 {trained}`")
    else:
        fix = (f"check the weights of 'methods.{method}' (its model '{method_cfg.model}' and "
               f"any `lora:` / `unet:`), or set 'generation.dtype' to float32")
    raise GenerationError(f"method '{method}' generated {len(bad)} images with NaN or infinite "
                          f"pixels (first: {bad[0]}); not writing them (they would be black PNGs): {fix}")


def warn_black(pil_images, method: str, names: list[str]) -> int:
    """Log a warning for images whose every pixel is 0; returns how many there were."""
    import numpy as np

    black = [n for n, img in zip(names, pil_images) if int(np.asarray(img).max()) == 0]
    if black:
        log.warning("method '%s': %d of %d images are all black (first: %s); a model or LoRA that "
                    "diverged gives black images: check its training log before trusting the scores",
                    method, len(black), len(names), black[0])
    return len(black)


MANIFEST_COLUMNS = ["method", "model", "prompt_set", "shard", "prompt_id", "prompt", "image_index",
                    "seed", "path", "num_inference_steps", "guidance_scale", "eta", "height",
                    "width", "dtype", "config_hash"]


def generation_settings(config: dict[str, Any], method: str, prompt_set: str) -> dict[str, Any]:
    """Everything that determines a shard's images (its hash is the manifest's ``config_hash``).

    The method's and the model's config entries go in as the mappings the config holds (their
    hash is the shard's identity; the typed ``ModelSpec`` would hash differently)."""
    gen = generation_spec(config)
    return {
        "method": method,
        "method_config": config["methods"][method],
        "model_config": config["models"][method_spec(config, method).model],
        "prompt_set": prompt_set,
        "prompt_source": prompt_set_spec(config, prompt_set).source,
        "seed": config["seed"],
        "scheduler": gen.scheduler,
        "num_inference_steps": inference_steps(config, prompt_set),
        "guidance_scale": method_guidance_scale(config, method),
        "eta": gen.eta,
        "resolution": gen.resolution,
        "images_per_prompt": images_per_prompt(config, prompt_set),
        "dtype": gen.dtype,
        "shard_size": gen.shard_size,
        "batch_size": gen.batch_size,
    }


def pick_device(dtype: str) -> str:
    from spo.devices import process_device

    device = process_device()
    if device != "cpu":
        return device
    if dtype != "float32":
        raise ValueError(f"config key 'generation.dtype' is {dtype!r} but no GPU is available; "
                         f"use float32 on the CPU")
    return "cpu"


def generate_shard(config: dict[str, Any], method: str, prompt_set: str, shard: int,
                   out_dir: str | Path, *, models_root: str | Path, root: str | Path = ".",
                   lora: str | Path | None = None, device: str | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Generate every image of one shard and write it to ``out_dir`` atomically.

    ``lora``: for a method with a ``train`` block, its training output folder (required then;
    see ``spo.models.pipelines.load_method_pipeline``). Returns the manifest (one row per image).
    """
    import torch
    from tqdm import tqdm

    from spo.models.backbone import default_resolution
    from spo.models.pipelines import load_method_pipeline

    settings = generation_settings(config, method, prompt_set)
    config_hash = stable_hash(settings)
    prompts = shard_slice(load_prompt_set(prompt_set_spec(config, prompt_set), root), shard,
                          settings["shard_size"])
    device = device or pick_device(settings["dtype"])
    pipe = load_method_pipeline(config, method, models_root=models_root, lora=lora,
                                dtype=settings["dtype"], device=device)
    side = settings["resolution"] or default_resolution(pipe)
    jobs = [(row.prompt_id, row.prompt, i) for row in prompts.itertuples()
            for i in range(settings["images_per_prompt"])]
    batch = settings["batch_size"]
    rows = []
    with atomic_path(out_dir, is_dir=True) as tmp:
        bar = tqdm(range(0, len(jobs), batch), desc=f"{method}/{prompt_set}/shard{shard}",
                   unit="batch", file=sys.stderr, disable=not progress)
        for start in bar:
            chunk = jobs[start:start + batch]
            seeds = [image_seed(settings["seed"], pid, idx) for pid, _, idx in chunk]
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            with torch.inference_mode():
                arrays = pipe(prompt=[p for _, p, _ in chunk], generator=generators,
                              num_inference_steps=settings["num_inference_steps"],
                              guidance_scale=settings["guidance_scale"], eta=settings["eta"],
                              height=side, width=side, output_type="np").images
            names = [f"{pid}_{idx}.png" for pid, _, idx in chunk]
            check_pixels(arrays, config, method, names)
            images = pipe.image_processor.numpy_to_pil(arrays)  # what output_type="pil" does
            warn_black(images, method, names)
            for (pid, text, idx), seed, image in zip(chunk, seeds, images):
                name = f"{pid}_{idx}.png"
                image.save(tmp / name, format="PNG")
                rows.append({"method": method, "model": method_spec(config, method).model,
                             "prompt_set": prompt_set, "shard": shard, "prompt_id": pid,
                             "prompt": text, "image_index": idx, "seed": seed, "path": name,
                             "num_inference_steps": settings["num_inference_steps"],
                             "guidance_scale": settings["guidance_scale"], "eta": settings["eta"],
                             "height": side, "width": side, "dtype": settings["dtype"],
                             "config_hash": config_hash})
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        write_parquet_atomic(tmp / "manifest.parquet", manifest)
        write_json_atomic(tmp / "provenance.json", provenance("generate", {
            **settings, "shard": shard, "device": device, "config_hash": config_hash}))
    return manifest


def read_manifest(shard_dir: str | Path) -> pd.DataFrame:
    """The manifest of a generated shard, with ``path`` made absolute."""
    shard_dir = Path(shard_dir)
    file = shard_dir / "manifest.parquet"
    if not file.is_file():
        raise FileNotFoundError(f"'{file}' does not exist: '{shard_dir}' is not a finished "
                                f"generation shard; delete it and rerun the DAG to regenerate it")
    frame = pd.read_parquet(file)
    frame["path"] = [str(shard_dir / p) for p in frame["path"]]
    return frame
