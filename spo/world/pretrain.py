"""``python -m spo pretrain-tiny --part <part>``: pretrain one part of the tiny world.

Parts and what they need (``settings.PARTS``; rule ``pretrain_tiny``):

    vae        AutoencoderKL on renders (L1 + MSE + KL); its scaling factor makes latents unit-std
    clip-a     a tiny CLIP, contrastive on (render, caption): SD-1.5's and SDXL's first text encoder
    clip-b     a second tiny CLIP (3 text layers): SDXL's second text encoder, the PickScore start
    pickscore  clip-b fine-tuned on preference pairs (two renders of a caption, colourfulness labels
               with label noise): the tiny PickScore, where the tiny SPM starts (PAPER.md §1.2)
    sd15, sdxl the UNets, epsilon prediction on the VAE's latents (``pretrain_unet``), saved as
               complete pipelines with ``save_pretrained``

Each part writes its folder atomically and checkpoints while it trains (``steps.run_steps``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spo.world import architectures as arch
from spo.world.data import render_dataset, step_generator
from spo.world.grammar import WorldSpec
from spo.world.render import render_many
from spo.world.settings import PretrainSettings
from spo.world.steps import cosine_lr, run_steps, write_record

log = logging.getLogger(__name__)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP's, as PickScore's processor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_TEXT_LAYERS = {"clip-a": 2, "clip-b": 3}


def tokenizer(pad_token: str = "<|endoftext|>"):
    from spo.world.tokenizer import grammar_tokenizer

    return grammar_tokenizer(pad_token)


def clip_pixels(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> CLIP's normalised (N, 3, S, S) (the processor's mean and std)."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _optimizer(params, recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _lr(recipe):
    return lambda step: cosine_lr(step, recipe.steps, recipe.lr, recipe.lr_floor, recipe.warmup)


def train_vae(spec: WorldSpec, ps: PretrainSettings, out_dir: Path, checkpoints: Path) -> None:
    """The VAE: reconstruct renders through 8 x 8 x 4 latents; scaling_factor = 1 / latent std."""
    from spo.io import atomic_path

    _, images = render_dataset(spec, ps.vae_images, seed=ps.seed)
    model = arch.vae(seed=ps.seed)
    optimizer = _optimizer(model.parameters(), ps.vae)

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(ps.seed, "vae", step)
        x = images[torch.randint(len(images), (ps.vae.batch,), generator=g)]
        posterior = model.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = model.decode(z).sample
        return (rec - x).abs().mean() + F.mse_loss(rec, x) + ps.kl_weight * posterior.kl().mean()

    losses = run_steps("vae", model, optimizer, steps=ps.vae.steps, lr=_lr(ps.vae), loss_at=loss_at,
                       checkpoint_dir=checkpoints, checkpoint_every=ps.checkpoint_every)
    with torch.no_grad():
        means = torch.cat([model.encode(images[i:i + 256]).latent_dist.mean
                           for i in range(0, min(len(images), 4096), 256)])
    model.register_to_config(scaling_factor=float(1.0 / means.std()))
    log.info("vae: latent std %.4f -> scaling_factor %.4f", float(means.std()), 1 / float(means.std()))
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        write_record(tmp, "vae", losses, scaling_factor=model.config.scaling_factor)


def _distinct_scenes(spec: WorldSpec, batch: int, g: torch.Generator):
    pool = spec.scenes(held_out=False)
    if batch > len(pool):
        raise ValueError(f"config key 'world.pretrain.clip.batch' is {batch}; the world has only "
                         f"{len(pool)} training captions and a contrastive batch needs distinct ones")
    return [pool[i] for i in torch.randperm(len(pool), generator=g)[:batch].tolist()]


def _render_seed(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=g))


def train_clip(part: str, spec: WorldSpec, ps: PretrainSettings, out_dir: Path, checkpoints: Path) -> None:
    """A tiny CLIP, contrastive over batches of distinct captions (CLIP's symmetric loss)."""
    from spo.io import atomic_path

    tok = tokenizer()
    seed = ps.seed + (0 if part == "clip-a" else 1)
    model = arch.clip_model(len(tok), text_layers=CLIP_TEXT_LAYERS[part], seed=seed)
    optimizer = _optimizer(model.parameters(), ps.clip)

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(ps.seed, part, step)
        scenes = _distinct_scenes(spec, ps.clip.batch, g)
        images = render_many(scenes, seed=_render_seed(g), size=spec.image_size)
        text = tok([s.caption for s in scenes], padding=True, return_tensors="pt")
        return model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                     pixel_values=clip_pixels(images), return_loss=True).loss

    losses = run_steps(part, model, optimizer, steps=ps.clip.steps, lr=_lr(ps.clip), loss_at=loss_at,
                       checkpoint_dir=checkpoints, checkpoint_every=ps.checkpoint_every, part_key="clip")
    with atomic_path(out_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_record(tmp, part, losses)


def preference_labels(images: np.ndarray, ps: PretrainSettings, g: torch.Generator) -> torch.Tensor:
    """Labels of consecutive image pairs (0-1, 2-3, ...): colourfulness, ties, label noise."""
    from spo.metrics.colorfulness import colorfulness_array
    from spo.spm.tiny_pairs import colorfulness_labels, flip_labels

    c = colorfulness_array(images)
    labels = colorfulness_labels(c[0::2], c[1::2], ps.tie_margin)
    return torch.from_numpy(flip_labels(labels, ps.label_noise, seed=_render_seed(g))).float()


def train_pickscore(spec: WorldSpec, ps: PretrainSettings, clip_b: Path, out_dir: Path,
                    checkpoints: Path) -> None:
    """clip-b fine-tuned on preference pairs with PickScore's criterion (``spm.objective.pair_loss``)."""
    from transformers import CLIPModel

    from spo.io import atomic_path
    from spo.spm.objective import pair_loss

    tok = tokenizer()
    model = CLIPModel.from_pretrained(str(clip_b), local_files_only=True)
    optimizer = _optimizer(model.parameters(), ps.pickscore)

    def loss_at(step: int) -> torch.Tensor:
        g = step_generator(ps.seed, "pickscore", step)
        scenes = _distinct_scenes(spec, ps.pickscore.batch, g)
        images = render_many([s for s in scenes for _ in range(2)], seed=_render_seed(g),
                             size=spec.image_size)
        label = preference_labels(images, ps, g)
        text = tok([s.caption for s in scenes], padding=True, return_tensors="pt")
        img = F.normalize(model.get_image_features(pixel_values=clip_pixels(images)).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * (img.view(len(scenes), 2, -1) * txt[:, None]).sum(-1)
        return pair_loss(logits[:, 0], logits[:, 1], label, torch.ones(len(scenes)))

    losses = run_steps("pickscore", model, optimizer, steps=ps.pickscore.steps, lr=_lr(ps.pickscore),
                       loss_at=loss_at, checkpoint_dir=checkpoints, checkpoint_every=ps.checkpoint_every)
    with atomic_path(out_dir, is_dir=True) as tmp:
        write_record(tmp, "pickscore", losses)
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tok.save_pretrained(tmp / "processor")
        write_preprocessor_config(tmp / "processor", spec.image_size)


def write_preprocessor_config(folder: Path, size: int) -> None:
    """The layout of laion/CLIP-ViT-H-14's preprocessor_config.json (PickScore's processor)."""
    import json

    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD), "resample": 3, "size": size}, indent=2) + "\n")


