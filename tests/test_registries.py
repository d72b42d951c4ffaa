"""The two registries: figures (spo/report/figure_registry.py) and stages (spo/stages.py).

The figure registry must agree with the schema, the captions and the workflow's path mapping; the
stage registry must build the command line the Snakemake rules call: every flag a rule's `shell:`
passes (its params' flags included) is declared by that stage, every required flag is passed,
and each stage's options (names, defaults, required) are those recorded below.
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spo.config import config_schema, load_config
from spo.report.figure_registry import ARGUMENTS, FIGURES, KINDS

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "workflow" / "rules"


# --- figures --------------------------------------------------------------------------------

def test_every_figure_draws_has_a_caption_and_takes_its_extra_arguments():
    for name, figure in FIGURES.items():
        assert figure.name == name
        draw = figure.draw_function()
        assert callable(draw), name
        assert (REPO / "workflow" / "report" / figure.caption).is_file(), figure.caption
        params = inspect.signature(draw).parameters
        assert list(params)[:4] == ["config", "name", "inputs", "out"], name
        for key in figure.extra:
            assert key in ARGUMENTS and key in params, (name, key)
        assert all(s.startswith(".") and s not in (".png", ".json") for s in figure.sidecars)


def test_each_figure_declares_its_config_block_and_the_schema_takes_it_from_there():
    """A figure's config keys live in its registry entry: the loaded schema's `figures` are exactly
    the registry's blocks (the YAML file declares none), each a valid schema whose `$ref`s resolve,
    so a typo in a figure's block fails at load, naming the key."""
    import jsonschema

    schema = config_schema()
    assert set(schema["properties"]["figures"]["properties"]) == set(FIGURES)
    assert all(figure.schema for figure in FIGURES.values())
    jsonschema.Draft202012Validator.check_schema(schema)
    config = load_config([REPO / "config" / "config.yaml"], root=REPO)
    name = next(iter(config["figures"]))
    config["figures"][name] = {**config["figures"][name], "not_a_key": 1}
    from spo.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=f"figures.{name}"):
        validate_config(config)


@pytest.mark.parametrize("profile", ["config.yaml", "paper.yaml"])
def test_what_figures_read_are_kinds_the_workflow_maps(profile):
    config = load_config([REPO / "config" / profile], root=REPO)
    text = (RULES / "figures_common.smk").read_text()
    block = text[text.index("FIGURE_READS = {"):]
    mapped = set(re.findall(r'^    "(\w+)": lambda', block[:block.index("\n}")], re.M))
    assert mapped == set(KINDS)
    for name in config.get("figures") or {}:
        reads = FIGURES[name].read_list(config)
        assert reads and {r.kind for r in reads} <= set(KINDS), name


