"""The typed config blocks (spo/config_blocks.py): a bad value fails the config check at load with
one ConfigError naming the dotted key, the value and what it must be; the stages read the blocks
as typed objects holding exactly what the config said."""

import pytest

from spo.config import (ConfigError, evaluated_pairs, generation_spec, geneval_settings,
                        method_spec, metric_spec, model_spec, paper_tables_settings, prompt_set_spec,
                        resources_override, scoring_settings, tables_settings, validate_config)


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[leaf] = value


@pytest.mark.parametrize("key, value, expected", [
    ("generation.num_inference_steps", 0, "is 0; it must be an integer >= 1"),
    ("generation.eta", 1.5, "is 1.5; it must be a number in [0, 1]"),
    ("generation.resolution", 30, "is 30; it must be an integer >= 8, a multiple of 8 or null"),
    ("generation.dtype", "fp32", "is 'fp32'; it must be one of 'float32', 'float16', 'bfloat16'"),
    ("generation.guidance_scale", "five", "is 'five'; it must be a number >= 0"),
    ("prompt_sets.tiny-eval.images_per_prompt", 0, "is 0; it must be an integer >= 1"),
    ("prompt_sets.geneval-tiny.num_inference_steps", 2.5, "is 2.5; it must be an integer >= 1"),
    ("models.tiny-sd15.family", "sd21", "is 'sd21'; it must be one of 'sd15', 'sdxl'"),
    ("methods.tiny-sd15-base.guidance_scale", -1, "is -1; it must be a number >= 0"),
    ("methods.tiny-sd15-spo.baseline", "", "is ''; it must be a non-empty string"),
    ("methods.tiny-sdxl-base.label", 3, "is 3; it must be a string"),
    ("metrics.pickscore.batch_size", 0, "is 0; it must be an integer >= 1"),
    ("metrics.adherence-colour.attribute", "color", "is 'color'; it must be one of 'all', 'background', "
                                                    "'colour', 'shape', 'size'"),
    ("metrics.colorfulness.dtype", "float64", "is 'float64'; it must be one of 'float32'"),
    ("scoring.one_job_per_metric", "yes", "is 'yes'; it must be true or false"),
    ("evaluate.0.methods", [], "is []; it must be a list of at least 1 items"),
    ("evaluate.1.score", 1, "is 1; it must be true or false"),
    ("tables.confidence", 1.0, "is 1.0; it must be a number in (0, 1)"),
    ("tables.bootstrap_samples", 10, "is 10; it must be an integer >= 100"),
    ("tables.replicates.tiny-sd15-spo-random", ["tiny-sd15-spo-random-s0"],
     "is ['tiny-sd15-spo-random-s0']; it must be a list of at least 2 items"),
    ("paper_tables.require", [0], "is [0]; it must be a list of items, each an integer >= 1"),
    ("paper_tables.prompt_sets", [], "is []; it must be a list of at least 1 items"),
    ("geneval.detector", "mask2former", "is 'mask2former'; it must be one of 'adherence'"),
    ("geneval.results", "results/x.jsonl", "is 'results/x.jsonl'; it must contain '{method}'"),
    ("geneval.enabled", "yes", "is 'yes'; it must be true or false"),
    ("resources.train.gpu", -1, "is -1; it must be an integer >= 0"),
    ("resources.score.mem_mb", 0, "is 0; it must be an integer >= 1"),
])
def test_a_bad_value_is_a_config_error_naming_key_value_and_range(tiny_config, key, value, expected):
    _set(tiny_config, key, value)
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    assert f"config key '{key}' {expected}" in str(err.value)


def test_every_problem_of_every_block_is_reported_at_once(tiny_config):
    _set(tiny_config, "generation.num_inference_steps", 0)
    _set(tiny_config, "prompt_sets.tiny-eval.images_per_promt", 2)
    _set(tiny_config, "metrics.pickscore.batch_size", -3)
    del tiny_config["generation"]["shard_size"]
    del tiny_config["methods"]["tiny-sd15-base"]["model"]
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "config key 'generation.num_inference_steps' is 0" in msg
    assert "config key 'generation.shard_size' is missing; it must be an integer >= 1" in msg
    assert ("config key 'prompt_sets.tiny-eval.images_per_promt' is not allowed (did you mean "
            "'images_per_prompt'?)") in msg
    assert "config key 'metrics.pickscore.batch_size' is -3" in msg
    assert "config key 'methods.tiny-sd15-base.model' is missing; it must be a non-empty string" in msg


def test_what_the_blocks_name_is_checked_at_load(tiny_config):
    tiny_config["geneval"]["methods"].append("tiny-sdxl-mspo")
    tiny_config["geneval"]["prompt_set"] = "geneval"
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "config key 'geneval.methods' names 'tiny-sdxl-mspo', which is not under 'methods'" in msg
    assert "config key 'geneval.prompt_set' names 'geneval', which is not under 'prompt_sets'" in msg
    tiny_config["geneval"]["enabled"] = False  # a disabled Table 3 names nothing the DAG runs
    validate_config(tiny_config)


