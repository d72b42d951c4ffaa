"""The precision policy of train-spm (``spm.runs.<run>.mixed_precision``, spo/spm/precision.py) on
the CPU: the device check before any model loads, the dtypes of a tiny bf16 training, and the
bf16 loss against float32's on fixed inputs."""

from __future__ import annotations

import pytest
import torch

from spo.config_spec import ConfigError

RUN = "tiny-sd15-spm"
# bf16 keeps 8 bits of mantissa (relative 0.4 %): with the backbone's x̂0 and the SPM both in
# bf16, the tiny SPM's logits (15-36) moved by up to 1.4-1.7 % relative, the pair loss (~0.5) by
# 0.006-0.039 and the SPM's gradient kept a cosine >= 0.997 to float32's (measured on four
# batches of 8 pairs, noise seeds 3-6; the test uses seed 3: loss -0.010, logits 1.4 %).
LOSS_TOL = 0.1
LOGIT_REL_TOL = 0.04


def _no_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the precision check")


def _train(config, world, tmp, **kw):
    from spo.spm.stage import train_spm

    _, models_root, root = world
    return train_spm(config, RUN, pairs=root / "pairs/train", val_pairs=root / "pairs/validation",
                     out_dir=tmp / "model", validation_csv=tmp / "val.csv", checkpoints=tmp / "ckpt",
                     models_root=models_root, device="cpu", **kw)


@pytest.fixture()
def no_loading(monkeypatch):
    from spo.models import pipelines
    from spo.preference import spm_io

    monkeypatch.setattr(pipelines, "load_model_pipeline", _no_load)
    monkeypatch.setattr(spm_io, "from_pickscore", _no_load)


@pytest.mark.parametrize("key, value, match", [
    ("mixed_precision", "fp16", r"'spm.runs.tiny-sd15-spm.mixed_precision' is 'fp16'; the device 'cpu' "
                                r"supports 'no', 'bf16' \(fp16 autocast needs a CUDA GPU\)"),
    ("backbone_dtype", "float16", r"'spm.runs.tiny-sd15-spm.backbone_dtype' is 'float16'; the device "
                                  r"'cpu' supports 'float32', 'bfloat16' \(float16 needs a CUDA GPU\)"),
    ("dtype", "float16", r"'spm.runs.tiny-sd15-spm.dtype' is 'float16'; the device 'cpu' supports "
                         r"'float32', 'bfloat16'"),
])
def test_train_spm_checks_the_device_before_loading_a_model(spm_world, spm_config, tmp_path, no_loading,
                                                            key, value, match):
    spm_config["spm"]["runs"][RUN][key] = value
    with pytest.raises(ConfigError, match=match):
        _train(spm_config, spm_world, tmp_path)


def test_bf16_on_a_gpu_without_it_names_the_key(monkeypatch):
    from spo.spm.precision import spm_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    spec = {"mixed_precision": "bf16"}
    with pytest.raises(ConfigError, match=r"'spm.runs.r.mixed_precision' is 'bf16'; the device 'cuda:0' "
                                          r"supports 'no', 'fp16' \(this GPU has no bf16 support\)"):
        spm_precision("r", spec, "cuda:0")
    policy, backbone = spm_precision("r", {"mixed_precision": "fp16"}, "cuda:0")
    assert (policy.mode, backbone.weight_dtype) == ("fp16", torch.float16)


def test_mixed_precision_and_the_older_dtype_key(spm_config):
    """``dtype`` (by dtype name) still selects the policy; both keys disagreeing fail at load."""
    from spo.config import validate_config
    from spo.spm.precision import run_mixed_precision, spm_precision

    assert run_mixed_precision({}) == "no" and run_mixed_precision({"dtype": "bfloat16"}) == "bf16"
    policy, backbone = spm_precision("r", {"dtype": "bfloat16", "backbone_dtype": "float32"}, "cpu")
    assert (policy.mode, backbone.mode) == ("bf16", "no")
    assert spm_precision("r", {"mixed_precision": "bf16", "dtype": "bfloat16"}, "cpu")[1].mode == "bf16"
    spm_config["spm"]["runs"][RUN].update(mixed_precision="bf16", dtype="float32")
    with pytest.raises(ConfigError, match=r"'spm.runs.tiny-sd15-spm.dtype' is 'float32'; it is the older "
                                          r"name of 'spm.runs.tiny-sd15-spm.mixed_precision' \('bf16'\)"):
        validate_config(spm_config)


def test_paper_profile_spm_runs_are_the_official_precision(repo_root, tmp_path, no_loading):
    """config/paper.yaml: the SPM in bf16 (the official DeepSpeed bf16), the diffusion backbone in
    float16 (the official ``torch_dtype=torch.float16`` pipeline); a CPU cannot store float16, and
    train-spm says so before loading anything."""
    from spo.config import load_config
    from spo.spm.stage import train_spm

    config = load_config([repo_root / "config" / "paper.yaml"], root=repo_root)
    runs = config["spm"]["runs"]
    assert {(r["mixed_precision"], r["backbone_dtype"]) for r in runs.values()} == {("bf16", "float16")}
    assert not any("dtype" in r for r in runs.values())
    with pytest.raises(ConfigError, match=r"'spm.runs.sd15-spm.backbone_dtype' is 'float16'; the device 'cpu'"):
        train_spm(config, "sd15-spm", pairs=tmp_path / "p", val_pairs=tmp_path / "v", out_dir=tmp_path / "o",
                  validation_csv=tmp_path / "v.csv", checkpoints=tmp_path / "c", models_root=tmp_path / "m",
                  device="cpu")


