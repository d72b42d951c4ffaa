"""Where the DAG writes everything: the one definition of every output path under ``results/``.

The rules (``workflow/rules/*.smk``) name their outputs with these functions and pass the paths
to ``python -m spo <stage>`` as arguments; the stages read and write only what they are given,
and use this module for their argument defaults and for the targets their error messages name.
A path changed here moves for the rules, the stages and the messages at once.

Scheme: every path is a function of the names that pick it (a method, a prompt set, a shard...),
returning a POSIX path relative to the working directory as a ``str``. A rule that needs a
Snakemake pattern calls the same function with the wildcards in braces::

    table_file("tiny-eval", "csv")       -> "results/tables/tiny-eval.csv"     a concrete path
    table_file("{prompt_set}", "csv")    -> "results/tables/{prompt_set}.csv"  the rule's pattern

so a pattern and the paths that match it cannot drift apart. Each root below is written out
once, in full, so that searching the code for a path finds its one definition. Folders that a
stage reads many files under (the DAG-built models) take a ``models_root`` argument, defaulting
to ``MODELS_ROOT``; tests and benchmarks point it at their own folders.

This module imports nothing beyond the standard library: the Snakefile, light stages and tests
import it without paying for torch or pandas.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import Any

RESULTS = "results"


def _join(*parts: Any) -> str:
    # posixpath, not pathlib: "{method}" and other wildcards must pass through untouched, and a
    # root given with a trailing slash must not double it (Snakemake matches patterns textually).
    return posixpath.join(*(str(p) for p in parts))


# --- roots (all under RESULTS: tests/test_layout.py checks it) --------------------------
MODELS_ROOT = "results/models"            # DAG-built models: tiny stand-ins, SPMs
TRAIN_ROOT = "results/train"              # one folder per trained method
CHECKPOINTS_ROOT = "results/checkpoints"  # resumable state, outside every rule's output
IMAGES_ROOT = "results/images"
SCORES_ROOT = "results/scores"
TABLES, PAPER_TABLES = "tables", "paper_tables"  # folders under RESULTS; the report renders both
TABLE_KINDS = (TABLES, PAPER_TABLES)
TABLES_ROOT = _join(RESULTS, TABLES)
PAPER_TABLES_ROOT = _join(RESULTS, PAPER_TABLES)
FIGURES_ROOT = "results/figures"
GENEVAL_ROOT = "results/geneval"
SPM_ROOT = "results/spm"                  # SPM pairs, latents, validation, checkpoints
PRETRAIN_ROOT = "results/tiny-world"      # `snakemake pretrain_tiny` only
CONFIG_ROOT = "results/config"
PROMPTS_ROOT = "results/prompts"
LOGS_ROOT = "results/logs"
BENCHMARKS_ROOT = "results/benchmarks"
REPORT_ROOT = "results/report"            # the report's HTML views of the tables
REPORT_HTML = "results/report.html"       # `snakemake --report` writes it (not a rule)

# Model folders under a models root that a rule builds from a `tiny` config source (tiny_pipeline,
# tiny_metric, spm_tiny_pickscore); spo.models.sources names their rule targets by these kinds.
PIPELINES, METRICS = "pipelines", "metrics"
PICKSCORE_INIT = "spm-init/pickscore"     # the SPM's initialisation, under a models root
TINY_MODEL_KINDS = (PIPELINES, METRICS, PICKSCORE_INIT.split("/")[0])


class LayoutError(ValueError):
    """A config path points into the DAG's outputs but names nothing the DAG makes."""


# --- the run's resolved config and fetched prompts -------------------------------------------
def resolved_config(config_hash: str) -> str:
    """The resolved config every job reads, named by its content hash (never rewritten)."""
    return _join(CONFIG_ROOT, f"{config_hash}.yaml")


def fetched_prompts(checksum: str) -> str:
    """A ``url`` prompt source downloaded by rule fetch_prompts, named by its sha256 prefix."""
    return _join(PROMPTS_ROOT, f"{checksum}.json")


# --- models ----------------------------------------------------------------------------------
def tiny_pipeline_dir(model: str, models_root: Any = MODELS_ROOT) -> str:
    """The tiny random-init stand-in of ``models.<model>`` (rule tiny_pipeline)."""
    return _join(models_root, PIPELINES, model)


