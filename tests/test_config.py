import pytest
import yaml

from spo.config import (ConfigError, deep_merge, evaluated_pairs, load_config, resolve_extends,
                        validate_config)


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "released.yaml", "ablations.yaml"])
def test_shipped_configs_validate(repo_root, name):
    config = load_config([repo_root / "config" / name], root=repo_root)
    assert evaluated_pairs(config)


def test_paper_profile_protocol(repo_root):
    config = load_config([repo_root / "config" / "paper.yaml"], root=repo_root)
    gen = config["generation"]
    assert (gen["scheduler"], gen["num_inference_steps"], gen["guidance_scale"]) == ("ddim", 20, 5.0)
    assert config["prompt_sets"]["pickapic-val"]["count"] == 500
    # Table 3: GenEval's 50 steps on its own prompt set; the other sets keep the 20 of Tables 1-2
    from spo.config import inference_steps
    from spo.generate import generation_settings

    assert inference_steps(config, "geneval") == 50
    assert inference_steps(config, "pickapic-val") == 20
    assert generation_settings(config, "sdxl-base", "geneval")["num_inference_steps"] == 50
    for model in config["models"].values():
        if "id" in model["source"]:  # hub models: pinned commits, never a branch
            assert len(model["source"]["revision"]) == 40
        else:  # a local folder the user provides (the LoRA-transfer target)
            assert "path" in model["source"]
    assert sum("id" in m["source"] for m in config["models"].values()) >= 2
    assert not any("tiny" in m["source"] for m in config["models"].values())


