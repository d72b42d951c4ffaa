"""The stages of ``python -m spo``, each declared once: its CLI arguments and its entry point.

``@stage(name, help, *arguments)`` registers the function below it in ``STAGES``;
``spo.__main__`` builds the argument parser from ``STAGES`` (``add_stages``) and calls the entry
with the loaded config and the parsed arguments. The Snakemake rules (workflow/rules/*.smk) call
these stages; tests/test_registries.py checks that every flag a rule passes is declared here.
Every entry imports its library inside the function, so a stage loads only what it uses (the
``torch_threads=False`` stages need no torch; the figure stage sets the threads itself for the
figures that run a network).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from spo import layout  # path defaults (standard library only: light stages stay light)
from spo.config_blocks import metric_spec, model_spec, prompt_set_spec
from spo.report.figure_registry import ARGUMENTS as FIGURE_ARGUMENTS
from spo.source_kind import is_tiny


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call: its flags (or positional name) and keyword arguments."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class OneOf:
    """Arguments of which exactly one must be given (a required mutually exclusive group)."""

    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    entry: Callable[[dict[str, Any], argparse.Namespace], int]  # (config, arguments) -> exit code
    arguments: tuple[Arg | OneOf, ...] = ()
    torch_threads: bool = True  # False: main() does not import torch to set its threads (no torch)


STAGES: dict[str, Stage] = {}

# Every stage takes these.
COMMON = (
    arg("--config", nargs="+", required=True,
        help="workflow config YAML file(s); later files override earlier ones"),
    arg("--out", required=True, help="output file or folder (written atomically)"),
    arg("--threads", type=int, default=None,
        help="torch CPU threads (default: $SPO_THREADS or torch's default)"),
)


def stage(name: str, help_text: str, *arguments: Arg | OneOf, torch_threads: bool = True):
    """Register the decorated ``entry(config, args) -> int`` as stage ``name``."""
    def register(entry):
        STAGES[name] = Stage(name, help_text, entry, arguments, torch_threads)
        return entry
    return register


def add_stages(sub: argparse._SubParsersAction) -> None:
    """One subparser per registered stage, in registration order."""
    for spec in STAGES.values():
        parser = sub.add_parser(spec.name, help=spec.help)
        for item in COMMON + spec.arguments:
            if isinstance(item, OneOf):
                group = parser.add_mutually_exclusive_group(required=True)
                for a in item.args:
                    group.add_argument(*a.flags, **a.options)
            else:
                parser.add_argument(*item.flags, **item.options)


def thread_count(args: argparse.Namespace) -> int:
    """--threads, else $SPO_THREADS; 0: leave torch's default."""
    return args.threads or int(os.environ.get("SPO_THREADS", "0"))


def _models_root() -> Arg:
    return arg("--models-root", default=layout.MODELS_ROOT)


@stage("tiny-model", "build a tiny random-init model in the real on-disk format",
       OneOf((arg("--model", help="a key of `models` whose source is tiny"),
              arg("--metric", help="a key of `metrics` whose weights are tiny"),
              arg("--spm-pickscore", action="store_true",
                  help="the tiny PickScore that `spm.pickscore` names (SPM initialisation)"))))
def tiny_model(config, args) -> int:
    if getattr(args, "spm_pickscore", False):
        from spo.spm.stage import save_tiny_pickscore

        return save_tiny_pickscore(config, args.out)
    if args.model:
        from spo.models.tiny import save_tiny_pipeline

        spec = model_spec(config, args.model) if args.model in config["models"] else None
        if spec is None or not is_tiny(spec.source):
            raise SystemExit(f"error: models.{args.model} is not a tiny model in this config")
        save_tiny_pipeline(spec.family, args.out, seed=spec.source["tiny"].get("seed", 0))
    else:
        from spo.metrics.tiny import save_tiny_weights

        spec = metric_spec(config, args.metric) if args.metric in config["metrics"] else None
        seeds = [w["tiny"].get("seed", 0) for w in (spec.weights if spec else {}).values() if is_tiny(w)]
        if not seeds:
            raise SystemExit(f"error: metrics.{args.metric} has no tiny weights in this config")
        save_tiny_weights(spec.scorer_of(args.metric), args.out, seed=seeds[0])
    return 0


@stage("pretrain-tiny", "pretrain one part of the tiny world (world.pretrain)",
       arg("--part", required=True,
           help="vae, clip-a, clip-b, pickscore, sd15, sdxl (spo.world.settings.PARTS)"),
       arg("--parts", required=True, help="folder holding the finished parts it builds on"),
       arg("--checkpoints", default=None,
           help="resumable checkpoints of this part (every part but release)"))
