"""The precision policy (issue 18, item 1: ``train.mixed_precision``) on the CPU: bf16 dtypes of a
tiny training, the loss against float32, the preference model under the policy, fp16's loss
scale, and the device check before any model loads."""

import copy

import pytest
import torch

from spo.config_spec import ConfigError
from spo.training.precision import (Precision, UnderPolicy, cast_frozen, check_precision,
                                    supported_values, under_policy)

PROMPTS = ["a red car", "a blue bird"]
# bf16 keeps 8 bits of mantissa. The SPO loss is a difference of log-probabilities of order 100
# (a transition at t = 1 has log p ~ -131 on the tiny SD-1.5), so bf16 moves each pair's
# log-ratio by up to ~0.02 and beta = 10 magnifies that: on the inputs below (loss ~1.0) the
# loss moved by 0.086, over 8 seeds of the LoRA by 0.004-0.19 (gradient cosine >= 0.986).
LOSS_TOL = 0.2


def _pipe(tiny_models, family="sd15"):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(tiny_models / "pipelines" / f"tiny-{family}", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- the device check -----------------------------------------------------------------------------

def test_supported_values_per_device():
    assert supported_values("cpu") == ("no", "bf16")
    assert supported_values("cuda", bf16_supported=True) == ("no", "fp16", "bf16")
    assert supported_values("cuda", bf16_supported=False) == ("no", "fp16")
    assert supported_values("mps") == ("no",)


def test_fp16_on_cpu_names_the_key_and_the_supported_values():
    key = "methods.sd15-spo.train.mixed_precision"
    with pytest.raises(ConfigError, match=rf"config key '{key}' is 'fp16'; the device 'cpu' supports "
                                          r"'no', 'bf16' \(fp16 autocast needs a CUDA GPU\)"):
        check_precision("fp16", "cpu", key=key)
    assert check_precision("bf16", "cpu") == Precision("bf16", "cpu")
    assert check_precision("no", "cpu").weight_dtype == torch.float32


def test_bf16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match=r"'train.mixed_precision' is 'bf16'; the device 'cuda:0' "
                                          r"supports 'no', 'fp16' \(this GPU has no bf16 support\)"):
        check_precision("bf16", "cuda:0")
    assert check_precision("fp16", "cuda:0").weight_dtype == torch.float16


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the precision check")


def test_stage_checks_the_precision_before_loading_a_model(tiny_config, tmp_path, monkeypatch):
    from spo.models import pipelines
    from spo.training import stage

    monkeypatch.setattr(pipelines, "load_model_pipeline", _no_load)
    tiny_config["methods"]["tiny-sd15-spo-colorfulness"]["train"]["mixed_precision"] = "fp16"
    with pytest.raises(ConfigError, match=r"'methods.tiny-sd15-spo-colorfulness.train.mixed_precision' "
                                          r"is 'fp16'; the device 'cpu' supports 'no', 'bf16'"):
        stage.train_method(tiny_config, "tiny-sd15-spo-colorfulness", tmp_path / "out",
                           checkpoint_dir=tmp_path / "ckpt", models_root=tmp_path / "models",
                           device="cpu")


def test_paper_profile_trains_in_the_official_fp16(repo_root, tmp_path, monkeypatch):
    """Every trained method of config/paper.yaml uses the official fp16 (accelerate_cfg/
    1m4g_fp16.yaml), which a CPU cannot run: the stage says so before loading anything."""
    from spo.config import load_config, train_settings
    from spo.models import pipelines
    from spo.training import stage

    config = load_config([repo_root / "config" / "paper.yaml"], root=repo_root)
    trained = [m for m, spec in config["methods"].items() if "train" in spec]
    assert trained and {train_settings(config, m).mixed_precision for m in trained} == {"fp16"}
    monkeypatch.setattr(pipelines, "load_model_pipeline", _no_load)
    with pytest.raises(ConfigError, match=r"'methods.sd15-spo.train.mixed_precision' is 'fp16'"):
        stage.train_method(config, "sd15-spo", tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                           models_root=tmp_path / "models", root=repo_root, device="cpu")


# --- dtypes ---------------------------------------------------------------------------------------

def test_cast_frozen_keeps_what_must_stay_float32(tiny_models):
    pipe = _pipe(tiny_models, "sdxl")
    cast_frozen(pipe, Precision("bf16", "cpu"))
    assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)} == {torch.bfloat16}
    pipe = _pipe(tiny_models, "sdxl")
    # fp16 on SDXL's original VAE (force_upcast: it overflows in fp16), a wholly trained UNet
    assert pipe.vae.config.force_upcast
    cast_frozen(pipe, Precision("fp16", "cuda"), keep_unet=True)
    assert (pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder_2.dtype) == (
        torch.float32, torch.float32, torch.float16)
    pipe = _pipe(tiny_models)
    cast_frozen(pipe, Precision("no", "cpu"))
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}