def test_a_tiny_bf16_spm_training_has_the_policys_dtypes(spm_world, spm_config, tmp_path, monkeypatch):
    """Two bf16 steps of train-spm: the backbone (UNet, VAE, text encoder) bf16, the SPM, its
    checkpointed weights and AdamW state float32, the SPM's passes under bf16 autocast."""
    from spo.preference.spm_model import StepAwarePreferenceModel
    from spo.spm import backbone as backbone_module

    spm_config["spm"]["runs"][RUN].update(mixed_precision="bf16", checkpoint_every=1)
    seen = {"autocast": [], "scores": []}
    real_load, real_scores = backbone_module.load_backbone, StepAwarePreferenceModel.scores_from_features

    def load_backbone(*args, **kwargs):
        seen["backbone"] = real_load(*args, **kwargs)
        return seen["backbone"]

    def scores_from_features(self, image, text):
        seen["autocast"].append(torch.is_autocast_enabled("cpu")
                                and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        out = real_scores(self, image, text)
        seen["scores"].append(out.detach())
        return out

    monkeypatch.setattr(backbone_module, "load_backbone", load_backbone)
    monkeypatch.setattr(StepAwarePreferenceModel, "scores_from_features", scores_from_features)
    out = _train(spm_config, spm_world, tmp_path, stop_after=2)
    assert out["step"] == 2
    pipe = seen["backbone"].pipe
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.bfloat16}
    assert {p.dtype for p in out["model"].parameters()} == {torch.float32}
    state = torch.load(tmp_path / "ckpt/step-00000002/state.pt", weights_only=True)
    assert {t.dtype for t in state["model"].values() if t.is_floating_point()} == {torch.float32}
    moments = [t for s in state["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    # the untrained validation (2 timesteps) and both training steps: every SPM pass under bf16
    assert len(seen["autocast"]) >= 4 and all(seen["autocast"])
    assert all(torch.isfinite(s).all() for s in seen["scores"])


def _batch_loss(world, config, precision):
    """The pair loss and the SPM's gradient on one fixed batch: the SPM float32, the backbone and
    the SPM's forward pass under ``precision``."""
    from spo.preference.spm_io import from_pickscore
    from spo.spm.backbone import load_backbone
    from spo.spm.objective import pair_loss
    from spo.spm.stage import resolve_pickscore
    from spo.spm.stream import PairStream
    from spo.spm.train import noisy_x0_images, score_pairs

    _, models_root, root = world
    torch.manual_seed(0)
    scorer = from_pickscore(*resolve_pickscore(config, models_root), time_condition=True)
    backbone = load_backbone(config, "tiny-sd15", models_root=models_root, precision=precision)
    pairs = PairStream(root / "pairs/train")
    idx = torch.arange(8)
    meta = pairs.meta(idx)
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (8,), generator=gen)
    latents = pairs.latents(idx)
    noise = torch.randn(latents[:, 0].shape, generator=gen)
    images = noisy_x0_images(backbone, latents, meta["prompts"], t, noise)
    with precision.autocast():
        s0, s1 = score_pairs(scorer, images, meta["prompts"], t)
        loss = pair_loss(s0, s1, meta["label"], meta["epp"])
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in scorer.model.parameters() if p.grad is not None])
    return loss.detach(), torch.cat([s0, s1]).detach().float(), grad


def test_bf16_spm_loss_is_finite_and_close_to_float32(spm_world, spm_config):
    from spo.training.precision import Precision

    loss32, s32, g32 = _batch_loss(spm_world, spm_config, Precision("no", "cpu"))
    loss16, s16, g16 = _batch_loss(spm_world, spm_config, Precision("bf16", "cpu"))
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16) and torch.isfinite(g16).all()
    assert abs(float(loss16 - loss32)) <= LOSS_TOL, (loss16, loss32)
    assert float(((s16 - s32).abs() / s32.abs()).max()) <= LOGIT_REL_TOL
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_fp16_loss_scale_is_checkpointed_and_restored(spm_world, spm_config, tmp_path, monkeypatch):
    """fp16's GradScaler (a CPU one here: accelerate has none on the CPU) rides in the optimiser's
    first param group, so a resumed run goes on with the scale it stopped at, not the initial one."""
    from spo.training import loop

    real, made = loop.accelerator_on, []

    def accelerator_on(device, mixed_precision="no"):
        accel = real(device, mixed_precision)
        accel.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** (10 - 7 * len(made)), growth_interval=1)
        made.append(accel)
        return accel

    monkeypatch.setattr(loop, "accelerator_on", accelerator_on)
    spm_config["spm"]["runs"][RUN].update(checkpoint_every=1)
    _train(spm_config, spm_world, tmp_path, stop_after=2)
    state = torch.load(tmp_path / "ckpt/step-00000002/state.pt", weights_only=True)
    saved = state["optimizer"]["param_groups"][0]["loss_scaler"]
    assert saved["scale"] == made[0].scaler.get_scale() == 2.0 ** 12  # grown once a step
    _train(spm_config, spm_world, tmp_path, stop_after=1)
    assert made[1].scaler.get_scale() == 2.0 ** 13  # restored (not 2^3), then grown once