def pretrain_tiny(config, args) -> int:
    from spo.world.pretrain import run_part
    from spo.world.settings import pretrain_settings, world_spec

    if args.part != "release" and not args.checkpoints:
        raise SystemExit(f"error: --checkpoints is required for part {args.part!r}")
    run_part(args.part, world_spec(config), pretrain_settings(config), args.parts, args.out,
             checkpoints=args.checkpoints)
    return 0


@stage("world-prompts", "write the tiny world's prompt files from its grammar (--out: a folder)",
       torch_threads=False)
def world_prompts(config, args) -> int:
    from spo.world.prompts import write_prompt_files
    from spo.world.settings import world_spec

    for path in write_prompt_files(world_spec(config), args.out):
        print(path)
    return 0


@stage("expected-results", "the finished run's headline numbers as the expected-results file",
       arg("--results", default=layout.RESULTS, help="the finished run's results folder"),
       torch_threads=False)
def expected_results(config, args) -> int:
    from spo.expected import ExpectedResultsError, write

    try:
        write(args.results, config, args.out)
    except ExpectedResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


@stage("generate", "generate one shard of a prompt set with one method",
       arg("--method", required=True),
       arg("--prompt-set", required=True),
       arg("--shard", type=int, required=True),
       arg("--models-root", default=layout.MODELS_ROOT),
       arg("--lora", default=None,
           help="a method with a `train` block: its training output folder (the LoRA, or "
                "unet/ of a full-UNet training); absent for every other method"))
def generate(config, args) -> int:
    from spo.generate import generate_shard

    generate_shard(config, args.method, args.prompt_set, args.shard, args.out,
                   models_root=args.models_root, lora=args.lora)
    return 0


@stage("fetch-prompts", "download a `url` prompt set and verify its sha256",
       arg("--prompt-set", required=True))
def fetch_prompts(config, args) -> int:
    from spo.prompts import fetch_prompt_file

    source = prompt_set_spec(config, args.prompt_set).source
    if "url" not in source:
        raise SystemExit(f"error: prompt_sets.{args.prompt_set} has no `url` source")
    fetch_prompt_file(source["url"]["url"], source["url"]["sha256"], args.out)
    return 0


@stage("train", "train a method's LoRA with SPO / MSPO (its `train` block)",
       arg("--method", required=True),
       arg("--checkpoints", required=True, help="folder of resumable checkpoints"),
       _models_root(),
       arg("--pairs", default=None,
           help="offline trainers (diffusion-dpo): the pairs folder of train.diffusion_dpo.data"),
       arg("--latents", default=None, help="offline trainers: a latent cache of those pairs"))
def train(config, args) -> int:
    from spo.training.stage import train_method

    train_method(config, args.method, args.out, checkpoint_dir=args.checkpoints,
                 models_root=args.models_root, pairs=args.pairs, latents=args.latents)
    return 0


@stage("score", "score generation shards with one or more metrics",
       arg("--metric", nargs="+", required=True, help="metric names (one output file)"),
       arg("--shards", nargs="+", required=True, help="generation shard folders"),
       _models_root())
def score(config, args) -> int:
    from spo.score import score_shards

    score_shards(config, args.metric, args.shards, args.out, models_root=args.models_root)
    return 0


@stage("tables", "summary tables with bootstrap CIs",
       arg("--scores", nargs="+", required=True, help="score Parquet files"),
       torch_threads=False)
def tables(config, args) -> int:
    from spo.tables import build_tables

    build_tables(config, args.scores, args.out)
    return 0


@stage("paper-tables", "the paper's tables beside ours (paper, ours, ours - paper, CI)",
       arg("--scores", nargs="*", default=[], help="score Parquet files of the tables' rows"),
       arg("--tables", nargs="+", type=int, default=None,
           help="table numbers (default: every rebuilt table: 1 2 4 5 6 7 8 9)"),
       arg("--paper-numbers", default=None, help="default: data/paper/tables.yaml"),
       torch_threads=False)
def paper_tables(config, args) -> int:
    from spo.report.paper_tables import REBUILT_TABLES, PaperTableError, build_paper_tables

    try:
        build_paper_tables(config, args.scores, args.out, tables=args.tables or REBUILT_TABLES,
                           numbers_path=args.paper_numbers)
    except PaperTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


@stage("spm-pairs", "preference pairs of one spm dataset split (Parquet folder)",
       arg("--dataset", required=True, help="a key of spm.datasets"),
       arg("--split", required=True, choices=["train", "validation"]),
       _models_root())
def spm_pairs(config, args) -> int:
    from spo.spm.stage import check_spm_config, make_pairs

    check_spm_config(config)
    make_pairs(config, args.dataset, args.split, args.out, models_root=args.models_root)
    return 0


