"""The figure registry: what the harness knows about each figure, in one table (``FIGURES``).

A figure ``<name>`` is a PNG ``results/figures/<name>.png`` plus ``<name>.json`` (the numbers
behind it) and, for some, further sidecars; its config block is ``figures.<name>``, a typed
settings class declared here (``Figure.settings``), parsed at load and handed to its draw function
(``figure_settings``). Three places
read this table instead of branching on figure names:

* ``workflow/rules/figures_common.smk``: the rule's inputs (``Figure.reads``, as kinds of files;
  the workflow maps each kind to paths, since Snakemake owns paths), its outputs (``sidecars``),
  its report caption and the extra options it passes (``extra``);
* ``spo/report/figures.py``: ``make_figure`` (``draw``, imported only when drawn) and the config
  cross-checks (``methods``, ``trained_only``);
* ``spo/stages.py`` (``python -m spo figure``): the options of ``ARGUMENTS`` and the keyword
  arguments each figure takes, and whether it sets torch's threads (``torch_threads``).

Light on purpose: the Snakefile and the config check import it, so nothing here imports numpy,
pandas, torch or matplotlib.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from spo import layout  # path defaults (standard library only)
from spo.config_spec import Spec, choice, integer, items, number, parse, problems, text


class FigureError(ValueError):
    """A figure's inputs or its config block are missing or inconsistent; the message says which."""


class MissingImagesError(FigureError):
    """A figure prompt set has prompts without a generated image for some method."""


# The kinds of file a figure reads (``Reads.kind``), each with what its ``names`` are. The
# workflow turns them into paths (figures_common.smk); a test checks it maps every kind.
KINDS = {
    "shards": "generation shard folders of methods on prompt_set (names: methods)",
    "scores": "score files of methods on prompt_set, every scoring group and shard (names: methods)",
    "trained": "trained methods' output folders, log.jsonl and examples/ (names: methods)",
    "spm_pairs": "SPM pair folders of dataset (names: splits)",
    "spm_validation": "SPM runs' validation CSVs (names: runs)",
    "tables": "every summary table of the run",
    "all_scores": "every score file of the run",
    "spm_outputs": "every SPM output of the run",
    "figures": "other figures' PNGs (names: figures)",
    "metric_weights": "a metric's tiny weights under the models root; none for hub / local weights "
                      "(names: the metric)",
    "paper_numbers": "data/paper/tables.yaml, when the checkout has it",
}


@dataclass(frozen=True)
class Reads:
    """One kind of file or folder a figure reads.

    ``passed``: the paths follow ``--inputs`` (the figure's data); otherwise the job only waits for
    them and the figure finds them by its own means (``--models-root``, ``data/paper``).
    """

    kind: str
    names: tuple[str, ...] = ()
    prompt_set: str | None = None
    dataset: str | None = None
    passed: bool = True


@dataclass(frozen=True)
class Option:
    """A ``python -m spo figure`` option that some figures take as a keyword argument."""

    flag: str
    default: str
    help: str | None = None
    parse: Callable[[str], Any] = str


# Figure keyword argument -> its option. The rule always passes --models-root and, where a figure
# takes it, --gpus (figures_common.smk); --benchmarks keeps its default, the folder of the rules'
# `benchmark:` files.
ARGUMENTS = {
    "models_root": Option("--models-root", layout.MODELS_ROOT),
    "benchmarks": Option("--benchmarks", layout.BENCHMARKS_ROOT, "compute: benchmark folder"),
    "gpus": Option("--gpus", "{}", "compute: JSON {stage: GPUs per job} of the rules", json.loads),
}


