"""Issue 17: global recipes on any number of processes (item 1), accumulation across rounds
(item 5), DDPO's per-prompt statistics on 4k prompts (item 6). Pure arithmetic, no GPU."""

from __future__ import annotations

import pytest

from spo.training.batching import WorldSizeError, launch_world_size, per_process
from spo.training.settings import TrainSettings


def _paper_methods(repo_root):
    from spo.config import load_config

    config = load_config([repo_root / "config" / "ablations.yaml"], root=repo_root)
    return {m: TrainSettings.from_config(spec["train"]) for m, spec in config["methods"].items()
            if "train" in spec}


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_every_paper_recipe_is_the_same_on_1_2_4_8_processes(repo_root, world):
    """Per process: prompts x world = the global prompts; micro-batch x accumulation x world = the
    global step batch; rounds (n // global prompts x epochs) do not involve the world at all."""
    from spo.training.spo_trainer import total_rounds

    for method, settings in _paper_methods(repo_root).items():
        share = settings.process_batches(world)
        if settings.algorithm == "diffusion-dpo":
            assert share is None  # its own global batch_size, checked by check_dpo_world
            continue
        assert share.prompts * world == settings.prompts_per_round, method
        assert share.micro_batch * share.accumulation * world == share.global_step, method
        assert share.global_step == settings.train_batch_size * settings.grad_accum, method
        if settings.micro_batch is not None:
            assert share.micro_batch <= settings.micro_batch, method  # never more memory per GPU
        local = settings.for_world(world)
        assert total_rounds(4000, local, world) == total_rounds(4000, settings, 1), method


def test_the_official_per_gpu_numbers_on_4_gpus(repo_root):
    methods = _paper_methods(repo_root)
    got = {m: methods[m].process_batches(4) for m in ("sd15-spo", "sdxl-mspo", "sd15-ddpo", "sd15-d3po")}
    # (prompts per GPU, micro-batch, accumulation): the official configs' per-GPU values
    assert (got["sd15-spo"].prompts, got["sd15-spo"].micro_batch, got["sd15-spo"].accumulation) == (10, 10, 1)
    assert (got["sdxl-mspo"].prompts, got["sdxl-mspo"].micro_batch, got["sdxl-mspo"].accumulation) == (2, 2, 2)
    assert (got["sd15-ddpo"].prompts, got["sd15-ddpo"].micro_batch, got["sd15-ddpo"].accumulation) == (64, 16, 100)
    assert (got["sd15-d3po"].prompts, got["sd15-d3po"].micro_batch, got["sd15-d3po"].accumulation) == (20, 10, 2)
    # one GPU: the same 40-pair step as 4 micro-batches of the official 10
    one = methods["sd15-spo"].process_batches(1)
    assert (one.prompts, one.micro_batch, one.accumulation, one.global_step) == (40, 10, 4, 40)


def test_one_process_changes_nothing_in_the_tiny_profile(tiny_config):
    for method, spec in tiny_config["methods"].items():
        if "train" not in spec:
            continue
        settings = TrainSettings.from_config(spec["train"])
        if settings.algorithm == "diffusion-dpo":
            continue
        assert settings.for_world(1) == settings, method


def test_a_recipe_that_cannot_be_split_names_keys_world_and_valid_sizes():
    with pytest.raises(WorldSizeError) as err:
        per_process(prompts_per_round=40, train_batch_size=40, grad_accum=1, micro_batch=10, world=3)
    msg = str(err.value)
    assert "'train.prompts_per_round' is 40" in msg and "over 3 processes" in msg
    assert "nearest valid values are 39 or 42" in msg
    assert "'train.train_batch_size' x 'train.grad_accum' = 40 x 1 = 40" in msg
    assert "holds on 1, 2, 4, 5, 8, 10, 20, 40 processes" in msg


def test_diffusion_dpo_world_check_names_its_keys(repo_root):
    settings = _paper_methods(repo_root)["sd15-diffusion-dpo"]
    settings.process_batches(16)  # 2048 = 8 x 128 x 2 ... divisible
    with pytest.raises(WorldSizeError, match=r"'train.diffusion_dpo.batch_size' is 2048.*with 3 processes"):
        settings.process_batches(3)


def test_micro_batch_cap_and_the_divisor_rule():
    # 6400 transitions a step on 3 processes would not split; on 5: 1280 each, cap 16 -> 16 x 80
    share = per_process(prompts_per_round=10, train_batch_size=64, grad_accum=100, micro_batch=16, world=5)
    assert (share.micro_batch, share.accumulation) == (16, 80)
    # no cap: train_batch_size / world; a share the cap does not divide gets the largest divisor
    share = per_process(prompts_per_round=4, train_batch_size=12, grad_accum=1, micro_batch=None, world=2)
    assert (share.micro_batch, share.accumulation) == (6, 1)
    share = per_process(prompts_per_round=4, train_batch_size=12, grad_accum=1, micro_batch=4, world=2)
    assert (share.micro_batch, share.accumulation) == (3, 2)