def _write(tmp_path, data, name="overlay.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_key_is_named_with_suggestion(tmp_path, repo_root):
    bad = _write(tmp_path, {"generation": {"num_inferenc_steps": 3}})
    with pytest.raises(ConfigError) as err:
        load_config([repo_root / "config" / "config.yaml", bad], root=repo_root)
    msg = str(err.value)
    assert "generation.num_inferenc_steps" in msg and "did you mean 'num_inference_steps'" in msg


def test_mistyped_value_is_named(tmp_path, repo_root):
    bad = _write(tmp_path, {"generation": {"guidance_scale": "five"}})
    with pytest.raises(ConfigError, match="generation.guidance_scale"):
        load_config([repo_root / "config" / "config.yaml", bad], root=repo_root)


def test_source_must_be_exactly_one_kind(tiny_config):
    tiny_config["models"]["tiny-sd15"]["source"] = {"id": "x/y", "revision": "abc", "path": "p"}
    with pytest.raises(ConfigError, match="models.tiny-sd15.source.*exactly one of"):
        validate_config(tiny_config)
    tiny_config["models"]["tiny-sd15"]["source"] = {"id": "x/y"}  # a hub id without revision
    with pytest.raises(ConfigError, match="models.tiny-sd15.source"):
        validate_config(tiny_config)


def test_cross_references_are_checked(tiny_config):
    tiny_config["methods"]["tiny-sd15-base"]["model"] = "tiny-sd16"
    tiny_config["evaluate"][0]["prompt_sets"].append("nope")
    tiny_config["metrics"]["pickscorr"] = {}
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "methods.tiny-sd15-base.model" in msg and "did you mean 'tiny-sd15'" in msg
    assert "evaluate.prompt_sets" in msg and "'nope'" in msg
    assert "metrics.pickscorr" in msg


def test_hub_prompt_set_needs_count(tiny_config):
    tiny_config["prompt_sets"]["hub"] = {"source": {"hub_parquet": {
        "id": "a/b", "revision": "c", "pattern": "*.parquet", "column": "caption"}}}
    with pytest.raises(ConfigError, match="prompt_sets.hub.count"):
        validate_config(tiny_config)


def test_deep_merge_replaces_sources_whole():
    base = {"models": {"m": {"family": "sd15", "source": {"tiny": {"seed": 1}}}}}
    over = {"models": {"m": {"source": {"id": "a/b", "revision": "r"}}}}
    merged = deep_merge(base, over)
    assert merged["models"]["m"] == {"family": "sd15", "source": {"id": "a/b", "revision": "r"}}
    assert base["models"]["m"]["source"] == {"tiny": {"seed": 1}}  # inputs untouched


def test_extends_and_default(tmp_path, repo_root):
    # Only an override: the embedded default lies underneath.
    config = resolve_extends({"seed": 7}, repo_root)
    assert config["seed"] == 7 and config["profile"] == "tiny"
    loop = _write(tmp_path, {"extends": "loop.yaml"}, "loop.yaml")
    with pytest.raises(ConfigError, match="cycle"):
        resolve_extends({"extends": loop.name}, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_extends({"extends": "missing.yaml"}, tmp_path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "nope.yaml"])


def test_paper_spo_recipes(repo_root):
    config = load_config([repo_root / "config" / "paper.yaml"], root=repo_root)
    spo, mspo = config["methods"]["sd15-spo"]["train"], config["methods"]["sdxl-mspo"]["train"]
    assert (spo["k"], spo["timestep_range"], spo["threshold"], spo["beta"], spo["clamp_eps"],
            spo["lora_rank"], spo["lr"], spo["prompts_per_round"], spo["epochs"]) == \
        (4, [0, 750], 0.3, 10.0, 0.1, 4, 6e-5, 40, 10)  # global: 10 per GPU x 4 GPUs
    assert (mspo["k"], mspo["inner_steps"], mspo["threshold"], mspo["lora_rank"], mspo["lr"],
            mspo["train_batch_size"], mspo["grad_accum"]) == (2, 4, 0.4, 64, 1e-5, 8, 2)  # 2 x 4 GPUs


def test_ablation_variants_are_small_diffs(repo_root):
    config = load_config([repo_root / "config" / "ablations.yaml"], root=repo_root)
    methods = config["methods"]
    base = methods["sd15-spo"]["train"]
    for name, diff in [("sd15-spo-k2", {"k": 2}), ("sd15-spo-t250-500", {"timestep_range": [250, 500]}),
                       ("sd15-spo-next-lose", {"next_init": "lose"}),
                       ("sd15-spo-random-pair", {"pair_mode": "random"})]:
        assert methods[name]["train"] == {**base, **diff}, name
        assert methods[name]["model"] == "sd15" and methods[name]["baseline"] == "sd15-base"
    assert {methods[f"sdxl-mspo-j{j}"]["train"]["inner_steps"] for j in (1, 2, 3, 5, 6)} == {1, 2, 3, 5, 6}


def test_bad_train_block_is_named_at_dag_start(tiny_config):
    tiny_config["methods"]["tiny-sd15-spo"]["train"]["k"] = 1
    tiny_config["methods"]["tiny-sd15-spo-random-s1"]["train"]["prompts"] = "tiny-trian"
    tiny_config["methods"]["tiny-sd15-spo-negated"]["train"]["preference"] = {"name": "spn"}
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "methods.tiny-sd15-spo.train.k" in msg
    assert "methods.tiny-sd15-spo-random-s1.train.prompts" in msg and "did you mean 'tiny-train'" in msg
    assert "methods.tiny-sd15-spo-negated.train.preference.name" in msg


def test_like_cycles_and_unknown_parents(repo_root):
    from spo.config import resolve_method_templates

    with pytest.raises(ConfigError, match="cycle"):
        resolve_method_templates({"methods": {"a": {"like": "b"}, "b": {"like": "a"}}})
    with pytest.raises(ConfigError, match="methods.a.like"):
        resolve_method_templates({"methods": {"a": {"like": "zz"}}})


def test_replicates_in_the_config_are_checked(tiny_config):
    tiny_config["tables"]["replicates"] = {
        "tiny-sd15-spo": ["tiny-sd15-spo-random-s0", "tiny-sd15-spo-random-s1"],   # a method's name
        "pooled": ["tiny-sd15-spo-random-s0", "tiny-sd15-spo-randon-s1", "tiny-sdxl-mspo-random-s0"]}
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "tables.replicates.tiny-sd15-spo': a pooled row needs a name of its own" in msg
    assert "'tiny-sd15-spo-randon-s1', which is not under 'methods'" in msg and "did you mean" in msg
    assert "must share one baseline" in msg


@pytest.mark.parametrize("family, trained", [("sd15", "spo"), ("sdxl", "mspo")])
def test_tiny_controls_differ_from_their_method_only_in_the_preference(repo_root, family, trained):
    """The negated and random controls train exactly the recipe of the analytic run (a nested YAML
    merge once gave the MSPO controls k 4 where the recipe said k 8)."""
    config = load_config([repo_root / "config" / "config.yaml"], root=repo_root)
    methods = config["methods"]
    recipe = dict(methods[f"tiny-{family}-{trained}-colorfulness"]["train"])
    assert recipe["preference"] == {"name": "colorfulness"}
    controls = [("negated", {"name": "neg-colorfulness"}, recipe["seed"])]
    # the random control: independent runs (preference and training seed s), pooled in the tables
    controls += [(f"random-s{s}", {"name": "random", "seed": s}, s) for s in range(3)]
    for control, preference, seed in controls:
        train = dict(methods[f"tiny-{family}-{trained}-{control}"]["train"])
        assert train.pop("preference") == preference
        assert train.pop("seed") == seed
        assert train == {k: v for k, v in recipe.items() if k not in ("preference", "seed")}, control
    assert config["tables"]["replicates"][f"tiny-{family}-{trained}-random"] == [
        f"tiny-{family}-{trained}-random-s{s}" for s in range(3)]
