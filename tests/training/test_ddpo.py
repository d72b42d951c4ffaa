"""DDPO (issue 6): the PPO loss and reward normalisation by hand, trajectory log-probs, LoRA-only
training that generation reloads, resume to the same LoRA, config errors that name the key."""

import json
import math

import numpy as np
import pytest
import torch

from spo.models.backbone import Backbone
from spo.preference import build_preference
from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob
from spo.sampling.trajectory import sample_trajectories
from spo.training import ddpo
from spo.training.settings import TrainSettings

PROMPTS = [f"a {c} {o}" for c in ("red", "blue") for o in ("car", "bird")]


def _pipe(tiny_models):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings(**kw):
    base = dict(prompts="p", algorithm="ddpo", num_inference_steps=4, prompts_per_round=2,
                train_batch_size=4, lr=1e-2, lora_rank=4, lora_init="default", epochs=2,
                ddpo={"clip_range": 0.2, "images_per_prompt": 2, "min_count": 3, "buffer_size": 8})
    base.update(kw)
    return TrainSettings.from_config(base)


def test_ppo_loss_equals_the_hand_computation():
    # r = 1.5, 0.5, 1.1, 1; A = 2 (clipped to 1), 1, -1, 0.5; clip range 0.2.
    # max(-A r, -A clip(r)) = max(-1.5, -1.2), max(-0.5, -0.8), max(1.1, 1.1), max(-0.5, -0.5)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 1.0], dtype=torch.float64)).requires_grad_()
    out = ddpo.ddpo_loss(logp, torch.zeros(4, dtype=torch.float64), torch.tensor([2.0, 1.0, -1.0, 0.5]),
                         clip_range=0.2, adv_clip_max=1.0)
    assert out["loss"].item() == pytest.approx((-1.2 - 0.5 + 1.1 - 0.5) / 4)
    assert out["clipfrac"].item() == pytest.approx(0.5)
    out["loss"].backward()
    # d/dlogp of -A r is -A r; the clipped first term has no gradient.
    assert torch.allclose(logp.grad, torch.tensor([0.0, -0.5, 1.1, -0.5], dtype=torch.float64) / 4)


def test_per_prompt_stats_and_global_fallback_by_hand():
    tracker = ddpo.PerPromptStatTracker(buffer_size=3, min_count=2)
    adv = tracker.update(["a", "a", "b"], np.array([1.0, 3.0, 5.0]))
    # a: own buffer [1, 3] (mean 2, std 1); b: one value < min_count -> the batch (mean 3, std sqrt(8/3))
    assert np.allclose(adv, [-1 / (1 + 1e-6), 1 / (1 + 1e-6), 2 / (math.sqrt(8 / 3) + 1e-6)])
    adv = tracker.update(["a", "a"], np.array([7.0, 9.0]))  # buffer keeps the last 3: [3, 7, 9]
    mean, std = 19 / 3, np.std([3.0, 7.0, 9.0])
    assert np.allclose(adv, [(7 - mean) / (std + 1e-6), (9 - mean) / (std + 1e-6)])
    plain = ddpo.normalise_rewards(["x", "y"], np.array([1.0, 3.0]), None)
    assert np.allclose(plain, [-1 / (1 + 1e-8), 1 / (1 + 1e-8)])


