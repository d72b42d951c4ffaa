"""The SPM stages' library side (entry points of ``python -m spo spm-pairs | spm-latents |
train-spm``: spo/stages.py) and path conventions.

Paths (``spo.layout``; the rules in ``workflow/rules/spm.smk`` pass them as arguments)::

    spm_pairs_dir(dataset, split)/part-*.parquet     pairs (spm-pairs)
    spm_latents_dir(dataset, split, model)/           cached VAE latents (spm-latents)
    spm_model_dir(run, models_root)/                  the trained SPM (train-spm)
    spm_validation_csv(run), spm_checkpoints(...)     accuracy against t; resumable state
    pickscore_init_dir(models_root)/{model,processor} tiny PickScore (tiny sources only)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from spo.source_kind import is_tiny

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
MAX_CACHED_PROMPTS = 8192  # prompt embeddings held in memory (SD-1.5: ~0.5 MB each, cond + uncond)


def resolve_pickscore(config: dict[str, Any], models_root) -> tuple[str, str]:
    """(model folder, processor folder) of ``spm.pickscore`` (hub, local, or the tiny one)."""
    from spo.layout import pickscore_init_dir
    from spo.models.sources import snapshot

    spec = config["spm"]["pickscore"]
    out = []
    for role in ("model", "processor"):
        out.append(str(snapshot(spec[role], tiny_dir=Path(pickscore_init_dir(models_root)) / role)))
    return out[0], out[1]


def make_pairs(config, dataset: str, split: str, out_dir, *, models_root, root=".") -> None:
    from spo.spm.settings import spm_dataset

    spec = spm_dataset(config, dataset)
    if split not in SPLITS:
        raise SystemExit(f"error: split {split!r}; allowed: {', '.join(SPLITS)}")
    if spec.tiny is not None:
        from spo.spm.tiny_pairs import make_tiny_pairs

        make_tiny_pairs(config, dataset, split, out_dir, models_root=models_root, root=root)
    else:
        from spo.spm.pickapic import convert_pickapic

        # unlabelled rows: the train split only (validation keeps labelled rows, as official)
        convert_pickapic(getattr(spec, split), split, out_dir, root=root,
                         unlabelled=spec.unlabelled if split == "train" else "drop")


def train_spm(config: dict[str, Any], run: str, *, pairs, val_pairs, out_dir, validation_csv,
              checkpoints, models_root, latents=None, val_latents=None, device: str | None = None,
              stop_after: int | None = None, record_batches: bool = False) -> dict[str, Any]:
    """Train ``spm.runs.<run>`` and write the SPM folder and the validation CSV atomically."""
    import pandas as pd
    import torch

    from spo.io import atomic_path, write_json_atomic, provenance
    from spo.preference.spm_io import from_pickscore, save_spm
    from spo.spm.backbone import load_backbone
    from spo.spm.precision import spm_precision
    from spo.spm.stream import PairStream
    from spo.spm.settings import spm_dataset
    from spo.spm.train import (VAL_COLUMNS, add_pseudo_labels, check_run_spec, run_settings,
                               train_loop, validate)
    from spo.devices import process_device

    spec = config["spm"]["runs"][run]  # the mapping: the trainer's input and the provenance's record
    check_run_spec(run, spec)
    settings = run_settings(run, spec)
    device = device or process_device()  # cuda:<LOCAL_RANK> under a multi-GPU launch
    # The precision policy must run on this device: checked before any model loads.
    policy, frozen = spm_precision(run, spec, device)
    began = time.perf_counter()
    torch.manual_seed(settings.seed)  # the timestep embedder's init draws from the global generator
    model_dir, processor_dir = resolve_pickscore(config, models_root)
    scorer = from_pickscore(model_dir, processor_dir, time_condition=settings.time_condition,
                            device=device)
    backbone = load_backbone(config, settings.model, models_root=models_root, device=device,
                             precision=frozen, guidance_scale=settings.guidance_scale)
    # Streamed per batch (spo.spm.stream): nothing here holds the pairs, images or latents.
    streams = {name: PairStream(paths, cache, encoder=backbone.encode, resolution=settings.resolution)
               for name, paths, cache in (("train", pairs, latents), ("validation", val_pairs, val_latents))}
    dataset_spec = spm_dataset(config, settings.data)
    if settings.vae_latents == "sample":  # a fresh posterior sample per step: encode images
        if dataset_spec.tiny is not None:
            raise ValueError(f"config key 'spm.runs.{run}.vae_latents' is 'sample', but the tiny pairs "
                             f"carry their generation latents, not images to encode; use 'mean'")
        streams["train"].store = None  # means only; read images in row-group windows instead
    prompts = set()
    for part in streams.values():  # Pick-a-Pic's ~10^5 prompts: encoded per batch instead
        found = part.unique_prompts(MAX_CACHED_PROMPTS)
        prompts = prompts | found if found is not None and prompts is not None else None
    if prompts is not None and len(prompts) <= MAX_CACHED_PROMPTS:
        backbone.precompute(sorted(prompts))
    ceiling = dataset_spec.tiny is not None  # labels are the analytic statistic: its own accuracy is the ceiling
    thr = settings.pickscore_threshold()
    if thr is not None:
        for part in streams.values():
            add_pseudo_labels(scorer, part, thr, autocast=policy.autocast)
    # Under `accelerate launch` every process trains; only the first validates and writes.
    main = os.environ.get("RANK", "0") == "0"
    val_kw = dict(seed=settings.seed, batch=settings.val_batch_size, ceiling=ceiling,
                  autocast=policy.autocast)
    rows = [{"stage": "init", "step": 0, **r} for r in
            validate(scorer, backbone, streams["validation"], settings.val_timesteps, **val_kw)] if main else []
    if main:
        log.info("untrained: %s", [(r["t"], round(r["accuracy"], 3)) for r in rows])
    result = train_loop(scorer, backbone, streams["train"], spec, Path(checkpoints), run=run,
                        stop_after=stop_after, record_batches=record_batches)
    if result["step"] < settings.steps or not result["main"]:
        return {**result, "model": scorer.model}  # stopped early (tests): no outputs, as a kill leaves none
    final = validate(scorer, backbone, streams["validation"], settings.val_timesteps, **val_kw)
    rows += [{"stage": "final", "step": result["step"], **r} for r in final]
    log.info("trained: %s", [(r["t"], round(r["accuracy"], 3), round(r["ceiling"], 3)) for r in final])
    table = pd.DataFrame([{"run": run, **r} for r in rows], columns=VAL_COLUMNS)
    save_spm(scorer, out_dir)
    write_json_atomic(Path(out_dir) / "provenance.json", provenance("train-spm", {
        "run": run, "spec": spec, "mixed_precision": policy.mode, "backbone_dtype": frozen.dtype_name,
        "train_pairs": len(streams["train"]),
        "validation_pairs": len(streams["validation"]), "resumed_from": result["resumed_from"],
        "train_seconds": result["seconds"], "total_seconds": time.perf_counter() - began}))
    with atomic_path(validation_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return {**result, "validation": table, "model": scorer.model}


def check_spm_config(config: dict[str, Any]) -> None:
    """Cross references the schema cannot express (``spo.spm.config_check``, also run at load);
    raises ``ConfigError`` naming each key."""
    from spo.config_spec import ConfigError
    from spo.spm.config_check import spm_block_errors

    if not config.get("spm"):
        raise ConfigError("config key 'spm' is missing; the SPM stages need it (config/config.yaml "
                          "shows one)")
    problems = spm_block_errors(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), problems)


def save_tiny_pickscore(config: dict[str, Any], out_dir) -> int:
    """Write the tiny PickScore ``spm.pickscore`` names (both roles must be tiny, same seed)."""
    from spo.metrics.tiny import save_tiny_weights

    spec = config["spm"]["pickscore"]
    if not all(is_tiny(spec[r]) for r in ("model", "processor")):
        raise SystemExit("error: spm.pickscore is not tiny in this config; nothing to build")
    save_tiny_weights("pickscore", out_dir, seed=spec["model"]["tiny"].get("seed", 0))
    return 0


def cache_latents(config, pairs_dir, model: str, out_dir, *, models_root, resolution=None,
                  batch: int = 16) -> None:
    """Encode every image of a pairs folder once with ``models.<model>``'s VAE (posterior mean).

    Writes, per pairs file ``<stem>.parquet``, ``<stem>.latents.npy`` (n, 2, C, h, w) float32
    (memory-mapped by the trainer: random access to any pair) and ``<stem>.pair_id.parquet``.
    Streams ``batch`` pairs at a time into a ``.npy`` opened with ``open_memmap``, so memory holds
    one batch of images, not the file.
    """
    import numpy as np
    import pandas as pd

    from spo.devices import process_device
    from spo.io import atomic_path, write_parquet_atomic
    from spo.spm.backbone import load_backbone
    from spo.spm.data import pair_files
    from spo.spm.stream import PairStream

    device = process_device()
    backbone = load_backbone(config, model, models_root=models_root, device=device)
    with atomic_path(out_dir, is_dir=True) as tmp:
        for file in pair_files([pairs_dir]):
            stem = file.name.removesuffix(".parquet")
            # No cache, no own latents: PairStream.latents decodes, crops and encodes the images.
            pairs = PairStream([file], encoder=backbone.encode, resolution=resolution, cache_groups=1)
            pairs.store = None
            out, ids = None, []
            for idx in pairs.chunks(batch):
                lat = pairs.latents(idx).numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp / f"{stem}.latents.npy", mode="w+",
                                                    dtype=np.float32, shape=(len(pairs),) + lat.shape[1:])
                out[int(idx[0]):int(idx[-1]) + 1] = lat
                ids += pairs.meta(idx)["pair_id"]
            out.flush()
            del out
            write_parquet_atomic(tmp / f"{stem}.pair_id.parquet", pd.DataFrame({"pair_id": ids}))
