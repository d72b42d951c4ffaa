"""The scorers read the typed ``metrics.<name>`` (spo.config_blocks.MetricSpec): a mapping handed to
``build_scorer`` is parsed first (a bad value is a ConfigError naming the key), and each scorer
keeps its own defaults (batch size 8; the scoring stage's is 16)."""

import pytest

from spo.config_blocks import MetricSpec
from spo.config_spec import ConfigError, parse
from spo.metrics import build_scorer, resolve_weights
from spo.metrics._common import scorer_batch_size
from spo.world.grammar import WorldSpec


def test_a_bad_metric_mapping_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError) as err:
        build_scorer("colorfulness", {"batch_size": 0})
    assert "config key 'metrics.colorfulness.batch_size' is 0; it must be an integer >= 1" in str(err.value)
    with pytest.raises(ConfigError, match="'metrics.adherence.attribute' is 'color'"):
        build_scorer("adherence", {"attribute": "color"})


def test_the_scorers_batch_size_defaults_to_8_and_keeps_the_given_one():
    assert scorer_batch_size(parse(MetricSpec, {}, "metrics.x")) == 8
    assert scorer_batch_size(parse(MetricSpec, {"batch_size": 3}, "metrics.x")) == 3


def test_adherence_reads_its_attribute_and_the_world_it_is_given():
    world = WorldSpec.from_config({"image_size": 64})
    scorer = build_scorer("adherence", parse(MetricSpec, {"attribute": "shape"}, "metrics.a"), world=world)
    assert (scorer.attribute, scorer.name, scorer.world) == ("shape", "adherence-shape", world)
    assert build_scorer("adherence").world == WorldSpec.from_config({})


def test_weights_resolve_from_the_typed_spec_as_from_the_mapping(tmp_path):
    (tmp_path / "model").mkdir()
    block = {"weights": {"model": {"path": str(tmp_path / "model")}}}
    assert resolve_weights(parse(MetricSpec, block, "metrics.m")) == resolve_weights(block)
    assert resolve_weights(parse(MetricSpec, {}, "metrics.m")) == {}
