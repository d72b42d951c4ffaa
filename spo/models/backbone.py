"""The backbone adapter: everything that differs between SD-1.5 and SDXL, behind one interface.

Samplers, trainers and the SPM data code call ``Backbone.encode`` / ``Backbone.eps`` /
``Backbone.decode`` and never branch on the model family. SDXL's extra conditioning (pooled text
embeddings and the six ``add_time_ids``) travels inside ``Conditioning``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class Conditioning:
    """Text conditioning of B prompts, unconditional (empty prompt) and conditional.

    Attributes:
        cond, uncond: (B, L, D) text embeddings.
        pooled, uncond_pooled: (B, P) pooled embeddings (SDXL) or None.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    pooled: torch.Tensor | None = None
    uncond_pooled: torch.Tensor | None = None

    def take(self, index: torch.Tensor) -> "Conditioning":
        """Rows ``index`` (any 1-d long tensor, repeats allowed)."""
        def pick(t):
            return None if t is None else t[index.to(t.device)]
        return Conditioning(pick(self.cond), pick(self.uncond), pick(self.pooled),
                            pick(self.uncond_pooled))

    def to(self, device) -> "Conditioning":
        def move(t):
            return None if t is None else t.to(device)
        return Conditioning(move(self.cond), move(self.uncond), move(self.pooled),
                            move(self.uncond_pooled))


def default_resolution(pipe) -> int:
    """The pipeline's native image side: 512 for SD-1.5, 1024 for SDXL (UNet sample size x VAE)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


class Backbone:
    """Wraps a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.

    Args:
        pipe: the pipeline (its UNet may carry a LoRA adapter).
        resolution: image side in pixels of sampled images (latents are resolution /
            vae_scale_factor); only ``initial_latents`` needs it.
        autocast: a callable returning the context every forward pass (text encoders, UNet, VAE)
            runs in: the training precision policy's (``spo.training.precision``); none: no
            autocast.
    """

    def __init__(self, pipe, resolution: int | None = None, autocast=None):
        self.pipe = pipe
        self.autocast = autocast or contextlib.nullcontext
        # A VAE kept float32 under a half-precision policy (spo.training.precision.cast_frozen)
        # decodes without autocast, as diffusers' SDXL pipeline upcasts it.
        vae = getattr(pipe, "vae", None)
        self._vae_autocast = (self.autocast if vae is None or vae.dtype != torch.float32
                              else contextlib.nullcontext)
        self.unet = pipe.unet
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.resolution = resolution or default_resolution(pipe)
        self.latent_side = self.resolution // pipe.vae_scale_factor
        self.latent_channels = pipe.unet.config.in_channels
        # Cached: diffusers' ModelMixin.device / .dtype walk the parameters on every access
        # (~0.85 ms each on a peft-wrapped UNet, several times per pass; bench/README.md).
        self._device = pipe.unet.device
        self._dtype = pipe.unet.dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts and the empty negative prompt (CFG), frozen text encoders."""
        prompts = list(prompts)
        with self.autocast():
            if not self.is_sdxl:
                cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, True)
                return Conditioning(cond, uncond)
            cond, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        return Conditioning(cond, uncond, pooled, uncond_pooled)

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL micro-conditioning (original size, crop top-left, target size) = the image's own
        size, no crop, as the pipeline and the official SPO code use: (1, 6)."""
        h, w = (side * self.pipe.vae_scale_factor for side in latents.shape[-2:])
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=self._dtype, device=latents.device)

    def eps(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
            guidance_scale: float) -> torch.Tensor:
        """CFG noise prediction eps_u + g (eps_c - eps_u) in one batched UNet call.

        Args:
            latents: (B, C, h, w); t: (B,) long; cond: B rows.
        Returns:
            (B, C, h, w), the UNet's dtype.
        """
        dtype = self._dtype
        x = torch.cat([latents, latents]).to(dtype)
        tt = torch.cat([t, t]).to(self.device)
        states = torch.cat([cond.uncond, cond.cond]).to(dtype)
        extra = {}
        if self.is_sdxl:
            extra["added_cond_kwargs"] = {
                "text_embeds": torch.cat([cond.uncond_pooled, cond.pooled]).to(dtype),
                "time_ids": self.time_ids(latents).repeat(len(x), 1)}
        with self.autocast():
            out = self.unet(x, tt, encoder_hidden_states=states, **extra).sample
        eps_u, eps_c = out.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) float32 in [0, 1]."""
        vae = self.pipe.vae
        with self._vae_autocast():
            images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def initial_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """x_T ~ N(0, I): (n, C, h, w), drawn on the CPU for device-independent reproducibility."""
        shape = (n, self.latent_channels, self.latent_side, self.latent_side)
        return torch.randn(shape, generator=generator).to(self.device)
