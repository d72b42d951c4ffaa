"""spo/layout.py: the one definition of the DAG's output paths, and the LoRA-transfer parser."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from spo import layout
from spo.layout import LayoutError, lora_transfer_method, trained_method_of

REPO = Path(__file__).resolve().parents[1]


def test_paths_are_the_documented_ones():
    # The layout README's "Where outputs land" table documents: a change here must change it too.
    assert layout.MODELS_ROOT == "results/models"
    assert layout.train_dir("tiny-sd15-spo") == "results/train/tiny-sd15-spo"
    assert layout.train_checkpoints("m", "ab12") == "results/checkpoints/train/m/ab12"
    assert layout.shard_dir("m", "tiny-eval", 3) == "results/images/m/tiny-eval/shard-3"
    assert layout.score_file("all-metrics", "m", "tiny-eval", 0) == \
        "results/scores/all-metrics/m/tiny-eval/shard-0.parquet"
    assert layout.table_file("tiny-eval", "md") == "results/tables/tiny-eval.md"
    assert layout.table_file(layout.GENEVAL_TABLE, "") == "results/tables/table3_geneval"
    assert layout.paper_table_file(7, "tex") == "results/paper_tables/table7.tex"
    assert layout.figure_file("figure2", "png") == "results/figures/figure2.png"
    assert layout.geneval_layout_dir("m") == "results/geneval/m/images"
    assert layout.geneval_results_file("m") == "results/geneval/m/results.jsonl"
    assert layout.report_table_html("paper_tables", "table1") == "results/report/paper_tables/table1.html"
    assert layout.spm_pairs_dir("d", "train") == "results/spm/pairs/d/train"
    assert layout.spm_latents_dir("d", "validation", "sd15") == "results/spm/latents/d/validation/sd15"
    assert layout.spm_validation_csv("r") == "results/spm/r/validation.csv"
    assert layout.spm_checkpoints("r", "ff") == "results/spm/r/checkpoints/ff"
    assert layout.pretrain_part_dir("vae") == "results/tiny-world/parts/vae"
    assert layout.pretrain_checkpoints("ff", "vae") == "results/checkpoints/tiny-world/ff/vae"
    assert layout.resolved_config("0123") == "results/config/0123.yaml"
    assert layout.fetched_prompts("0123") == "results/prompts/0123.json"
    assert layout.log_file("tables") == "results/logs/tables.log"
    assert layout.benchmark_file("train", "m") == "results/benchmarks/train/m.tsv"


def test_model_folders_follow_the_models_root():
    assert layout.tiny_pipeline_dir("tiny-sd15") == "results/models/pipelines/tiny-sd15"
    assert layout.tiny_metric_dir("pickscore") == "results/models/metrics/pickscore"
    assert layout.spm_model_dir("r") == "results/models/spm/r"
    assert layout.pickscore_init_dir() == "results/models/spm-init/pickscore"
    # a test's or benchmark's own root, given as a Path or with a trailing slash
    assert layout.pickscore_init_dir(Path("/tmp/m")) == "/tmp/m/spm-init/pickscore"
    assert layout.tiny_pipeline_dir("x", "/tmp/m/") == "/tmp/m/pipelines/x"


def test_every_root_lies_under_results():
    roots = {k: v for k, v in vars(layout).items() if k.endswith("_ROOT") or k == "REPORT_HTML"}
    assert len(roots) >= 15
    assert all(v.startswith(layout.RESULTS + "/") for v in roots.values()), roots


def test_wildcards_pass_through_as_snakemake_patterns():
    assert layout.shard_dir("{method}", "{prompt_set}", "{shard}") == \
        "results/images/{method}/{prompt_set}/shard-{shard}"
    assert layout.table_file("{table}", "csv", kind="{kind}") == "results/{kind}/{table}.csv"
    assert layout.paper_table_file("{table}", "csv") == "results/paper_tables/table{table}.csv"
    # a pattern filled in gives the concrete path: one definition for both
    pattern = layout.score_file("{scoring}", "{method}", "{prompt_set}", "{shard}")
    assert pattern.format(scoring="s", method="m", prompt_set="p", shard=2) == \
        layout.score_file("s", "m", "p", 2)


def test_trained_method_of_a_path():
    assert trained_method_of("results/train/tiny-sdxl-mspo") == "tiny-sdxl-mspo"
    assert trained_method_of("./results/train/m/") == "m"
    assert trained_method_of(Path("results/train/m")) == "m"
    assert trained_method_of("/data/loras/m") is None
    assert trained_method_of("results/models/pipelines/m") is None
    assert trained_method_of("elsewhere/results/train/m") is None
    for bad in ("results/train", "results/train/m/unet"):
        with pytest.raises(LayoutError, match=r"inside the training outputs .* not a method's folder"):
            trained_method_of(bad)


def _config(**transfer_lora):
    return {"methods": {"spo": {"model": "a", "train": {"prompts": "p"}},
                        "base": {"model": "b"},
                        "hub": {"model": "b", "lora": {"id": "org/lora", "revision": "0" * 40}},
                        "transfer": {"model": "b", "lora": transfer_lora}}}


def test_lora_transfer_method():
    config = _config(path=layout.train_dir("spo"))
    assert lora_transfer_method(config, "transfer") == "spo"
    assert lora_transfer_method(config, "base") is None      # no lora
    assert lora_transfer_method(config, "hub") is None       # a released LoRA
    assert lora_transfer_method(config, "spo") is None       # its own training is no transfer
    assert lora_transfer_method(_config(path="/loras/x"), "transfer") is None
    assert lora_transfer_method(_config(path="results/train/spo", file="w.safetensors"),
                                "transfer") == "spo"


@pytest.mark.parametrize("path, match", [
    ("results/train/nope", r"methods\.transfer\.lora\.path' is 'results/train/nope', the training "
                           r"output of 'nope', which is not a method with a `train` block.*spo"),
    ("results/train/base", r"'base', which is not a method with a `train` block"),
    ("results/train/spo/unet", r"methods\.transfer\.lora\.path'.*not a method's folder"),
])
def test_a_bad_lora_transfer_path_is_a_clear_error(path, match):
    with pytest.raises(LayoutError, match=match):
        lora_transfer_method(_config(path=path), "transfer")


def test_a_bad_lora_transfer_path_fails_the_config_check_at_load():
    """The config check (DAG start, every job's load) reports it as any other config error."""
    from spo.config import ConfigError, load_config, validate_config

    config = load_config([REPO / "config/config.yaml"], root=REPO)
    config["methods"]["tiny-sdxl-b-mspo-lora"]["lora"] = {"path": layout.train_dir("nope")}
    with pytest.raises(ConfigError, match=r"methods\.tiny-sdxl-b-mspo-lora\.lora\.path' is "
                                          r"'results/train/nope'"):
        validate_config(config)


def test_the_shipped_configs_transfer_loras_parse():
    from spo.config import load_config

    config = load_config([REPO / "config/config.yaml"], root=REPO)
    assert lora_transfer_method(config, "tiny-sdxl-b-mspo-lora") == "tiny-sdxl-mspo-colorfulness"


def test_layout_imports_only_the_standard_library():
    tree = ast.parse((REPO / "spo/layout.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "posixpath", "pathlib", "typing"}, imported
    # and importing it (with the package) pulls in no heavy library
    code = ("import sys, spo.layout; heavy = {'torch', 'pandas', 'numpy', 'diffusers'} & set(sys.modules);"
            " print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