@stage("spm-latents", "cache the VAE latents of a pairs folder for one base model",
       arg("--pairs", required=True, help="a pairs folder (spm-pairs output)"),
       arg("--model", required=True, help="a key of `models` (its VAE encodes)"),
       arg("--resolution", type=int, default=None, help="image side before encoding"),
       _models_root())
def spm_latents(config, args) -> int:
    from spo.spm.stage import cache_latents, check_spm_config

    check_spm_config(config)
    cache_latents(config, args.pairs, args.model, args.out, models_root=args.models_root,
                  resolution=args.resolution)
    return 0


@stage("train-spm", "train one step-aware preference model (spm.runs.<run>)",
       arg("--run", required=True, help="a key of spm.runs"),
       arg("--pairs", required=True, help="training pairs folder"),
       arg("--val-pairs", required=True, help="validation pairs folder"),
       arg("--latents", default=None, help="cached latents of the training pairs"),
       arg("--val-latents", default=None, help="cached latents of the validation pairs"),
       arg("--validation-csv", required=True, help="accuracy against t, written here"),
       arg("--checkpoints", required=True, help="resumable checkpoints (kept on failure)"),
       _models_root())
def train_spm(config, args) -> int:
    from spo.spm import stage as spm

    spm.check_spm_config(config)
    runs = config["spm"]["runs"]
    if args.run not in runs:
        raise SystemExit(f"error: spm run {args.run!r} is not under spm.runs; defined: "
                         f"{', '.join(sorted(runs))}")
    spm.train_spm(config, args.run, pairs=args.pairs, val_pairs=args.val_pairs, out_dir=args.out,
                  validation_csv=args.validation_csv, checkpoints=args.checkpoints,
                  models_root=args.models_root, latents=args.latents, val_latents=args.val_latents)
    return 0


@stage("geneval-layout", "generation shards in GenEval's folder layout",
       arg("--method", required=True),
       arg("--shards", nargs="+", required=True, help="generation shard folders"),
       arg("--metadata", required=True, help="GenEval's evaluation_metadata.jsonl"),
       torch_threads=False)
def geneval_layout(config, args) -> int:
    from spo.config import geneval_settings, images_per_prompt
    from spo.report.geneval import read_metadata, write_layout

    spec = geneval_settings(config)
    metadata = read_metadata(args.metadata, spec.metadata["sha256"])
    write_layout(args.shards, metadata, args.out,
                 images_per_prompt=images_per_prompt(config, spec.prompt_set))
    return 0


@stage("geneval-detect", "score a GenEval layout with the tiny world's detector (results.jsonl)",
       arg("--layout", required=True, help="a geneval-layout output folder"),
       torch_threads=False)
def geneval_detect(config, args) -> int:
    from spo.report.geneval import detect_layout
    from spo.world.settings import world_spec

    detect_layout(args.layout, world_spec(config), args.out)
    return 0


@stage("geneval-table", "Table 3 (GenEval) from imported results.jsonl files",
       arg("--layouts", nargs="*", default=[], help="GenEval layout folders, one per method"),
       torch_threads=False)
def geneval_table(config, args) -> int:
    from pathlib import Path

    from spo.report.geneval import write_table3

    layouts = {Path(p).parent.name: p for p in args.layouts}  # results/geneval/<method>/images
    write_table3(config, layouts, args.out)
    return 0


@stage("table-html", "render a results table (CSV) as HTML for the report",
       arg("--csv", required=True),
       torch_threads=False)
def table_html(config, args) -> int:
    from spo.report.html_table import csv_to_html

    csv_to_html(args.csv, args.out)
    return 0


# torch_threads=False: of the figures only those with Figure.torch_threads run a network (the
# disagreement figure's predictor); they set the threads themselves.
@stage("figure", "one figure (figures.<name>): PNG plus the numbers behind it",
       arg("name", help="a key of `figures` (figure2, figure6, compute, ...)"),
       arg("--inputs", nargs="*", default=[], help="the result files / folders it reads"),
       *(arg(o.flag, default=o.default, help=o.help) for o in FIGURE_ARGUMENTS.values()),
       torch_threads=False)
def figure(config, args) -> int:
    from spo.report.figures import FIGURES, FigureError, make_figure

    spec = FIGURES.get(args.name)  # unknown: make_figure names the figures there are
    extra = {k: FIGURE_ARGUMENTS[k].parse(getattr(args, k)) for k in spec.extra} if spec else {}
    if spec and spec.torch_threads and thread_count(args):
        import torch

        torch.set_num_threads(thread_count(args))
    try:
        make_figure(config, args.name, args.inputs, args.out, **extra)
    except FigureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