def test_world_size_comes_from_the_launcher():
    assert launch_world_size({}) == 1
    assert launch_world_size({"WORLD_SIZE": "4"}) == 4
    with pytest.raises(WorldSizeError, match="WORLD_SIZE"):
        launch_world_size({"WORLD_SIZE": "x"})


def test_bad_world_stops_before_any_model_is_loaded(repo_root, monkeypatch, tmp_path):
    """Bad input (issue 17): the error comes from stage.train_method before the pipeline loads."""
    from spo.config import load_config
    from spo.models import pipelines
    from spo.training import stage

    config = load_config([repo_root / "config" / "paper.yaml"], root=repo_root)

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the world-size check")

    monkeypatch.setattr(pipelines, "load_model_pipeline", no_load)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(WorldSizeError, match=r"over 3 processes.*holds on 1, 2, 4, 8"):
        stage.train_method(config, "sdxl-mspo", tmp_path / "out", checkpoint_dir=tmp_path / "ckpt",
                           models_root=tmp_path / "models", root=repo_root, device="cpu")


def test_bad_micro_batch_and_accumulation_flag_name_the_key():
    with pytest.raises(ValueError, match="'train.micro_batch'"):
        TrainSettings.from_config({"prompts": "p", "micro_batch": 0})
    with pytest.raises(ValueError, match="'train.accumulate_across_rounds'"):
        TrainSettings.from_config({"prompts": "p", "accumulate_across_rounds": "yes"})


# --- item 5: gradient accumulation across rounds -------------------------------------------------

def test_pending_micro_batches_read_from_the_step_log():
    from spo.training.spo_trainer import pending_micro_batches

    assert pending_micro_batches([], 0) == 0
    # accumulation 2: micro-batches 1 (step 0), 2 (-> step 1), 3 (step 1, pending), empty round
    log = [{"step": 0, "loss": 0.7}, {"step": 1, "loss": 0.6}, {"step": 1, "loss": 0.5},
           {"step": 1, "loss": None}]
    assert pending_micro_batches(log, 1) == 1
    assert pending_micro_batches(log[:2], 1) == 0
    assert pending_micro_batches(log[:1], 0) == 1


def _tiny_sd15(tiny_models):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("carry", [False, True])
def test_accumulation_carries_over_rounds_without_a_forced_step(tiny_models, tmp_path, carry):
    """3 micro-batches a round, accumulation 2, 2 rounds: a forced step at each round's end gives
    2 + 2 = 4 steps; carried over rounds (official SDXL trainer) 6 // 2 = 3 steps."""
    from diffusers import StableDiffusionPipeline

    from spo.models.backbone import Backbone
    from spo.preference import build_preference
    from spo.training import spo_trainer

    settings = TrainSettings.from_config(dict(
        prompts="p", preference={"name": "colorfulness"}, num_inference_steps=4,
        timestep_range=[0, 1000], k=2, threshold=0.0, prompts_per_round=3, train_batch_size=4,
        grad_accum=2, lr=1e-3, lora_rank=4, lora_init="default", epochs=1, max_rounds=2,
        accumulate_across_rounds=carry, checkpoint_every=1))
    prompts = [f"a {c} car" for c in ("red", "blue", "green", "golden", "black", "white")]
    result = spo_trainer.train_spo(Backbone(_tiny_sd15(tiny_models), 32), StableDiffusionPipeline,
                                   prompts, build_preference(settings.preference), settings,
                                   tmp_path / "out", tmp_path / "ckpt")
    # 3 prompts x 4 trained steps = 12 pairs a round = 3 micro-batches of 4
    assert result["steps"] == (3 if carry else 4)


# --- item 6: DDPO's per-prompt statistics on 4k prompts -----------------------------------------

def test_ddpo_tracker_never_switches_on_in_the_paper_recipe(repo_root, caplog):
    from spo.training.ddpo import max_rewards_per_prompt, warn_if_tracker_never_used

    settings = _paper_methods(repo_root)["sd15-ddpo"]
    opts = settings.algorithm_settings()
    assert max_rewards_per_prompt(4000, 256, 1, 200) == 14  # 15 rounds a pass, 200 rounds
    with caplog.at_level("WARNING"):
        assert warn_if_tracker_never_used(4000, settings, opts) == 14 < opts.min_count
    assert "never switch on" in caplog.text
    # a small prompt set, as the official 45 animals, does switch it on
    assert max_rewards_per_prompt(45, 256, 1, 200) == 200
