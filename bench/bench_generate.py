"""Generation: our loading + generate_shard's call against a plain diffusers pipeline call (CPU).

Both sides generate the same shard (the tiny profile's tiny-eval shard 0: 32 prompts x 2 images,
batches of 16, 20 DDIM steps, CFG 5, eta 0, 32 px, float32, one seeded CPU generator per image) and
the images are checked identical. Timed:

* ``call``: the sampling calls only, pipeline already loaded: ``spo.models.pipelines.
  load_method_pipeline`` + the loop of ``spo.generate.generate_shard`` (ours) against
  ``<PipelineClass>.from_pretrained`` + DDIM scheduler (+ ``load_lora_weights`` for a trained
  method) and the same call (stock);
* ``end_to_end`` (``--full`` or the sd15 base method): ``generate_shard`` itself (loading, sampling,
  PNG files, Parquet manifest, provenance) against stock loading + the same calls + PNG files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, RESULTS, interleaved, ratio, tiny_models_dir

METHODS = {"tiny-sd15-base": "sd15", "tiny-sd15-spo": "sd15", "tiny-sdxl-base": "sdxl"}


def _config():
    from spo.config import load_config

    return load_config([REPO / "config" / "config.yaml"], root=REPO)


def _fake_training(models_root: Path, train_root: Path, method: str, rank: int = 8) -> None:
    """A LoRA in results/train/<method> (seeded, non-zero), as the train rule leaves it."""
    from diffusers import StableDiffusionPipeline

    from bench.spo_setup import perturb_lora
    from spo.training.lora import LORA_WEIGHTS, attach_lora, save_lora_diffusers

    out = train_root / method
    if (out / LORA_WEIGHTS).is_file():
        return
    pipe = StableDiffusionPipeline.from_pretrained(str(models_root / "pipelines" / "tiny-sd15"),
                                                   local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        attach_lora(pipe.unet, rank=rank, init="default")
    perturb_lora(pipe.unet, 0.05)
    out.mkdir(parents=True, exist_ok=True)
    save_lora_diffusers(StableDiffusionPipeline, pipe.unet, out)


def _stock(models_root: Path, train_root: Path, family: str, method_cfg: dict):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = str(models_root / "pipelines" / f"tiny-{family}")
    if family == "sd15":
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                       requires_safety_checker=False,
                                                       local_files_only=True)
    else:
        pipe = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if "train" in method_cfg:
        pipe.load_lora_weights(str(train_root / method_cfg["name"]),
                               weight_name="pytorch_lora_weights.safetensors")
    return pipe


def _jobs(config, prompt_set: str = "tiny-eval"):
    from spo.config import images_per_prompt
    from spo.prompts import load_prompt_set, shard_slice

    gen = config["generation"]
    prompts = shard_slice(load_prompt_set(config["prompt_sets"][prompt_set], REPO), 0, gen["shard_size"])
    return [(row.prompt_id, row.prompt, i) for row in prompts.itertuples()
            for i in range(images_per_prompt(config, prompt_set))]


def _generate(pipe, config, method: str, jobs, save_dir: Path | None = None):
    """The sampling loop of ``generate_shard`` (same call, same per-image generators)."""
    from spo.config import method_guidance_scale
    from spo.seeds import image_seed

    gen = config["generation"]
    images = []
    for start in range(0, len(jobs), gen["batch_size"]):
        chunk = jobs[start:start + gen["batch_size"]]
        seeds = [image_seed(config["seed"], pid, idx) for pid, _, idx in chunk]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        with torch.inference_mode():
            out = pipe(prompt=[p for _, p, _ in chunk], generator=generators,
                       num_inference_steps=gen["num_inference_steps"],
                       guidance_scale=method_guidance_scale(config, method), eta=gen["eta"],
                       height=gen["resolution"], width=gen["resolution"], output_type="pil").images
        if save_dir is not None:
            for (pid, _, idx), image in zip(chunk, out):
                image.save(save_dir / f"{pid}_{idx}.png", format="PNG")
        images += out
    return images


def bench_method(config, method: str, models_root: Path, train_root: Path, reps: int,
                 end_to_end: bool) -> dict[str, Any]:
    import numpy as np

    from spo.generate import generate_shard
    from spo.models.pipelines import load_method_pipeline

    family = METHODS[method]
    cfg = {**config["methods"][method], "name": method}
    jobs = _jobs(config)
    lora = train_root / method if "train" in cfg else None  # the train rule's output folder
    ours = load_method_pipeline(config, method, models_root=models_root, lora=lora)
    stock = _stock(models_root, train_root, family, cfg)
    a = _generate(ours, config, method, jobs)
    b = _generate(stock, config, method, jobs)
    identical = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    fns = {"stock_call": lambda r: _generate(stock, config, method, jobs),
           "ours_call": lambda r: _generate(ours, config, method, jobs)}
    scratch = Path(tempfile.mkdtemp(prefix="gen-", dir=RESULTS))
    if end_to_end:
        def ours_e2e(r):
            out = scratch / f"ours-{r}"
            generate_shard(config, method, "tiny-eval", 0, out, models_root=models_root,
                           root=REPO, lora=lora, device="cpu", progress=False)
            shutil.rmtree(out)

        def stock_e2e(r):
            out = scratch / f"stock-{r}"
            out.mkdir()
            _generate(_stock(models_root, train_root, family, cfg), config, method, jobs, save_dir=out)
            shutil.rmtree(out)

        fns.update(stock_end_to_end=stock_e2e, ours_end_to_end=ours_e2e)
    try:
        timed = interleaved(fns, reps=reps, warmup=0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    n = len(jobs)
    out = {"method": method, "family": family, "lora": "train" in cfg, "images": n,
           "identical_images": identical,
           "stock_images_per_s": n / timed["stock_call"]["median_s"],
           "ours_images_per_s": n / timed["ours_call"]["median_s"],
           # throughput ratio ours / stock = stock time / ours time
           "ours_over_stock": ratio(timed, "stock_call", "ours_call")["ratio_of_medians"],
           "ours_over_stock_median_of_ratios": ratio(timed, "stock_call", "ours_call")["median_of_ratios"],
           "times": {k: v["times"] for k, v in timed.items()}}
    if end_to_end:
        out.update(stock_e2e_images_per_s=n / timed["stock_end_to_end"]["median_s"],
                   ours_e2e_images_per_s=n / timed["ours_end_to_end"]["median_s"],
                   ours_over_stock_e2e=timed["stock_end_to_end"]["median_s"] / timed["ours_end_to_end"]["median_s"])
    return out


def run(quick: bool = True) -> dict[str, Any]:
    config = _config()
    cache = RESULTS / "cache"
    models_root = tiny_models_dir(cache / "models", ("sd15", "sdxl"))
    train_root = cache / "train"
    _fake_training(models_root, train_root, "tiny-sd15-spo")
    gen = config["generation"]
    settings = {k: gen[k] for k in ("num_inference_steps", "guidance_scale", "eta", "resolution",
                                    "batch_size", "dtype")}
    methods = ["tiny-sd15-base", "tiny-sd15-spo", "tiny-sdxl-base"]
    results = [bench_method(config, m, models_root, train_root, reps=7 if quick else 11,
                            end_to_end=(m == "tiny-sd15-base") or not quick) for m in methods]
    return {"what": "images/s of one generation shard: ours (our loading + generate_shard's call) "
                    "against a plain diffusers pipeline call with the same settings",
            "settings": settings, "prompt_set": "tiny-eval shard 0", "methods": results}