def tiny_metric_dir(metric: str, models_root: Any = MODELS_ROOT) -> str:
    """The tiny random-init weights of ``metrics.<metric>`` (rule tiny_metric)."""
    return _join(models_root, METRICS, metric)


def pickscore_init_dir(models_root: Any = MODELS_ROOT) -> str:
    """The tiny PickScore the SPM starts from (``model/`` and ``processor/``; rule
    spm_tiny_pickscore), also plain ``pickscore`` preference's default."""
    return _join(models_root, PICKSCORE_INIT)


def spm_model_dir(run: str, models_root: Any = MODELS_ROOT) -> str:
    """The trained step-aware preference model of ``spm.runs.<run>`` (rule train_spm)."""
    return _join(models_root, "spm", run)


# --- training --------------------------------------------------------------------------------
def train_dir(method: str) -> str:
    """The training output of ``methods.<method>``: its LoRA (or ``unet/`` of a full-UNet
    training), ``log.jsonl`` and provenance (rule train)."""
    return _join(TRAIN_ROOT, method)


def train_checkpoints(method: str, fingerprint: str) -> str:
    """Resumable checkpoints of one training config (a changed config starts a new folder)."""
    return _join(CHECKPOINTS_ROOT, "train", method, fingerprint)


def trained_method_of(path: Any) -> str | None:
    """The method whose training output ``path`` is (``train_dir(<method>)``), or None when
    ``path`` lies outside ``TRAIN_ROOT``.

    Raises:
        LayoutError: ``path`` is inside ``TRAIN_ROOT`` but is not one method's folder (the root
            itself, or a folder below a method's).
    """
    parts = PurePosixPath(posixpath.normpath(str(path))).parts
    root = PurePosixPath(TRAIN_ROOT).parts
    if parts[:len(root)] != root:
        return None
    if len(parts) != len(root) + 1:
        raise LayoutError(f"'{path}' is inside the training outputs ({TRAIN_ROOT}/) but is not a "
                          f"method's folder; give {train_dir('<method>')} (the LoRA file inside "
                          f"it is found by name, or set `file:`)")
    return parts[-1]


def lora_transfer_method(config: dict[str, Any], method: str) -> str | None:
    """LoRA transfer: the trained method whose LoRA ``methods.<method>.lora: {path:
    train_dir(<m>)}`` loads (the rule waits for that training, and the job is sized by
    ``method``'s own models). None for a method without ``lora``, or whose ``lora`` is a hub
    repository or a file outside the training outputs.

    Raises:
        LayoutError: the path points into the training outputs but not at a method of this
            config that has a ``train`` block (nothing in this DAG would write it).
    """
    spec = config["methods"][method].get("lora") or {}
    if "path" not in spec:
        return None
    key = f"methods.{method}.lora.path"
    try:
        trained = trained_method_of(spec["path"])
    except LayoutError as exc:
        raise LayoutError(f"config key '{key}': {exc}") from None
    if trained is None:
        return None
    if "train" not in (config["methods"].get(trained) or {}):
        known = sorted(m for m, c in config["methods"].items() if "train" in c)
        raise LayoutError(f"config key '{key}' is '{spec['path']}', the training output of "
                          f"'{trained}', which is not a method with a `train` block in this config "
                          f"(trained methods: {', '.join(known) or 'none'}); name one of them, or "
                          f"copy the LoRA outside {RESULTS}/ and point `path:` there")
    return trained


# --- generation, scoring, tables, figures ----------------------------------------------------
def shard_dir(method: str, prompt_set: str, shard: Any) -> str:
    """One generation shard: PNGs, ``manifest.parquet``, ``provenance.json`` (rule generate)."""
    return _join(IMAGES_ROOT, method, prompt_set, f"shard-{shard}")


def score_file(scoring: str, method: str, prompt_set: str, shard: Any) -> str:
    """Per-image scores of one shard by one scoring group (a metric, or all of them)."""
    return _join(SCORES_ROOT, scoring, method, prompt_set, f"shard-{shard}.parquet")


