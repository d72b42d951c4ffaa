"""The training precision policy: config key ``train.mixed_precision`` (``no`` | ``fp16`` | ``bf16``).

The official SPO runs use accelerate's fp16 mixed precision (``accelerate_cfg/1m4g_fp16.yaml``);
the recipe here is the one of diffusers' LoRA example (``train_text_to_image_lora.py``:
``weight_dtype``, ``cast_training_params``):

* frozen weights (UNet, VAE, text encoders, the preference model) are stored in the policy's dtype;
* trained weights (the LoRA, or a whole UNet) and so their AdamW state stay float32;
* every forward pass (sampling, the preference model, the loss) runs under ``torch.autocast`` of
  that dtype, which mixes the float32 LoRA with the half-precision frozen weights;
* fp16 scales the loss (accelerate's GradScaler, unscaled in ``spo.training.loop.optimizer_step``).

``no`` is float32 everywhere without autocast: the code path as it was before the policy existed,
bit for bit. Which values a device supports: CPU autocast computes in bf16 only; a CUDA GPU has
fp16, and bf16 where it supports it (``torch.cuda.is_bf16_supported()``, Ampere and later).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from spo.config_spec import ConfigError, bad

DTYPE_NAMES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}
DTYPE_MODES = {name: mode for mode, name in DTYPE_NAMES.items()}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def supported_values(device_type: str, bf16_supported: bool = False) -> tuple[str, ...]:
    """The ``mixed_precision`` values a device type can run (pure; CUDA's bf16 support is passed)."""
    if device_type == "cuda":
        return ("no", "fp16", "bf16") if bf16_supported else ("no", "fp16")
    if device_type == "cpu":
        return ("no", "bf16")
    return ("no",)


@dataclass(frozen=True)
class Precision:
    """A checked policy: ``mode`` (a ``mixed_precision`` value) on a device type."""

    mode: str
    device_type: str

    @property
    def dtype_name(self) -> str:
        """The frozen weights' dtype as ``spo.models.pipelines.DTYPES`` / ``build_preference`` name it."""
        return DTYPE_NAMES[self.mode]

    @property
    def weight_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype_name]

    def autocast(self):
        """The context every forward pass runs in: autocast of the weight dtype (none for ``no``)."""
        if self.mode == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.weight_dtype)


def _device_values(device: str | torch.device) -> tuple[str, tuple[str, ...]]:
    """(device type, the ``mixed_precision`` values it runs), CUDA's bf16 support asked once here."""
    device_type = torch.device(device).type
    bf16 = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type, supported_values(device_type, bf16)


def _refuse(key: str, value: str, device, allowed: tuple[str, ...], why: str) -> ConfigError:
    return ConfigError(bad(key, value, f"the device '{device}' supports "
                                       f"{', '.join(repr(v) for v in allowed)}"
                                       f"{f' ({why})' if why else ''}; set one of them"))


def check_precision(value: str, device: str | torch.device,
                    key: str = "train.mixed_precision") -> Precision:
    """The policy ``value`` on ``device``; a ``ConfigError`` naming ``key``, the value and the values
    the device supports when it cannot run it. Call it before loading any model."""
    device_type, allowed = _device_values(device)
    if value not in allowed:
        why = {("cpu", "fp16"): "fp16 autocast needs a CUDA GPU",
               ("cuda", "bf16"): "this GPU has no bf16 support"}.get((device_type, value), "")
        raise _refuse(key, value, device, allowed, why)
    return Precision(value, device_type)


def check_dtype(value: str, device: str | torch.device, key: str) -> Precision:
    """A weight dtype name (``float32`` | ``float16`` | ``bfloat16``: a scorer's ``metrics.<m>.dtype``,
    ``spm.runs.<run>.backbone_dtype``) on ``device``, as the policy of that dtype; a ``ConfigError``
    naming ``key``, the value and the dtypes the device supports otherwise. Call it before loading."""
    device_type, modes = _device_values(device)
    allowed = tuple(DTYPE_NAMES[v] for v in modes)
    if value not in allowed:
        why = {("cpu", "float16"): "float16 needs a CUDA GPU",
               ("cuda", "bfloat16"): "this GPU has no bf16 support"}.get((device_type, value), "")
        raise _refuse(key, value, device, allowed, why)
    return Precision(DTYPE_MODES[value], device_type)


def cast_frozen(pipe, precision: Precision, *, keep_unet: bool = False) -> None:
    """Store the pipeline's frozen modules in the policy's dtype (after loading, in place).

    ``keep_unet``: the UNet is trained whole (Diffusion-DPO's ``full_unet``): it stays float32. An
    SDXL VAE that diffusers marks ``force_upcast`` (the original one, which overflows in fp16)
    stays float32 under fp16, and ``Backbone.decode`` then runs it without autocast, as diffusers'
    SDXL pipeline does; the fp16-fix VAE of the paper's SDXL runs is cast."""
    if precision.mode == "no":
        return
    dtype = precision.weight_dtype
    for name in ("text_encoder", "text_encoder_2", "vae", "unet"):
        module = getattr(pipe, name, None)
        if module is None or (name == "unet" and keep_unet):
            continue
        if (name == "vae" and dtype == torch.float16 and getattr(pipe, "text_encoder_2", None) is not None
                and module.config.get("force_upcast", False)):
            continue
        # diffusers' ModelMixin.to warns of fp32-kept modules even when the list is empty
        keep = getattr(module, "_keep_in_fp32_modules", None)
        (module.to if keep else functools.partial(torch.nn.Module.to, module))(dtype=dtype)


class UnderPolicy:
    """A preference model called under the policy's autocast; its scores come back float32 (the
    sampler's statistics and the trainers' rewards are float32). Other attributes pass through."""

    def __init__(self, model, precision: Precision):
        self.model, self.precision = model, precision

    def __call__(self, *args, **kwargs):
        with self.precision.autocast():
            out = self.model(*args, **kwargs)
        return out.float() if torch.is_tensor(out) else out

    def __getattr__(self, name):
        return getattr(self.model, name)


def under_policy(model, precision: Precision):
    """``model`` run under ``precision`` (itself for ``no``: nothing changes on that path)."""
    return model if precision.mode == "no" or model is None else UnderPolicy(model, precision)