def run_part(part: str, spec: WorldSpec, ps: PretrainSettings, parts_root: str | Path,
             out_dir: str | Path, *, checkpoints: str | Path | None) -> None:
    """Pretrain ``part`` into ``out_dir``; earlier parts are read from ``parts_root/<part>``.

    ``spec``, ``ps``: the config's ``world`` grammar and ``world.pretrain`` recipe, typed
    (``spo.world.settings.world_spec`` / ``pretrain_settings``)."""
    from spo.world.pretrain_unet import train_unet

    torch.manual_seed(ps.seed)
    parts_root, out_dir = Path(parts_root), Path(out_dir)
    checkpoints = Path(checkpoints) if checkpoints is not None else None
    if part == "vae":
        train_vae(spec, ps, out_dir, checkpoints)
    elif part in ("clip-a", "clip-b"):
        train_clip(part, spec, ps, out_dir, checkpoints)
    elif part == "pickscore":
        train_pickscore(spec, ps, parts_root / "clip-b", out_dir, checkpoints)
    elif part in ("sd15", "sdxl"):
        train_unet(part, spec, ps, parts_root, out_dir, checkpoints)
    elif part == "release":
        from spo.world.release import release

        release(spec, ps, parts_root, out_dir)
    else:
        from spo.world.settings import PARTS

        raise ValueError(f"unknown pretraining part {part!r}; allowed: {', '.join(PARTS)}")
