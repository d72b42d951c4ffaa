"""Offline Diffusion-DPO (issue 6): loss vs hand computation, ties, LoRA-only updates, reload,
resume equality and config errors, on the tiny SD-1.5 / SDXL models and synthetic pairs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spo.models.backbone import Backbone
from spo.spm.data import PairsError, encode_png, latents_to_bytes
from spo.training import diffusion_dpo, loop
from spo.training.diffusion_dpo import DPOSettings, diffusion_dpo_loss
from spo.training.dpo_data import PairSource, decisive, orient
from spo.training.settings import TrainSettings

torch.set_num_threads(1)


def _pipe(tiny_models, family="sd15"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(tiny_models / "pipelines" / f"tiny-{family}", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings(**dpo):
    block = {"data": "toy", "beta": 500.0, "steps": 4, "batch_size": 4, "micro_batch": 2, **dpo}
    return TrainSettings.from_config({"prompts": "p", "algorithm": "diffusion-dpo", "lr": 1e-2,
                                      "lora_rank": 4, "lora_init": "default", "checkpoint_every": 1,
                                      "diffusion_dpo": block})


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """10 pairs (2 ties) carrying 4x4x4 latents, like the tiny pairs."""
    gen = torch.Generator().manual_seed(0)
    n = 10
    lat0, lat1 = torch.randn(n, 4, 4, 4, generator=gen) * 3, torch.randn(n, 4, 4, 4, generator=gen) * 3
    b0, shape = latents_to_bytes(lat0)
    b1, _ = latents_to_bytes(lat1)
    png = encode_png(torch.rand(3, 8, 8, generator=gen))
    labels = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0]
    frame = pd.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "prompt_id": [f"q{i % 3}" for i in range(n)],
                          "prompt": [f"a {c} thing" for c in ["red", "blue", "green"] * 3 + ["pink"]],
                          "image_0": [png] * n, "image_1": [png] * n, "label": labels,
                          "examples_per_prompt": [3] * n, "latent_0": b0, "latent_1": b1,
                          "latent_shape": [shape] * n})
    out = tmp_path_factory.mktemp("pairs")
    frame.to_parquet(out / "part-0000.parquet")
    return out, frame, lat0, lat1


def test_loss_equals_hand_computation_in_the_salesforce_beta_convention():
    mw, ml = torch.tensor([1.0, 0.5]), torch.tensor([1.2, 0.4])
    rw, rl = torch.tensor([1.1, 0.5]), torch.tensor([1.1, 0.5])
    out = diffusion_dpo_loss(mw, ml, rw, rl, beta=10.0)
    # inside = -beta/2 ((mw - ml) - (rw - rl)) = -5 * (-0.2) = 1.0 and -5 * 0.1 = -0.5
    hand = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert out["loss"].item() == pytest.approx(hand, abs=1e-6)
    assert out["inside"].tolist() == pytest.approx([1.0, -0.5], abs=1e-6)
    assert out["implicit_acc"].item() == 0.5
    # diffusers' port: -logsigmoid(beta' (ref_diff - model_diff)) with beta' = beta / 2
    diffusers = -torch.nn.functional.logsigmoid(5.0 * ((rw - rl) - (mw - ml))).mean()
    assert out["loss"].item() == pytest.approx(diffusers.item(), abs=1e-6)


def test_ties_are_dropped_and_pairs_oriented(pairs_dir):
    folder, frame, lat0, lat1 = pairs_dir
    assert decisive(np.array([1.0, 0.5, 0.0])).tolist() == [0, 2]
    source = PairSource(folder)
    assert (source.n_pairs, source.n_ties) == (8, 2)
    stream = source.positions(0, 0, 16)  # two epochs, each a permutation of the 8 decisive rows
    assert sorted(stream[:8, 1].tolist()) == sorted(stream[8:, 1].tolist()) == [0, 1, 3, 4, 5, 7, 8, 9]
    rows = source.rows_of(np.array([[0, 1], [0, 0]]))  # label 0: image_1 wins; label 1: image_0
    assert rows["latent_win"].iloc[0] == frame["latent_1"].iloc[1]
    assert rows["latent_win"].iloc[1] == frame["latent_0"].iloc[0]
    with pytest.raises(PairsError, match="tie"):
        orient(frame.iloc[[2]])


def _train(tiny_models, folder, tmp_path, name, **kw):
    pipe = _pipe(tiny_models)
    from diffusers import StableDiffusionPipeline

    out = tmp_path / name
    diffusion_dpo.train_diffusion_dpo(Backbone(pipe, 32), StableDiffusionPipeline, [], None,
                                      _settings(**kw), out, tmp_path / f"{name}-ckpt", pairs=folder)
    return pipe, out


def test_trains_only_the_lora_and_the_saved_lora_reloads(tiny_models, pairs_dir, tmp_path):
    folder = pairs_dir[0]
    base = {k: v.clone() for k, v in _pipe(tiny_models).unet.state_dict().items()}
    pipe, out = _train(tiny_models, folder, tmp_path, "run")
    after = pipe.unet.state_dict()
    lora = [k for k in after if "lora_" in k]
    assert lora and any(after[k].abs().sum() > 0 for k in lora if "lora_B" in k)
    for k, v in after.items():
        if "lora_" not in k:
            assert torch.equal(v, base[k.replace(".base_layer", "")]), k
    assert (out / "log.jsonl").is_file() and (out / "provenance.json").is_file()
    fresh = _pipe(tiny_models)
    fresh.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    x, t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([10, 500])
    states = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = pipe.unet(x, t, encoder_hidden_states=states).sample
        reloaded = fresh.unet(x, t, encoder_hidden_states=states).sample
        plain = _pipe(tiny_models).unet(x, t, encoder_hidden_states=states).sample
    assert torch.allclose(ours, reloaded, atol=1e-5) and not torch.allclose(ours, plain, atol=1e-5)


def test_a_killed_run_resumes_to_the_same_lora(tiny_models, pairs_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    folder = pairs_dir[0]
    _, straight = _train(tiny_models, folder, tmp_path, "straight")
    calls = iter([False, True])  # SIGTERM-style stop after the 2nd of 4 steps (checkpoint written)
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: next(calls, False))
    with pytest.raises(SystemExit):
        _train(tiny_models, folder, tmp_path, "killed")
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: False)
    _, resumed = _train(tiny_models, folder, tmp_path, "killed")
    a = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    b = load_file(str(resumed / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len((resumed / "log.jsonl").read_text().splitlines()) == 4


def test_full_unet_trains_every_weight_and_generation_loads_it(tiny_models, pairs_dir, tmp_path):
    """The official parametrisation: the UNet's own weights change (no adapter), the VAE and text
    encoder do not; the first step's loss is log 2 (policy = frozen reference copy); the output is
    a diffusers ``unet/`` folder that ``load_method_pipeline`` puts in place of the base UNet."""
    from safetensors.torch import load_file

    from spo.models.pipelines import load_method_pipeline

    base = _pipe(tiny_models)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in base.vae.state_dict().items()}
    pipe, out = _train(tiny_models, pairs_dir[0], tmp_path, "full", full_unet=True)
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and not any("lora" in k for k in after)
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) > len(after) // 2, (len(changed), len(after))
    assert all(torch.equal(v, vae_before[k]) for k, v in pipe.vae.state_dict().items())
    log = [__import__("json").loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and len(log) == 4
    assert (out / "unet" / "config.json").is_file() and not (out / "pytorch_lora_weights.safetensors").exists()
    saved = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in saved)

    config = {"models": {"m": {"family": "sd15", "source": {"path": str(tiny_models / "pipelines/tiny-sd15")}}},
              "methods": {"full": {"model": "m", "train": {"prompts": "p"}}}}
    loaded = load_method_pipeline(config, "full", models_root=tiny_models, lora=out)
    assert all(torch.equal(v, after[k]) for k, v in loaded.unet.state_dict().items())
    with pytest.raises(FileNotFoundError, match="holds neither pytorch_lora_weights.safetensors nor unet/"):
        load_method_pipeline(config, "full", models_root=tiny_models, lora=tmp_path / "none" / "full")


def test_a_killed_full_unet_run_resumes_to_the_same_unet(tiny_models, pairs_dir, tmp_path, monkeypatch):
    """Checkpoints of a full-UNet run hold the UNet; the reference stays the starting weights."""
    from safetensors.torch import load_file

    folder = pairs_dir[0]
    _, straight = _train(tiny_models, folder, tmp_path, "straight", full_unet=True)
    calls = iter([False, True])
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: next(calls, False))
    with pytest.raises(SystemExit):
        _train(tiny_models, folder, tmp_path, "killed", full_unet=True)
    assert list((tmp_path / "killed-ckpt").glob("*/unet.safetensors"))
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: False)
    _, resumed = _train(tiny_models, folder, tmp_path, "killed", full_unet=True)
    name = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(straight / name)), load_file(str(resumed / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sdxl_conditioning_path_runs(tiny_models, pairs_dir):
    pipe = _pipe(tiny_models, "sdxl")
    from spo.training.lora import attach_lora

    attach_lora(pipe.unet, rank=2, init="default")
    rows = PairSource(pairs_dir[0]).rows_of(np.array([[0, 0], [0, 1]]))
    dpo = DPOSettings(data="toy", beta=500.0)
    out = diffusion_dpo.micro_loss(Backbone(pipe, 32), rows, dpo, torch.Generator().manual_seed(0),
                                   torch.float32)
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0: policy = ref
    out["loss"].backward()


@pytest.mark.parametrize("block, key", [
    (None, "train.diffusion_dpo'"),
    ({"beta": 5000}, "train.diffusion_dpo.data"),
    ({"data": "toy", "betta": 1}, "train.diffusion_dpo.betta"),
    ({"data": "toy", "beta": -1}, "train.diffusion_dpo.beta"),
    ({"data": "toy", "batch_size": 6, "micro_batch": 4}, "train.diffusion_dpo.batch_size"),
    ({"data": "toy", "full_unet": "yes"}, "train.diffusion_dpo.full_unet"),
    ({"data": "toy", "optimizer": "sgd"}, "train.diffusion_dpo.optimizer"),
    ({"data": "toy", "empty_prompt_rate": 1.0}, "train.diffusion_dpo.empty_prompt_rate"),
])
def test_config_errors_name_the_key(block, key):
    train = {"prompts": "p", "algorithm": "diffusion-dpo"}
    if block is not None:
        train["diffusion_dpo"] = block
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TrainSettings.from_config(train).algorithm_settings()


def test_data_must_name_a_pair_dataset(tiny_config):
    """Checked when the config loads (spo.config), not when the training job starts."""
    from spo.config import ConfigError, validate_config

    tiny_config["methods"]["tiny-sd15-diffusion-dpo"]["train"]["diffusion_dpo"]["data"] = "nope"
    with pytest.raises(ConfigError, match=r"train\.diffusion_dpo\.data.*'nope'.*tiny-sd15-pairs"):
        validate_config(tiny_config)
