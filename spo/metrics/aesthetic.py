"""LAION aesthetic predictor v2 ("sac+logos+ava1-l14-linearMSE"): an MLP on CLIP ViT-L/14 embeddings.

    e = image_embeds / ||image_embeds||          (OpenAI CLIP ViT-L/14, 768-d, projected)
    score = MLP(e),  MLP = 768-1024-128-64-16-1 with dropouts and no activations (so it is affine)

Scores are about 1-10 (SD-1.5 images about 5.5). The prompt is ignored
(christophschuhmann/improved-aesthetic-predictor:simple_inference.py; METRICS.md §3). The CLIP is
transformers' ``CLIPModel`` of ``openai/clip-vit-large-patch14`` (``get_image_features`` equals
OpenAI ``encode_image``), with OpenAI CLIP's own PIL preprocessing (RGB conversion after the crop,
torchvision's crop rounding). The MLP runs in float32 whatever ``dtype`` the CLIP runs in, as the
reference casts the embedding to float.

Roles (``metrics.<name>.weights.<role>``):
    clip: folder, ``save_pretrained`` layout of the CLIPModel plus its ``preprocessor_config.json``.
    mlp:  file, ``sac+logos+ava1-l14-linearMSE.pth`` (keys ``layers.{0,2,4,6,7}.{weight,bias}``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from spo.metrics._common import (batches, check_inputs, check_keys, check_shapes,
                                 hf_from_pretrained, scorer_batch_size, load_state_dict_file, require_roles, torch_dtype)
from spo.metrics._preprocess import center_crop_pixels, read_clip_processor_config

ROLES = ("clip", "mlp")


class AestheticMLP(nn.Module):
    """The predictor head; ``state_dict`` keys are ``layers.{0,2,4,6,7}.{weight,bias}``.

    (N, input_size) float -> (N, 1). Dropout is inactive in eval mode, so it is an affine map.
    """

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x)


class AestheticScorer:
    """LAION aesthetic v2 score of each image; output (N,) float64, about 1-10, higher is better."""

    name = "aesthetic"
    version = "aesthetic_v2_linearMSE"
    higher_is_better = True

    def __init__(self, clip_dir, mlp_file, *, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8):
        from transformers import CLIPModel

        self.device, self.dtype, self.batch_size = device, torch_dtype(dtype), int(batch_size)
        self.clip = hf_from_pretrained(CLIPModel, clip_dir, "aesthetic clip", dtype=self.dtype).to(device)
        self.pre = read_clip_processor_config(clip_dir)
        state = load_state_dict_file(mlp_file)
        self.mlp = AestheticMLP(self.clip.config.projection_dim)
        what = f"aesthetic mlp '{mlp_file}'"
        check_keys(state, self.mlp.state_dict(), what)
        check_shapes(state, self.mlp.state_dict(), what)
        self.mlp.load_state_dict(state, strict=True)
        self.mlp_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.mlp = self.mlp.eval().to(device=device, dtype=self.mlp_dtype)

    def pixels(self, images: Sequence[Image.Image]):
        """(N, 3, S, S) float32: OpenAI CLIP's transform (resize, crop, then RGB; round crop)."""
        return center_crop_pixels(images, size=self.pre["size"], crop=self.pre["crop"],
                                  mean=self.pre["mean"], std=self.pre["std"],
                                  convert_first=False, crop_rounding="round")

    def embeddings(self, images: Sequence[Image.Image]):
        """L2-normalised CLIP image embeddings (N, D), float32 (float64 if dtype is) on ``device``."""
        px = self.pixels(images).to(self.device, self.dtype)
        with torch.inference_mode():
            emb = self.clip.visual_projection(self.clip.vision_model(pixel_values=px).pooler_output)
        emb = emb.to(self.mlp_dtype)
        return emb / emb.norm(dim=-1, keepdim=True)

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_inputs(self.name, images, prompts)
        out = []
        for sl in batches(len(images), self.batch_size):
            with torch.inference_mode():
                out.append(self.mlp(self.embeddings(images[sl]))[:, 0].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def build(spec, *, device="cpu", dtype="float32", weights=None) -> AestheticScorer:
    roles = require_roles("aesthetic", weights or {}, ROLES)
    return AestheticScorer(roles["clip"], roles["mlp"], device=device, dtype=dtype,
                           batch_size=scorer_batch_size(spec))
