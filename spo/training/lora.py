"""LoRA on the UNet through peft, saved and loaded in the diffusers format.

The reference model of SPO is the same UNet with the adapter disabled (``reference_mode``), not a
deep copy: half the UNet memory, and provably the base weights (disabling skips the LoRA branch).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch

DEFAULT_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def attach_lora(unet, *, rank: int, alpha: float | None = None,
                targets: Sequence[str] = DEFAULT_TARGETS, init: str = "gaussian") -> list[torch.nn.Parameter]:
    """Freeze ``unet`` and add a LoRA adapter; returns the trainable parameters (float32).

    ``init="gaussian"`` is the official SPO setting (peft's gaussian A, zero B); ``"default"`` is
    peft's Kaiming A. Either way B = 0, so the adapted UNet starts equal to the base.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"config key 'train.lora_rank' is {rank}; it must be >= 1")
    init_arg = {"gaussian": "gaussian", "default": True}.get(init)
    if init_arg is None:
        raise ValueError(f"config key 'train.lora_init' is {init!r}; allowed: 'gaussian', 'default'")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets),
                                init_lora_weights=init_arg))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        # peft stores the adapter in its base layer's dtype: on a half-precision UNet
        # (spo.training.precision) the trained weights, and so AdamW's state, are kept float32
        # (diffusers' cast_training_params); a float32 / float64 UNet's adapter is left as it is.
        if p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
        p.requires_grad_(True)
    return params


def _lora_layers(unet) -> list:
    """The peft LoRA layers of ``unet``, collected once (walking every module per toggle, as
    ``unet.disable_adapters()`` does, costs ~2.4 ms per on/off pair on the tiny UNet)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = getattr(unet, "_spo_lora_layers", None)
    if layers is None:
        layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        unet._spo_lora_layers = layers
    return layers


@contextlib.contextmanager
def reference_mode(unet) -> Iterator[None]:
    """Run ``unet`` as the frozen base model (adapter disabled) inside the block."""
    layers = _lora_layers(unet)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's naming (for checkpoints)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state_dict(unet, state: dict[str, torch.Tensor]) -> None:
    from peft.utils import set_peft_model_state_dict

    result = set_peft_model_state_dict(unet, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"LoRA checkpoint has keys the adapter lacks: {unexpected[:5]}")


def save_lora_diffusers(pipeline_class, unet, out_dir: str | Path) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` that ``pipe.load_lora_weights`` reads."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_class.save_lora_weights(str(out_dir), unet_lora_layers=layers,
                                     weight_name=LORA_WEIGHTS, safe_serialization=True)
    return Path(out_dir) / LORA_WEIGHTS
