"""Tiny random-init scorer weights in each real checkpoint's on-disk format and key layout.

``save_tiny_weights(scorer, out_dir, seed)`` writes one folder per weights role into ``out_dir``;
a file role's folder holds the file under the real file's name, so the config's tiny source
``{tiny: {seed}, file: <real name>}`` resolves exactly like the hub one and the paper profile's
loading code runs unchanged. Only the sizes differ (widths 32, 2 layers, 32 px images).

Layout written (``<role>/<file>``; folders without a file are ``save_pretrained``-style):

    pickscore:    model/ (CLIPModel), processor/ (preprocessor_config.json + CLIP BPE tokenizer)
    hpsv2:        checkpoint/HPS_v2_compressed.pt, architecture/open_clip_config.json
    hpsv2.1:      checkpoint/HPS_v2.1_compressed.pt, architecture/open_clip_config.json
    aesthetic:    clip/ (CLIPModel + preprocessor_config.json), mlp/sac+logos+ava1-l14-linearMSE.pth
    imagereward:  checkpoint/ImageReward.pt, med_config/med_config.json, tokenizer/ (BERT WordPiece),
                  architecture/architecture.json

The real checkpoints need no ``architecture`` role: HPS uses open_clip's built-in ViT-H-14 and
ImageReward BLIP's ViT-L; tiny ones describe their sizes in that small JSON instead. Every float
parameter gets seeded noise on top of its library init, so biases and LayerNorms are non-trivial
and parity tests exercise them.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch

from spo.metrics._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

TINY_IMAGE = 32
TINY_WIDTH = 32

# scorer -> {role: file name or None for a folder role}
TINY_LAYOUT: dict[str, dict[str, str | None]] = {
    "pickscore": {"model": None, "processor": None},
    "hpsv2": {"checkpoint": "HPS_v2_compressed.pt", "architecture": "open_clip_config.json"},
    "hpsv2.1": {"checkpoint": "HPS_v2.1_compressed.pt", "architecture": "open_clip_config.json"},
    "aesthetic": {"clip": None, "mlp": "sac+logos+ava1-l14-linearMSE.pth"},
    "imagereward": {"checkpoint": "ImageReward.pt", "med_config": "med_config.json",
                    "tokenizer": None, "architecture": "architecture.json"},
}

TINY_OPEN_CLIP = {"embed_dim": TINY_WIDTH,
                  "vision_cfg": {"image_size": TINY_IMAGE, "layers": 2, "width": TINY_WIDTH,
                                 "head_width": 8, "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TINY_WIDTH,
                               "heads": 4, "layers": 2}}
TINY_BLIP_VISION = {"hidden_size": TINY_WIDTH, "intermediate_size": 4 * TINY_WIDTH,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": TINY_IMAGE,
                    "patch_size": 8}


def _perturb(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.05) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def _preprocessor_json(folder: Path, size: int) -> None:
    # The layout of openai/clip-vit-large-patch14's and laion's preprocessor_config.json.
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD), "resample": 3, "size": size}, indent=2))


def _tiny_clip(vocab_size: int, hidden_act: str, generator: torch.Generator):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=TINY_WIDTH, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TINY_IMAGE, patch_size=8, hidden_act=hidden_act)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TINY_WIDTH,
                                 logit_scale_init_value=math.log(100.0)))
    _perturb(model, generator)
    return model


def _write_pickscore(root: Path, generator: torch.Generator) -> None:
    from spo.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    # laion ViT-H-14 (PickScore's base) uses exact GELU.
    _tiny_clip(len(tokenizer), "gelu", generator).save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "processor")
    _preprocessor_json(root / "processor", TINY_IMAGE)


def _write_hps(root: Path, file: str, generator: torch.Generator) -> None:
    from spo.metrics.hpsv2 import build_model

    model = build_model(TINY_OPEN_CLIP)
    _perturb(model, generator)
    (root / "checkpoint").mkdir()
    # xswu/HPSv2's files hold {"state_dict": {open_clip key: tensor}}.
    torch.save({"state_dict": model.state_dict()}, root / "checkpoint" / file)
    (root / "architecture").mkdir()
    (root / "architecture" / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))


def _write_aesthetic(root: Path, generator: torch.Generator) -> None:
    from spo.metrics.aesthetic import AestheticMLP
    from spo.models.tiny import tiny_tokenizer

    # openai/clip-vit-large-patch14 uses quick-GELU; only the vision tower matters here.
    clip = _tiny_clip(len(tiny_tokenizer()), "quick_gelu", generator)
    clip.save_pretrained(root / "clip", safe_serialization=True)
    _preprocessor_json(root / "clip", TINY_IMAGE)
    mlp = AestheticMLP(TINY_WIDTH)
    _perturb(mlp, generator)
    (root / "mlp").mkdir()
    torch.save(mlp.state_dict(), root / "mlp" / TINY_LAYOUT["aesthetic"]["mlp"])


def tiny_bert_vocab() -> list[str]:
    """A WordPiece vocabulary that splits any lowercase ASCII text (bert-base-uncased's specials)."""
    chars = string.ascii_lowercase + string.digits
    words = ["a", "the", "of", "and", "in", "with", "photo", "cat", "dog", "red", "blue", "painting"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars + string.punctuation)
    vocab += ["##" + c for c in chars] + [w for w in words if w not in vocab]
    return vocab


def _write_imagereward(root: Path, generator: torch.Generator) -> None:
    from transformers import BertTokenizer

    from spo.metrics.imagereward import ImageRewardNet, model_to_checkpoint_key

    (root / "tokenizer").mkdir()
    vocab_file = root / "tokenizer" / "vocab.txt"
    vocab_file.write_text("\n".join(tiny_bert_vocab()) + "\n")
    BertTokenizer(str(vocab_file), do_lower_case=True).save_pretrained(root / "tokenizer")
    # Keys of THUDM/ImageReward's med_config.json; +2 for BLIP's added [DEC] and [ENC].
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": TINY_WIDTH, "initializer_range": 0.02,
           "intermediate_size": 37, "layer_norm_eps": 1e-12, "max_position_embeddings": 40,
           "model_type": "bert", "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 0,
           "type_vocab_size": 2, "vocab_size": len(tiny_bert_vocab()) + 2, "encoder_width": TINY_WIDTH,
           "add_cross_attention": True}
    arch = {"vision": TINY_BLIP_VISION}
    for role, obj in (("med_config", med), ("architecture", arch)):
        (root / role).mkdir()
        (root / role / TINY_LAYOUT["imagereward"][role]).write_text(json.dumps(obj, indent=2))
    net = ImageRewardNet(med, arch)
    _perturb(net, generator)
    state = {model_to_checkpoint_key(k): v for k, v in net.state_dict().items()}
    # What ImageReward's module tree also saves: BLIP's contrastive projections (embed_dim 256 in
    # the real model) and the BERT position_ids buffer.
    embed = 16
    state["blip.vision_proj.weight"] = torch.randn(embed, TINY_WIDTH, generator=generator) * 0.02
    state["blip.vision_proj.bias"] = torch.zeros(embed)
    state["blip.text_proj.weight"] = torch.randn(embed, TINY_WIDTH, generator=generator) * 0.02
    state["blip.text_proj.bias"] = torch.zeros(embed)
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40).expand(1, -1).clone()
    (root / "checkpoint").mkdir()
    torch.save(state, root / "checkpoint" / TINY_LAYOUT["imagereward"]["checkpoint"])


