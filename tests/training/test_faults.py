"""Issue 20: faults lose nothing and never pass silently.

One test (or more) per finding: a diverging training (NaN recovery), resume keyed on every input,
hints that work, errors instead of raw exceptions, and the smaller ones (atomic folder
replacement, JSON logs without NaN, SIGTERM within a step; the dry run and the SLURM profile's
signal lead time are in tests/workflow/test_faults_workflow.py). Everything runs on the session's tiny
models in a few seconds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spo.models.backbone import Backbone
from spo.preference import build_preference
from spo.training import checkpoints, loop, spo_trainer
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


def _train(tiny_models, tmp_path, settings, name="o", ckpt="c", preference=None, resolved=None):
    from diffusers import StableDiffusionPipeline

    preference = preference or build_preference(settings.preference)
    return spo_trainer.train_spo(Backbone(_pipe(tiny_models), 32), StableDiffusionPipeline, PROMPTS,
                                 preference, settings, tmp_path / name, tmp_path / ckpt,
                                 resolved=resolved)


def _checkpoint_values_are_finite(folder: Path) -> bool:
    from safetensors.torch import load_file

    for step in folder.glob("step-*"):
        for file in step.glob("*.safetensors"):
            if any(not torch.isfinite(v).all() for v in load_file(str(file)).values()):
                return False
    return True


# --- 1. A NaN loss poisons nothing ------------------------------------------------------------

def test_lr_1e30_fails_naming_train_lr_on_the_run_and_on_the_plain_rerun(tiny_models, tmp_path):
    """The probe of finding 1: `lr: 1e30`, then a plain rerun. Before, the first run wrote the
    blown-up weights (max |w| 1e30) as round 0's "last good state"; the rerun resumed them, logged
    "0 pairs accepted, score nan" every round and exited 0 with a LoRA that makes black images."""
    settings = _settings(max_rounds=2, lr=1e30)
    for attempt in range(2):
        with pytest.raises(spo_trainer.NonFiniteLossError, match=r"train\.lr.*1e\+30") as err:
            _train(tiny_models, tmp_path, settings)
        assert "diverged" in str(err.value) and str(tmp_path / "c") in str(err.value), attempt
        assert not (tmp_path / "o").exists(), attempt
        assert _checkpoint_values_are_finite(tmp_path / "c"), attempt


def test_nonfinite_gradients_stop_before_the_step_and_nonfinite_weights_after_it():
    accelerator = loop.accelerator_on("cpu")
    guard = loop.Guard("/nowhere", "lower config key 'train.lr'")
    w = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([w], lr=1e-3)
    w.grad = torch.tensor([1.0, float("nan"), 1.0])
    with pytest.raises(loop.NonFiniteTrainingError, match="gradients of 1 of 1.*train.lr"):
        loop.optimizer_step([w], optimizer, accelerator, 1, 1.0, guard=guard, where="step 0")
    assert torch.equal(w.detach(), torch.ones(3)) and not optimizer.state  # the step was not applied

    with torch.no_grad():
        w.fill_(3e38)  # near float32's largest: the next update overflows it
    w.grad = -torch.ones(3)
    sgd = torch.optim.SGD([w], lr=1e38)
    with pytest.raises(loop.NonFiniteTrainingError, match="update made 1 of 1 trained tensors NaN"):
        loop.optimizer_step([w], sgd, accelerator, 1, 0.0, guard=guard, where="step 1")


def test_checkpoints_refuse_nonfinite_values_on_write_and_on_load(tmp_path, caplog):
    from spo.checkpoint import save_checkpoint

    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    checkpoints.save(tmp_path, 1, 5, net, optimizer, [{"step": 5}], full_unet=True)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(checkpoints.NonFiniteCheckpointError, match=r"NaN.*train\.lr"):
        checkpoints.save(tmp_path, 2, 6, net, optimizer, [], full_unet=True)
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-00000001"]

    # A poisoned checkpoint written by an older version is skipped, never resumed.
    from safetensors.torch import save_file

    def poisoned(folder):
        save_file({k: v.detach().clone() for k, v in net.state_dict().items()}, str(folder / "unet.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "state.json").write_text(json.dumps({"round": 2, "step": 6, "log": []}))

    save_checkpoint(tmp_path, 2, poisoned)
    fresh = torch.nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING):
        assert checkpoints.resume(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))[:2] == (1, 5)
    assert "step-00000002" in caplog.text and "NaN or infinite" in caplog.text


class _Constant:
    step_aware = False

    def __call__(self, images, prompts, timesteps):
        return torch.zeros(len(images))


def test_rounds_without_pairs_are_counted_and_stop_with_the_reason(tiny_models, tmp_path):
    """Before, such a training logged "0 pairs accepted" and wrote the untouched LoRA, exit 0."""
    with pytest.raises(loop.NoTrainingSignalError, match=r"3 rounds in a row.*same score.*train\.preference"):
        _train(tiny_models, tmp_path, _settings(max_rounds=5), preference=_Constant())
    assert not (tmp_path / "o").exists()
    # Fewer rounds than the limit, none with a pair: the end of the training says why.
    settings = _settings(max_rounds=2, threshold=0.999, preference={"name": "random"})
    with pytest.raises(loop.NoTrainingSignalError, match=r"no update.*train\.threshold' \(0\.999"):
        _train(tiny_models, tmp_path, settings, ckpt="c2")
    assert not (tmp_path / "o").exists()


def test_a_lora_with_nonfinite_weights_is_never_written(tiny_models):
    from spo.training.lora import attach_lora

    unet = _pipe(tiny_models).unet
    attach_lora(unet, rank=2, init="default")
    guard = loop.Guard("/ckpt", loop.lr_fix(_settings()))
    loop.check_trained(unet, full_unet=False, steps=3, guard=guard, no_signal="-")
    with torch.no_grad():
        next(p for n, p in unet.named_parameters() if "lora_B" in n).fill_(float("inf"))
    with pytest.raises(loop.NonFiniteTrainingError, match=r"trained weights hold NaN.*train\.lr"):
        loop.check_trained(unet, full_unet=False, steps=3, guard=guard, no_signal="-")


def _lora_folder(tiny_models, folder: Path, value: float) -> Path:
    from diffusers import StableDiffusionPipeline

    from spo.training.lora import attach_lora, save_lora_diffusers

    unet = _pipe(tiny_models).unet
    attach_lora(unet, rank=2, init="default")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.fill_(value)
    folder.mkdir(parents=True)
    save_lora_diffusers(StableDiffusionPipeline, unet, folder)
    return folder


def _gen_config(tiny_config, tmp_path, lora: Path) -> dict:
    """The tiny config on the session's random-init tiny SD-1.5, one 2-prompt set, 2 DDIM steps."""
    tsv = tmp_path / "faults.tsv"
    tsv.write_text("prompt_id\tprompt\np0\ta red car\np1\ta blue bird\n")
    config = dict(tiny_config)
    config["models"] = {"tiny-sd15": {"family": "sd15", "source": {"tiny": {"seed": 1}}}}
    config["methods"] = {"bad": {"model": "tiny-sd15", "lora": {"path": str(lora)}}}
    config["prompt_sets"] = {"faults": {"source": {"path": str(tsv)}, "images_per_prompt": 1}}
    config["generation"] = {**tiny_config["generation"], "num_inference_steps": 2, "shard_size": 2,
                            "batch_size": 2, "resolution": 32, "dtype": "float32"}
    return config


