"""HPSv2 and HPSv2.1 (Wu et al. 2023): ``100 * cos(image_features, text_features)``.

An open_clip ViT-H-14 fine-tuned on HPDv2; the two versions are separate checkpoints of the same
architecture in ``xswu/HPSv2`` (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt``) whose scores
are not comparable, so they are two metrics: registry ``hpsv2`` -> version ``hpsv2.0`` and
``hpsv2.1`` -> ``hpsv2.1``. No ``logit_scale`` is applied; the ×100 is the benchmark's
(tgxs002/HPSv2@708ffb31:hpsv2/img_score.py, :hpsv2/evaluation.py; METRICS.md §2).

Roles (``metrics.<name>.weights.<role>``):
    checkpoint:   file, the HPS ``.pt`` (``{"state_dict": {open_clip keys}}``), read with
                  ``torch.load(weights_only=True)``; keys must match the architecture exactly.
    architecture: optional file, an open_clip model config JSON (``{"embed_dim", "vision_cfg",
                  "text_cfg"}``, or open_clip's ``open_clip_config.json`` with a ``model_cfg``).
                  Absent = open_clip's built-in ``ViT-H-14`` (the real checkpoints). The tiny
                  checkpoints come with one, written by ``spo.metrics.tiny``.

Preprocessing is HPS's own validation transform (longest side to 224, zero pad; see
``_preprocess.longest_pad_pixels``), not open_clip 3.x's default crop. Text goes through open_clip's
``SimpleTokenizer`` (ftfy + html unescape + lowercase, 77 tokens), identical to HPS's vendored copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from spo.metrics._common import (batches, check_inputs, check_keys, check_shapes,
                                 load_state_dict_file, require_roles, scorer_batch_size,
                                 torch_dtype)
from spo.metrics._preprocess import longest_pad_pixels
from spo.metrics.base import ScorerError

REAL_ARCHITECTURE = "ViT-H-14"
# version -> (registry name, file name of the real checkpoint in xswu/HPSv2)
VERSIONS = {"hpsv2.0": ("hpsv2", "HPS_v2_compressed.pt"), "hpsv2.1": ("hpsv2.1", "HPS_v2.1_compressed.pt")}
CLIP_VOCAB = 49408  # open_clip's SimpleTokenizer always emits ids < 49408


def architecture_config(path: str | Path | None) -> dict:
    """The open_clip model config: from a JSON file, else the built-in ViT-H-14."""
    import open_clip

    if path is None:
        cfg = open_clip.get_model_config(REAL_ARCHITECTURE)
        if cfg is None:
            raise ScorerError(f"open_clip has no built-in '{REAL_ARCHITECTURE}' config")
        return cfg
    cfg = json.loads(Path(path).read_text())
    cfg = cfg.get("model_cfg", cfg)
    if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise ScorerError(f"'{path}' is not an open_clip model config (needs embed_dim, vision_cfg, "
                          f"text_cfg)")
    return cfg


def build_model(cfg: dict):
    """An open_clip ``CLIP`` from a config dict (random init; ``torch.device('meta')`` works)."""
    import open_clip

    if cfg["text_cfg"].get("vocab_size", CLIP_VOCAB) != CLIP_VOCAB or cfg["text_cfg"].get("hf_tokenizer_name"):
        raise ScorerError("HPSv2 needs open_clip's CLIP BPE text tower (vocab 49408)")
    return open_clip.model.CLIP(**cfg)


class HPSv2Scorer:
    """Scores (image, prompt) pairs with HPSv2.x; output (N,) float64 in about [0, 40]."""

    higher_is_better = True

    def __init__(self, checkpoint, architecture=None, *, version: str, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 8):
        import open_clip

        if version not in VERSIONS:
            raise ScorerError(f"unknown HPS version '{version}'; known: {sorted(VERSIONS)}")
        self.name, real_file = VERSIONS[version]
        self.version = version
        # Both versions share one key layout, so keys cannot catch a swapped file; names can.
        for other, (_, other_file) in VERSIONS.items():
            if other != version and Path(checkpoint).name == other_file:
                raise ScorerError(f"metric '{self.name}' (version {version}, file {real_file}) was given "
                                  f"'{checkpoint}', the {other} checkpoint; fix "
                                  f"`metrics.<name>.weights.checkpoint` in the config")
        self.device, self.dtype, self.batch_size = device, torch_dtype(dtype), int(batch_size)
        cfg = architecture_config(architecture)
        self.image_size = int(cfg["vision_cfg"].get("image_size", 224))
        model = build_model(cfg)
        state = load_state_dict_file(checkpoint)
        what = f"{self.name} checkpoint '{checkpoint}'"
        reference = model.state_dict()
        check_keys(state, reference, what)
        check_shapes(state, reference, what)
        model.load_state_dict(state, strict=True)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=int(cfg["text_cfg"].get("context_length", 77)))

    def pixels(self, images: Sequence[Image.Image]):
        """(N, 3, S, S) float32, HPS's longest-side resize + zero pad."""
        return longest_pad_pixels(images, size=self.image_size)

    def features(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """L2-normalised (image, text) features, each (N, D) float64 on the CPU."""
        import torch

        px = self.pixels(images).to(self.device, self.dtype)
        ids = self.tokenizer(list(prompts)).to(self.device)
        with torch.inference_mode():
            img = self.model.encode_image(px).double()
            txt = self.model.encode_text(ids).double()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return img.cpu(), txt.cpu()

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_inputs(self.name, images, prompts)
        out = []
        for sl in batches(len(images), self.batch_size):
            img, txt = self.features(images[sl], prompts[sl])
            out.append((100.0 * (img * txt).sum(-1)).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def _build(version: str, spec, device, dtype, weights) -> HPSv2Scorer:
    name = VERSIONS[version][0]
    roles = require_roles(name, weights or {}, ("checkpoint",), optional=("architecture",))
    return HPSv2Scorer(roles["checkpoint"], roles.get("architecture"), version=version, device=device,
                       dtype=dtype, batch_size=scorer_batch_size(spec))


def build(spec, *, device="cpu", dtype="float32", weights=None) -> HPSv2Scorer:
    """HPS v2.0 (``HPS_v2_compressed.pt``)."""
    return _build("hpsv2.0", spec, device, dtype, weights)


def build_v21(spec, *, device="cpu", dtype="float32", weights=None) -> HPSv2Scorer:
    """HPS v2.1 (``HPS_v2.1_compressed.pt``)."""
    return _build("hpsv2.1", spec, device, dtype, weights)
