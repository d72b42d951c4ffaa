"""Load a method's diffusers pipeline: base model, optional UNet / VAE replacement, optional LoRA.

One loader for SD-1.5 and SDXL; the family only picks the pipeline class. Every part is a config
``source`` (see ``spo.models.sources``), so hub models with pinned revisions, local folders and the
tiny stand-ins the DAG builds all go through the same code. The released checkpoints come in four
layouts, all read here (config/released.yaml lists the rows; tests/models/test_released.py
writes a tiny checkpoint in each layout):

* a merged pipeline (``SPO-Diffusion-Models/SPO-*_4k-p_10ep``): a ``models`` entry of its own;
* a UNet in a ``unet/`` subfolder (``mhdang/dpo-*-text2image-v1``): ``methods.<m>.unet`` with
  ``subfolder: unet``;
* a UNet at the repository root (``mapo-t2i/mapo-beta``): ``methods.<m>.unet`` without subfolder;
* a LoRA file (``SPO-*_LoRA``): ``methods.<m>.lora`` with ``file:``.

A LoRA whose keys reach no module of the base model is an error here, not diffusers' logged
warning and an unchanged model (RockeyCoss/SPO#25, "no modules changed"): see ``_check_lora``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from spo import layout
from spo.models.sources import fetch_file, from_pretrained
from spo.source_kind import is_tiny

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' save_lora_weights default name
# Pipeline components a LoRA file can address, by the key prefix diffusers gives them.
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class LoraMismatchError(ValueError):
    """A LoRA file does not fit the base model: its keys reach no (or not every) module."""


class LoraWeightsError(ValueError):
    """A LoRA file is damaged (truncated) or holds NaN / infinite weights, which would make every
    image black."""


def pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    classes = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
    if family not in classes:
        raise ValueError(f"unknown model family '{family}'; allowed: {', '.join(classes)}")
    return classes[family]


def tiny_model_dir(models_root: str | Path, model_name: str) -> Path:
    """Where the DAG writes the tiny stand-in of ``models.<model_name>``."""
    return Path(layout.tiny_pipeline_dir(model_name, models_root))


def load_model_pipeline(config: dict[str, Any], model_name: str, *, models_root: str | Path,
                        dtype: str = "float32", device: str = "cpu", unet_source: dict | None = None):
    """The base pipeline ``models.<model_name>`` (optionally with a replacement UNet), DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from spo.config_blocks import model_spec

    model_cfg = model_spec(config, model_name)
    unet_source = unet_source or model_cfg.unet  # a method's own UNet wins over the model's
    torch_dtype = DTYPES[dtype]
    tiny_dir = tiny_model_dir(models_root, model_name)
    parts: dict[str, Any] = {}
    if model_cfg.family == "sd15":
        parts.update(safety_checker=None, requires_safety_checker=False)
    if model_cfg.vae is not None:
        parts["vae"] = from_pretrained(AutoencoderKL.from_pretrained, model_cfg.vae,
                                       tiny_dir=tiny_dir / "vae", dtype=torch_dtype)
    if unet_source is not None:
        parts["unet"] = from_pretrained(UNet2DConditionModel.from_pretrained, unet_source,
                                        tiny_dir=tiny_dir / "unet", dtype=torch_dtype)
    pipe = from_pretrained(pipeline_class(model_cfg.family).from_pretrained, model_cfg.source,
                           tiny_dir=tiny_dir, dtype=torch_dtype, **parts)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_method_pipeline(config: dict[str, Any], method: str, *, models_root: str | Path,
                         lora: str | Path | None = None, dtype: str = "float32",
                         device: str = "cpu"):
    """Build the pipeline of ``methods.<method>`` with a DDIM scheduler, ready to sample.

    Args:
        config: the validated workflow config.
        method: a key of ``config['methods']``.
        models_root: folder of the DAG-built tiny models (``spo.layout.MODELS_ROOT`` in the DAG).
        lora: for a method with a ``train`` block (and only then), its training output folder
            (the DAG's ``spo.layout.train_dir(method)``): the LoRA, or ``unet/`` of a full-UNet
            training. Other methods take their weights from the config (``lora:``, ``unet:``).
        dtype: one of ``DTYPES``; device: a torch device string.

    Raises:
        LoraMismatchError: the method's LoRA changes no module, or not every module it names.
        ValueError: ``lora`` is missing for a trained method, or given for another one.
    """
    from spo.config_blocks import method_spec

    method_cfg = method_spec(config, method)
    unet_source = method_cfg.unet
    if method_cfg.trained != (lora is not None):
        raise ValueError(
            f"method '{method}' has a `train` block: pass its training output folder as lora "
            f"(`python -m spo generate ... --lora {layout.train_dir(method)}`)"
            if method_cfg.trained else
            f"method '{method}' has no `train` block, so it loads no training output (got lora="
            f"'{lora}'); its weights come from the config (methods.{method}.lora / unet)")
    trained = Path(lora) if lora is not None else None
    full_unet = trained is not None and (trained / "unet" / "config.json").is_file()
    if full_unet:  # a full-UNet training (Diffusion-DPO's official recipe): its UNet replaces the base's
        unet_source = {"path": str(trained), "subfolder": "unet"}
    pipe = load_model_pipeline(config, method_cfg.model, models_root=models_root, dtype=dtype,
                               device="cpu", unet_source=unet_source)
    if method_cfg.lora is not None:
        _load_lora(pipe, method_cfg.lora, method, key=f"methods.{method}.lora")
    elif trained is not None and not full_unet:
        if not (trained / LORA_WEIGHTS).is_file():
            raise FileNotFoundError(f"method '{method}' is trained but '{trained}' holds neither "
                                    f"{LORA_WEIGHTS} nor unet/; run its training first "
                                    f"(snakemake {trained})")
        _load_lora(pipe, {"path": str(trained)}, method,
                   key=f"methods.{method}.train (its output {trained})")
    return pipe.to(device)