def save_tiny_weights(scorer: str, out_dir: str | Path, seed: int) -> dict[str, Path]:
    """Write the tiny weights of ``scorer`` (a registry name) atomically into ``out_dir``.

    Returns:
        role -> the path the scorer takes for that role: the file for a file role
        (``out_dir/<role>/<file>``), else the folder ``out_dir/<role>``.
    """
    from spo.io import atomic_path

    if scorer not in TINY_LAYOUT:
        raise ValueError(f"no tiny weights for scorer '{scorer}'; known: {', '.join(TINY_LAYOUT)}")
    generator = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    # Library inits draw from the global generator: seed it, but leave the caller's state untouched.
    with torch.random.fork_rng(devices=[]), atomic_path(out_dir, is_dir=True) as tmp:
        torch.manual_seed(seed)
        if scorer == "pickscore":
            _write_pickscore(tmp, generator)
        elif scorer in ("hpsv2", "hpsv2.1"):
            _write_hps(tmp, TINY_LAYOUT[scorer]["checkpoint"], generator)
        elif scorer == "aesthetic":
            _write_aesthetic(tmp, generator)
        else:
            _write_imagereward(tmp, generator)
    return {role: out_dir / role / file if file else out_dir / role
            for role, file in TINY_LAYOUT[scorer].items()}
