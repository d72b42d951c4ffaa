"""Command line: ``python -m spo <stage> --config CONFIG.yaml [...] --out PATH``.

Stages (each a thin wrapper over a library function, so tests call the functions directly):

    tiny-model   build a tiny random-init pipeline (``--model``) or scorer (``--metric``)
    generate     one shard of one prompt set through one method
    score        one metric over generation shards
    tables       summary tables from score files
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence


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

    p = stage("generate", "generate one shard of a prompt set with one method")
    p.add_argument("--method", required=True)
    p.add_argument("--prompt-set", required=True)
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--models-root", default="results/models")

    p = stage("score", "score generation shards with one metric")
    p.add_argument("--metric", required=True)
    p.add_argument("--shards", nargs="+", required=True, help="generation shard folders")
    p.add_argument("--models-root", default="results/models")

    p = stage("tables", "summary tables with bootstrap CIs")
    p.add_argument("--scores", nargs="+", required=True, help="score Parquet files")
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
    threads = args.threads or int(os.environ.get("SPO_THREADS", "0"))
    if threads and args.stage != "tables":
        import torch

        torch.set_num_threads(threads)
    return _STAGES[args.stage](config, args)


def _tiny_model(config, args) -> int:
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


def _generate(config, args) -> int:
    from spo.generate import generate_shard

    generate_shard(config, args.method, args.prompt_set, args.shard, args.out,
                   models_root=args.models_root)
    return 0


def _score(config, args) -> int:
    from spo.score import score_shards

    score_shards(config, args.metric, args.shards, args.out, models_root=args.models_root)
    return 0


def _tables(config, args) -> int:
    from spo.tables import build_tables

    build_tables(config, args.scores, args.out)
    return 0


_STAGES = {"tiny-model": _tiny_model, "generate": _generate, "score": _score, "tables": _tables}

if __name__ == "__main__":
    sys.exit(main())