def test_lora_on_a_bf16_unet_is_float32(tiny_models):
    from spo.training.lora import attach_lora

    pipe = _pipe(tiny_models)
    cast_frozen(pipe, Precision("bf16", "cpu"))
    params = attach_lora(pipe.unet, rank=4, init="gaussian")
    assert params and {p.dtype for p in params} == {torch.float32}
    frozen = {p.dtype for n, p in pipe.unet.named_parameters() if "lora_" not in n}
    assert frozen == {torch.bfloat16}


def test_a_tiny_bf16_training_has_the_policys_dtypes(tiny_config, tiny_models, tmp_path, monkeypatch):
    """``spo train`` (stage.train_method) with ``mixed_precision: bf16``: frozen modules bf16, LoRA,
    its gradients' AdamW state and the written LoRA float32, the loss finite."""
    from safetensors.torch import load_file

    from spo.training import settings as settings_module
    from spo.training import spo_trainer
    from spo.training.stage import train_method

    method = "tiny-sd15-spo-colorfulness"
    tiny_config["methods"][method]["train"].update(
        mixed_precision="bf16", max_rounds=1, prompts_per_round=2, num_inference_steps=4,
        resolution=32, threshold=0.0, dump_examples=0)
    seen = {}
    real_trainer, real_adamw = settings_module.trainer_for, spo_trainer.adamw

    def adamw(params, settings):
        seen["optimizer"] = real_adamw(params, settings)
        return seen["optimizer"]

    def trainer_for(algorithm):
        def run(backbone, *args, **kwargs):
            out = real_trainer(algorithm)(backbone, *args, **kwargs)
            seen["pipe"], seen["preference"] = backbone.pipe, args[2]
            return out
        return run

    monkeypatch.setattr(settings_module, "trainer_for", trainer_for)
    monkeypatch.setattr(spo_trainer, "adamw", adamw)
    result = train_method(tiny_config, method, tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                          models_root=tiny_models, device="cpu")
    assert result["steps"] == 1 and torch.isfinite(torch.tensor(result["final_loss"]))
    pipe = seen["pipe"]
    assert (pipe.unet.conv_in.weight.dtype, pipe.vae.dtype, pipe.text_encoder.dtype) == (torch.bfloat16,) * 3
    lora = [p for n, p in pipe.unet.named_parameters() if "lora_" in n]
    assert lora and {p.dtype for p in lora} == {torch.float32}
    state = seen["optimizer"].state
    assert state and {t.dtype for s in state.values() for k, t in s.items() if k != "step"} == {torch.float32}
    assert isinstance(seen["preference"], UnderPolicy)
    written = load_file(tmp_path / "out" / "pytorch_lora_weights.safetensors")
    assert {t.dtype for t in written.values()} == {torch.float32}


# --- numbers --------------------------------------------------------------------------------------

def _pairs(m=3):
    from spo.sampling.stepwise import PairBatch

    gen = torch.Generator().manual_seed(0)
    xt = torch.randn(m, 4, 4, 4, generator=gen)
    return PairBatch(xt_w=xt, xt_l=xt, x_w=xt + 0.3 * torch.randn(m, 4, 4, 4, generator=gen),
                     x_l=xt + 0.3 * torch.randn(m, 4, 4, 4, generator=gen), t=torch.tensor([751, 401, 1]),
                     prompt_index=torch.tensor([0, 1, 0]), shared=torch.ones(m, dtype=torch.bool))


