"""One adapter over SD-1.5 and SDXL for SPM training: prompt embeddings, x̂0 with CFG, VAE codec.

The official recipe (RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/tasks/spm_task.py,
``get_noised_imgs``): encode both images with the VAE, add the *same* noise at t, predict the noise
with the base UNet under classifier-free guidance (scale 5, empty negative prompt), take DDIM's
``pred_original_sample`` and decode it. Only the prompt conditioning differs between the families
(SDXL adds pooled text embeddings and size/crop time ids); everything else is shared.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def add_noise(latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM forward process q(x_t | x_0): sqrt(a_t) x0 + sqrt(1 - a_t) noise; t (N,) long."""
    a = alphas_cumprod.to(latents.device, torch.float32)[t].view(-1, 1, 1, 1)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def predicted_x0(x_t: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor,
                 alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """DDIM's ``pred_original_sample`` (no clipping, as SD's scheduler config), per-sample t."""
    a = alphas_cumprod.to(x_t.device, torch.float32)[t].view(-1, 1, 1, 1)
    x, out = x_t.float(), model_output.float()
    if prediction_type == "epsilon":
        x0 = (x - (1 - a).sqrt() * out) / a.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
    elif prediction_type == "sample":
        x0 = out
    else:
        raise ValueError(f"unknown scheduler prediction_type {prediction_type!r}")
    return x0.to(x_t.dtype)


class DiffusionBackbone:
    """Frozen base pipeline parts used to make the SPM's noisy-x̂0 inputs.

    A thin layer over ``spo.models.backbone.Backbone`` (the one SD-1.5 / SDXL adapter shared with
    the SPO sampler): it adds the forward noising, x̂0 and a prompt-embedding cache.

    Args:
        pipe: a loaded ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
        family: ``sd15`` or ``sdxl``.
        guidance_scale: CFG scale of the x̂0 prediction (official: 5.0).
        autocast: the context of every forward pass (``Precision.autocast`` of the weights' dtype,
            ``spo.spm.precision``); none: no autocast.
    """

    def __init__(self, pipe, family: str, guidance_scale: float = 5.0, device: str = "cpu",
                 autocast=None):
        from spo.models.backbone import Backbone

        self.pipe, self.family, self.scale, self.device = pipe, family, float(guidance_scale), device
        for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, part, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self.backbone = Backbone(pipe, autocast=autocast)
        self.alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device)
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        self.num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.vae_scale = float(pipe.vae.config.scaling_factor)
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        c = self.backbone.encode(prompts)
        emb = {"cond": c.cond, "uncond": c.uncond}
        if c.pooled is not None:
            emb.update(pooled=c.pooled, pooled_uncond=c.uncond_pooled)
        return emb

    def precompute(self, prompts: Sequence[str], chunk: int = 64) -> None:
        """Encode the unique ``prompts`` once, sorted and in fixed chunks.

        The text encoders are frozen, so this is a cache; fixed chunks make each embedding
        independent of which batch first needed it (float32 matmuls are not bitwise equal across
        batch sizes), which keeps a resumed run bitwise equal to an uninterrupted one.
        """
        todo = sorted(set(prompts) - set(self._cache))
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            enc = self._encode_prompts(part)
            for i, p in enumerate(part):
                self._cache[p] = {k: v[i] for k, v in enc.items()}

    def prompt_embeddings(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Embeddings (N, ...) for cond and uncond: from the cache, or the batch encoded as is."""
        if all(p in self._cache for p in prompts):
            return {k: torch.stack([self._cache[p][k] for p in prompts]) for k in self._cache[prompts[0]]}
        return self._encode_prompts(prompts)

    @torch.no_grad()
    def predict_x0(self, latents: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   emb: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise ``latents`` (N, C, h, w) to t (N,), predict x̂0 with CFG; returns (N, C, h, w)."""
        from spo.models.backbone import Conditioning

        x_t = add_noise(latents, noise, t, self.alphas_cumprod)
        cond = Conditioning(emb["cond"], emb["uncond"], emb.get("pooled"), emb.get("pooled_uncond"))
        eps = self.backbone.eps(x_t, t, cond, self.scale)
        return predicted_x0(x_t, eps, t, self.alphas_cumprod, self.prediction_type)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (N, C, h, w) -> images (N, 3, H, W) in [0, 1]."""
        return self.backbone.decode(latents)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> scaled latents: the posterior mean (the cache is
        reused), or with ``noise`` (N, C, h, w) the posterior sample mean + std * noise."""
        vae = self.pipe.vae
        with self.backbone._vae_autocast():  # float32 latents out (``.float()``: none on float32)
            dist = vae.encode((images * 2 - 1).to(self.device, vae.dtype)).latent_dist
            if noise is None:
                return (dist.mean * self.vae_scale).float()
            return ((dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype))
                    * self.vae_scale).float()


def load_backbone(config: dict[str, Any], model: str, *, models_root, device: str = "cpu",
                  dtype: str = "float32", guidance_scale: float = 5.0,
                  precision=None) -> DiffusionBackbone:
    """The base pipeline of ``models.<model>`` (hub, local or DAG-built tiny) as a backbone.

    ``precision`` (a checked ``spo.training.precision.Precision``): loaded float32, the frozen
    parts then cast to its dtype (``cast_frozen``: an SDXL VAE marked ``force_upcast`` stays
    float32 under fp16) and every forward pass under its autocast; else stored in ``dtype``."""
    from spo.config_blocks import model_spec
    from spo.models.pipelines import load_model_pipeline

    pipe = load_model_pipeline(config, model, models_root=models_root, dtype=dtype, device=device)
    autocast = None
    if precision is not None:
        from spo.training.precision import cast_frozen

        cast_frozen(pipe, precision)
        autocast = precision.autocast
    return DiffusionBackbone(pipe, model_spec(config, model).family, guidance_scale, device, autocast)