def table_file(name: str, ext: str, kind: str = TABLES) -> str:
    """``results/<kind>/<name>.<ext>``; ``ext`` "" gives the prefix a stage that writes the
    ``.csv`` and ``.md`` beside each other is given. ``kind``: one of ``TABLE_KINDS``."""
    return _join(RESULTS, kind, f"{name}.{ext}" if ext else name)


def paper_table_file(table: Any, ext: str) -> str:
    """The paper's Table ``<table>`` beside ours (rule paper_tables)."""
    return table_file(f"table{table}", ext, kind=PAPER_TABLES)


GENEVAL_TABLE = "table3_geneval"  # Table 3's name under TABLES_ROOT (rule geneval_table)


def figure_file(name: str, ext: str) -> str:
    """A figure (``png``) or the data behind it (``json``, ``csv``, ``md``)."""
    return _join(FIGURES_ROOT, f"{name}.{ext}")


def geneval_layout_dir(method: str) -> str:
    """Table 3: a method's GenEval prompts' images in GenEval's folder layout."""
    return _join(GENEVAL_ROOT, method, "images")


def geneval_results_file(method: str) -> str:
    """Where GenEval's ``results.jsonl`` for a method goes by default (beside ``images/``)."""
    return _join(GENEVAL_ROOT, method, "results.jsonl")


def report_table_html(kind: str, table: str) -> str:
    """The report's inline HTML view of ``table_file(table, "csv", kind)`` (rule table_html)."""
    return _join(REPORT_ROOT, kind, f"{table}.html")


# --- the step-aware preference model ---------------------------------------------------------
def spm_pairs_dir(dataset: str, split: str) -> str:
    """Preference pairs of ``spm.datasets.<dataset>``, one split (rule spm_pairs)."""
    return _join(SPM_ROOT, "pairs", dataset, split)


def spm_latents_dir(dataset: str, split: str, model: str) -> str:
    """Cached VAE latents of a pairs split for one base model (rule spm_latents)."""
    return _join(SPM_ROOT, "latents", dataset, split, model)


def spm_run_dir(run: str) -> str:
    """What an SPM run writes besides its model: validation CSV and checkpoints."""
    return _join(SPM_ROOT, run)


def spm_validation_csv(run: str) -> str:
    """Pairwise accuracy against t, untrained and trained, beside the ceiling (rule train_spm)."""
    return _join(spm_run_dir(run), "validation.csv")


def spm_checkpoints(run: str, fingerprint: str) -> str:
    """Resumable checkpoints of one SPM run config (not a rule output: kept when a job fails)."""
    return _join(spm_run_dir(run), "checkpoints", fingerprint)


# --- the tiny world's pretraining ------------------------------------------------------------
def pretrain_part_dir(part: str) -> str:
    """One pretrained part of the tiny world (rule pretrain_tiny_part)."""
    return _join(PRETRAIN_ROOT, "parts", part)


def pretrain_release_dir() -> str:
    """The assembled tiny world with its manifest (rule pretrain_tiny)."""
    return _join(PRETRAIN_ROOT, "release")


def pretrain_reproduction_file() -> str:
    """Whether the rebuilt world reproduces the shipped files' hashes (rule pretrain_tiny)."""
    return _join(PRETRAIN_ROOT, "reproduction.json")


def pretrain_checkpoints(fingerprint: str, part: str) -> str:
    """Resumable checkpoints of one part under one ``world`` recipe."""
    return _join(CHECKPOINTS_ROOT, "tiny-world", fingerprint, part)


# --- every job's log and benchmark record ----------------------------------------------------
def log_file(rule: str, job: str | None = None) -> str:
    """``results/logs/<rule>/<job>.log``, or ``results/logs/<rule>.log`` for a one-job rule."""
    return _join(LOGS_ROOT, rule, f"{job}.log") if job else _join(LOGS_ROOT, f"{rule}.log")


def benchmark_file(rule: str, job: str | None = None) -> str:
    """Snakemake's runtime record of a job, laid out as ``log_file`` (spo.compute reads them)."""
    return (_join(BENCHMARKS_ROOT, rule, f"{job}.tsv") if job
            else _join(BENCHMARKS_ROOT, f"{rule}.tsv"))
