"""The typed config blocks besides a method's ``train`` (``spo.training.settings``) and ``spm``
(``spo.spm.settings``): ``generation``, ``prompt_sets.<name>``, ``models.<name>``,
``methods.<name>``, ``metrics.<name>``, ``scoring``, ``evaluate`` groups, ``tables``,
``paper_tables``, ``geneval`` and ``resources``. Torch-free and free of ``spo`` imports besides ``spo.config_spec``, so the config
check at DAG start imports it cheaply and without an import cycle.

Each field declares its type, default and range once (``spo.config_spec``). The JSON Schema
(spo/config_schema.yaml) still runs first and keeps what these classes do not express: the shape of
a model or checkpoint ``source`` (exactly one of hub id + pinned revision, path, tiny) and of a
prompt set's ``source``, and the pattern of names. Values are kept as the YAML gave them, so a
stage that reads a typed block computes what it computed from the mapping.

A stage gets a block through the accessors at the end (``generation_spec(config)``,
``prompt_set_spec(config, name)``, ...; ``spo.config`` re-exports them); a parse is memoised by content,
so the config check at load and the stage share one object.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from spo.config_spec import (ConfigError, Spec, anything, bad, block, choice, flag, integer, items,
                             mapping, number, parse, string, text)

DTYPES = ("float32", "float16", "bfloat16")
FAMILIES = ("sd15", "sdxl")
ADHERENCE_ATTRIBUTES = ("all", "background", "colour", "shape", "size")
_NAME = Spec("text")


@dataclass(frozen=True)
class GenerationSettings:
    """``generation``: how every evaluated image is sampled (the paper's protocol: DDIM, 20 steps,
    CFG 5). Every key is required: a profile states its protocol in full."""

    scheduler: str = choice(MISSING, ("ddim",))
    num_inference_steps: int = integer(ge=1)
    guidance_scale: float = number(ge=0, why="methods may override it")
    eta: float = number(ge=0, le=1, why="the DDIM noise scale; 0 is deterministic")
    resolution: int | None = integer(ge=8, multiple_of=8, nullable=True,
                                     why="image side in pixels; null: the pipeline's default")
    images_per_prompt: int = integer(ge=1)
    batch_size: int = integer(ge=1, why="images per pipeline call")
    dtype: str = choice(MISSING, DTYPES)
    shard_size: int = integer(ge=1, why="prompts per generation job")


@dataclass(frozen=True)
class PromptSetSpec:
    """``prompt_sets.<name>``. ``source`` is kept as the config gave it (the schema checks that it
    is exactly one of path, hub_parquet, url); absent overrides are None (``generation``'s)."""

    source: dict = mapping(why="exactly one of path, hub_parquet, url")
    count: int | None = integer(None, ge=1, why="number of prompts; required for a hub source")
    images_per_prompt: int | None = integer(None, ge=1, why="absent: generation.images_per_prompt")
    num_inference_steps: int | None = integer(None, ge=1,
                                              why="absent: generation.num_inference_steps")
    label: str | None = string(None)

    def label_or(self, name: str) -> str:
        """Its label, else its name."""
        return name if self.label is None else self.label

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        if "hub_parquet" in values["source"] and values.get("count") is None:
            return [f"config key '{key}.count' is required for a hub source: the DAG plans "
                    f"generation shards before anything is downloaded"]
        return []


@dataclass(frozen=True)
class ModelSpec:
    """``models.<name>``: a base pipeline. The sources are kept as the config gave them (their
    shape and pinned revisions: the schema)."""

    family: str = choice(MISSING, FAMILIES)
    source: dict = mapping(why="a merged pipeline folder (diffusers layout)")
    vae: dict | None = mapping(nullable=True)
    unet: dict | None = mapping(nullable=True, why="another UNet of the family (a derivative model)")
    label: str | None = string(None)


@dataclass(frozen=True)
class MethodSpec:
    """``methods.<name>``: a table row (after ``like:`` is expanded). ``unet``, ``lora``, ``paper``
    and ``train`` are kept as the config gave them: their shape is the schema's, ``train`` is
    parsed by ``spo.config.train_settings``."""

    model: str = text(why="a key of models")
    label: str | None = string(None)
    unet: dict | None = mapping(nullable=True, why="a replacement UNet")
    lora: dict | None = mapping(nullable=True, why="a LoRA file, or {path} into a trained method's output")
    guidance_scale: float | None = number(None, ge=0, why="absent: generation.guidance_scale")
    paper: Any = anything(None, why="the paper-table row(s) it fills")
    baseline: str | None = text(None, why="another method: tables add the paired difference to it")
    train: dict | None = mapping(nullable=True, why="its training recipe")

    @property
    def trained(self) -> bool:
        """Its LoRA is trained by the DAG (it has a ``train`` block)."""
        return self.train is not None

    def label_or(self, name: str) -> str:
        return name if self.label is None else self.label

    def paper_refs(self) -> list[dict[str, Any]]:
        """``paper`` as a list of {table, row} (one mapping is one reference)."""
        if self.paper is None:
            return []
        return [self.paper] if isinstance(self.paper, dict) else list(self.paper)


@dataclass(frozen=True)
class MetricSpec:
    """``metrics.<name>``. ``batch_size`` absent is None: the scoring stage and each scorer have
    their own fallback (16 and 8; ``spo.score``, ``spo.metrics``)."""

    scorer: str | None = text(None, why="a registered scorer; absent: the metric's name")
    attribute: str = choice("all", ADHERENCE_ATTRIBUTES, why="adherence: which attribute")
    batch_size: int | None = integer(None, ge=1)
    dtype: str = choice("float32", DTYPES)
    weights: dict = mapping(dict, why="named checkpoints the scorer loads")

    def scorer_of(self, name: str) -> str:
        """The scorer of the metric called ``name``."""
        return self.scorer or name


@dataclass(frozen=True)
class ScoringSettings:
    one_job_per_metric: bool = flag(True, why="false: one job per shard scores every metric")


@dataclass(frozen=True)
class EvaluateGroup:
    """One ``evaluate`` group: these methods on these prompt sets."""

    methods: list = items(_NAME, min_items=1)
    prompt_sets: list = items(_NAME, min_items=1)
    score: bool = flag(True, why="false: images only (figure grids), no scores or tables")


@dataclass(frozen=True)
class TablesSettings:
    bootstrap_samples: int = integer(ge=100, why="resamples of prompts for the CI")
    confidence: float = number(gt=0, lt=1)
    seed: int = integer(ge=0)
    replicates: dict = mapping(dict, why="pooled row name -> its runs, at least two methods")

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        runs = Spec("list", item=_NAME, min_items=2)
        return [bad(f"{key}.replicates.{name}", members, why)
                for name, members in (values.get("replicates") or {}).items()
                if (why := runs.problem(members)) is not None]


@dataclass(frozen=True)
class PaperTablesSettings:
    prompt_sets: list | None = items(_NAME, None, min_items=1,
                                     why="in order of preference; absent: the evaluated ones")
    require: list = items(Spec("int", ge=1), (), why="tables every row of which must be filled")


@dataclass(frozen=True)
class GenevalSettings:
    enabled: bool = flag(why="false: no GenEval jobs and no Table 3")
    prompt_set: str = text(why="a key of prompt_sets")
    metadata: dict = mapping(required_keys=("path", "sha256"),
                             why="GenEval's evaluation_metadata.jsonl, checked by sha256")
    methods: list = items(_NAME, min_items=1, why="Table 3 rows")
    results: str | None = text(None, why="a pattern with {method}; absent: beside the images")
    detector: str | None = choice(None, ("adherence",), why="absent: GenEval, run outside the DAG")

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        if "results" in values and "{method}" not in values["results"]:
            return [bad(f"{key}.results", values["results"], "it must contain '{method}'")]
        return []


@dataclass(frozen=True)
class JobResources:
    """One rule's cluster resources; an absent key keeps workflow/rules/resources.smk's default."""

    gpu: int | None = integer(None, ge=0, why="GPUs per job; 0 runs it on CPU")
    mem_mb: int | None = integer(None, ge=1, why="host memory per job in MB")
    runtime: int | None = integer(None, ge=1, why="wall-time limit per job in minutes")
    cpus_per_task: int | None = integer(None, ge=1, why="CPU cores per job")

    def given(self) -> dict[str, int]:
        """The keys the config gave (they replace the rule's defaults)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ResourcesSettings:
    """``resources``: per-rule overrides, each a ``JobResources`` mapping (kept as given)."""

    generate: dict | None = block(JobResources, why="one job per generation shard")
    score: dict | None = block(JobResources, why="one job per (metric, shard)")
    tiny_pipeline: dict | None = block(JobResources, why="builds a tiny pipeline")
    tiny_metric: dict | None = block(JobResources, why="builds a tiny metric network")
    tables: dict | None = block(JobResources, why="the summary tables, one job")
    train: dict | None = block(JobResources, why="one training job per trained method")
    pretrain_tiny: dict | None = block(JobResources, why="one tiny-world pretraining part")
    train_spm: dict | None = block(JobResources, why="one SPM training job per spm run")
    spm_latents: dict | None = block(JobResources, why="VAE latents of one pair split")
    spm_pairs: dict | None = block(JobResources, why="one pair table (split)")
    spm_tiny_pickscore: dict | None = block(JobResources, why="the tiny PickScore init")


# --- accessors: a block of a loaded config as its typed object --------------------------------------

def generation_spec(config: dict[str, Any]) -> GenerationSettings:
    return parse(GenerationSettings, config["generation"], "generation")


def prompt_set_spec(config: dict[str, Any], name: str) -> PromptSetSpec:
    return parse(PromptSetSpec, config["prompt_sets"][name], f"prompt_sets.{name}")


def model_spec(config: dict[str, Any], name: str) -> ModelSpec:
    return parse(ModelSpec, config["models"][name], f"models.{name}")


def method_spec(config: dict[str, Any], name: str) -> MethodSpec:
    return parse(MethodSpec, config["methods"][name], f"methods.{name}")


def metric_spec(config: dict[str, Any], name: str) -> MetricSpec:
    return parse(MetricSpec, config["metrics"][name], f"metrics.{name}")


def scoring_settings(config: dict[str, Any]) -> ScoringSettings:
    return parse(ScoringSettings, config.get("scoring"), "scoring")


def evaluate_groups(config: dict[str, Any]) -> list[EvaluateGroup]:
    """``evaluate`` as typed groups (one mapping is one group); keys ``evaluate`` or ``evaluate.<i>``."""
    groups = config["evaluate"]
    if isinstance(groups, dict):
        return [parse(EvaluateGroup, groups, "evaluate")]
    return [parse(EvaluateGroup, g, f"evaluate.{i}") for i, g in enumerate(groups)]


def tables_settings(config: dict[str, Any]) -> TablesSettings:
    return parse(TablesSettings, config["tables"], "tables")


def paper_tables_settings(config: dict[str, Any]) -> PaperTablesSettings:
    return parse(PaperTablesSettings, config.get("paper_tables"), "paper_tables")


def geneval_settings(config: dict[str, Any]) -> GenevalSettings | None:
    """The ``geneval`` block, or None where the config has none."""
    block_ = config.get("geneval")
    return None if block_ is None else parse(GenevalSettings, block_, "geneval")


def resources_override(config: dict[str, Any], rule: str) -> dict[str, int]:
    """``resources.<rule>``: the keys the config gives ({} where none)."""
    settings = parse(ResourcesSettings, config.get("resources"), "resources")
    given = getattr(settings, rule, None)
    return parse(JobResources, given, f"resources.{rule}").given() if given is not None else {}


def block_errors(config: dict[str, Any]) -> list[str]:
    """Every problem of the blocks above (each parsed once, memoised for the stages)."""
    checks = [lambda: generation_spec(config), lambda: scoring_settings(config),
              lambda: evaluate_groups(config), lambda: tables_settings(config),
              lambda: paper_tables_settings(config), lambda: geneval_settings(config),
              lambda: parse(ResourcesSettings, config.get("resources"), "resources")]
    checks += [lambda n=n: prompt_set_spec(config, n) for n in config["prompt_sets"]]
    checks += [lambda n=n: model_spec(config, n) for n in config["models"]]
    checks += [lambda n=n: method_spec(config, n) for n in config["methods"]]
    checks += [lambda n=n: metric_spec(config, n) for n in config["metrics"]]
    out = []
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            out += exc.problems
    return out