def test_generation_refuses_a_nonfinite_lora_and_never_writes_nan_images(tiny_models, tiny_config,
                                                                         tmp_path, caplog):
    from spo.generate import GenerationError, generate_shard, warn_black
    from spo.models.pipelines import LoraWeightsError

    nan = _gen_config(tiny_config, tmp_path, _lora_folder(tiny_models, tmp_path / "nan", float("nan")))
    with pytest.raises(LoraWeightsError, match=r"methods\.bad\.lora.*NaN or infinite.*black"):
        generate_shard(nan, "bad", "faults", 0, tmp_path / "shard-nan", models_root=tiny_models,
                       progress=False, device="cpu")
    # Finite but huge weights (what lr 1e30 made): the sampler diverges to NaN pixels, which PNG
    # would store as black; nothing is written, so nothing black is ever scored.
    huge = _gen_config(tiny_config, tmp_path, _lora_folder(tiny_models, tmp_path / "huge", 1e30))
    with pytest.raises(GenerationError, match="NaN or infinite pixels.*methods.bad"):
        generate_shard(huge, "bad", "faults", 0, tmp_path / "shard-huge", models_root=tiny_models,
                       progress=False, device="cpu")
    assert not (tmp_path / "shard-huge").exists()
    from PIL import Image

    with caplog.at_level(logging.WARNING):
        assert warn_black([Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (9, 9, 9))], "m",
                          ["a.png", "b.png"]) == 1
    assert "1 of 2 images are all black (first: a.png)" in caplog.text


