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


# --- issue 19: every train key typed once, checked at load, one error type and message shape ---

@pytest.mark.parametrize("method, key, value, expected", [
    ("tiny-sd15-spo", "pair_mode", "best_worst",
     "is 'best_worst'; it must be one of 'best-worst', 'random' (did you mean 'best-worst'?)"),
    ("tiny-sd15-spo", "beta", -1, "is -1; it must be a number > 0"),
    ("tiny-sd15-spo", "max_rounds", 0, "is 0; it must be an integer >= 1 or null"),
    ("tiny-sd15-spo", "clamp_eps", 2, "is 2; it must be a number in (0, 1) or null"),
    ("tiny-sd15-spo", "lora_rank", 0, "is 0; it must be an integer >= 1"),
    ("tiny-sd15-spo", "num_inference_steps", 0, "is 0; it must be an integer >= 1"),
    ("tiny-sd15-spo", "k", "four", "is 'four'; it must be an integer >= 2 (a pair needs two "
                                   "candidates); it is a string, not a number"),
    ("tiny-sd15-spo", "k", True, "is true; it must be an integer >= 2 (a pair needs two candidates); "
                                 "true / false is not a number"),
    ("tiny-sd15-spo", "lr", "1e-4", "is '1e-4'; it must be a number > 0; it is a string, not a number "
                                    "(YAML reads 1e-4 as a string: a float needs a decimal point and "
                                    "a signed exponent, write 1.0e-4)"),
    ("tiny-sd15-spo", "timestep_range", [750, 0], "is [750, 0]; it must be [lo, hi], integers with "
                                                  "0 <= lo <= hi"),
    ("tiny-sd15-ddpo", "ddpo.clip_range", 0, "is 0; it must be a number > 0 (PPO clip range)"),
    ("tiny-sd15-d3po", "d3po.timestep_fraction", 1.5, "is 1.5; it must be a number in (0, 1]"),
    ("tiny-sd15-diffusion-dpo", "diffusion_dpo.beta", -1, "is -1; it must be a number > 0"),
])
def test_a_bad_train_value_is_a_config_error_naming_key_value_and_range(tiny_config, method, key,
                                                                       value, expected):
    block = tiny_config["methods"][method]["train"]
    *parents, leaf = key.split(".")
    for part in parents:
        block = block[part]
    block[leaf] = value
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    assert f"config key 'methods.{method}.train.{key}' {expected}" in str(err.value)


def test_train_cross_field_rules_are_checked_at_load(tiny_config):
    methods = tiny_config["methods"]
    methods["tiny-sd15-ddpo"]["train"]["eta"] = 0.0
    methods["tiny-sd15-spo"]["train"]["ddpo"] = {"clip_range": 0.1}
    methods["tiny-sd15-diffusion-dpo"]["train"]["diffusion_dpo"]["micro_batch"] = 48
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config)
    msg = str(err.value)
    assert "config key 'methods.tiny-sd15-ddpo.train.eta' is 0.0; algorithm 'ddpo' needs eta > 0" in msg
    assert ("config key 'methods.tiny-sd15-spo.train.ddpo' is {'clip_range': 0.1}; it is given but "
            "'methods.tiny-sd15-spo.train.algorithm' is 'spo'") in msg
    assert ("config key 'methods.tiny-sd15-diffusion-dpo.train.diffusion_dpo.batch_size' is 64; it "
            "must be a multiple of 'methods.tiny-sd15-diffusion-dpo.train.diffusion_dpo.micro_batch' (48)") in msg


def test_the_training_job_uses_the_settings_parsed_at_load(tiny_config):
    from spo.config import train_settings

    validate_config(tiny_config)
    spo = train_settings(tiny_config, "tiny-sd15-spo")
    assert train_settings(tiny_config, "tiny-sd15-spo") is spo  # no second parse
    assert (spo.k, spo.threshold, spo.timestep_range, spo.lr) == (4, 0.1, (0, 750), 2.0e-3)
    ddpo = train_settings(tiny_config, "tiny-sd15-ddpo")
    assert ddpo.algorithm_settings() is ddpo.algorithm_settings()
    assert ddpo.algorithm_settings().images_per_prompt == 4
    assert ddpo.for_world(1).algorithm_settings() is ddpo.algorithm_settings()


def test_a_bad_value_exits_the_command_line_with_code_2(repo_root, tmp_path, monkeypatch, capsys):
    from spo.__main__ import main

    monkeypatch.chdir(repo_root)  # the overlay extends the embedded default config/config.yaml
    bad = _write(tmp_path, {"methods": {"tiny-sd15-spo": {"train": {"beta": -1}}}})
    code = main(["train", "--config", str(bad), "--out", str(tmp_path / "out"), "--method",
                 "tiny-sd15-spo", "--checkpoints", str(tmp_path / "ckpt")])
    assert code == 2
    assert "config key 'methods.tiny-sd15-spo.train.beta' is -1" in capsys.readouterr().err


def test_a_bad_value_stops_the_dry_run_of_the_dag(tmp_path):
    """One Snakemake dry run (~15 s): the Snakefile validates the config before it plans a job."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for name in ("Snakefile", "workflow", "config"):  # enough: the run stops while loading config
        (shutil.copytree if (repo / name).is_dir() else shutil.copy2)(repo / name, tmp_path / name)
    bad = _write(tmp_path, {"methods": {"tiny-sd15-spo": {"train": {"pair_mode": "best_worst"}}}},
                 "bad.yaml")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                           str(bad)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert ("config key 'methods.tiny-sd15-spo.train.pair_mode' is 'best_worst'; it must be one of "
            "'best-worst', 'random'") in text, text[-3000:]


def test_the_test_configs_still_load(tiny_config, repo_root):
    """The shipped configs load (test_shipped_configs_validate); so do the tests' own."""
    validate_config(tiny_config)
    from spo.config import train_settings

    for config in (tiny_config, load_config([repo_root / "config" / "paper.yaml"], root=repo_root)):
        for method, spec in config["methods"].items():
            if "train" in spec:
                assert train_settings(config, method).prompts == spec["train"]["prompts"]


def test_editing_a_config_after_it_loaded_changes_no_parsed_settings(tiny_config):
    """The parsed settings are memoised and shared: they hold copies, not the config's mappings."""
    from spo.config import train_settings

    validate_config(tiny_config)
    parsed = train_settings(tiny_config, "tiny-sd15-diffusion-dpo")
    tiny_config["methods"]["tiny-sd15-diffusion-dpo"]["train"]["diffusion_dpo"]["data"] = "nope"
    assert parsed.diffusion_dpo["data"] == "tiny-sd15-pairs"
    assert parsed.algorithm_settings().data == "tiny-sd15-pairs"
