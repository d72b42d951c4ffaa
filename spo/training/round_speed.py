"""Speed keys of the SPO round (issue 18): each changes the numbers in the last bits, so each is a
``train`` key, off by default (the default round is bit-identical to the one before them).

* ``train.sampling_merge_lora``: the round's sampling runs the UNet with each LoRA layer folded
  into a copy of its base weight (W + scale B A: one matmul per layer instead of three plus the
  add); the base weights themselves are never modified (the copies are swapped in and the
  original tensors swapped back), and the loss's passes use the unmerged LoRA as before. Costs a
  copy of the LoRA-targeted weights while sampling.
* ``train.channels_last``: UNet and VAE in the channels-last memory format.
* ``train.compile_unet``: ``torch.compile`` of the UNet forward that ``Backbone.eps`` calls
  (sampling and the loss); the compile time is paid in the first round.

Bench figures (CPU, tiny models; GPU script ``bench/gpu_round.py``): ``BENCHMARKS.md``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def apply_speed_keys(backbone, settings) -> None:
    """``train.channels_last`` and ``train.compile_unet`` on ``backbone`` (once, before round 0)."""
    if settings.channels_last:
        backbone.pipe.unet.to(memory_format=torch.channels_last)
        backbone.pipe.vae.to(memory_format=torch.channels_last)
    if settings.compile_unet:
        backbone.unet = torch.compile(backbone.pipe.unet)


@contextlib.contextmanager
def merged_lora(unet, enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``unet`` computes base + LoRA with one weight per LoRA layer (no grad).

    Each LoRA layer's base weight is replaced by a new tensor W + delta (peft's
    ``get_delta_weight`` of the active adapters) and its adapter branch is switched off; on exit
    the original weight tensors (untouched) are put back and the adapters switched on again."""
    if not enabled:
        yield
        return
    from spo.training.lora import _lora_layers

    swapped = []
    try:
        with torch.no_grad():
            for layer in _lora_layers(unet):
                base = layer.get_base_layer()
                delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters)
                weight = base.weight
                base.weight = torch.nn.Parameter(weight + delta.to(weight.dtype), requires_grad=False)
                swapped.append((layer, base, weight))
                layer.enable_adapters(False)
        yield
    finally:
        for layer, base, weight in swapped:
            base.weight = weight
            layer.enable_adapters(True)
