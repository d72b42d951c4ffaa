"""Command line: ``python -m spo <stage> --config CONFIG.yaml [...] --out PATH``.

Stages (each a thin wrapper over a library function, so tests call the functions directly):

    tiny-model   build a tiny random-init pipeline (``--model``) or scorer (``--metric``)
    pretrain-tiny  pretrain one part of the tiny world (spo/world; rule pretrain_tiny)
    expected-results  a finished tiny run's headline numbers -> data/expected-results/tiny.json
    generate     one shard of one prompt set through one method
    score        one metric over generation shards
    train        train a method's LoRA with SPO / MSPO
    tables       summary tables from score files
    paper-tables the paper's Tables 1, 2, 4-9 beside ours, from score files (results/paper_tables)
    spm-pairs    preference pairs for the SPM (tiny: generated; paper: Pick-a-Pic)
    spm-latents  cache the VAE latents of a pairs folder
    train-spm    train a step-aware preference model; writes the validation CSV
    figure       one of the paper's figures (``figures.<name>``) as a PNG under results/figures
    geneval-layout  generation shards in GenEval's folder layout (Table 3)
    geneval-table   Table 3 from GenEval's results.jsonl where the user put it (else: "not run")
    table-html   a results table (CSV) as a self-contained HTML page for the Snakemake report
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from spo import layout  # path defaults (standard library only: light stages stay light)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", nargs="+", required=True,
                       help="workflow config YAML file(s); later files override earlier ones")
        p.add_argument("--out", required=True, help="output file or folder (written atomically)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: $SPO_THREADS or torch's default)")
        return p

    p = stage("tiny-model", "build a tiny random-init model in the real on-disk format")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="a key of `models` whose source is tiny")
    group.add_argument("--metric", help="a key of `metrics` whose weights are tiny")
    group.add_argument("--spm-pickscore", action="store_true",
                       help="the tiny PickScore that `spm.pickscore` names (SPM initialisation)")

    p = stage("pretrain-tiny", "pretrain one part of the tiny world (world.pretrain)")
    p.add_argument("--part", required=True,
                   help="vae, clip-a, clip-b, pickscore, sd15, sdxl (spo.world.settings.PARTS)")
    p.add_argument("--parts", required=True, help="folder holding the finished parts it builds on")
    p.add_argument("--checkpoints", default=None,
                   help="resumable checkpoints of this part (every part but release)")

    stage("world-prompts", "write the tiny world's prompt files from its grammar (--out: a folder)")

    p = stage("expected-results", "the finished run's headline numbers as the expected-results file")
    p.add_argument("--results", default=layout.RESULTS, help="the finished run's results folder")

    p = stage("generate", "generate one shard of a prompt set with one method")
    p.add_argument("--method", required=True)
    p.add_argument("--prompt-set", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--models-root", default=layout.MODELS_ROOT)
    p.add_argument("--lora", default=None,
                   help="a method with a `train` block: its training output folder (the LoRA, or "
                        "unet/ of a full-UNet training); absent for every other method")

    p = stage("fetch-prompts", "download a `url` prompt set and verify its sha256")
    p.add_argument("--prompt-set", required=True)

    p = stage("train", "train a method's LoRA with SPO / MSPO (its `train` block)")
    p.add_argument("--method", required=True)
    p.add_argument("--checkpoints", required=True, help="folder of resumable checkpoints")
    p.add_argument("--models-root", default=layout.MODELS_ROOT)
    p.add_argument("--pairs", default=None,
                   help="offline trainers (diffusion-dpo): the pairs folder of train.diffusion_dpo.data")
    p.add_argument("--latents", default=None, help="offline trainers: a latent cache of those pairs")

    p = stage("score", "score generation shards with one or more metrics")
    p.add_argument("--metric", nargs="+", required=True, help="metric names (one output file)")
    p.add_argument("--shards", nargs="+", required=True, help="generation shard folders")
    p.add_argument("--models-root", default=layout.MODELS_ROOT)

    p = stage("tables", "summary tables with bootstrap CIs")
    p.add_argument("--scores", nargs="+", required=True, help="score Parquet files")

    p = stage("paper-tables", "the paper's tables beside ours (paper, ours, ours - paper, CI)")
    p.add_argument("--scores", nargs="*", default=[], help="score Parquet files of the tables' rows")
    p.add_argument("--tables", nargs="+", type=int, default=None,
                   help="table numbers (default: every rebuilt table: 1 2 4 5 6 7 8 9)")
    p.add_argument("--paper-numbers", default=None, help="default: data/paper/tables.yaml")
    p = stage("spm-pairs", "preference pairs of one spm dataset split (Parquet folder)")
    p.add_argument("--dataset", required=True, help="a key of spm.datasets")
    p.add_argument("--split", required=True, choices=["train", "validation"])
    p.add_argument("--models-root", default=layout.MODELS_ROOT)

    p = stage("spm-latents", "cache the VAE latents of a pairs folder for one base model")
    p.add_argument("--pairs", required=True, help="a pairs folder (spm-pairs output)")
    p.add_argument("--model", required=True, help="a key of `models` (its VAE encodes)")
    p.add_argument("--resolution", type=int, default=None, help="image side before encoding")
    p.add_argument("--models-root", default=layout.MODELS_ROOT)

    p = stage("train-spm", "train one step-aware preference model (spm.runs.<run>)")
    p.add_argument("--run", required=True, help="a key of spm.runs")
    p.add_argument("--pairs", required=True, help="training pairs folder")
    p.add_argument("--val-pairs", required=True, help="validation pairs folder")
    p.add_argument("--latents", default=None, help="cached latents of the training pairs")
    p.add_argument("--val-latents", default=None, help="cached latents of the validation pairs")
    p.add_argument("--validation-csv", required=True, help="accuracy against t, written here")
    p.add_argument("--checkpoints", required=True, help="resumable checkpoints (kept on failure)")
    p.add_argument("--models-root", default=layout.MODELS_ROOT)

    p = stage("geneval-layout", "generation shards in GenEval's folder layout")
    p.add_argument("--method", required=True)
    p.add_argument("--shards", nargs="+", required=True, help="generation shard folders")
    p.add_argument("--metadata", required=True, help="GenEval's evaluation_metadata.jsonl")

    p = stage("geneval-detect", "score a GenEval layout with the tiny world's detector (results.jsonl)")
    p.add_argument("--layout", required=True, help="a geneval-layout output folder")

    p = stage("geneval-table", "Table 3 (GenEval) from imported results.jsonl files")
    p.add_argument("--layouts", nargs="*", default=[], help="GenEval layout folders, one per method")

    p = stage("table-html", "render a results table (CSV) as HTML for the report")
    p.add_argument("--csv", required=True)

    p = stage("figure", "one figure (figures.<name>): PNG plus the numbers behind it")
    p.add_argument("name", help="a key of `figures` (figure2, figure6, compute, ...)")
    p.add_argument("--inputs", nargs="*", default=[], help="the result files / folders it reads")
    p.add_argument("--models-root", default=layout.MODELS_ROOT)
    p.add_argument("--benchmarks", default=layout.BENCHMARKS_ROOT, help="compute: benchmark folder")
    p.add_argument("--gpus", default="{}", help="compute: JSON {stage: GPUs per job} of the rules")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from spo.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from spo.environment import check_install, mismatch_message

    mismatches = check_install()
    if mismatches:  # numbers made off the lock may differ from the expected results
        logging.getLogger("spo").warning(mismatch_message(mismatches))
    threads = args.threads or int(os.environ.get("SPO_THREADS", "0"))
    if threads and args.stage not in _NO_TORCH_STAGES:
        import torch

        torch.set_num_threads(threads)
    try:
        return _STAGES[args.stage](config, args)
    except ConfigError as exc:  # a setting a stage checks itself: the same exit code as at load
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _tiny_model(config, args) -> int:
    if getattr(args, "spm_pickscore", False):
        from spo.spm.stage import save_tiny_pickscore

        return save_tiny_pickscore(config, args.out)
    if args.model:
        from spo.models.tiny import save_tiny_pipeline

        spec = config["models"].get(args.model)
        if spec is None or "tiny" not in spec["source"]:
            raise SystemExit(f"error: models.{args.model} is not a tiny model in this config")
        save_tiny_pipeline(spec["family"], args.out, seed=spec["source"]["tiny"].get("seed", 0))
    else:
        from spo.metrics.tiny import save_tiny_weights

        spec = config["metrics"].get(args.metric) or {}
        seeds = [w["tiny"].get("seed", 0) for w in (spec.get("weights") or {}).values() if "tiny" in w]
        if not seeds:
            raise SystemExit(f"error: metrics.{args.metric} has no tiny weights in this config")
        save_tiny_weights(spec.get("scorer", args.metric), args.out, seed=seeds[0])
    return 0


def _pretrain_tiny(config, args) -> int:
    from spo.world.pretrain import run_part

    if args.part != "release" and not args.checkpoints:
        raise SystemExit(f"error: --checkpoints is required for part {args.part!r}")
    run_part(args.part, config.get("world"), args.parts, args.out, checkpoints=args.checkpoints)
    return 0


def _world_prompts(config, args) -> int:
    from spo.world.grammar import WorldSpec
    from spo.world.prompts import write_prompt_files

    world = dict(config.get("world") or {})
    world.pop("pretrain", None)
    for path in write_prompt_files(WorldSpec.from_config(world), args.out):
        print(path)
    return 0


def _expected_results(config, args) -> int:
    from spo.expected import ExpectedResultsError, write

    try:
        write(args.results, config, args.out)
    except ExpectedResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _generate(config, args) -> int:
    from spo.generate import generate_shard

    generate_shard(config, args.method, args.prompt_set, args.shard, args.out,
                   models_root=args.models_root, lora=args.lora)
    return 0


def _fetch_prompts(config, args) -> int:
    from spo.prompts import fetch_prompt_file

    source = config["prompt_sets"][args.prompt_set]["source"]
    if "url" not in source:
        raise SystemExit(f"error: prompt_sets.{args.prompt_set} has no `url` source")
    fetch_prompt_file(source["url"]["url"], source["url"]["sha256"], args.out)
    return 0


def _train(config, args) -> int:
    from spo.training.stage import train_method

    train_method(config, args.method, args.out, checkpoint_dir=args.checkpoints,
                 models_root=args.models_root, pairs=args.pairs, latents=args.latents)
    return 0


def _score(config, args) -> int:
    from spo.score import score_shards

    score_shards(config, args.metric, args.shards, args.out, models_root=args.models_root)
    return 0


def _tables(config, args) -> int:
    from spo.tables import build_tables

    build_tables(config, args.scores, args.out)
    return 0


def _paper_tables(config, args) -> int:
    from spo.report.paper_tables import REBUILT_TABLES, PaperTableError, build_paper_tables

    try:
        build_paper_tables(config, args.scores, args.out, tables=args.tables or REBUILT_TABLES,
                           numbers_path=args.paper_numbers)
    except PaperTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _spm(config, args) -> int:
    from spo.spm.stage import run_stage

    return run_stage(config, args)


def _geneval_layout(config, args) -> int:
    from spo.config import images_per_prompt
    from spo.report.geneval import read_metadata, write_layout

    spec = config["geneval"]
    metadata = read_metadata(args.metadata, spec["metadata"]["sha256"])
    write_layout(args.shards, metadata, args.out,
                 images_per_prompt=images_per_prompt(config, spec["prompt_set"]))
    return 0


def _geneval_detect(config, args) -> int:
    from spo.report.geneval import detect_layout

    detect_layout(args.layout, config.get("world"), args.out)
    return 0


def _geneval_table(config, args) -> int:
    from pathlib import Path

    from spo.report.geneval import write_table3

    layouts = {Path(p).parent.name: p for p in args.layouts}  # results/geneval/<method>/images
    write_table3(config, layouts, args.out)
    return 0


def _table_html(config, args) -> int:
    from spo.report.html_table import csv_to_html

    csv_to_html(args.csv, args.out)
    return 0


_NO_TORCH_STAGES = {"expected-results", "world-prompts", "geneval-detect", "tables", "paper-tables", "geneval-layout", "geneval-table", "table-html"}

_STAGES = {"tiny-model": _tiny_model, "pretrain-tiny": _pretrain_tiny,
           "expected-results": _expected_results, "world-prompts": _world_prompts, "generate": _generate, "fetch-prompts": _fetch_prompts,
           "train": _train, "score": _score,
           "tables": _tables, "paper-tables": _paper_tables,
           "spm-pairs": _spm, "spm-latents": _spm, "train-spm": _spm,
           "geneval-layout": _geneval_layout, "geneval-detect": _geneval_detect,
           "geneval-table": _geneval_table,
           "table-html": _table_html}

def _figure(config, args) -> int:
    import json

    from spo.report.figures import FigureError, make_figure

    extra = {}
    if args.name == "disagreement":  # the only figure that runs a network (the predictor)
        extra["models_root"] = args.models_root
        threads = args.threads or int(os.environ.get("SPO_THREADS", "0"))
        if threads:
            import torch

            torch.set_num_threads(threads)
    if args.name == "compute":
        extra.update(gpus=json.loads(args.gpus), benchmarks=args.benchmarks)
    try:
        make_figure(config, args.name, args.inputs, args.out, **extra)
    except FigureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


_STAGES["figure"] = _figure  # issue 7: the figures (spo/report/figures.py)
_NO_TORCH_STAGES.add("figure")

if __name__ == "__main__":
    sys.exit(main())