def test_the_typed_blocks_hold_what_the_config_says(tiny_config):
    validate_config(tiny_config)
    gen = generation_spec(tiny_config)
    assert gen is generation_spec(tiny_config)  # parsed once at load, shared with the stages
    assert {k: getattr(gen, k) for k in tiny_config["generation"]} == tiny_config["generation"]
    assert type(gen.eta) is type(tiny_config["generation"]["eta"])  # no int / float coercion
    raw = tiny_config["prompt_sets"]["geneval-tiny"]
    geneval_set = prompt_set_spec(tiny_config, "geneval-tiny")
    assert (geneval_set.images_per_prompt, geneval_set.num_inference_steps, geneval_set.count) == \
        (raw.get("images_per_prompt"), raw["num_inference_steps"], None)
    assert geneval_set.source == raw["source"] and geneval_set.label_or("x") == raw["label"]
    assert prompt_set_spec(tiny_config, "tiny-train").images_per_prompt is None
    for name, raw_model in tiny_config["models"].items():
        spec = model_spec(tiny_config, name)
        assert (spec.family, spec.source, spec.unet) == (raw_model["family"], raw_model["source"],
                                                         raw_model.get("unet"))
    assert model_spec(tiny_config, "tiny-sd15").vae is None
    colour = metric_spec(tiny_config, "colorfulness")
    assert (colour.scorer_of("colorfulness"), colour.attribute, colour.dtype, colour.weights) == \
        ("colorfulness", "all", "float32", {})
    for name, raw_method in tiny_config["methods"].items():
        spec = method_spec(tiny_config, name)
        assert {k: getattr(spec, k) for k in raw_method} == raw_method
        assert spec.trained == ("train" in raw_method)
        assert spec.paper_refs() == ([] if "paper" not in raw_method else
                                     [raw_method["paper"]] if isinstance(raw_method["paper"], dict)
                                     else raw_method["paper"])
    for name, raw_metric in tiny_config["metrics"].items():
        assert metric_spec(tiny_config, name).scorer_of(name) == raw_metric.get("scorer", name)
    assert scoring_settings(tiny_config).one_job_per_metric is False
    assert tables_settings(tiny_config).replicates == tiny_config["tables"]["replicates"]
    assert paper_tables_settings(tiny_config).require == []
    assert geneval_settings(tiny_config).detector == tiny_config["geneval"].get("detector")
    assert geneval_settings({"prompt_sets": {}}) is None
    assert resources_override(tiny_config, "train") == {}
    tiny_config["resources"] = {"train": {"gpu": 2, "runtime": 60}}
    assert resources_override(tiny_config, "train") == {"gpu": 2, "runtime": 60}
    assert resources_override(tiny_config, "not-a-rule") == {}


def test_a_shards_settings_and_hash_are_those_of_the_raw_config(tiny_config):
    """The manifest's config_hash hashes these settings: read through the typed blocks they are
    exactly the mappings' values (so every shard keeps its hash and its images)."""
    from spo.generate import generation_settings

    tiny_config["generation"]["eta"] = 0  # an int stays an int (a coercion would change the hash)
    validate_config(tiny_config)
    gen, sets = tiny_config["generation"], tiny_config["prompt_sets"]
    for method, prompt_set in evaluated_pairs(tiny_config) + [("tiny-sdxl-base", "geneval-tiny")]:
        own = sets[prompt_set]
        expected = {
            "method": method, "method_config": tiny_config["methods"][method],
            "model_config": tiny_config["models"][tiny_config["methods"][method]["model"]],
            "prompt_set": prompt_set, "prompt_source": own["source"], "seed": tiny_config["seed"],
            "scheduler": gen["scheduler"],
            "num_inference_steps": int(own.get("num_inference_steps", gen["num_inference_steps"])),
            "guidance_scale": float(tiny_config["methods"][method].get("guidance_scale",
                                                                       gen["guidance_scale"])),
            "eta": gen["eta"], "resolution": gen["resolution"],
            "images_per_prompt": own.get("images_per_prompt", gen["images_per_prompt"]),
            "dtype": gen["dtype"], "shard_size": gen["shard_size"], "batch_size": gen["batch_size"]}
        got = generation_settings(tiny_config, method, prompt_set)
        assert got == expected and list(got) == list(expected)
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_blocks_that_differ_only_in_key_order_parse_apart(tiny_config):
    """The parse is memoised by content, and a mapping's order is content: the order of
    tables.replicates is the order of the pooled rows."""
    replicates = tiny_config["tables"]["replicates"]
    first = tables_settings(tiny_config).replicates
    tiny_config["tables"]["replicates"] = dict(reversed(list(replicates.items())))
    again = tables_settings(tiny_config).replicates
    assert list(first) == list(replicates) and list(again) == list(reversed(list(replicates)))
