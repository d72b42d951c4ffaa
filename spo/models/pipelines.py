"""Load a method's diffusers pipeline: base model, optional UNet / VAE replacement, optional LoRA.

One loader for SD-1.5 and SDXL; the family only picks the pipeline class. Every part is a config
``source`` (see ``spo.models.sources``), so hub models with pinned revisions, local folders and the
tiny stand-ins the DAG builds all go through the same code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spo.models.sources import fetch_file, from_pretrained, local_root

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    classes = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
    if family not in classes:
        raise ValueError(f"unknown model family '{family}'; allowed: {', '.join(classes)}")
    return classes[family]


def tiny_model_dir(models_root: str | Path, model_name: str) -> Path:
    """Where the DAG writes the tiny stand-in of ``models.<model_name>``."""
    return Path(models_root) / "pipelines" / model_name


def load_model_pipeline(config: dict[str, Any], model_name: str, *, models_root: str | Path,
                        dtype: str = "float32", device: str = "cpu", unet_source: dict | None = None):
    """The base pipeline ``models.<model_name>`` (optionally with a replacement UNet), DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    model_cfg = config["models"][model_name]
    torch_dtype = DTYPES[dtype]
    tiny_dir = tiny_model_dir(models_root, model_name)
    parts: dict[str, Any] = {}
    if model_cfg["family"] == "sd15":
        parts.update(safety_checker=None, requires_safety_checker=False)
    if "vae" in model_cfg:
        parts["vae"] = from_pretrained(AutoencoderKL.from_pretrained, model_cfg["vae"],
                                       tiny_dir=tiny_dir / "vae", dtype=torch_dtype)
    if unet_source is not None:
        parts["unet"] = from_pretrained(UNet2DConditionModel.from_pretrained, unet_source,
                                        tiny_dir=tiny_dir / "unet", dtype=torch_dtype)
    pipe = from_pretrained(pipeline_class(model_cfg["family"]).from_pretrained, model_cfg["source"],
                           tiny_dir=tiny_dir, dtype=torch_dtype, **parts)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_method_pipeline(config: dict[str, Any], method: str, *, models_root: str | Path,
                         train_root: str | Path = "results/train", dtype: str = "float32",
                         device: str = "cpu"):
    """Build the pipeline of ``methods.<method>`` with a DDIM scheduler, ready to sample.

    Args:
        config: the validated workflow config.
        method: a key of ``config['methods']``.
        models_root: folder of the DAG-built tiny models (``results/models``).
        train_root: folder of trained methods' outputs (``results/train/<method>`` holds the LoRA).
        dtype: one of ``DTYPES``; device: a torch device string.
    """
    method_cfg = config["methods"][method]
    pipe = load_model_pipeline(config, method_cfg["model"], models_root=models_root, dtype=dtype,
                               device="cpu", unet_source=method_cfg.get("unet"))
    if "lora" in method_cfg:
        _load_lora(pipe, method_cfg["lora"], method)
    elif "train" in method_cfg:
        trained = Path(train_root) / method
        if not (trained / "pytorch_lora_weights.safetensors").is_file():
            raise FileNotFoundError(f"method '{method}' is trained but '{trained}' holds no "
                                    f"pytorch_lora_weights.safetensors; run its training first "
                                    f"(snakemake {trained})")
        _load_lora(pipe, {"path": str(trained)}, method)
    return pipe.to(device)


def _load_lora(pipe, spec: dict[str, Any], method: str) -> None:
    """Load a diffusers-format LoRA (``pytorch_lora_weights.safetensors``) into ``pipe``."""
    if "tiny" in spec:
        raise ValueError(f"config key 'methods.{method}.lora' cannot be tiny; give a path or a hub id")
    weight_name = spec.get("file", "pytorch_lora_weights.safetensors")
    root = local_root(spec, None)
    if root is None:
        path = fetch_file({**spec, "file": weight_name})
        folder = path.parent
    else:
        folder = root if root.is_dir() else root.parent
        weight_name = weight_name if root.is_dir() else root.name
    pipe.load_lora_weights(str(folder), weight_name=weight_name, adapter_name=method)
