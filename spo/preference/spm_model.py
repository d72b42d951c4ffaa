"""The step-aware preference model (SPM): PickScore's CLIP with DiT-style adaLN on the vision tower.

Paper §4.2 and supplement §2 (../shared/PAPER.md §1.2): every vision block gets a time-conditional
adaptive layer norm; one shared timestep embedding (256-d sinusoid, then Linear-SiLU-Linear) feeds
all blocks; per block a linear layer gives (shift, scale) after each layer norm and a gate after
attention and after the MLP; the pooled output gets an adaptive (shift, scale) as in the official
code (RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/models/time_conditioned_clip.py,
``TimeConditionedCLIPVisionTransformer.adaLN_modulation``). With shift = scale = 0 and gate = 1 the
model equals the CLIP it was built from.

Design (../shared/STACK.md §4): the CLIPModel is loaded as is and its vision ``CLIPEncoderLayer``
instances are swapped for ``AdaLNEncoderLayer`` instances that *reuse* the loaded submodules (no
weight copy, no parallel model); the time embedding reaches every layer as the ``time_cond`` keyword
that ``CLIPVisionModel.forward`` passes down. Without time conditioning (``spm-no-step``, plain
PickScore) nothing is swapped and the model is exactly a CLIPModel.

Module names follow the official ones (``t_embedder.mlp.{0,2}``, ``adaLN_modulation.1``) so that
the official checkpoints load through a short key map (``spo.preference.spm_io``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

FREQUENCY_DIM = 256


def timestep_sinusoid(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE-style ``[cos, sin]`` embedding, as the official ``TimestepEmbedder``.

    Args:
        t: (N,) timesteps (long or float), in [0, 999].
    Returns:
        (N, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (N,) -> (N, D): sinusoid, then Linear-SiLU-Linear (shared by every block)."""

    def __init__(self, hidden: int, frequency_dim: int = FREQUENCY_DIM):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # The official init (std 0.02 weights); the embedding only matters through the adaLN
        # linears, which start at zero, so it does not break the equality with PickScore.
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


def identity_modulation(dim: int, chunks: int, gates: tuple[int, ...] = ()) -> nn.Sequential:
    """SiLU -> Linear(dim, chunks*dim) with zero weight; bias 1 on the ``gates`` chunks, else 0.

    Output chunks are shift/scale (0 = identity) or gates (1 = identity), so at init the modulated
    block computes exactly what the unmodulated one does.
    """
    mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))
    with torch.no_grad():
        mod[1].weight.zero_()
        mod[1].bias.zero_()
        for g in gates:
            mod[1].bias[g * dim:(g + 1) * dim] = 1.0
    return mod


class AdaLNEncoderLayer(CLIPEncoderLayer):
    """A CLIP encoder layer with adaLN; still a ``CLIPEncoderLayer`` so HF hooks keep working.

    Chunks of ``adaLN_modulation(time_cond)``: shift_msa, scale_msa, gate_msa, shift_mlp,
    scale_mlp, gate_mlp (the official order).
    """

    @classmethod
    def wrap(cls, layer: CLIPEncoderLayer) -> "AdaLNEncoderLayer":
        """A new layer that shares ``layer``'s submodules (no copy) and adds a fresh adaLN."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.embed_dim = layer.embed_dim
        new.gradient_checkpointing = getattr(layer, "gradient_checkpointing", False)
        new.self_attn, new.layer_norm1 = layer.self_attn, layer.layer_norm1
        new.mlp, new.layer_norm2 = layer.mlp, layer.layer_norm2
        ref = layer.layer_norm1.weight
        new.adaLN_modulation = identity_modulation(layer.embed_dim, 6, gates=(2, 5)).to(ref.device, ref.dtype)
        return new

    def forward(self, hidden_states, attention_mask=None, time_cond=None, **kwargs):
        if time_cond is None:
            raise ValueError("a time-conditioned SPM layer needs time_cond (the timestep embedding)")
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(time_cond).unsqueeze(1).chunk(6, dim=-1)
        h, _ = self.self_attn(hidden_states=self.layer_norm1(hidden_states) * (1 + sc1) + sh1,
                              attention_mask=attention_mask, **kwargs)
        hidden_states = hidden_states + g1 * h
        return hidden_states + g2 * self.mlp(self.layer_norm2(hidden_states) * (1 + sc2) + sh2)


class StepAwarePreferenceModel(nn.Module):
    """PickScore-style scores ``exp(logit_scale) * cos(text, image | t)`` from a CLIPModel.

    Args:
        clip: a loaded ``transformers.CLIPModel`` (PickScore); modified in place when
            ``time_condition`` (its vision layers are swapped, their weights reused).
        time_condition: False gives the ``spm-no-step`` / plain PickScore model.
    """

    def __init__(self, clip, time_condition: bool = True):
        super().__init__()
        self.clip = clip
        self.time_condition = bool(time_condition)
        if self.time_condition:
            dim = clip.config.vision_config.hidden_size
            ref = clip.visual_projection.weight
            self.t_embedder = TimestepEmbedder(dim).to(ref.device, ref.dtype)
            self.final_adaLN = identity_modulation(dim, 2).to(ref.device, ref.dtype)
            layers = clip.vision_model.encoder.layers
            for i, layer in enumerate(layers):
                if not isinstance(layer, AdaLNEncoderLayer):
                    layers[i] = AdaLNEncoderLayer.wrap(layer)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def image_features(self, pixel_values: torch.Tensor, timesteps: torch.Tensor | None) -> torch.Tensor:
        """L2-normalised image embeddings (N, P) from CLIP-normalised pixels (N, 3, S, S)."""
        vision = self.clip.vision_model
        if self.time_condition:
            if timesteps is None:
                raise ValueError("the step-aware SPM needs timesteps (N,) in [0, 999]")
            temb = self.t_embedder(timesteps.to(pixel_values.device))
            pooled = vision(pixel_values=pixel_values, time_cond=temb).pooler_output
            shift, scale = self.final_adaLN(temb).chunk(2, dim=-1)
            pooled = pooled * (1 + scale) + shift
        else:
            pooled = vision(pixel_values=pixel_values).pooler_output
        emb = self.clip.visual_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised text embeddings (N, P)."""
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        emb = self.clip.text_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True)

    def scores_from_features(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(N,) = exp(logit_scale) * <image_i, text_i>."""
        return self.logit_scale.exp() * (image * text).sum(-1)

    def forward(self, pixel_values, input_ids, attention_mask=None, timesteps=None) -> torch.Tensor:
        return self.scores_from_features(self.image_features(pixel_values, timesteps),
                                         self.text_features(input_ids, attention_mask))


def clip_pixels(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """[0, 1] images (N, 3, H, W) -> CLIP input (N, 3, size, size).

    Bicubic resize of the shorter side to ``size`` (rounded as the official SPO scorer), centre
    crop, clamp to [0, 1] (bicubic overshoots), normalise with the processor's mean/std.
    """
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        images = F.interpolate(images.float(), size=(nh, nw), mode="bicubic", align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = images[..., top:top + size, left:left + size]
    images = images.float().clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t
