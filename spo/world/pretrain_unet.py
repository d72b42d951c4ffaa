"""Pretrain a tiny world UNet (SD-1.5 or SDXL family) and save the complete pipeline.

The objective is the real models': epsilon prediction on VAE latents (scaled to unit std by the
VAE's ``scaling_factor``) noised with SD's scaled-linear DDPM schedule, timesteps uniform in
[0, 999], ``caption_dropout`` of the captions replaced by the pipeline's own unconditional
embedding (the empty prompt for SD-1.5; zeros for SDXL, whose pipeline sets
``force_zeros_for_empty_prompt``). The loss is weighted by min-SNR-gamma (Hang et al. 2023), which
measured faster to converge on this CPU (TINY_WORLD.md); the UNet is saved as its EMA.

Text embeddings come from the pipeline's own ``encode_prompt`` (so training sees exactly what
sampling feeds the UNet), once per distinct caption: the text encoders are frozen, as in SD.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from spo.world import architectures as arch
from spo.world.data import render_dataset, step_generator
from spo.world.grammar import WorldSpec
from spo.world.settings import PretrainSettings
from spo.world.steps import EMA, cosine_lr, run_steps, write_record


def text_encoder(clip_dir: Path, *, with_projection: bool):
    """The text tower of a saved tiny CLIP as ``CLIPTextModel`` (or ``...WithProjection``)."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True)
    config = clip.config.text_config
    config.projection_dim = clip.config.projection_dim
    if with_projection:
        encoder = CLIPTextModelWithProjection(config)
        encoder.text_model.load_state_dict(clip.text_model.state_dict())
        encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    else:
        encoder = CLIPTextModel(config)
        encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def build_pipeline(family: str, parts_root: Path, unet):
    """The diffusers pipeline of ``family`` from the pretrained VAE and CLIP parts and ``unet``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(str(parts_root / "vae"), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(parts_root / "clip-a"), local_files_only=True)
    if family == "sd15":
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder(parts_root / "clip-a", with_projection=False),
            tokenizer=tokenizer, unet=unet, scheduler=arch.ddim_scheduler(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(parts_root / "clip-b"), local_files_only=True,
                                                pad_token="!")
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder(parts_root / "clip-a", with_projection=False),
        text_encoder_2=text_encoder(parts_root / "clip-b", with_projection=True),
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=arch.ddim_scheduler(),
        force_zeros_for_empty_prompt=True)


@torch.no_grad()
def caption_embeddings(pipe, family: str, captions: list[str]) -> dict[str, torch.Tensor]:
    """Per distinct caption the UNet's text inputs, plus the unconditional ones (row -1 semantics:
    ``uncond*``). SDXL adds the pooled embedding of the second encoder."""
    if family == "sd15":
        cond, uncond = pipe.encode_prompt(captions, "cpu", 1, True)
        return {"cond": cond, "uncond": uncond[:1]}
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=captions, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    return {"cond": cond, "uncond": uncond[:1], "pooled": pooled, "uncond_pooled": uncond_pooled[:1]}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (sampled per step, as SD's training does)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        post = vae.encode(images[i:i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample (epsilon prediction); ones when ``gamma`` is None."""
    if gamma is None:
        return torch.ones(len(t))
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr


def train_unet(family: str, spec: WorldSpec, ps: PretrainSettings, parts_root: Path, out_dir: Path,
               checkpoints: Path) -> None:
    from spo.io import atomic_path

    unet = arch.unet(family, seed=ps.seed)
    pipe = build_pipeline(family, parts_root, unet)
    captions, images = render_dataset(spec, ps.unet_images, seed=ps.seed + 1)
    distinct = sorted(set(captions))
    row = torch.tensor([distinct.index(c) for c in captions])
    emb = caption_embeddings(pipe, family, distinct)
    mean, std = encode_latents(pipe.vae, images)
    scale = pipe.vae.config.scaling_factor
    noise_schedule = arch.ddpm_scheduler()
    alphas = noise_schedule.alphas_cumprod
    side = spec.image_size
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=ps.unet.lr, weight_decay=ps.unet.weight_decay)
    ema = EMA(unet, ps.ema_decay)

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(ps.seed, family, step)
        b = ps.unet.batch
        idx = torch.randint(len(row), (b,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (b,), generator=g)
        drop = (torch.rand(b, generator=g) < ps.caption_dropout).view(b, 1, 1)
        states = torch.where(drop, emb["uncond"], emb["cond"][row[idx]])
        extra = {}
        if family == "sdxl":
            pooled = torch.where(drop.view(b, 1), emb["uncond_pooled"], emb["pooled"][row[idx]])
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.repeat(b, 1)}
        noisy = noise_schedule.add_noise(z, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=states, **extra).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * min_snr_weight(alphas, t, ps.min_snr_gamma)).mean()

    # The EMA half-way through, kept in fp16: a second, earlier model of the family (the LoRA
    # transfer figure applies a LoRA trained on the final model to it). Saved when reached, so a
    # resumed run still has it.
    half_way = checkpoints / f"half-way-{ps.unet.steps // 2}"

    def keep_half_way(done: int) -> None:
        if done == ps.unet.steps // 2 and not (half_way / "config.json").is_file():
            with atomic_path(half_way, is_dir=True) as tmp:
                copy.deepcopy(ema.shadow).to(torch.float16).save_pretrained(tmp, safe_serialization=True)

    losses = run_steps(family, unet, optimizer, steps=ps.unet.steps,
              lr=lambda s: cosine_lr(s, ps.unet.steps, ps.unet.lr, ps.unet.lr_floor, ps.unet.warmup),
              loss_at=loss_at, checkpoint_dir=checkpoints, checkpoint_every=ps.checkpoint_every,
              ema=ema, part_key="unet", on_step=keep_half_way)
    pipe.unet = ema.shadow
    pipe.register_modules(unet=ema.shadow)
    with atomic_path(out_dir, is_dir=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if (half_way / "config.json").is_file():
            shutil.copytree(half_way, tmp / "half-way" / "unet")
        write_record(tmp, family, losses, half_way_step=ps.unet.steps // 2)