def test_bf16_loss_is_finite_and_close_to_float32(tiny_models):
    """The same LoRA and pairs, float32 against bf16 (frozen weights bf16, LoRA float32, autocast):
    the SPO loss within ``LOSS_TOL`` and the LoRA gradient in the same direction."""
    from spo.models.backbone import Backbone
    from spo.sampling.ddim import DDIMSchedule
    from spo.training.lora import attach_lora, lora_state_dict, load_lora_state_dict
    from spo.training.settings import TrainSettings
    from spo.training.spo_trainer import pair_loss

    settings = TrainSettings.from_config(dict(prompts="p", num_inference_steps=4, eta=1.0,
                                              beta=10.0, clamp_eps=None))
    out, state = {}, None
    for mode in ("no", "bf16"):
        precision = Precision(mode, "cpu")
        pipe = _pipe(tiny_models)
        cast_frozen(pipe, precision)
        params = attach_lora(pipe.unet, rank=4, init="default")
        if state is None:  # a trained-looking LoRA (B != 0), drawn once, loaded into both
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for name, p in pipe.unet.named_parameters():
                    if "lora_" in name:
                        p.normal_(0, 0.02 if "lora_B" in name else 0.5, generator=gen)
            state = lora_state_dict(pipe.unet)
        load_lora_state_dict(pipe.unet, copy.deepcopy(state))
        backbone = Backbone(pipe, 32, autocast=precision.autocast)
        schedule = DDIMSchedule.from_scheduler(pipe.scheduler, settings.num_inference_steps)
        cond = backbone.encode(PROMPTS)
        with precision.autocast():
            result = pair_loss(backbone, schedule, _pairs(), cond, settings)
        result["loss"].backward()
        out[mode] = (result["loss"].detach(), torch.cat([p.grad.flatten() for p in params]))
    (loss32, grad32), (loss16, grad16) = out["no"], out["bf16"]
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert abs(loss16 - loss32) <= LOSS_TOL, (loss16, loss32)
    assert torch.isfinite(grad16).all() and grad16.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.98, cosine


def test_the_preference_model_runs_under_the_policy(tmp_path):
    """An SPM stored in bf16, called under the policy: float32 scores close to float32's."""
    from spo.metrics.tiny import save_tiny_weights
    from spo.preference.spm_io import from_pickscore

    weights = save_tiny_weights("pickscore", tmp_path / "pickscore", seed=5)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 500])
    ref = from_pickscore(weights["model"], weights["processor"])(images, PROMPTS, t)
    spm = from_pickscore(weights["model"], weights["processor"], dtype="bfloat16")
    scored = under_policy(spm, Precision("bf16", "cpu"))
    got = scored(images, PROMPTS, t)
    assert got.dtype == torch.float32 and scored.step_aware == spm.step_aware
    assert torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()) + 1e-3), (got, ref)
    assert under_policy(spm, Precision("no", "cpu")) is spm

    class Probe:
        def __call__(self, images, prompts, timesteps):
            return torch.full((len(images),), float(torch.is_autocast_enabled("cpu")),
                              dtype=torch.get_autocast_dtype("cpu"))

    assert under_policy(Probe(), Precision("bf16", "cpu"))(images, PROMPTS, t).tolist() == [1.0, 1.0]


# --- fp16's loss scale ----------------------------------------------------------------------------

class _ScaledAccelerator:
    """What ``optimizer_step`` uses of an fp16 accelerator: its GradScaler (a CPU one here)."""

    def __init__(self, scale=None):  # None: no scaler (bf16, no)
        self.scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def test_fp16_gradients_are_unscaled_before_the_step(tmp_path):
    from spo.training.loop import Guard, optimizer_step

    def run(scaled: bool, bad: bool = False):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.0)
        acc = _ScaledAccelerator(1024.0 if scaled else None)
        loss = (p * torch.tensor([3.0, float("inf") if bad else 0.5])).sum()
        (acc.scaler.scale(loss) if scaled else loss).backward()
        optimizer_step([p], opt, acc, 1, 0.01, guard=Guard(tmp_path, "fix"))
        return p.detach(), acc

    plain, _ = run(False)
    scaled, acc = run(True)
    assert torch.equal(plain, scaled)  # clipping and the step saw the unscaled gradient
    kept, acc = run(True, bad=True)  # an overflow: the step is skipped, the scale lowered
    assert torch.equal(kept, torch.tensor([1.0, -2.0])) and acc.scaler.get_scale() == 512.0


def test_the_fp16_loss_scale_is_checkpointed_with_the_optimizer(tmp_path):
    """The scaler's state rides in the optimizer's first param group, so a checkpoint (which
    holds the optimizer's state dict) resumes it, before the first backward pass."""
    from spo.training.loop import Guard, optimizer_step, restore_loss_scale

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.AdamW([p], lr=0.1)
    acc = _ScaledAccelerator(1024.0)
    for bad in (True, False):  # an overflow halves the scale, then a good step
        acc.scaler.scale((p * torch.tensor([3.0, float("inf") if bad else 0.5])).sum()).backward()
        optimizer_step([p], opt, acc, 1, 0.0, guard=Guard(tmp_path, "fix"))
    state = copy.deepcopy(opt.state_dict())
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    fresh.load_state_dict(state)
    resumed = _ScaledAccelerator(1024.0)
    restore_loss_scale(resumed, fresh)
    assert resumed.scaler.get_scale() == acc.scaler.get_scale() == 512.0
    assert resumed.scaler.state_dict() == acc.scaler.state_dict()
    restore_loss_scale(_ScaledAccelerator(None), fresh)  # bf16 / no: nothing to restore
