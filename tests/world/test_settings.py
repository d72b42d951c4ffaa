"""The config's ``world`` block (spo/world/settings.py): parsed at load, a bad key, type or range
is a ConfigError naming ``world.<key>``; the stages get the typed grammar and recipe."""

import pytest

from spo.config import ConfigError, validate_config
from spo.world.grammar import WorldSpec
from spo.world.settings import PretrainSettings, PartRecipe, pretrain_settings, world_spec


@pytest.mark.parametrize("block, expected", [
    ({"pretrain": {"vae": {"steps": 0}}}, "config key 'world.pretrain.vae.steps' is 0; it must be an integer >= 1"),
    ({"pretrain": {"clip": {"lr": "1e-4"}}}, "config key 'world.pretrain.clip.lr' is '1e-4'; it must be a number > 0"),
    ({"pretrain": {"ema_decay": 1}}, "config key 'world.pretrain.ema_decay' is 1; it must be a number in (0, 1)"),
    ({"pretrain": {"caption_dropout": True}}, "config key 'world.pretrain.caption_dropout' is true; it must be "
                                              "a number in [0, 1)"),
    ({"pretrain": {"vae_iamges": 5}}, "config key 'world.pretrain.vae_iamges' is not allowed"),
    ({"image_size": 20}, "config key 'world.image_size' is 20; it must be an integer in [16, 128], a multiple of 8"),
    ({"sizes": "small"}, "config key 'world.sizes' is 'small'; it must be a list of at least 1 items"),
    ({"colours": ["pink"]}, "config key 'world.colours' is ['pink']; it must be a non-empty list of "),
])
def test_a_bad_world_value_fails_the_config_check_naming_the_key(tiny_config, block, expected):
    tiny_config["world"] = block
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    assert expected in str(err.value)


def test_the_stages_get_the_typed_world(tiny_config):
    assert world_spec(tiny_config) == WorldSpec.from_config({})
    assert pretrain_settings(tiny_config) == PretrainSettings()
    config = {"world": {"image_size": 64, "pretrain": {"seed": 3, "vae": {"steps": 7}}}}
    assert world_spec(config).image_size == 64
    ps = pretrain_settings(config)
    assert (ps.seed, ps.vae) == (3, PartRecipe(steps=7, batch=32, lr=1e-3, lr_floor=1e-4, warmup=50))
    assert world_spec({}) == WorldSpec.from_config({})
    with pytest.raises(ConfigError, match="'world.pretrain.unet.batch' is 0"):
        pretrain_settings({"world": {"pretrain": {"unet": {"batch": 0}}}})
