"""The tiny world's model architectures: real diffusers / transformers classes at tiny sizes.

An SD-1.5-family pipeline (one CLIP text encoder) and an SDXL-family one (two text encoders, the
second with a projection whose pooled output feeds SDXL's text-time conditioning), as the real
models. Sizes were measured on the 2-core CPU (``docs/tiny-world.md``): a UNet step of batch 64
takes about 0.3 s (SD-1.5 family) and 0.4 s (SDXL family) on one core.

The text encoders come from two tiny CLIPs trained contrastively on the world (as SD-1.5 uses
OpenAI's CLIP ViT-L text tower, and SDXL that one plus OpenCLIP's bigG): ``clip-a`` gives the
SD-1.5 encoder and SDXL's first, ``clip-b`` SDXL's second; ``clip-b`` is also the tiny PickScore's
starting point (the real PickScore fine-tunes an OpenCLIP ViT-H).
"""

from __future__ import annotations

import math

import torch

MAX_TOKENS = 16          # every caption of the grammar fits (10 tokens with BOS / EOS)
TEXT_WIDTH = 64          # both CLIPs' text width = the per-encoder cross-attention width
VISION = dict(image_size=32, patch_size=4, hidden_size=64, intermediate_size=128,
              num_hidden_layers=4, num_attention_heads=4)
LATENT_CHANNELS = 4
# Three blocks: latents 4x smaller than the image (32 px -> 8 x 8). 16 channels at full resolution
# decode 128 latents in half the time of 32 (SPO decodes every candidate at every trained step).
VAE_BLOCKS = (16, 48, 64)
UNET_BLOCKS = (64, 96)
SDXL_TIME_DIM = 8


def clip_model(vocab_size: int, *, text_layers: int = 2, seed: int = 0):
    """A tiny ``CLIPModel`` (text and vision towers, projection ``TEXT_WIDTH``), seeded init."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                num_hidden_layers=text_layers, num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS, hidden_act="gelu",
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    config = CLIPConfig(text_config=text, vision_config=dict(VISION, hidden_act="gelu"),
                        projection_dim=TEXT_WIDTH, logit_scale_init_value=math.log(1 / 0.07))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def vae(scaling_factor: float = 1.0, seed: int = 0):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(block_out_channels=VAE_BLOCKS, layers_per_block=1, norm_num_groups=8,
                             latent_channels=LATENT_CHANNELS,
                             down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
                             up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
                             sample_size=32, scaling_factor=scaling_factor)


def unet(family: str, seed: int = 0):
    """The UNet of ``family`` (``sd15`` or ``sdxl``): epsilon prediction on 8 x 8 x 4 latents."""
    from diffusers import UNet2DConditionModel

    common = dict(sample_size=8, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                  layers_per_block=1, block_out_channels=UNET_BLOCKS, norm_num_groups=16,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "sd15":
            return UNet2DConditionModel(cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, **common)
        if family == "sdxl":
            return UNet2DConditionModel(
                cross_attention_dim=2 * TEXT_WIDTH, attention_head_dim=8, use_linear_projection=True,
                transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                addition_time_embed_dim=SDXL_TIME_DIM,
                projection_class_embeddings_input_dim=TEXT_WIDTH + 6 * SDXL_TIME_DIM, **common)
    raise ValueError(f"unknown model family {family!r}; allowed: sd15, sdxl")


def ddpm_scheduler():
    """SD's training noise schedule (scaled linear, 1000 steps), as both real families use."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False, prediction_type="epsilon")


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)