def _no_methods(config: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class Figure:
    """One figure. ``draw(config, name, inputs, out, root=".", **extra) -> dict`` writes
    ``out`` (the PNG) and its sidecars and returns the numbers written to ``<name>.json``."""

    name: str
    draw: str  # "module:function", imported only when the figure is drawn (matplotlib, pandas)
    # (config, its figures.<name> block, the methods it names) -> what it reads, in --inputs order
    reads: Callable[[dict[str, Any], dict[str, Any], list[str]], list[Reads]]
    # (config, its block) -> the methods it names (config check; the inputs of most figures)
    methods: Callable[[dict[str, Any], dict[str, Any]], list[str]] = _no_methods
    trained_only: bool = False  # every method it names must be trained in this config
    sidecars: tuple[str, ...] = ()  # outputs beside <name>.png and <name>.json
    extra: tuple[str, ...] = ()  # keys of ARGUMENTS it takes as keyword arguments
    torch_threads: bool = False  # it runs a network: set torch's threads as the torch stages do
    # its figures.<name> block, typed: a frozen dataclass of spo.config_spec fields (keys, types,
    # ranges, defaults), declared below beside the figure and parsed at load (figure_problems)
    settings: type | None = None

    @property
    def schema(self) -> dict[str, Any]:
        """The JSON Schema spo.config adds to spo/config_schema.yaml's ``figures`` at load: a
        mapping; its keys, types and ranges are the ``settings`` class's (checked at load)."""
        return {"type": "object", "description": f"{self.settings.__doc__.strip()}; keys, types and "
                f"ranges: spo.report.figure_registry.{self.settings.__name__} (checked at load)"}

    @property
    def caption(self) -> str:
        """Its caption in the Snakemake report, under workflow/report/."""
        return f"figure_{self.name}.rst"

    def draw_function(self) -> Callable[..., dict[str, Any]]:
        module, function = self.draw.split(":")
        return getattr(importlib.import_module(module), function)

    def read_list(self, config: dict[str, Any]) -> list[Reads]:
        spec = figure_settings(config, self.name)
        return self.reads(config, spec, self.methods(config, spec))


def figure_settings(config: dict[str, Any], name: str) -> Any:
    """``figures.<name>`` of the config as its typed settings (``Figure.settings``); None when the
    config has no such block. A bad value is a ``ConfigError`` naming ``figures.<name>.<key>``."""
    figures = config.get("figures") or {}
    return parse(FIGURES[name].settings, figures[name], f"figures.{name}") if name in figures else None


def figure_problems(config: dict[str, Any]) -> list[str]:
    """Every problem of the ``figures`` blocks, each parsed with its figure's settings class."""
    return [p for name, block_ in (config.get("figures") or {}).items() if name in FIGURES
            for p in problems(FIGURES[name].settings, block_, f"figures.{name}")]


def trained_methods(config: dict[str, Any]) -> list[str]:
    """Every method of the config with a ``train`` block (a profile may not evaluate all)."""
    from spo.config_blocks import method_spec

    return [m for m in config["methods"] if method_spec(config, m).trained]


def figure_methods(config: dict[str, Any], name: str) -> list[str]:
    """The methods figure ``name`` names (none for a figure not in the registry)."""
    figure = FIGURES.get(name)
    return figure.methods(config, figure_settings(config, name)) if figure else []


def check_figures(config: dict[str, Any]) -> list[str]:
    """Cross references of the ``figures`` block the schema cannot express (one message each)."""
    out = []
    figures = config.get("figures") or {}
    for name in figures:
        missing = [m for m in figure_methods(config, name) if m not in config["methods"]]
        if missing:
            out.append(f"config key 'figures.{name}' names methods {missing}, which are not under "
                       f"'methods'")
        spec = figure_settings(config, name)
        # keys that name an entry of another block (the disagreement figure: its predictor is a
        # metric, its dataset an spm dataset): checked here, not first when the figure is drawn
        for key, where, known in (("prompt_set", "prompt_sets", config["prompt_sets"]),
                                  ("predictor", "metrics", config["metrics"]),
                                  ("dataset", "spm.datasets", (config.get("spm") or {}).get("datasets") or {})):
            value = getattr(spec, key, None)
            if value is not None and value not in known:
                out.append(f"config key 'figures.{name}.{key}' names '{value}', which is not under "
                           f"'{where}'")
    from spo.config_blocks import method_spec

    for name in (n for n, figure in FIGURES.items() if figure.trained_only):
        untrained = [m for m in figure_methods(config, name)
                     if m in config["methods"] and not method_spec(config, m).trained]
        if untrained:
            out.append(f"config key 'figures.{name}' names {untrained}, which are not trained here")
    return out


# --- what each figure names and reads ---------------------------------------------------------

# ``spec``: the figure's typed settings, None where the config has no block for it

def _rows(config, spec):
    return list(spec.rows) if spec else []


def _listed(config, spec):
    return list(spec.methods) if spec else []


def _figure6_methods(config, spec):
    return [spec.method] + [o.method for o in spec.opponent_list()] if spec else []


def _transfer_methods(config, spec):
    return [spec.base_method, spec.transfer_method] if spec else []


def _curve_methods(config, spec):
    return list((spec.methods if spec else None) or trained_methods(config))


def _shards(config, spec, methods):
    return [Reads("shards", tuple(methods), prompt_set=spec.prompt_set)]


def _trained(config, spec, methods):
    return [Reads("trained", tuple(methods))]


def _scores(config, spec, methods):
    return [Reads("scores", tuple(methods), prompt_set=spec.prompt_set),
            Reads("paper_numbers", passed=False)]


def _pairs(config, spec, methods):
    splits = spec.splits or ["train", "validation"]
    return [Reads("spm_pairs", tuple(splits), dataset=spec.dataset),
            Reads("metric_weights", (spec.predictor,), passed=False)]


def _validation(config, spec, methods):
    runs = (spec.runs if spec else None) or list(((config.get("spm") or {}).get("runs") or {}))
    return [Reads("spm_validation", tuple(runs))]


def _everything(config, spec, methods):
    """The compute table sums the benchmark TSV of every job (--benchmarks): it runs last, after
    every other output of the run; of these it reads only the summary tables (the gains)."""
    from spo.config_blocks import method_spec
    from spo.config_queries import evaluated_methods

    trained = [m for m in evaluated_methods(config) if method_spec(config, m).trained]
    others = [n for n in (config.get("figures") or {}) if n != "compute"]
    return [Reads("tables"), Reads("all_scores"), Reads("spm_outputs"),
            Reads("trained", tuple(trained)), Reads("figures", tuple(others)),
            Reads("paper_numbers", passed=False)]


# --- each figure's config block: figures.<name>, typed (spo.config_spec), parsed at load -------------
_NAME = Spec("text")


@dataclass(frozen=True)
class GridSettings:
    """a grid of generated images: one method per row, the prompt set's prompts along the columns"""

    prompt_set: str = text(why="a key of prompt_sets")
    rows: list = items(_NAME, min_items=1, why="one method per grid row (or row block)")
    columns: int | None = integer(None, ge=1, why="images per row; absent: every prompt in one row")
    prompts: int | None = integer(None, ge=1, why="only the set's first N prompts; absent: all")


@dataclass(frozen=True)
class Figure5Settings:
    """x̂0 win / lose pairs the preference model chose while training (needs train.dump_examples)"""

    methods: list = items(_NAME, min_items=1)
    pairs: int = integer(4, ge=1, why="pairs shown per dumped round (first and last)")


@dataclass(frozen=True)
class Opponent:
    method: str = text(why="a key of methods")
    paper: str = choice(MISSING, ("diffusion-dpo", "base"), why="which user-study panel it stands beside")


@dataclass(frozen=True)
class Figure6Settings:
    """automatic win / draw / loss per metric (same prompt and seed) beside the paper's user study"""

    prompt_set: str = text(why="a key of prompt_sets")
    method: str = text(why="a key of methods")
    opponents: list = items(Spec("mapping"), min_items=1, why="each {method, paper}")
    metrics: list | None = items(_NAME, None, why="absent: every scored metric")
    draw_tolerance: float = number(0.1, ge=0, why="a draw when |score difference| <= this x the "
                                                  "metric's pooled sd")

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        return [p for i, o in enumerate(values["opponents"])
                for p in problems(Opponent, o, f"{key}.opponents.{i}")]

    def opponent_list(self) -> list[Opponent]:
        """``opponents``, each typed (checked at load by ``cross_checks``)."""
        return [parse(Opponent, o, f"figures.figure6.opponents.{i}") for i, o in enumerate(self.opponents)]


@dataclass(frozen=True)
class DisagreementSettings:
    """how often the pair label and an aesthetic predictor disagree on spm pairs"""

    dataset: str = text(why="a key of spm.datasets")
    predictor: str = text(why="a key of metrics")
    splits: list | None = items(Spec("choice", choices=("train", "validation")), None, min_items=1,
                                why="pair splits to read; absent: both")
    max_pairs: int = integer(2000, ge=1, why="pairs scored per split (a random subset beyond it)")
    examples: int = integer(4, ge=0)
    seed: int = integer(0, ge=0)


@dataclass(frozen=True)
class LoraTransferSettings:
    """a trained LoRA on another model of its family: target alone vs target + LoRA"""

    lora_method: str = text(why="the trained method whose LoRA is applied")
    target_model: str = text(why="a key of models")
    base_method: str = text(why="a method of target_model without LoRA")
    transfer_method: str = text(why="a method of target_model whose lora: {path} is lora_method's "
                                    "training output folder")
    prompt_set: str = text(why="a key of prompt_sets")
    columns: int | None = integer(None, ge=1)


@dataclass(frozen=True)
class SpmAccuracySettings:
    """SPM pairwise accuracy against t, with the ceiling"""

    runs: list | None = items(_NAME, None, why="spm runs; absent: all")


@dataclass(frozen=True)
class TrainingCurvesSettings:
    """loss, ratios and preference score per round, one column per method"""

    methods: list | None = items(_NAME, None, why="trained methods; absent: all")


@dataclass(frozen=True)
class ComputeSettings:
    """wall-clock / GPU-hours per stage and per method beside the paper's"""

    metric: str = text("colorfulness", why="the preference metric whose gain per compute hour is "
                                           "tabulated")


_GRIDS = "spo.report.figures_grids"
_STATS = "spo.report.figures_stats"

FIGURES: dict[str, Figure] = {f.name: f for f in (
    # 3 x 8 grid: base / Diffusion-DPO / SPO on the Table 10 prompts
    Figure("figure2", f"{_GRIDS}:prompt_grid", _shards, _rows,
           settings=GridSettings),
    # 4 x 5 grid of the SPO model on the Table 11 prompts
    Figure("figure11", f"{_GRIDS}:prompt_grid", _shards, _rows,
           settings=GridSettings),
    # x̂0 win / lose pairs chosen by the SPM while training (train.dump_examples)
    Figure("figure5", f"{_GRIDS}:win_lose_pairs", _trained, _listed, trained_only=True,
           settings=Figure5Settings),
    # automatic win / draw / loss per metric beside the paper's user study
    Figure("figure6", f"{_STATS}:figure6", _scores, _figure6_methods, sidecars=(".csv",),
           settings=Figure6Settings),
    # generic pair label vs an aesthetic predictor on the SPM pairs (supplement Fig. 9)
    Figure("disagreement", f"{_STATS}:disagreement", _pairs,
           extra=("models_root",), torch_threads=True, settings=DisagreementSettings),
    # a trained LoRA on another model of its family (the paper's Glyph-ByT5 figure)
    Figure("lora_transfer", f"{_GRIDS}:lora_transfer", _shards, _transfer_methods,
           settings=LoraTransferSettings),
    # SPM pairwise accuracy against t, with the ceiling
    Figure("spm_accuracy", f"{_STATS}:spm_accuracy", _validation, settings=SpmAccuracySettings),
    # loss, ratios and preference score per round, one column per method
    Figure("training_curves", f"{_STATS}:training_curves", _trained, _curve_methods,
           trained_only=True, settings=TrainingCurvesSettings),
    # wall-clock / GPU-hours per stage and per method beside the paper's
    Figure("compute", "spo.report.figures_compute:compute_table", _everything,
           sidecars=(".csv", ".md"), extra=("gpus", "benchmarks"), settings=ComputeSettings),
)}
