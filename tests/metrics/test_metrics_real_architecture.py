"""The real scorer architectures, built on the meta device (no weights), against the real layouts.

The expected checkpoint layouts are written out here from the reference code's module trees
(open_clip ViT-H-14 for HPS; BLIP ViT-L via timm + BLIP's MED BERT for ImageReward; LAION's MLP),
independently of the key maps in ``spo.metrics``.
"""

from __future__ import annotations

import pytest
import torch

from spo.metrics.base import ScorerError

VIT_H_14_PARAMS = 986_109_441  # open_clip ViT-H-14 == laion CLIP-ViT-H-14 == PickScore_v1

# THUDM/ImageReward med_config.json (BERT-base with cross-attention; encoder_width set in code).
REAL_MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
                   "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
                   "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
                   "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
                   "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30524,
                   "encoder_width": 768, "add_cross_attention": True}


def _meta(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _n(shapes):
    return sum(torch.Size(s).numel() for s in shapes.values())


def hps_real_layout():
    """The 686 keys of an HPS_v2*_compressed.pt ``state_dict`` (open_clip ViT-H-14)."""
    def block(p, w, hidden):
        return {p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "attn.in_proj_weight": (3 * w, w),
                p + "attn.in_proj_bias": (3 * w,), p + "attn.out_proj.weight": (w, w),
                p + "attn.out_proj.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                p + "mlp.c_fc.weight": (hidden, w), p + "mlp.c_fc.bias": (hidden,),
                p + "mlp.c_proj.weight": (w, hidden), p + "mlp.c_proj.bias": (w,)}

    out = {"visual.class_embedding": (1280,), "visual.positional_embedding": (257, 1280),
           "visual.proj": (1280, 1024), "visual.conv1.weight": (1280, 3, 14, 14),
           "visual.ln_pre.weight": (1280,), "visual.ln_pre.bias": (1280,),
           "visual.ln_post.weight": (1280,), "visual.ln_post.bias": (1280,),
           "positional_embedding": (77, 1024), "text_projection": (1024, 1024), "logit_scale": (),
           "token_embedding.weight": (49408, 1024), "ln_final.weight": (1024,), "ln_final.bias": (1024,)}
    for i in range(32):
        out.update(block(f"visual.transformer.resblocks.{i}.", 1280, 5120))
    for i in range(24):
        out.update(block(f"transformer.resblocks.{i}.", 1024, 4096))
    return out


def test_hps_real_architecture_matches_checkpoint_layout():
    from spo.metrics._common import check_keys, check_shapes
    from spo.metrics.hpsv2 import architecture_config, build_model

    layout = hps_real_layout()
    assert len(layout) == 686 and _n(layout) == VIT_H_14_PARAMS
    with torch.device("meta"):
        model = build_model(architecture_config(None))  # no architecture role = built-in ViT-H-14
    reference = model.state_dict()
    check_keys(layout, reference, "hps")
    check_shapes(_meta(layout), reference, "hps")
    broken = dict(layout)
    broken.pop("visual.proj")
    with pytest.raises(ScorerError, match=r"missing 1: \[visual.proj\]"):
        check_keys(broken, reference, "hps")


def _clip_config(text, vision, projection_dim, act):
    from transformers import CLIPConfig

    return CLIPConfig(text_config={"vocab_size": 49408, "max_position_embeddings": 77,
                                   "hidden_act": act, **text},
                      vision_config={"image_size": 224, "patch_size": 14, "hidden_act": act, **vision},
                      projection_dim=projection_dim)


def test_pickscore_real_architecture():
    """PickScore_v1's config (laion ViT-H-14) builds the same 986M-parameter model as open_clip's."""
    from transformers import CLIPModel

    cfg = _clip_config({"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16},
                       {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                        "num_attention_heads": 16}, 1024, "gelu")
    with torch.device("meta"):
        model = CLIPModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == VIT_H_14_PARAMS


def test_aesthetic_real_architecture():
    """openai/clip-vit-large-patch14 projects to 768 = the MLP input; the MLP layout is LAION's."""
    from transformers import CLIPModel

    from spo.metrics._common import check_keys, check_shapes
    from spo.metrics.aesthetic import AestheticMLP

    cfg = _clip_config({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12},
                       {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16}, 768, "quick_gelu")
    with torch.device("meta"):
        clip = CLIPModel(cfg)
        mlp = AestheticMLP(clip.config.projection_dim)
    layout = {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
              "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
              "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
              "layers.7.bias": (1,)}
    check_keys(layout, mlp.state_dict(), "aesthetic")
    check_shapes(_meta(layout), mlp.state_dict(), "aesthetic")
    # The real file (3,714,759 bytes) is these float32 tensors plus a few kB of pickle framing.
    assert 4 * _n(layout) < 3_714_759 < 4 * _n(layout) + 8192
    assert sum(p.numel() for p in clip.vision_model.parameters()) == 303_179_776  # ViT-L/14 tower


def imagereward_real_layout():
    """ImageReward.pt: BLIP ViT-L/16 (timm's module tree), MED BERT with cross-attention, MLP."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.device("meta"):
        vit = VisionTransformer(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                num_classes=0)
    out = {"blip.visual_encoder." + k: tuple(v.shape) for k, v in vit.state_dict().items()}
    h, inter, enc, p = 768, 3072, 1024, "blip.text_encoder."
    out.update({p + "embeddings.word_embeddings.weight": (30524, h),
                p + "embeddings.position_embeddings.weight": (512, h),
                p + "embeddings.LayerNorm.weight": (h,), p + "embeddings.LayerNorm.bias": (h,),
                p + "embeddings.position_ids": (1, 512)})
    for i in range(12):
        b = f"{p}encoder.layer.{i}."
        for att, kv in (("attention", h), ("crossattention", enc)):
            out.update({f"{b}{att}.self.query.weight": (h, h), f"{b}{att}.self.query.bias": (h,),
                        f"{b}{att}.self.key.weight": (h, kv), f"{b}{att}.self.key.bias": (h,),
                        f"{b}{att}.self.value.weight": (h, kv), f"{b}{att}.self.value.bias": (h,),
                        f"{b}{att}.output.dense.weight": (h, h), f"{b}{att}.output.dense.bias": (h,),
                        f"{b}{att}.output.LayerNorm.weight": (h,), f"{b}{att}.output.LayerNorm.bias": (h,)})
        out.update({b + "intermediate.dense.weight": (inter, h), b + "intermediate.dense.bias": (inter,),
                    b + "output.dense.weight": (h, inter), b + "output.dense.bias": (h,),
                    b + "output.LayerNorm.weight": (h,), b + "output.LayerNorm.bias": (h,)})
    out.update({"blip.vision_proj.weight": (256, enc), "blip.vision_proj.bias": (256,),
                "blip.text_proj.weight": (256, h), "blip.text_proj.bias": (256,)})
    for j, (o, i) in zip((0, 2, 4, 6, 7), ((1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16))):
        out.update({f"mlp.layers.{j}.weight": (o, i), f"mlp.layers.{j}.bias": (o,)})
    return out


def test_imagereward_real_architecture_key_map_is_complete():
    from spo.metrics.imagereward import ImageRewardNet, convert_checkpoint

    layout = imagereward_real_layout()
    with torch.device("meta"):
        net = ImageRewardNet(REAL_MED_CONFIG)  # no architecture role = BLIP ViT-L/16 at 224 px
    converted = convert_checkpoint(_meta(layout), net, "imagereward")  # raises on any mismatch
    assert set(converted) == set(net.state_dict())
    assert net.vision.config.layer_norm_eps == 1e-6
    # Without the optional position_ids buffer the layout still converts.
    layout.pop("blip.text_encoder.embeddings.position_ids")
    convert_checkpoint(_meta(layout), net, "imagereward")
    layout.pop("blip.visual_encoder.norm.weight")
    with pytest.raises(ScorerError, match=r"missing 1: \[blip.visual_encoder.norm.weight\]"):
        convert_checkpoint(_meta(layout), net, "imagereward")
