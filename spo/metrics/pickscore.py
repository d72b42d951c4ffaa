"""PickScore v1 (Kirstain et al. 2023): ``logit_scale.exp() * cos(text_emb, image_emb)``.

A transformers ``CLIPModel`` (ViT-H/14) fine-tuned on Pick-a-Pic (``yuvalkirstain/PickScore_v1``),
with the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` processor. Scores are the *raw* scaled cosine
(about 18-23 for SD-1.5 images), not the softmax over images of a prompt that the README uses for
pairwise probabilities (yuvalkirstain/PickScore:README.md; METRICS.md §1).

Roles (``metrics.<name>.weights.<role>``):
    model:     folder, ``save_pretrained`` layout of the CLIPModel (config.json + weights).
    processor: folder with ``preprocessor_config.json`` and the CLIP tokenizer files.

transformers 5 returns an output object from ``get_image_features``; we compute the projected
embeddings explicitly (``visual_projection(vision_model(...).pooler_output)``), which is the same
number on 4.x and 5.x.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from spo.metrics._common import (batches, check_inputs, hf_from_pretrained, require_roles,
                                 scorer_batch_size, torch_dtype)
from spo.metrics._preprocess import center_crop_pixels, read_clip_processor_config
from spo.metrics.base import ScorerError

ROLES = ("model", "processor")


class PickScoreScorer:
    """Scores (image, prompt) pairs with PickScore; output (N,) float64, higher is better."""

    name = "pickscore"
    version = "pickscore_v1"
    higher_is_better = True

    def __init__(self, model_dir, processor_dir, *, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 8):
        from transformers import CLIPModel, CLIPTokenizer

        self.device, self.dtype, self.batch_size = device, torch_dtype(dtype), int(batch_size)
        self.model = hf_from_pretrained(CLIPModel, model_dir, "pickscore model",
                                        dtype=self.dtype).to(device)
        self.pre = read_clip_processor_config(processor_dir)
        try:
            # The fast (tokenizers) CLIP tokenizer: what AutoProcessor gave PickScore's own code.
            self.tokenizer = CLIPTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ScorerError(f"pickscore: no CLIP tokenizer in '{processor_dir}': {exc}") from exc
        vocab = self.model.config.text_config.vocab_size
        if len(self.tokenizer) > vocab:
            raise ScorerError(f"pickscore: tokenizer has {len(self.tokenizer)} tokens but the model's "
                              f"vocabulary only {vocab}; model and processor do not belong together")

    def pixels(self, images: Sequence[Image.Image]):
        """(N, 3, S, S) float32: transformers 4.27 CLIPImageProcessor (RGB first, floor crop)."""
        return center_crop_pixels(images, size=self.pre["size"], crop=self.pre["crop"],
                                  mean=self.pre["mean"], std=self.pre["std"],
                                  convert_first=True, crop_rounding="floor")

    def features(self, images: Sequence[Image.Image], prompts: Sequence[str]):
        """L2-normalised (image, text) embeddings, each (N, D) float64 on the CPU."""
        import torch

        m = self.model
        px = self.pixels(images).to(self.device, self.dtype)
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77,
                             return_tensors="pt").to(self.device)
        with torch.inference_mode():
            img = m.visual_projection(m.vision_model(pixel_values=px).pooler_output).double()
            txt = m.text_projection(m.text_model(input_ids=tok["input_ids"],
                                                 attention_mask=tok["attention_mask"]).pooler_output).double()
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        return img.cpu(), txt.cpu()

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        check_inputs(self.name, images, prompts)
        scale = float(self.model.logit_scale.detach().double().exp())
        out = []
        for sl in batches(len(images), self.batch_size):
            img, txt = self.features(images[sl], prompts[sl])
            out.append((scale * (img * txt).sum(-1)).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float64)


def build(spec, *, device="cpu", dtype="float32", weights=None) -> PickScoreScorer:
    roles = require_roles("pickscore", weights or {}, ROLES)
    return PickScoreScorer(roles["model"], roles["processor"], device=device,
                           dtype=dtype, batch_size=scorer_batch_size(spec))