def _load_lora(pipe, spec: dict[str, Any], method: str, *, key: str) -> None:
    """Load a LoRA file into ``pipe`` as adapter ``method``, then check that it took effect.

    ``spec`` is a source: a hub repository or a local folder with ``file:`` (default
    ``pytorch_lora_weights.safetensors``), or a local file. Diffusers maps its own layout and the
    kohya/webui one; ``sha256:`` is verified when given.
    """
    if is_tiny(spec):
        raise ValueError(f"config key '{key}' cannot be tiny; give `path:` or a hub `id`/`revision`")
    path = fetch_file(spec, default_file=LORA_WEIGHTS)
    trained = key.startswith(f"methods.{method}.train")
    fix = (f"delete '{path.parent}' and train it again (`snakemake --cores 1 {path.parent}`)" if trained else
           f"fetch the file again (delete '{path}'), or fix the config key '{key}'")
    from spo.io import safetensors_problem

    problem = safetensors_problem(path) if path.suffix == ".safetensors" else None
    if problem:
        raise LoraWeightsError(f"config key '{key}': the LoRA file '{path}' {problem}; {fix}")
    try:
        # diffusers' own reading and key conversion, so the check below sees the keys it loads
        state, _ = pipe.lora_state_dict(str(path.parent), weight_name=path.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise LoraMismatchError(f"config key '{key}': '{path}' is not a LoRA file diffusers can "
                                f"read ({type(exc).__name__}: {first}); {_LORA_FIX}") from exc
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        why = (f"its training diverged: retrain it with a lower 'methods.{method}.train.lr' "
               f"(then {fix})" if trained else fix)
        raise LoraWeightsError(f"config key '{key}': the LoRA '{path}' holds NaN or infinite values "
                               f"in {len(bad)} of {len(state)} tensors (first: {bad[0]}); every "
                               f"image generated with it would be black. Not loading it: {why}")
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=method)
    except (ValueError, KeyError, RuntimeError) as exc:  # e.g. shape mismatch: other architecture
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise LoraMismatchError(f"config key '{key}': the LoRA '{path}' of method '{method}' does "
                                f"not fit this base model: {'; '.join(lines[:3])}; {_LORA_FIX}") from exc
    _check_lora(pipe, state, method, path, key)


_LORA_FIX = ("use the LoRA released for this base model (an SD-1.5 LoRA on an sd15 model, an SDXL "
             "LoRA on an sdxl one; the SPO repositories' `*_lora_diffusers.safetensors`), or fix "
             "the method's `model:`")
# The end of a LoRA tensor's key after the module path, in the layouts diffusers reads: peft
# (lora_A/B), diffusers (lora.down/up, lora_linear_layer.down/up), kohya (lora_down/up, alpha).
_LORA_SUFFIX = re.compile(r"\.(lora(_linear_layer)?\.(down|up)|lora_[AB]|lora_(down|up))"
                          r"(\.[A-Za-z0-9_-]+)?\.weight$|\.alpha$|\.lora_magnitude_vector$")
# The old attention-processor layout: '<attn>.processor.to_q_lora.down.weight' is '<attn>.to_q'.
_LORA_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def lora_module_of(key: str) -> tuple[str, str] | None:
    """(component, module path) a converted LoRA key addresses; None when the key has no such form.

    >>> lora_module_of("unet.mid_block.attentions.0.proj_in.lora.down.weight")
    ('unet', 'mid_block.attentions.0.proj_in')
    """
    component, _, rest = key.partition(".")
    if component not in LORA_COMPONENTS or not rest:
        return None
    old = _LORA_PROCESSOR.search(rest)
    if old:
        name = old.group(1) + (".0" if old.group(1) == "to_out" else "")
        return component, rest[:old.start()] + "." + name
    module = _LORA_SUFFIX.sub("", rest)
    return (component, module) if module != rest else None


def _check_lora(pipe, state: dict[str, Any], method: str, path: Path, key: str) -> None:
    """Raise unless every tensor of the LoRA file landed in an adapter layer named ``method``.

    Diffusers only logs a warning for keys that match no module (and nothing at all when no key
    has a known prefix), so a LoRA for another architecture or in a layout it cannot map would
    leave the model unchanged and the table row would silently be the base model.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted: dict[str, set[str]] = {}
    for component in LORA_COMPONENTS:
        module = getattr(pipe, component, None)
        adapted[component] = set() if module is None else {
            name for name, m in module.named_modules()
            if isinstance(m, BaseTunerLayer) and method in getattr(m, "lora_A", {})}

    def reached(k: str) -> bool:
        target = lora_module_of(k)
        if target is None:
            return False
        # CLIP text encoders lost their `text_model.` level in transformers 5; LoRA files keep it
        names = adapted[target[0]]
        return target[1] in names or target[1].removeprefix("text_model.") in names

    unmatched = [k for k in state if not reached(k)]
    if not unmatched and state:
        return
    changed = sum(len(names) for names in adapted.values())
    what = ("changes no module of the pipeline" if changed == 0 else
            f"has {len(unmatched)} of {len(state)} tensors that match no module of the pipeline "
            f"(they would be dropped, the rest applied)")
    raise LoraMismatchError(
        f"config key '{key}': the LoRA '{path}' of method '{method}' {what}; first unmatched keys: "
        f"{', '.join(unmatched[:5]) or '(the file holds no LoRA tensors)'}. Loading it as is would "
        f"make the row the base model (the 'no modules changed' of RockeyCoss/SPO#25); {_LORA_FIX}")