def test_trajectory_logprobs_are_those_of_the_sampled_transitions(tiny_models):
    pipe = _pipe(tiny_models)
    backbone = Backbone(pipe, 32)
    cond = backbone.encode(PROMPTS[:3])
    traj = sample_trajectories(backbone, pipe.scheduler, cond, num_inference_steps=4, guidance_scale=5.0,
                               eta=1.0, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert traj.latents.shape == (3, 5, 4, 4, 4) and traj.logprobs.shape == (3, 4)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 4)
    with torch.no_grad():
        for s, t in enumerate(traj.timesteps):
            tt = torch.full((3,), int(t))
            mean, std, _ = ddim_transition(schedule, backbone.eps(traj.latents[:, s], tt, cond, 5.0),
                                           traj.latents[:, s], tt, 1.0)
            assert torch.allclose(gaussian_logprob(traj.latents[:, s + 1], mean, std), traj.logprobs[:, s], atol=1e-5)
            assert not torch.allclose(traj.latents[:, s + 1], mean)  # a stochastic step, not the mean
    batch = ddpo.transitions(traj, torch.tensor([[0, 3], [1, 2], [2, 0]]), torch.arange(3), torch.ones(3))
    assert torch.equal(batch.x_next[1], traj.latents[0, 4]) and int(batch.t[1]) == int(traj.timesteps[3])
    settings = _settings(eta=1.0)
    logp = ddpo.transition_logprob(backbone, schedule, batch, cond, settings)
    assert torch.allclose(logp.detach(), batch.logp_old, atol=1e-5)  # ratio 1 before any update


def test_training_changes_only_lora_and_reloads(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = _pipe(tiny_models)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    settings = _settings(max_rounds=2)
    result = ddpo.train_ddpo(Backbone(pipe, 32), StableDiffusionPipeline, PROMPTS,
                             build_preference({"name": "colorfulness"}), settings, tmp_path / "out", tmp_path / "ck")
    assert result["steps"] == 2 * 4  # 2 prompts x 2 images x 4 steps = 16 transitions / 4 per batch
    after = pipe.unet.state_dict()
    assert any("lora_" in k and v.abs().sum() > 0 for k, v in after.items() if "lora_B" in k)
    for k, v in after.items():
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace("base_layer.", "")]), k
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "ratio", "clipfrac", "approx_kl", "reward_mean", "reward_std"} <= set(log[1])
    assert log[0]["kind"] == "samples" and len(log[0]["rewards"]) == 4
    assert (tmp_path / "out" / "provenance.json").is_file()

    def images(p):
        g = [torch.Generator().manual_seed(i) for i in range(2)]
        return p(PROMPTS[:2], generator=g, num_inference_steps=4, height=32, width=32, output_type="pt").images

    trained, fresh = images(pipe), _pipe(tiny_models)
    fresh.load_lora_weights(str(tmp_path / "out"), weight_name="pytorch_lora_weights.safetensors")
    assert torch.allclose(images(fresh), trained, atol=1e-5)


def test_killed_run_resumes_to_the_same_lora(tiny_models, tmp_path, monkeypatch):
    """Round 2 repeats round 0's prompts (2 rounds per epoch) with 4 rewards each >= min_count 3:
    its advantages come from the per-prompt buffers, which the resumed run rebuilds from the log."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = _settings(max_rounds=3)

    def run(name):
        return ddpo.train_ddpo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                               build_preference({"name": "colorfulness"}), settings,
                               tmp_path / name, tmp_path / f"ck-{name}")

    run("a")
    real, calls = ddpo.sample_trajectories, {"n": 0}

    def dies_in_round_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real(*args, **kwargs)

    monkeypatch.setattr(ddpo, "sample_trajectories", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        run("b")
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(ddpo, "sample_trajectories", real)
    run("b")
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "log.jsonl").read_text().count('"kind": "samples"') == 3


@pytest.mark.parametrize("block, key", [
    ({"clip_range": 0}, "train.ddpo.clip_range"), ({"timestep_fraction": 1.5}, "train.ddpo.timestep_fraction"),
    ({"images_per_prompt": 0}, "train.ddpo.images_per_prompt"), ({"bogus": 1}, "train.ddpo.bogus"),
])
def test_bad_settings_name_the_key(block, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _settings(ddpo=block).algorithm_settings()


def test_deterministic_sampler_is_refused(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    with pytest.raises(ValueError, match=r"train\.eta"):
        ddpo.train_ddpo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS, None,
                        _settings(eta=0.0), tmp_path / "o", tmp_path / "c")
