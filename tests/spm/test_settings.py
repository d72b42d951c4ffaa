"""spo/spm/settings.py: the spm block's runs and datasets as typed settings, checked at load."""

import pytest

from spo.config import ConfigError, validate_config


@pytest.mark.parametrize("key, value, expected", [
    ("runs.tiny-sd15-spm.steps", 0, "is 0; it must be an integer >= 1"),
    ("runs.tiny-sd15-spm.lr", 0, "is 0; it must be a number in (0, 1)"),
    ("runs.tiny-sd15-spm.warmup_shape", "cosine", "is 'cosine'; it must be one of 'linear', 'log'"),
    ("runs.tiny-sd15-spm.val_timesteps", [0, 1000], "is [0, 1000]; it must be a list of at least 1 "
                                                    "items, each an integer in [0, 999]"),
    ("runs.tiny-sd15-spm.betas", [0.9], "is [0.9]; it must be a list of 2 items, each a number"),
    ("runs.tiny-sd15-spm.resolution", 4, "is 4; it must be an integer >= 8 or null"),
    ("runs.tiny-sd15-spm.pickscore_labels", {"threshold": 1.5},
     "is 1.5; it must be a number in [0, 1]"),
    ("datasets.tiny-sd15-pairs.tiny.images_per_prompt", 1, "is 1; it must be an integer >= 2"),
    ("datasets.tiny-sd15-pairs.tiny.label_noise", -0.1, "is -0.1; it must be a number in [0, 1]"),
    ("datasets.tiny-sd15-pairs.unlabelled", "maybe", "is 'maybe'; it must be one of 'drop', 'keep'"),
])
def test_a_bad_spm_value_is_a_config_error_naming_key_value_and_range(tiny_config, key, value, expected):
    *parents, leaf = key.split(".")
    node = tiny_config["spm"]
    for part in parents:
        node = node[part]
    node[leaf] = value
    full = f"spm.{key}" if leaf != "pickscore_labels" else f"spm.{key}.threshold"
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    assert f"config key '{full}' {expected}" in str(err.value)


def test_warmup_below_steps_only_for_an_explicit_warmup_decay(tiny_config):
    run = tiny_config["spm"]["runs"]["tiny-sd15-spm"]
    run.update(warmup_steps=run["steps"], lr_schedule="warmup_decay")
    with pytest.raises(ConfigError, match=r"'spm.runs.tiny-sd15-spm.warmup_steps' is 80; it must be "
                                          r"below steps \(80\) for lr_schedule: warmup_decay"):
        validate_config(tiny_config)
    del run["lr_schedule"]  # absent: the trainer's default schedule, unchecked as before
    validate_config(tiny_config)


def test_the_typed_run_holds_the_trainers_former_defaults(tiny_config):
    from spo.spm.settings import spm_run, tiny_pairs_settings

    validate_config(tiny_config)
    raw = tiny_config["spm"]["runs"]["tiny-sd15-spm"]
    run = spm_run(tiny_config, "tiny-sd15-spm")
    assert {k: getattr(run, k) for k in raw} == raw
    # the precision keys default to absent: spo.spm.precision resolves them to the policy "no"
    from spo.spm.precision import run_mixed_precision

    assert run_mixed_precision(raw) == "no"
    defaults = {"mixed_precision": None, "dtype": None, "backbone_dtype": None, "guidance_scale": 5.0,
                "weight_decay_on": "matrices", "vae_latents": "mean", "betas": [0.9, 0.999],
                "warmup_shape": "linear", "val_batch_size": 64, "resolution": None}
    assert {k: getattr(run, k) for k in defaults if k not in raw} == \
        {k: v for k, v in defaults.items() if k not in raw}
    assert run.pickscore_threshold() is None
    pairs = tiny_pairs_settings(tiny_config, "tiny-sd15-pairs")
    assert (pairs.images_for("train"), pairs.images_for("validation")) == (4, 4)
