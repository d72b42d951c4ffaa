"""Tiny-profile preference pairs: images of the tiny base model, labelled by colourfulness.

Every prompt gets ``images_per_prompt`` images from the tiny pipeline (the generation block's
sampler settings; image seeds from ``spo.seeds.image_seed``); every unordered pair of a prompt's
images is a preference pair. The pair carries the generation's own latents: a random tiny VAE is no
autoencoder, so re-encoding the PNGs would scramble what the labels measure (issue 4, "Data").

Labels come from the analytic preference (Hasler & Suesstrunk colourfulness of the saved 8-bit
image): relative differences below ``tie_margin`` are ties (0.5), and a ``label_noise`` fraction of
the decisive training labels is flipped, standing in for noisy generic human labels. Validation
pairs (the last ``val_prompts`` prompts) keep clean labels.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spo.spm.data import encode_png, latents_to_bytes, validate_pairs


def colorfulness_labels(c0: np.ndarray, c1: np.ndarray, tie_margin: float) -> np.ndarray:
    """Preference for image 0: 1 / 0 when one is more colourful, 0.5 within ``tie_margin``.

    Args:
        c0, c1: (P,) colourfulness of the two images; tie_margin: relative, >= 0.
    """
    c0, c1 = np.asarray(c0, float), np.asarray(c1, float)
    rel = np.abs(c0 - c1) / np.maximum((c0 + c1) / 2, 1e-12)
    return np.where(rel < tie_margin, 0.5, np.where(c0 > c1, 1.0, 0.0))


def flip_labels(labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Flip each decisive label (0 <-> 1) with probability ``rate``; ties stay ties."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"config key 'spm.datasets.<name>.tiny.label_noise' is {rate}; use a rate in [0, 1]")
    rng = np.random.default_rng(seed)
    flip = (rng.random(len(labels)) < rate) & (labels != 0.5)
    return np.where(flip, 1.0 - labels, labels)


def split_prompts(prompts: pd.DataFrame, split: str, val_prompts: int) -> pd.DataFrame:
    """The last ``val_prompts`` prompts are validation, the rest training."""
    if not 0 < val_prompts < len(prompts):
        raise ValueError(f"config key 'spm.datasets.<name>.tiny.val_prompts' is {val_prompts}; it must "
                         f"be between 1 and {len(prompts) - 1} (the prompt file has {len(prompts)})")
    return prompts.iloc[-val_prompts:] if split == "validation" else prompts.iloc[:-val_prompts]


def make_tiny_pairs(config: dict[str, Any], dataset: str, split: str, out_dir, *, models_root,
                    root: str | Path = ".", batch: int = 32) -> pd.DataFrame:
    """Generate the ``split`` pairs of ``spm.datasets.<dataset>`` (a tiny source) into ``out_dir``."""
    from spo.config_blocks import generation_spec
    from spo.spm.settings import tiny_pairs_settings
    from spo.io import atomic_path, provenance, write_json_atomic, write_parquet_atomic
    from spo.models.backbone import default_resolution
    from spo.preference.base import colorfulness_torch
    from spo.prompts import load_prompt_set
    from spo.seeds import image_seed
    from spo.spm.backbone import load_backbone
    from spo.spm.data import decode_image

    spec = tiny_pairs_settings(config, dataset)
    gen = generation_spec(config)
    prompts = split_prompts(load_prompt_set({"source": {"path": spec.prompts}}, root), split,
                            spec.val_prompts)
    backbone = load_backbone(config, spec.model, models_root=models_root)
    pipe = backbone.pipe
    side = gen.resolution or default_resolution(pipe)
    # Validation may use more images per prompt: more held-out pairs, a tighter accuracy estimate.
    n = spec.images_for(split)
    jobs = [(r.prompt_id, r.prompt, i) for r in prompts.itertuples() for i in range(n)]
    latents, images = [], []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start:start + batch]
        gens = [torch.Generator().manual_seed(image_seed(config["seed"], pid, i)) for pid, _, i in chunk]
        with torch.no_grad():
            lat = pipe(prompt=[p for _, p, _ in chunk], generator=gens, height=side, width=side,
                       num_inference_steps=gen.num_inference_steps, eta=gen.eta,
                       guidance_scale=gen.guidance_scale, output_type="latent").images
        latents.append(lat.float())
        images.append(backbone.decode(lat))
    latents, images = torch.cat(latents), torch.cat(images)
    pngs = [encode_png(im) for im in images]
    # Label what is stored: the 8-bit image a reader of the Parquet file gets back.
    color = colorfulness_torch(torch.stack([decode_image(b, "tiny pair") for b in pngs])).numpy()
    blobs, shape = latents_to_bytes(latents)
    rows = []
    for k, (pid, text) in enumerate(prompts[["prompt_id", "prompt"]].itertuples(index=False)):
        idx = [k * n + i for i in range(n)]
        pairs = list(combinations(range(n), 2))
        for a, b in pairs:
            rows.append({"pair_id": f"{pid}-{a}-{b}", "prompt_id": pid, "prompt": text,
                         "image_0": pngs[idx[a]], "image_1": pngs[idx[b]],
                         "c0": color[idx[a]], "c1": color[idx[b]],
                         "examples_per_prompt": len(pairs), "latent_0": blobs[idx[a]],
                         "latent_1": blobs[idx[b]], "latent_shape": shape})
    frame = pd.DataFrame(rows)
    labels = colorfulness_labels(frame.pop("c0"), frame.pop("c1"), spec.tie_margin)
    if split == "train":
        labels = flip_labels(labels, spec.label_noise, seed=config["seed"])
    frame.insert(5, "label", labels)
    frame = validate_pairs(frame, f"tiny pairs {dataset}/{split}")
    with atomic_path(out_dir, is_dir=True) as tmp:
        write_parquet_atomic(tmp / "part-0000.parquet", frame)
        write_json_atomic(tmp / "provenance.json", provenance("spm-pairs", {
            "dataset": dataset, "split": split, "spec": spec, "pairs": len(frame),
            "ties": int((labels == 0.5).sum()), "resolution": side}))
    return frame
