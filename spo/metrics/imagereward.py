"""ImageReward v1.0 (Xu et al. 2023): BLIP image-text encoder + MLP, z-normalised.

    e   = ViT-L/16(image)                                   (N, 197, 1024), after the final LayerNorm
    cls = BERT-with-cross-attention(prompt, e)[:, 0]         ([CLS] position, no [ENC] substitution)
    r   = (MLP(cls) - 0.16717362830052426) / 1.0333394966054072      about -2..2

(THUDM/ImageReward@0f5fa3e2:ImageReward/ImageReward.py ``score``; METRICS.md §4.) The
``image-reward`` package does not run with transformers 5, so the model is rebuilt from
transformers' ``BlipVisionModel`` / ``BlipTextModel`` (bit-exact with the original, METRICS.md §4)
and ``ImageReward.pt`` is converted by the key map ``RULES`` below, strictly.

Roles (``metrics.<name>.weights.<role>``):
    checkpoint:   file ``ImageReward.pt`` (``THUDM/ImageReward``), a flat state dict of the
                  ``ImageReward`` module (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.*``).
    med_config:   file ``med_config.json`` (same repo): the BERT text encoder's config.
    tokenizer:    folder of the ``bert-base-uncased`` tokenizer (``vocab.txt``/``tokenizer.json``);
                  ``[DEC]`` and ``[ENC]`` are added as BLIP does.
    architecture: optional file, JSON ``{"vision": {hidden_size, intermediate_size,
                  num_hidden_layers, num_attention_heads, image_size, patch_size}}``. Absent = BLIP
                  ``vit='large'`` at 224 px (the real model); the tiny model comes with one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from spo.metrics._common import (batches, check_inputs, check_keys, check_shapes,
                                 load_state_dict_file, require_roles, scorer_batch_size,
                                 torch_dtype)
from spo.metrics._preprocess import center_crop_pixels
from spo.metrics.aesthetic import AestheticMLP
from spo.metrics.base import ScorerError

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_TEXT_LENGTH = 35
# BLIP create_vit('large', 224): ViT-L/16, LayerNorm eps 1e-6 (transformers' default 1e-5 is off by
# ~6e-3 in the reward), exact GELU, mlp_ratio 4.
REAL_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
               "num_attention_heads": 16, "image_size": 224, "patch_size": 16}
ROLES = ("checkpoint", "med_config", "tokenizer")

# ImageReward.pt key template -> ImageRewardNet key template; {i} a layer index, {p} a parameter name.
RULES = [
    ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
    ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
    ("blip.visual_encoder.patch_embed.proj.{p}", "vision.embeddings.patch_embedding.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm1.{p}", "vision.encoder.layers.{i}.layer_norm1.{p}"),
    ("blip.visual_encoder.blocks.{i}.norm2.{p}", "vision.encoder.layers.{i}.layer_norm2.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.qkv.{p}", "vision.encoder.layers.{i}.self_attn.qkv.{p}"),
    ("blip.visual_encoder.blocks.{i}.attn.proj.{p}", "vision.encoder.layers.{i}.self_attn.projection.{p}"),
    ("blip.visual_encoder.blocks.{i}.mlp.fc1.{p}", "vision.encoder.layers.{i}.mlp.fc1.{p}"),
    ("blip.visual_encoder.blocks.{i}.mlp.fc2.{p}", "vision.encoder.layers.{i}.mlp.fc2.{p}"),
    ("blip.visual_encoder.norm.{p}", "vision.post_layernorm.{p}"),
    ("blip.text_encoder.{rest}", "text.{rest}"),  # BLIP's MED BERT and BlipTextModel share names
    ("mlp.layers.{i}.{p}", "mlp.layers.{i}.{p}"),
]
# Present in the checkpoint, not used for the reward: the contrastive projections, and the
# position_ids buffer that older BERT code saved (transformers 5 keeps it non-persistent).
IGNORED = ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
           "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids")


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in (("i", r"\d+"), ("p", r"[A-Za-z_]+"), ("rest", r".+")):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
    return re.compile(pattern + "$")


def _apply(rules, key: str) -> str | None:
    for src, dst in rules:
        m = _regex(src).match(key)
        if m:
            return dst.format(**m.groupdict())
    return None


def checkpoint_to_model_key(key: str) -> str | None:
    """ImageReward.pt key -> ImageRewardNet key, or None when no rule applies."""
    return _apply(RULES, key)


def model_to_checkpoint_key(key: str) -> str | None:
    """ImageRewardNet key -> ImageReward.pt key (the inverse map; the tiny writer uses it)."""
    return _apply([(dst, src) for src, dst in RULES], key)


def vision_config(arch: dict | None):
    from transformers import BlipVisionConfig

    v = dict(REAL_VISION, **((arch or {}).get("vision") or {}))
    return BlipVisionConfig(layer_norm_eps=1e-6, hidden_act="gelu", **v)


def text_config(med: dict, encoder_width: int):
    """``BlipTextConfig`` from BLIP's ``med_config.json`` (cross-attention to ``encoder_width``)."""
    from transformers import BlipTextConfig

    if not med.get("add_cross_attention", True):
        raise ScorerError("med_config.json: ImageReward's text encoder needs add_cross_attention=true")
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise ScorerError("med_config.json: only absolute position embeddings are supported")
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in keys if k not in med]
    if missing:
        raise ScorerError(f"med_config.json lacks {missing}")
    # is_decoder=True only makes transformers build the cross-attention modules; the forward pass
    # runs with is_decoder=False (bidirectional), as BLIP's "multimodal" mode does.
    return BlipTextConfig(**{k: med[k] for k in keys}, encoder_hidden_size=encoder_width,
                          max_position_embeddings=med.get("max_position_embeddings", 512),
                          hidden_act=med.get("hidden_act", "gelu"),
                          layer_norm_eps=med.get("layer_norm_eps", 1e-12),
                          pad_token_id=med.get("pad_token_id", 0), bos_token_id=None,
                          sep_token_id=None, is_decoder=True)


