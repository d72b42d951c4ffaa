"""Each figure's config block (spo/report/figure_registry.py) is a typed settings class parsed at
load: a bad value fails validate_config with one ConfigError naming figures.<name>.<key>, the
value and its range; the draw functions get the typed object with the defaults they had."""

import copy

import pytest

from spo.config import ConfigError, validate_config
from spo.report.figure_registry import (FIGURES, ComputeSettings, DisagreementSettings,
                                        Figure5Settings, Figure6Settings, GridSettings,
                                        figure_settings)
from spo.report.figures_common import figure_spec


@pytest.mark.parametrize("name, key, value, expected", [
    ("figure2", "columns", 0, "is 0; it must be an integer >= 1"),
    ("figure11", "rows", [], "is []; it must be a list of at least 1 items"),
    ("figure5", "pairs", "4", "is '4'; it must be an integer >= 1"),
    ("figure6", "draw_tolerance", -1, "is -1; it must be a number >= 0"),
    ("figure6", "opponents", [{"method": "tiny-sd15-base", "paper": "dpo"}], None),
    ("disagreement", "splits", ["test"], "is ['test']; it must be a list of at least 1 items, each one of "
                                         "'train', 'validation'"),
    ("disagreement", "seed", -1, "is -1; it must be an integer >= 0"),
    ("lora_transfer", "columns", 1.5, "is 1.5; it must be an integer >= 1"),
    ("spm_accuracy", "runs", "all", "is 'all'; it must be a list of items, each a non-empty string"),
    ("training_curves", "methods", [""], "is ['']; it must be a list of items, each a non-empty string"),
    ("compute", "metric", "", "is ''; it must be a non-empty string"),
])
def test_a_bad_figure_value_fails_the_config_check_naming_the_key(tiny_config, name, key, value, expected):
    tiny_config["figures"][name][key] = value
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    if expected is None:  # an opponent's own keys are checked too
        expected_line = ("config key 'figures.figure6.opponents.0.paper' is 'dpo'; it must be one of "
                         "'diffusion-dpo', 'base'")
    else:
        expected_line = f"config key 'figures.{name}.{key}' {expected}"
    assert expected_line in str(err.value)


def test_an_unknown_or_missing_figure_key_is_named(tiny_config):
    config = copy.deepcopy(tiny_config)
    config["figures"]["figure2"]["colums"] = 5
    del config["figures"]["lora_transfer"]["base_method"]
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert "config key 'figures.figure2.colums' is not allowed (did you mean 'columns'?)" in str(err.value)
    assert "config key 'figures.lora_transfer.base_method' is missing; it must be a non-empty string" \
        in str(err.value)


@pytest.mark.parametrize("key, value, where", [("predictor", "aesthetics", "metrics"),
                                               ("dataset", "no-such-pairs", "spm.datasets")])
def test_a_disagreement_figure_naming_what_the_config_lacks_fails_at_load(tiny_config, key, value, where):
    config = copy.deepcopy(tiny_config)
    config["figures"]["disagreement"][key] = value
    with pytest.raises(ConfigError, match=rf"config key 'figures\.disagreement\.{key}' names '{value}', "
                                          rf"which is not under '{where}'"):
        validate_config(config)


def test_the_draw_functions_get_typed_settings_with_the_former_defaults(tiny_config):
    config = copy.deepcopy(tiny_config)
    assert isinstance(figure_spec(config, "figure2"), GridSettings)
    grid = figure_settings(config, "figure2")
    assert (grid.rows, grid.prompts, grid.columns) == (config["figures"]["figure2"]["rows"], 8, None)
    for key in ("pairs",):
        config["figures"]["figure5"].pop(key)
    for key in ("draw_tolerance", "metrics"):
        config["figures"]["figure6"].pop(key, None)
    for key in ("max_pairs", "examples", "seed", "splits"):
        config["figures"]["disagreement"].pop(key, None)
    assert figure_settings(config, "figure5") == Figure5Settings(methods=config["figures"]["figure5"]["methods"],
                                                                  pairs=4)
    six = figure_settings(config, "figure6")
    assert isinstance(six, Figure6Settings) and (six.draw_tolerance, six.metrics) == (0.1, None)
    assert [o.method for o in six.opponent_list()] == ["tiny-sd15-diffusion-dpo", "tiny-sd15-base"]
    dis = figure_settings(config, "disagreement")
    assert isinstance(dis, DisagreementSettings)
    assert (dis.max_pairs, dis.examples, dis.seed, dis.splits) == (2000, 4, 0, None)
    assert figure_settings(config, "compute") == ComputeSettings(metric="colorfulness")
    del config["figures"]["compute"]
    assert figure_settings(config, "compute") is None
    assert FIGURES["figure6"].read_list(tiny_config)[0].prompt_set == "tiny-eval"
