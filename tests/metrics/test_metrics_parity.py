"""Each scorer on tiny random weights equals an independent plain-torch implementation (1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metrics_reference as ref  # pytest prepends this folder (no __init__.py)

ATOL = 1e-5   # float64 scorer vs float64 reference: the formula, to 1e-5 (in practice ~1e-12)
# float32 scorer as the DAG runs it: cosines carry float32 rounding (~1e-7), which the x100 scale of
# PickScore and HPS turns into ~1e-5 absolute.
ATOL32 = 1e-4


def _check(name, scorers, scorers64, images, prompts, expected):
    got = scorers64[name](images, prompts)
    assert got.dtype == np.float64 and got.shape == (len(images),)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(scorers[name](images, prompts), expected, rtol=0, atol=ATOL32)


def _safetensors(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_pickscore_parity(scorers, scorers64, tiny_weights, images, prompts):
    from transformers import CLIPTokenizer

    w = tiny_weights["pickscore"]
    cfg = json.loads((Path(w["model"]) / "config.json").read_text())
    tok = CLIPTokenizer.from_pretrained(w["processor"])
    expected = ref.pickscore(_safetensors(w["model"]), cfg, tok, images, prompts)
    _check("pickscore", scorers, scorers64, images, prompts, expected)


@pytest.mark.parametrize("name", ["hpsv2", "hpsv2.1"])
def test_hps_parity(scorers, scorers64, tiny_weights, images, prompts, name):
    import open_clip

    w = tiny_weights[name]
    state = torch.load(w["checkpoint"], weights_only=True)["state_dict"]
    cfg = json.loads(Path(w["architecture"]).read_text())["model_cfg"]
    expected = ref.hps(state, cfg, open_clip.tokenizer.SimpleTokenizer(), images, prompts)
    _check(name, scorers, scorers64, images, prompts, expected)
    assert scorers[name].version == {"hpsv2": "hpsv2.0", "hpsv2.1": "hpsv2.1"}[name]


def test_aesthetic_parity(scorers, scorers64, tiny_weights, images, prompts):
    w = tiny_weights["aesthetic"]
    cfg = json.loads((Path(w["clip"]) / "config.json").read_text())
    mlp = torch.load(w["mlp"], weights_only=True)
    expected = ref.aesthetic(_safetensors(w["clip"]), cfg, mlp, images)
    _check("aesthetic", scorers, scorers64, images, prompts, expected)
    # The prompt is ignored.
    np.testing.assert_array_equal(scorers["aesthetic"](images, prompts),
                                  scorers["aesthetic"](images, ["x"] * len(images)))


def test_imagereward_parity(scorers, scorers64, tiny_weights, images, prompts):
    from transformers import BertTokenizer

    w = tiny_weights["imagereward"]
    state = torch.load(w["checkpoint"], weights_only=True)
    med = json.loads(Path(w["med_config"]).read_text())
    arch = json.loads(Path(w["architecture"]).read_text())["vision"]
    tok = BertTokenizer.from_pretrained(w["tokenizer"])
    expected = ref.imagereward(state, med, arch, tok, images, prompts)
    _check("imagereward", scorers, scorers64, images, prompts, expected)


# ---------------------------------------------------------------- preprocessing of odd inputs
def test_center_crop_matches_torchvision_for_all_modes_and_sizes(images):
    from spo.metrics._preprocess import center_crop_pixels

    got = center_crop_pixels(images, size=32, crop=32, convert_first=False, crop_rounding="round")
    torch.testing.assert_close(got, ref.torchvision_clip_pixels(images, 32), rtol=0, atol=1e-6)


def test_center_crop_matches_transformers_427(images):
    from spo.metrics._preprocess import center_crop_pixels

    got = center_crop_pixels(images, size=32, crop=32, convert_first=True, crop_rounding="floor")
    torch.testing.assert_close(got, ref.hf427_clip_pixels(images, 32), rtol=0, atol=1e-6)


def test_longest_pad_matches_hps_transform(images):
    from spo.metrics._preprocess import longest_pad_pixels

    got = longest_pad_pixels(images, size=32)
    torch.testing.assert_close(got, ref.hps_pixels(images, 32), rtol=0, atol=1e-6)
    # Portrait: the padding is left/right and stays zero before normalisation (= -mean/std).
    assert torch.allclose(got[2, 0, :, 0], torch.tensor(-ref.MEAN[0] / ref.STD[0]))


def test_rgba_is_resized_before_dropping_alpha(images):
    """OpenAI CLIP resizes the RGBA image (premultiplied) and converts after; transformers converts first."""
    from spo.metrics._preprocess import center_crop_pixels

    rgba = [images[-1]]
    late = center_crop_pixels(rgba, size=32, crop=32, convert_first=False, crop_rounding="round")
    early = center_crop_pixels(rgba, size=32, crop=32, convert_first=True, crop_rounding="round")
    assert not torch.allclose(late, early)