# --- 2. Resume is keyed on every input ----------------------------------------------------------

def test_a_changed_input_starts_afresh_and_says_which(tiny_models, tmp_path, caplog):
    """Before, only the `train:` block, model, seed and resolution chose the checkpoint folder:
    a retrained preference model "resumed at round 2/2" and the old LoRA was written again."""
    settings = _settings(max_rounds=2)
    old = {"inputs": {"preference": "content aaaa", "prompt_file": "sha256 1111"}}
    _train(tiny_models, tmp_path, settings, name="a", resolved=old)
    with caplog.at_level(logging.INFO):
        _train(tiny_models, tmp_path, settings, name="same", resolved=old)
    assert "resuming at round 2/2" in caplog.text
    caplog.clear()
    new = {"inputs": {"preference": "content bbbb", "prompt_file": "sha256 1111"}}
    with caplog.at_level(logging.INFO):
        result = _train(tiny_models, tmp_path, settings, name="b", resolved=new)
    assert "resuming at round" not in caplog.text and result["steps"] >= 2
    assert "preference: content aaaa -> content bbbb" in caplog.text and "prompt_file" not in caplog.text
    assert (tmp_path / "c" / "superseded" / "step-00000002").is_dir()
    assert json.loads((tmp_path / "c" / checkpoints.INPUTS).read_text())["preference"] == "content bbbb"
    # The prompts trained on and the algorithm's code version are inputs too.
    changed = checkpoints.claim(tmp_path / "c", checkpoints.training_inputs(
        "spo", spo_trainer.ALGORITHM_VERSION + 1, settings, PROMPTS[::-1], new))
    assert changed == ["algorithm", "prompts"]


def test_the_stage_hashes_the_preference_weights_prompt_file_and_base_model(tiny_models, tiny_config,
                                                                            tmp_path):
    from spo.training.stage import training_input_digests

    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "model.safetensors").write_bytes(b"weights one")
    tsv = tmp_path / "train.tsv"
    tsv.write_text("prompt_id\tprompt\np0\ta red car\n")
    config = dict(tiny_config)
    config["models"] = {"tiny-sd15": {"family": "sd15", "source": {"tiny": {"seed": 1}}}}
    config["methods"] = {"m": {"model": "tiny-sd15", "train": {"prompts": "t"}}}
    config["prompt_sets"] = {"t": {"source": {"path": str(tsv)}}}
    settings = _settings(prompts="t")

    def digests():
        return training_input_digests(config, "m", settings, models_root=tiny_models, root=tmp_path,
                                      preference_spec={"name": "spm", "path": str(spm)}, resolution=32)

    first = digests()
    assert first["base_model"]["source"].startswith("content ") and first == digests()
    (spm / "model.safetensors").write_bytes(b"weights two")  # the SPM was retrained
    second = digests()
    assert second["preference"] != first["preference"] and second["prompt_file"] == first["prompt_file"]
    tsv.write_text("prompt_id\tprompt\np0\ta blue car\n")
    assert digests()["prompt_file"] != second["prompt_file"]
    config["models"]["tiny-sd15"]["source"] = {"id": "org/model", "revision": "a" * 40}
    assert digests()["base_model"]["source"] == f"hub org/model@{'a' * 40}"


# --- 3. Hints that work ---------------------------------------------------------------------------

def test_the_offline_hint_is_an_hf_command_this_install_has(tmp_path, repo_root):
    from spo.models.sources import _download_hint

    hint = _download_hint({"id": "org/model", "revision": "a" * 40, "repo_type": "dataset",
                           "file": "model.safetensors", "subfolder": "unet"})
    command = hint.split("`")[1]
    assert command.startswith("hf download org/model ") and "huggingface-cli" not in hint
    hf = Path(sys.executable).parent / "hf"
    help_text = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for option in (w for w in command.split() if w.startswith("--")):
        assert option in help_text, option
    assert "huggingface-cli" not in (repo_root / "README.md").read_text()


