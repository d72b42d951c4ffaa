"""The SPO trainer on the tiny SD-1.5 / SDXL models: loss parity, LoRA-only updates, reload, resume."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from spo.models.backbone import Backbone
from spo.preference import build_preference
from spo.sampling.ddim import DDIMSchedule
from spo.sampling.stepwise import PairBatch, sample_pairs
from spo.training import spo_trainer
from spo.training.lora import attach_lora
from spo.training.settings import TrainSettings

PROMPTS = [f"a {c} {o}" for c in ("red", "blue", "green", "golden") for o in ("car", "bird")]


def _pipe(tiny_models, family="sd15"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(tiny_models / "pipelines" / f"tiny-{family}", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _settings(**kw):
    base = dict(prompts="p", preference={"name": "colorfulness"}, num_inference_steps=4,
                timestep_range=[0, 1000], k=2, threshold=0.0, prompts_per_round=2,
                train_batch_size=4, lr=1e-2, lora_rank=4, lora_init="default", epochs=1)
    base.update(kw)
    return TrainSettings.from_config(base)


def test_loss_equals_the_official_four_pass_computation(tiny_models):
    """Ours: one policy + one reference pass on shared x_t, adapter disabled for the reference.
    Official: four separate CFG passes, reference = deep copy of the UNet before the LoRA."""
    pipe = _pipe(tiny_models)
    pipe.unet.double()  # float64 on both sides: what is compared is the math, not rounding
    ref_unet = copy.deepcopy(pipe.unet)
    attach_lora(pipe.unet, rank=4, init="default")
    pipe.unet.double()
    with torch.no_grad():
        for i, (name, p) in enumerate(pipe.unet.named_parameters()):
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(i))
    settings = _settings(clamp_eps=0.1, beta=10.0)
    backbone = Backbone(pipe, 32)
    gen = torch.Generator().manual_seed(0)
    m = 3
    xt = torch.randn(m, 4, 4, 4, generator=gen, dtype=torch.float64)
    pairs = PairBatch(xt_w=xt, xt_l=xt, x_w=torch.randn(m, 4, 4, 4, generator=gen, dtype=torch.float64),
                      x_l=torch.randn(m, 4, 4, 4, generator=gen, dtype=torch.float64), t=torch.tensor([751, 401, 1]),
                      prompt_index=torch.tensor([0, 1, 0]), shared=torch.ones(m, dtype=torch.bool))
    cond = backbone.encode(PROMPTS[:2])
    pipe.scheduler.set_timesteps(4)
    schedule = DDIMSchedule.from_scheduler(pipe.scheduler, 4)
    ours = spo_trainer.pair_loss(backbone, schedule, pairs, cond, settings)["loss"]

    # The formula, written out here independently of spo.sampling / spo.models.
    ac = pipe.scheduler.alphas_cumprod.double()
    text = cond.cond[pairs.prompt_index].double()
    empty = cond.uncond[pairs.prompt_index].double()

    def logp(unet, x_t, x_next, t):
        out = unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                   encoder_hidden_states=torch.cat([empty, text])).sample
        e_u, e_c = out.chunk(2)
        eps = e_u + 5.0 * (e_c - e_u)
        a = ac[t].view(-1, 1, 1, 1)
        prev = t - 1000 // 4
        a_p = torch.where(prev >= 0, ac[prev.clamp(min=0)], torch.full_like(ac[t], float(ac[0]))).view(-1, 1, 1, 1)
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        var = (1 - a_p) / (1 - a) * (1 - a / a_p)
        mean = a_p.sqrt() * x0 + (1 - a_p - var).sqrt() * eps
        return torch.distributions.Normal(mean, var.sqrt().expand_as(mean)).log_prob(x_next).mean(dim=(1, 2, 3))

    with torch.no_grad():
        ref_w, ref_l = logp(ref_unet, xt, pairs.x_w, pairs.t), logp(ref_unet, xt, pairs.x_l, pairs.t)
    pol_w, pol_l = logp(pipe.unet, xt, pairs.x_w, pairs.t), logp(pipe.unet, xt, pairs.x_l, pairs.t)
    ratio_w = torch.clamp(torch.exp(pol_w - ref_w), 0.9, 1.1)
    ratio_l = torch.clamp(torch.exp(pol_l - ref_l), 0.9, 1.1)
    official = -F.logsigmoid(10.0 * (torch.log(ratio_w) - torch.log(ratio_l))).mean()
    assert abs(ours.item() - official.item()) < 1e-6
    assert abs(ours.item() - math.log(2)) > 1e-4  # the LoRA is not a no-op here


def test_mspo_windows_label_every_transition(tiny_models):
    pipe = _pipe(tiny_models, "sdxl")
    settings = _settings(num_inference_steps=8, k=2, inner_steps=4).sampler()
    pairs, stats = sample_pairs(Backbone(pipe, 32), pipe.scheduler, PROMPTS[:2],
                                build_preference({"name": "colorfulness"}), settings,
                                torch.Generator().manual_seed(0))
    # 8 trained steps in windows of 4: 2 windows x 4 transitions x 2 prompts, threshold 0.
    assert stats["pairs_total"] == 16 and len(pairs) == 16
    assert pairs.shared.view(2, 4, 2).permute(0, 2, 1).reshape(-1, 4)[:, 0].all()
    assert not pairs.shared.view(2, 4, 2).permute(0, 2, 1).reshape(-1, 4)[:, 1:].any()
    # Chains are continuous: the win chain's next state is where its next transition starts.
    order = pairs.t.argsort(descending=True, stable=True)
    first, second = pairs.select(order[0:2]), pairs.select(order[2:4])
    assert torch.equal(first.x_w, second.xt_w) and torch.equal(first.x_l, second.xt_l)


def test_training_changes_only_lora_and_reloads(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = _pipe(tiny_models)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    settings = _settings(max_rounds=2)
    result = spo_trainer.train_spo(Backbone(pipe, 32), StableDiffusionPipeline, PROMPTS,
                                   build_preference(settings.preference), settings,
                                   tmp_path / "out", tmp_path / "ckpt")
    assert result["steps"] >= 2
    after = pipe.unet.state_dict()
    changed = {k for k in after if "lora_" in k and not torch.equal(after[k], torch.zeros_like(after[k]))}
    assert changed, "LoRA did not train"
    base_keys = {k.replace("base_layer.", "") for k in after if "lora_" not in k}
    assert base_keys == set(before)
    for k, v in after.items():
        if "lora_" not in k:
            assert torch.equal(v, before[k.replace("base_layer.", "")]), k
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "ratio_win", "ratio_lose", "accepted_fraction", "score_mean", "score_std",
            "lr", "pairs_per_s"} <= set(log[0])

    def images(p):
        g = [torch.Generator().manual_seed(i) for i in range(2)]
        return p(PROMPTS[:2], generator=g, num_inference_steps=4, height=32, width=32,
                 output_type="pt").images

    trained = images(pipe)
    fresh = _pipe(tiny_models)
    base_images = images(fresh)
    fresh.load_lora_weights(str(tmp_path / "out"), weight_name="pytorch_lora_weights.safetensors")
    assert torch.allclose(images(fresh), trained, atol=1e-5)
    assert not torch.allclose(base_images, trained, atol=1e-4)


def test_killed_run_resumes_to_the_same_lora(tiny_models, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    settings = _settings(max_rounds=3)
    spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                          build_preference(settings.preference), settings, tmp_path / "a", tmp_path / "ca")

    calls = {"n": 0}
    real = spo_trainer.sample_pairs

    def dies_in_round_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real(*args, **kwargs)

    monkeypatch.setattr(spo_trainer, "sample_pairs", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                              build_preference(settings.preference), settings, tmp_path / "b", tmp_path / "cb")
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(spo_trainer, "sample_pairs", real)
    spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                          build_preference(settings.preference), settings, tmp_path / "b", tmp_path / "cb")
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_accelerator_is_on_the_models_device():
    """The trainers put their tensors on ``accelerator.device``: it must be where the models are
    (on a GPU machine, "cuda if available" once put the SPM's labels on cuda:0 beside a scorer the
    caller had loaded on the CPU). accelerate's state is one per process: a second device is an
    error that names both, not a silent training on the first."""
    from spo.training.loop import accelerator_on

    assert accelerator_on("cpu").device.type == "cpu"
    assert accelerator_on(torch.device("cpu"), "no").device.type == "cpu"
    with pytest.raises(RuntimeError, match="models are on 'cuda'.*is on 'cpu'.*fresh process"):
        accelerator_on("cuda")


def test_each_launched_process_trains_on_its_own_gpu(monkeypatch):
    """``accelerate launch --multi_gpu`` starts one process per GPU with LOCAL_RANK set; a plain
    "cuda" in each would load all the copies of the model on GPU 0 (accelerate then puts rank r's
    state on cuda:r). CPU runs, distributed or not, stay on the CPU."""
    from spo.devices import process_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device() == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device() == "cpu"  # gloo processes on CPUs (the distributed tests)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for rank in range(4):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        assert process_device() == f"cuda:{rank}"
    monkeypatch.setenv("LOCAL_RANK", "5")  # fewer visible GPUs than local processes: as accelerate
    assert process_device() == "cuda:1"
    monkeypatch.delenv("LOCAL_RANK")
    assert process_device() == "cuda"


def test_a_model_on_another_gpu_than_the_accelerator_is_caught(monkeypatch):
    """What ``accelerator_on`` compares: the type, and for GPUs the index ("cuda" alone meaning the
    current GPU); accelerate names the CPU of a distributed CPU run "cpu:0"."""
    from spo.training.loop import _same_device

    cpu, cpu0 = torch.device("cpu"), torch.device("cpu:0")
    assert _same_device(cpu, cpu0) and not _same_device(cpu, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # rank 1 after accelerate's set_device
    assert _same_device(torch.device("cuda"), torch.device("cuda:1"))
    assert not _same_device(torch.device("cuda:0"), torch.device("cuda:1"))
    assert not _same_device(torch.device("cuda:0"), torch.device("cuda"))


def test_nan_loss_stops_without_writing_its_state(tiny_models, tmp_path, monkeypatch):
    """A non-finite loss stops the job before its backward pass; the state of a diverging round is
    never written as a checkpoint (issue 20: the "last good state" written then held the update
    that blew up, and a rerun resumed it)."""
    from diffusers import StableDiffusionPipeline

    def nan_loss(*args, **kwargs):
        one = torch.ones(1)
        return {"loss": torch.tensor(float("nan"), requires_grad=True), "ratio_w": one, "ratio_l": one}

    monkeypatch.setattr(spo_trainer, "pair_loss", nan_loss)
    settings = _settings(max_rounds=2)
    with pytest.raises(spo_trainer.NonFiniteLossError, match="optimizer step 0.*train.lr"):
        spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                              build_preference(settings.preference), settings, tmp_path / "o", tmp_path / "c")
    assert not list((tmp_path / "c").glob("step-*")) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("block, key", [
    ({"k": 1}, "train.k"), ({"lr": 0}, "train.lr"), ({"timestep_range": [700, 100]}, "train.timestep_range"),
    ({"inner_steps": 0}, "train.inner_steps"), ({"threshold": -0.1}, "train.threshold"),
    ({"bogus": 1}, "train.bogus"),
])
def test_bad_settings_name_the_key(block, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TrainSettings.from_config({"prompts": "p", **block})


def test_unknown_preference_names_the_choices():
    with pytest.raises(KeyError, match="preference.name.*colorfulness"):
        build_preference({"name": "colourfulness"})


def test_a_range_with_no_ddim_step_is_named(tiny_models):
    pipe = _pipe(tiny_models)
    settings = _settings(num_inference_steps=4, timestep_range=[10, 20]).sampler()
    with pytest.raises(ValueError, match=r"train\.timestep_range.*\[10, 20\].*widen"):
        sample_pairs(Backbone(pipe, 32), pipe.scheduler, PROMPTS[:2],
                     build_preference({"name": "colorfulness"}), settings, torch.Generator())
