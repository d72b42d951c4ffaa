"""The SPM equals PickScore at init, reuses its weights, and round-trips every format."""

from __future__ import annotations

import numpy as np
import pytest
import torch

PROMPTS = ["a red cat on a beach", "blue sky", "a photo of a dog", "x"]


def _perturb(model, scale=0.05):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "t_embedder" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def test_init_equals_pickscore_at_every_t(tiny_pickscore):
    from PIL import Image

    from spo.metrics.pickscore import PickScoreScorer
    from spo.preference.spm_io import from_pickscore

    ps = PickScoreScorer(tiny_pickscore["model"], tiny_pickscore["processor"])
    spm = from_pickscore(tiny_pickscore["model"], tiny_pickscore["processor"])
    # 32 px 8-bit images: PickScore's own PIL preprocessing is then exactly the SPM's tensor path.
    gen = torch.Generator().manual_seed(1)
    u8 = (torch.rand(4, 3, 32, 32, generator=gen) * 255).round().to(torch.uint8)
    pils = [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in u8]
    reference = ps(pils, PROMPTS)
    for t in (0, 1, 500, 999):
        got = spm(u8.float() / 255, PROMPTS, torch.full((4,), t)).double().numpy()
        assert np.abs(got - reference).max() < 1e-5, t


def test_weights_are_reused_and_time_matters(tiny_pickscore):
    from transformers import CLIPModel

    from spo.preference.spm_model import AdaLNEncoderLayer, StepAwarePreferenceModel

    clip = CLIPModel.from_pretrained(str(tiny_pickscore["model"]), local_files_only=True)
    attn = clip.vision_model.encoder.layers[0].self_attn
    model = StepAwarePreferenceModel(clip)
    layer = model.clip.vision_model.encoder.layers[0]
    assert isinstance(layer, AdaLNEncoderLayer) and layer.self_attn is attn  # no copy
    assert not isinstance(model.clip.text_model.encoder.layers[0], AdaLNEncoderLayer)
    _perturb(model)
    px = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 100, (2, 5))
    a = model(px, ids, timesteps=torch.tensor([0, 0]))
    b = model(px, ids, timesteps=torch.tensor([900, 900]))
    assert (a - b).abs().max() > 1e-4


def test_save_load_and_official_layout_round_trip(tiny_pickscore, tmp_path):
    from spo.metrics._common import load_state_dict_file
    from spo.preference.spm_io import (from_pickscore, load_official_spm, load_spm,
                                       official_to_spm_key, save_official_layout, save_spm)

    spm = from_pickscore(tiny_pickscore["model"], tiny_pickscore["processor"])
    _perturb(spm.model)
    images, t = torch.rand(3, 3, 48, 40), torch.tensor([0, 400, 999])
    want = spm(images, PROMPTS[:3], t)
    save_spm(spm, tmp_path / "spm")
    assert (load_spm(tmp_path / "spm")(images, PROMPTS[:3], t) - want).abs().max() == 0
    bin_path = save_official_layout(spm.model, tmp_path / "sd-v1-5_step-aware_preference_model.bin")
    raw = load_state_dict_file(bin_path)
    # The official key names, as HFTimeConditionedCLIPModel under StepAwarePreferenceModel.model.
    assert "model.t_embedder.mlp.0.weight" in raw
    assert "model.vision_model.adaLN_modulation.1.weight" in raw
    assert "model.vision_model.encoder.layers.0.adaLN_modulation.1.bias" in raw
    assert "model.text_model.embeddings.position_ids" in raw
    assert official_to_spm_key("model.vision_model.adaLN_modulation.1.bias") == "final_adaLN.1.bias"
    off = load_official_spm(bin_path, tiny_pickscore["model"], tiny_pickscore["processor"])
    assert (off(images, PROMPTS[:3], t) - want).abs().max() == 0


def test_official_checkpoint_with_a_missing_key_is_refused(tiny_pickscore, tmp_path):
    from spo.preference.spm_io import SPMError, from_pickscore, load_official_spm, save_official_layout

    spm = from_pickscore(tiny_pickscore["model"], tiny_pickscore["processor"])
    path = save_official_layout(spm.model, tmp_path / "x.bin")
    state = torch.load(path, weights_only=True)
    del state["model.t_embedder.mlp.2.bias"]
    torch.save(state, path)
    with pytest.raises(SPMError, match="t_embedder.mlp.2.bias"):
        load_official_spm(path, tiny_pickscore["model"], tiny_pickscore["processor"])


def test_registry_variants(tiny_pickscore, tmp_path):
    from spo.preference import build_preference
    from spo.preference.spm_io import SPMError, from_pickscore, save_spm

    save_spm(from_pickscore(tiny_pickscore["model"], tiny_pickscore["processor"],
                            time_condition=False), tmp_path / "nostep")
    nostep = build_preference({"name": "spm-no-step", "path": str(tmp_path / "nostep")})
    ps = build_preference({"name": "pickscore", "path": str(tiny_pickscore["model"].parent)})
    assert not nostep.step_aware and not ps.step_aware
    images = torch.rand(2, 3, 32, 32)
    t = torch.tensor([10, 700])
    # PickScore sees its CLIP processor's pixels (issue 17), an SPM the official torch resize:
    # the untrained SPM without step condition is PickScore given the same pixels.
    assert (ps.resize, nostep.resize) == ("processor", "torch-bicubic")
    nostep.resize = "processor"
    assert (nostep(images, PROMPTS[:2], t) - ps(images, PROMPTS[:2], t)).abs().max() < 1e-5
    with pytest.raises(SPMError, match="spm-no-step"):
        build_preference({"name": "spm", "path": str(tmp_path / "nostep")})
