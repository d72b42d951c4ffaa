"""D3PO (issue 6): the per-step DPO loss and the ranking by hand, trajectory pairs from one x_T,
LoRA-only training, a SIGUSR1 checkpoint that resumes to the same LoRA, config errors."""

import json
import math

import pytest
import torch

from spo.models.backbone import Backbone
from spo.preference import build_preference
from spo.sampling.trajectory import Trajectories
from spo.training import d3po, loop
from spo.training.losses import spo_loss
from spo.training.settings import TrainSettings

PROMPTS = [f"a {c} {o}" for c in ("red", "blue") for o in ("car", "bird")]


def _pipe(tiny_models):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings(**kw):
    base = dict(prompts="p", algorithm="d3po", num_inference_steps=4, prompts_per_round=2,
                train_batch_size=4, lr=1e-2, lora_rank=4, lora_init="default", epochs=2,
                beta=0.1, clamp_eps=0.1, d3po={})
    base.update(kw)
    return TrainSettings.from_config(base)


def test_loss_is_the_official_formula_by_hand():
    """Official: -log sigmoid(beta log clamp(r0) h0 + beta log clamp(r1) h1), h = (1, -1) when
    trajectory 0 has the higher reward. Here r0 = e^0.05 (inside [0.9, 1.1]), r1 = e^-0.3 -> 0.9."""
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.05, -1.7])
    rewards = torch.tensor([3.0, 2.0])
    win, lose = int(rewards.argmax()), int(rewards.argmin())
    out = spo_loss(logp[win:win + 1], logp[lose:lose + 1], ref[win:win + 1], ref[lose:lose + 1],
                   beta=0.1, clamp_eps=0.1)
    z = 0.1 * 0.05 - 0.1 * math.log(0.9)
    assert out["loss"].item() == pytest.approx(math.log(1 + math.exp(-z)), rel=1e-6)
    out["loss"].backward()
    # the clamped loser has no gradient; the winner gets -beta * (1 - sigmoid(z))
    assert logp.grad[1].item() == 0.0
    assert logp.grad[0].item() == pytest.approx(-0.1 * (1 - 1 / (1 + math.exp(-z))), rel=1e-5)


def test_ranked_pairs_order_drop_ties_and_share_only_x_T():
    # 3 prompts x 2 trajectories, 3 steps; latent value = 100 * row + step, to read back.
    lat = (100 * torch.arange(6).view(6, 1) + torch.arange(4).view(1, 4)).float().view(6, 4, 1, 1, 1)
    traj = Trajectories(lat, torch.tensor([701, 401, 101]), torch.zeros(6, 3))
    rewards = torch.tensor([1.0, 2.0, 5.0, 4.0, 7.0, 7.0])  # prompt 0: row 1 wins; 1: row 2; 2: tie
    steps = torch.tensor([[0, 2], [1, 0], [2, 1]])
    pairs = d3po.ranked_pairs(traj, rewards, torch.tensor([10, 11, 12]), steps, shared_start=True)
    assert len(pairs) == 4
    assert pairs.xt_w.flatten().tolist() == [100, 102, 201, 200]
    assert pairs.xt_l.flatten().tolist() == [0, 2, 301, 300]
    assert pairs.x_w.flatten().tolist() == [101, 103, 202, 201]
    assert pairs.t.tolist() == [701, 101, 401, 701] and pairs.prompt_index.tolist() == [10, 10, 11, 11]
    assert pairs.shared.tolist() == [True, False, False, True]
    assert d3po.ranked_pairs(traj, torch.ones(6), torch.arange(3), steps, True) is None


def test_training_pairs_share_the_initial_noise_and_change_only_lora(tiny_models, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    seen = []
    real = d3po.sample_trajectories

    def spy(*args, **kwargs):
        seen.append(out := real(*args, **kwargs))
        return out

    monkeypatch.setattr(d3po, "sample_trajectories", spy)
    pipe = _pipe(tiny_models)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = d3po.train_d3po(Backbone(pipe, 32), StableDiffusionPipeline, PROMPTS,
                             build_preference({"name": "colorfulness"}), _settings(max_rounds=2),
                             tmp_path / "out", tmp_path / "ck")
    traj = seen[0]
    assert torch.equal(traj.latents[0, 0], traj.latents[1, 0])          # one x_T per pair
    assert not torch.equal(traj.latents[0, 1], traj.latents[1, 1])      # then their own noise
    assert not torch.equal(traj.latents[0, 0], traj.latents[2, 0])      # another prompt, another x_T
    assert result["steps"] == 2 * 2  # 2 pairs x 4 steps = 8 transition pairs / 4 per batch
    after = pipe.unet.state_dict()
    assert any(v.abs().sum() > 0 for k, v in after.items() if "lora_B" in k)
    for k, v in after.items():
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace("base_layer.", "")]), k
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "ratio_win", "ratio_lose", "reward_mean", "lr"} <= set(log[1])
    assert log[0]["pairs"] == 8 and log[0]["ties"] == 0
    fresh = _pipe(tiny_models)
    fresh.load_lora_weights(str(tmp_path / "out"), weight_name="pytorch_lora_weights.safetensors")


def test_sigusr1_checkpoint_resumes_to_the_same_lora(tiny_models, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = _settings(max_rounds=3, checkpoint_every=10)

    def run(name):
        return d3po.train_d3po(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                               build_preference({"name": "colorfulness"}), settings,
                               tmp_path / name, tmp_path / f"ck-{name}")

    run("a")
    # The signal arrives while round 2 samples: it is acted on at the next DDIM step (issue 20:
    # SLURM kills 30 s after its SIGTERM), with a checkpoint of round 2's start.
    signal, real, calls = {"on": False}, d3po.sample_trajectories, {"n": 0}

    def sample(*args, **kwargs):
        calls["n"] += 1
        signal["on"] = calls["n"] == 2
        return real(*args, **kwargs)

    monkeypatch.setattr(d3po, "sample_trajectories", sample)
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: signal["on"])
    with pytest.raises(SystemExit) as exit_info:
        run("b")
    assert exit_info.value.code == 75 and not (tmp_path / "b").exists()
    assert [p.name for p in (tmp_path / "ck-b").glob("step-*")] == ["step-00000001"]
    signal["on"] = False
    monkeypatch.setattr(d3po, "sample_trajectories", real)
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: False)
    run("b")
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("block, key", [
    ({"timestep_fraction": 0}, "train.d3po.timestep_fraction"), ({"same_initial_noise": "yes"}, "train.d3po.same_initial_noise"),
    ({"beta": 1}, "train.d3po.beta"),
])
def test_bad_settings_name_the_key(block, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _settings(d3po=block).algorithm_settings()


def test_block_of_another_algorithm_is_refused():
    with pytest.raises(ValueError, match=r"train\.d3po"):
        _settings(algorithm="ddpo")
