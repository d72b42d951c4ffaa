"""Tiny random-init stand-ins built from the real diffusers / transformers classes.

They are saved with ``save_pretrained`` in the real on-disk layout, so the same loading code reads
them as reads ``stable-diffusion-v1-5`` or ``stable-diffusion-xl-base-1.0``. Only the sizes differ.
Sizes follow ``../shared/STACK.md`` §2 (measured there): an SD-1.5-family pipeline of about 1 M UNet
parameters and an SDXL-family one with two text encoders and the text-time conditioning.

The tokenizer is CLIP's byte-level BPE built offline from the merges file that ``open_clip`` ships
(``bpe_simple_vocab_16e6.txt.gz``), cut to the first ``n_merges`` merges: with ``n_merges=None`` the
ids equal the real SD tokenizer's.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import torch

TINY_TOKENIZER_MERGES = 1000
# A random tiny UNet ends sampling with latents of std ~15 (STACK.md, tiny-world facts); SD's
# scaling factor 0.18215 would feed the decoder std ~80 and saturate every pixel. 1/7 brings the
# decoder input to std ~2, so images keep contrast and colour differences the metrics can see.
TINY_VAE_SCALING_FACTOR = 7.0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def clip_bpe_files(out_dir: str | Path, n_merges: int | None = TINY_TOKENIZER_MERGES) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of CLIP's BPE (first ``n_merges`` merges)."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path, "rt", encoding="utf-8").read().split("\n")
    # Same slice as CLIP's SimpleTokenizer: skip the version line; 49152 - 256 - 2 merges in all.
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    if n_merges is not None:
        merges = merges[:n_merges]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def tiny_tokenizer(pad_token: str = "<|endoftext|>", n_merges: int | None = TINY_TOKENIZER_MERGES):
    """A ``CLIPTokenizer`` (77 tokens) on CLIP's BPE; SDXL's second tokenizer pads with ``'!'``."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = clip_bpe_files(tmp, n_merges)
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token=pad_token)


def _text_config(vocab_size: int, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          projection_dim=projection_dim, bos_token_id=vocab_size - 2,
                          eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks: latents 8x smaller than the image, as in real SD (32 px -> 4x4 latents).
    return AutoencoderKL(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
                         latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4,
                         scaling_factor=1.0 / TINY_VAE_SCALING_FACTOR)


def _ddim():
    from diffusers import DDIMScheduler

    # SD-1.5's and SDXL's own scheduler settings.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def tiny_sd15_pipeline(seed: int = 0):
    """An SD-1.5-family ``StableDiffusionPipeline`` with random weights (seeded)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    unet = UNet2DConditionModel(
        sample_size=4, layers_per_block=1, block_out_channels=(32, 64), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    return StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=_ddim(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl_pipeline(seed: int = 0):
    """An SDXL-family ``StableDiffusionXLPipeline``: two text encoders, text-time conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer(pad_token="!")  # real SDXL's second tokenizer pads with '!' (id 0)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer_2)))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=4, layers_per_block=1, block_out_channels=(32, 64), cross_attention_dim=64,
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    return StableDiffusionXLPipeline(vae=_tiny_vae(), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer_2, unet=unet, scheduler=_ddim(),
                                     force_zeros_for_empty_prompt=True)


TINY_PIPELINES = {"sd15": tiny_sd15_pipeline, "sdxl": tiny_sdxl_pipeline}


def save_tiny_pipeline(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline of ``family`` and ``save_pretrained`` it atomically into ``out_dir``."""
    from spo.io import atomic_path

    if family not in TINY_PIPELINES:
        raise ValueError(f"unknown model family '{family}'; allowed: {', '.join(TINY_PIPELINES)}")
    pipe = TINY_PIPELINES[family](seed)
    with atomic_path(out_dir, is_dir=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)