def test_the_registries_import_nothing_heavy():
    """The Snakefile imports the figure registry at DAG start; `python -m spo tables` must not
    load torch (its stages are torch_threads=False)."""
    code = ("import sys, spo.__main__, spo.report.figures; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --- stages ---------------------------------------------------------------------------------

R = "required"
MODELS = {"--models-root": "results/models"}
# Every stage's options beyond --config, --out, --threads: flag -> default (R: required), as the
# command line had them before the registry (issue 19); the rules and the docs call them.
RECORDED = {
    "tiny-model": {"--model": None, "--metric": None, "--spm-pickscore": False},
    "pretrain-tiny": {"--part": R, "--parts": R, "--checkpoints": None},
    "world-prompts": {},
    "expected-results": {"--results": "results"},
    "generate": {"--method": R, "--prompt-set": R, "--shard": R, **MODELS,
                 "--lora": None},
    "fetch-prompts": {"--prompt-set": R},
    "train": {"--method": R, "--checkpoints": R, **MODELS, "--pairs": None, "--latents": None},
    "score": {"--metric": R, "--shards": R, **MODELS},
    "tables": {"--scores": R},
    "paper-tables": {"--scores": [], "--tables": None, "--paper-numbers": None},
    "spm-pairs": {"--dataset": R, "--split": R, **MODELS},
    "spm-latents": {"--pairs": R, "--model": R, "--resolution": None, **MODELS},
    "train-spm": {"--run": R, "--pairs": R, "--val-pairs": R, "--latents": None,
                  "--val-latents": None, "--validation-csv": R, "--checkpoints": R, **MODELS},
    "geneval-layout": {"--method": R, "--shards": R, "--metadata": R},
    "geneval-detect": {"--layout": R},
    "geneval-table": {"--layouts": []},
    "table-html": {"--csv": R},
    "figure": {"--inputs": [], **MODELS, "--benchmarks": "results/benchmarks", "--gpus": "{}"},
}
NO_TORCH = {"expected-results", "world-prompts", "geneval-detect", "tables", "paper-tables",
            "geneval-layout", "geneval-table", "table-html", "figure"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from spo.__main__ import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {a.option_strings[0]: (R if a.required else a.default) for a in parser._actions
            if a.option_strings and a.dest != "help"}


def test_the_stages_and_their_options_are_the_recorded_ones():
    from spo.stages import STAGES

    subs = _subparsers()
    assert list(subs) == list(RECORDED)
    common = {"--config": R, "--out": R, "--threads": None}
    for name, parser in subs.items():
        assert _options(parser) == {**common, **RECORDED[name]}, name
    assert {n for n, s in STAGES.items() if not s.torch_threads} == NO_TORCH
    positional = [a.dest for a in subs["figure"]._actions if not a.option_strings and a.dest != "help"]
    assert positional == ["name"]


def _definitions() -> dict[str, str]:
    """Top-level functions and assignments of the rule files: name -> source text."""
    out = {}
    for path in RULES.glob("*.smk"):
        for block in re.split(r"\n(?=\S)", path.read_text()):
            found = re.match(r"(?:def (\w+)\(|(\w+) = )", block)
            if found:
                out[found.group(1) or found.group(2)] = block
    return out


def _flags(text: str, definitions: dict[str, str], depth: int = 2) -> set[str]:
    """Flags in ``text`` and in the rule-file definitions it names, ``depth`` levels deep."""
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    if depth:
        for word in set(re.findall(r"\w+", text)) & set(definitions):
            flags |= _flags(definitions[word], definitions, depth - 1)
    return flags


def _rule_calls():
    """(file, stage, flags) of every `python -m spo <stage>` in a rule's shell command."""
    definitions = _definitions()
    for path in sorted(RULES.glob("*.smk")):
        lines = path.read_text().splitlines()
        start = 0
        for i, line in enumerate(lines):
            if re.match(r"\s*rule\b", line):
                start = i
            if line.strip() != "shell:":
                continue
            indent = len(line) - len(line.lstrip())
            command = ""
            for nxt in lines[i + 1:]:
                if not nxt.strip().startswith('"') or len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                command += "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', nxt))
            call = re.search(r"-m \S*spo ([a-z-]+)(.*)", command)
            if not call:
                continue
            params = dict(re.findall(r"^\s+(\w+)=(.*)$", "\n".join(lines[start:i]), re.M))
            flags = _flags(call.group(2), {})
            for used in re.findall(r"\{params\.(\w+)\}", call.group(2)):
                flags |= _flags(params.get(used, ""), definitions)
            yield path.name, call.group(1), flags


def test_every_rule_calls_a_stage_with_flags_it_declares():
    subs = _subparsers()
    calls = list(_rule_calls())
    assert {stage for _, stage, _ in calls} >= {"generate", "train", "score", "tables", "figure",
                                                "train-spm", "spm-latents", "tiny-model"}
    for file, stage, flags in calls:
        assert stage in subs, (file, stage)
        options = _options(subs[stage])
        assert flags <= set(options), (file, stage, flags - set(options))
        required = {f for f, d in options.items() if d == R}
        assert required <= flags, (file, stage, required - flags)
    figure_flags = set().union(*(f for _, s, f in calls if s == "figure"))
    assert "--gpus" in figure_flags  # through params.extra, from the registry's `extra`