class ImageRewardNet(nn.Module):
    """BLIP ViT + BERT with cross-attention + MLP; ``forward`` gives the raw MLP output (N,)."""

    def __init__(self, med: dict, arch: dict | None = None):
        super().__init__()
        from transformers import BlipTextModel, BlipVisionModel

        vcfg = vision_config(arch)
        self.vision = BlipVisionModel(vcfg)
        self.text = BlipTextModel(text_config(med, vcfg.hidden_size), add_pooling_layer=False)
        self.mlp = AestheticMLP(med["hidden_size"])  # same 768-1024-128-64-16-1 head as LAION's

    def forward(self, pixel_values, input_ids, attention_mask):
        img = self.vision(pixel_values=pixel_values).last_hidden_state
        img_mask = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
        cls = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=img,
                        encoder_attention_mask=img_mask).last_hidden_state[:, 0]
        # The reference casts [CLS] to float32 before the MLP; keep float64 when everything is.
        return self.mlp(cls.to(self.mlp.layers[0].weight.dtype))[:, 0]


def convert_checkpoint(state: dict, model: nn.Module, what: str) -> dict:
    """Rename ImageReward.pt keys to ``model``'s; ScorerError on missing/unexpected keys or shapes."""
    converted = {}
    for key, value in state.items():
        target = None if key in IGNORED else checkpoint_to_model_key(key)
        if target is not None:
            converted[target] = value
    reference = model.state_dict()
    # Report missing keys by their checkpoint names, the ones a user can look for in the file.
    expected_ckpt = {model_to_checkpoint_key(k) or k for k in reference}
    check_keys(set(state) - set(IGNORED), expected_ckpt, what)
    check_keys(converted, reference, what)  # catches a rule mapping to a wrong name
    check_shapes(converted, reference, what)
    return converted


def load_tokenizer(folder: Path, vocab_size: int):
    """BLIP's ``init_tokenizer``: bert-base-uncased plus ``[DEC]`` (bos) and ``[ENC]``."""
    from transformers import BertTokenizer

    try:
        tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ScorerError(f"imagereward: no BERT tokenizer in '{folder}': {exc}") from exc
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tok) > vocab_size:
        raise ScorerError(f"imagereward: tokenizer has {len(tok)} tokens, the text encoder only "
                          f"{vocab_size}; tokenizer and med_config do not belong together")
    return tok


class ImageRewardScorer:
    """ImageReward v1.0 of (image, prompt) pairs; output (N,) float64, about -2..2, higher is better."""

    name = "imagereward"
    version = "imagereward_v1.0"
    higher_is_better = True

    def __init__(self, checkpoint, med_config, tokenizer, architecture=None, *, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 8):
        self.device, self.dtype, self.batch_size = device, torch_dtype(dtype), int(batch_size)
        med = json.loads(Path(med_config).read_text())
        arch = json.loads(Path(architecture).read_text()) if architecture else None
        net = ImageRewardNet(med, arch)
        what = f"imagereward checkpoint '{checkpoint}'"
        net.load_state_dict(convert_checkpoint(load_state_dict_file(checkpoint), net, what), strict=True)
        mlp_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.net = net.eval().to(device=device, dtype=mlp_dtype)
        # The encoders run in `dtype`; the MLP stays float32 (the reference casts [CLS] to float).
        self.net.vision.to(self.dtype)
        self.net.text.to(self.dtype)
        self.image_size = self.net.vision.config.image_size
        self.tokenizer = load_tokenizer(Path(tokenizer), med["vocab_size"])

    def pixels(self, images: Sequence[Image.Image]):
        """(N, 3, S, S) float32: ImageReward's transform (resize, crop, then RGB; round crop)."""
        return center_crop_pixels(images, size=self.image_size, crop=self.image_size,
                                  convert_first=False, crop_rounding="round")

    def raw(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """MLP output before normalisation, (N,) float64 on the CPU."""
        px = self.pixels(images).to(self.device, self.dtype)
        tok = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=MAX_TEXT_LENGTH, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.net(px, tok["input_ids"], tok["attention_mask"]).double().cpu()

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_inputs(self.name, images, prompts)
        out = [((self.raw(images[sl], prompts[sl]).double() - REWARD_MEAN) / REWARD_STD).numpy()
               for sl in batches(len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def build(spec, *, device="cpu", dtype="float32", weights=None) -> ImageRewardScorer:
    roles = require_roles("imagereward", weights or {}, ROLES, optional=("architecture",))
    return ImageRewardScorer(roles["checkpoint"], roles["med_config"], roles["tokenizer"],
                             roles.get("architecture"), device=device, dtype=dtype,
                             batch_size=scorer_batch_size(spec))
