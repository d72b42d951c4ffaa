"""Issue 18: the round function and its speed keys (spo.training.round_speed).

The default round is checked bit for bit by the trainer's tests and the tiny DAG; here: the keys
are checked train keys, merging the LoRA for sampling computes the same function and leaves the
base weights untouched, and a round encodes its prompts once."""

from __future__ import annotations

import pytest
import torch

from spo.config_spec import ConfigError
from spo.models.backbone import Backbone
from spo.preference import build_preference
from spo.training import spo_trainer
from spo.training.lora import attach_lora
from spo.training.round_speed import merged_lora
from spo.training.settings import TrainSettings

PROMPTS = ["a red car", "a blue bird", "a green car", "a golden bird"]
BASE = dict(prompts="p", preference={"name": "colorfulness"}, num_inference_steps=4,
            timestep_range=[0, 1000], k=2, threshold=0.0, prompts_per_round=2, train_batch_size=4,
            lr=1e-2, lora_rank=4, lora_init="default", epochs=1, max_rounds=1)


def _pipe(tiny_models):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15",
                                                   local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("key", ["sampling_merge_lora", "channels_last", "compile_unet"])
def test_speed_keys_are_checked_train_keys(key):
    assert getattr(TrainSettings.from_config(BASE), key) is False  # off by default
    assert getattr(TrainSettings.from_config({**BASE, key: True}), key) is True
    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainSettings.from_config({**BASE, key: "yes"})


def test_merged_lora_computes_the_same_and_restores_the_weights(tiny_models):
    pipe = _pipe(tiny_models)
    unet = pipe.unet
    params = attach_lora(unet, rank=4, init="default")
    with torch.no_grad():
        for i, p in enumerate(params):
            if p.shape[0] != 4:  # lora_B: non-zero, so that the LoRA changes the output
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
    unet.eval()
    backbone = Backbone(pipe, 32)
    cond = backbone.encode(PROMPTS)
    x = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 501)
    weights = {n: (p, p.detach().clone()) for n, p in unet.named_parameters() if "lora_" not in n}
    with torch.no_grad():
        plain = backbone.eps(x, t, cond, 5.0)
        with merged_lora(unet):
            merged = backbone.eps(x, t, cond, 5.0)
        again = backbone.eps(x, t, cond, 5.0)
    assert torch.equal(plain, again)
    assert torch.allclose(merged, plain, atol=1e-5, rtol=1e-4) and not torch.equal(merged, plain)
    after = dict(unet.named_parameters())
    for name, (tensor, value) in weights.items():
        assert after[name] is tensor and torch.equal(tensor, value), name
    assert all(p.requires_grad for p in params)


def test_a_round_encodes_its_prompts_once(tiny_models, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    calls = []
    real = Backbone.encode

    def counted(self, prompts):
        calls.append(list(prompts))
        return real(self, prompts)

    monkeypatch.setattr(Backbone, "encode", counted)
    settings = TrainSettings.from_config({**BASE, "max_rounds": 2})
    spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                          build_preference(settings.preference), settings, tmp_path / "out",
                          tmp_path / "ckpt")
    assert len(calls) == 2 and all(len(c) == 2 for c in calls)