# --- 4. Errors, not raw exceptions ------------------------------------------------------------

def test_a_non_utf8_prompt_file_names_file_line_and_a_fix_that_works(tmp_path):
    from spo.prompts import PromptError, read_prompt_tsv

    path = tmp_path / "prompts.tsv"
    path.write_bytes("prompt_id\tprompt\np0\ta red car\np1\ta caf\u00e9 sign\n".encode("latin-1"))
    with pytest.raises(PromptError) as err:
        read_prompt_tsv(path)
    msg = str(err.value)
    assert str(path) in msg and "line 3, column 9" in msg and "not UTF-8" in msg
    command = msg.split("`")[1]
    subprocess.run(["bash", "-c", command], check=True, timeout=60)
    assert read_prompt_tsv(path)["prompt"].tolist() == ["a red car", "a caf\u00e9 sign"]


def test_a_truncated_safetensors_names_the_file_and_the_fix(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    from spo.models.pipelines import LoraWeightsError, _load_lora
    from spo.models.sources import SourceError, from_pretrained

    copy = tmp_path / "models" / "pipelines" / "tiny-sd15"
    shutil.copytree(tiny_models / "pipelines" / "tiny-sd15", copy)
    weights = next((copy / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(SourceError) as err:
        from_pretrained(StableDiffusionPipeline.from_pretrained, {"path": str(copy)})
    assert str(weights) in str(err.value) and "truncated" in str(err.value)
    assert "copy or download it again" in str(err.value)
    with pytest.raises(SourceError, match=rf"truncated.*snakemake --cores 1 {copy}`"):
        from_pretrained(StableDiffusionPipeline.from_pretrained, {"tiny": {"seed": 1}}, tiny_dir=copy)

    lora = _lora_folder(tiny_models, tmp_path / "lora", 0.01) / "pytorch_lora_weights.safetensors"
    lora.write_bytes(lora.read_bytes()[:-10])
    with pytest.raises(LoraWeightsError, match=rf"methods\.x\.lora.*'{lora}'.*truncated.*fetch the file again"):
        _load_lora(_pipe(tiny_models), {"path": str(lora.parent)}, "x", key="methods.x.lora")


def test_a_dpo_data_typo_is_a_config_error_at_dag_start(tiny_config):
    from spo.config import ConfigError, validate_config

    datasets = sorted((tiny_config.get("spm") or {}).get("datasets") or {})
    assert datasets, "the tiny profile defines pair datasets"
    typo = datasets[0][:-1]
    tiny_config["methods"]["dpo-typo"] = {"model": next(iter(tiny_config["models"])), "train": {
        "prompts": next(iter(tiny_config["prompt_sets"])), "algorithm": "diffusion-dpo",
        "diffusion_dpo": {"data": typo}}}
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert f"methods.dpo-typo.train.diffusion_dpo.data' is '{typo}'" in msg
    assert f"did you mean '{datasets[0]}'" in msg


def test_a_duplicate_yaml_key_names_the_file_the_key_and_both_lines(tmp_path, repo_root):
    from spo.config import ConfigError, load_config

    path = tmp_path / "dup.yaml"
    path.write_text("extends: config/config.yaml\nseed: 1\ngeneration:\n  eta: 0.0\nseed: 2\n")
    with pytest.raises(ConfigError, match=rf"'{path}' gives the key 'seed' twice.*lines 2 and 5.*Delete one"):
        load_config([path], root=repo_root)
    # A merge key's entries may be overridden (YAML's meaning, used by config/config.yaml).
    path.write_text("extends: config/config.yaml\nbase: &b {seed: 1}\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: &a {x: 1, y: 2}\nb: {<<: *a, x: 3}\n")
    from spo.config import load_yaml

    assert load_yaml(ok)["b"] == {"x": 3, "y": 2}


# --- 5. The smaller ones -----------------------------------------------------------------------

def test_replacing_a_folder_never_loses_the_old_one(tmp_path, monkeypatch):
    from spo import io

    out = tmp_path / "out"
    with io.atomic_path(out, is_dir=True) as tmp:
        (tmp / "f").write_text("old")
    real, calls = os.replace, []

    def killed_at_the_rename_in(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst) == out and len(calls) == 2:
            raise KeyboardInterrupt("killed between the two renames")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", killed_at_the_rename_in)
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(out, is_dir=True) as tmp:
            (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "old"  # before: deleted first, then the rename failed
    monkeypatch.setattr(io.os, "replace", real)
    with io.atomic_path(out, is_dir=True) as tmp:
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_training_log_is_valid_json_with_nan_as_null_and_a_flag(tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    from spo.training.lora import attach_lora

    unet = _pipe(tiny_models).unet
    attach_lora(unet, rank=2, init="default")
    lines = [{"round": 0, "loss": 0.5, "score_std": math.nan}, {"round": 1, "loss": None, "gap_max": -math.inf}]
    loop.write_outputs(tmp_path / "out", StableDiffusionPipeline, unet, lines, {}, loop.accelerator_on("cpu"))

    def strict(token):
        raise ValueError(f"bare {token} in log.jsonl")

    parsed = [json.loads(line, parse_constant=strict)
              for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert parsed == [{"round": 0, "loss": 0.5, "score_std": None, "nonfinite": ["score_std"]},
                      {"round": 1, "loss": None, "gap_max": None, "nonfinite": ["gap_max"]}]


def test_a_signal_is_acted_on_within_the_round_and_resumes_to_the_same_lora(tiny_models, tmp_path,
                                                                             monkeypatch):
    """Before, the flag was read only at a round's end (on the paper profile, minutes after the
    SIGTERM that SLURM follows with SIGKILL 30 s later)."""
    from safetensors.torch import load_file

    settings = _settings(max_rounds=3)  # 8 pairs a round in micro-batches of 4: 2 updates a round
    _train(tiny_models, tmp_path, settings, name="a", ckpt="ca")
    real, seen = spo_trainer.pair_loss, {"calls": 0, "after_signal": 0, "round1": False}
    state = {"signal": False}

    def pair_loss(*args, **kwargs):
        seen["calls"] += 1
        if state["signal"]:
            seen["after_signal"] += 1
        if seen["calls"] == 3:  # the first micro-batch of round 1 (after round 0's two)
            state["signal"] = True
        return real(*args, **kwargs)

    monkeypatch.setattr(spo_trainer, "pair_loss", pair_loss)
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: state["signal"])
    with pytest.raises(SystemExit) as exit_info:
        _train(tiny_models, tmp_path, settings, name="b", ckpt="cb")
    assert exit_info.value.code == loop.PREEMPTED_EXIT_CODE and seen["after_signal"] == 0
    # round 1's start (written at round 0's end, and again on the signal: the same state)
    assert sorted(p.name for p in (tmp_path / "cb").glob("step-*"))[-1] == "step-00000001"
    state["signal"] = False
    monkeypatch.setattr(spo_trainer, "pair_loss", real)
    _train(tiny_models, tmp_path, settings, name="b", ckpt="cb")
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_mid_round_after_an_update_checkpoints_the_rounds_start(tiny_models, tmp_path,
                                                                          monkeypatch):
    """checkpoint_every 10: no end-of-round checkpoint; the signal comes while round 1's first
    micro-batch trains, so the update it makes is applied before the next poll: the checkpoint is
    the state kept at round 1's start, and the rerun is exact."""
    from safetensors.torch import load_file

    settings = _settings(max_rounds=3, checkpoint_every=10)
    _train(tiny_models, tmp_path, settings, name="a", ckpt="ca")
    real, seen, state = spo_trainer.pair_loss, {"calls": 0}, {"signal": False}

    def pair_loss(*args, **kwargs):
        seen["calls"] += 1
        state["signal"] = seen["calls"] >= 3  # round 1's first micro-batch
        return real(*args, **kwargs)

    monkeypatch.setattr(spo_trainer, "pair_loss", pair_loss)
    monkeypatch.setattr(loop, "should_checkpoint_and_exit", lambda: state["signal"])
    with pytest.raises(SystemExit):
        _train(tiny_models, tmp_path, settings, name="b", ckpt="cb")
    assert [p.name for p in (tmp_path / "cb").glob("step-*")] == ["step-00000001"]
    state["signal"] = False
    monkeypatch.setattr(spo_trainer, "pair_loss", real)
    _train(tiny_models, tmp_path, settings, name="b", ckpt="cb")
    a = load_file(str(tmp_path / "a" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "b" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
