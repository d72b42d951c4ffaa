"""Workflow configuration: load, merge, validate.

The configuration is data (YAML). ``validate_config`` checks it against ``config_schema.yaml`` and
then checks the cross references the schema cannot express (a method naming a model that does not
exist, say). Every error is a ``ConfigError`` whose message names the key path, the bad value and
the fix, for example::

    config key 'generation.num_inferenc_steps' is not allowed (did you mean 'num_inference_steps'?)
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from spo.config_messages import schema_error_message
from spo.config_messages import suggest as _suggest
from spo.layout import LayoutError, lora_transfer_method
from spo.config_queries import (evaluated_methods, evaluated_pairs,  # noqa: F401 (re-export)
                                evaluated_prompt_sets, images_per_prompt,
                                inference_steps, method_guidance_scale)
from spo.config_spec import ConfigError  # noqa: F401 (defined beside the typed settings it reports for)
from spo.config_blocks import (block_errors, evaluate_groups, generation_spec,  # noqa: F401 (re-export)
                               geneval_settings, method_spec, metric_spec, model_spec,
                               paper_tables_settings, prompt_set_spec, resources_override,
                               scoring_settings, tables_settings)


@lru_cache(maxsize=1)
def config_schema() -> dict[str, Any]:
    """spo/config_schema.yaml, with each figure's block from the figure registry (a mapping; its
    keys: the figure's settings class, parsed by ``figure_problems``)."""
    from spo.report.figure_registry import FIGURES

    text = resources.files("spo").joinpath("config_schema.yaml").read_text()
    schema = yaml.safe_load(text)
    schema["properties"]["figures"]["properties"] = {
        name: figure.schema for name, figure in FIGURES.items() if figure.schema is not None}
    return schema


SOURCE_KEYS = {"id", "path", "tiny"}
DEFAULT_CONFIG = "config/config.yaml"


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so a pasted block could override a setting unseen)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: the constructor below reports it
            continue
        if first != key_node.start_mark.line + 1:
            raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
    return loader.construct_mapping(node, deep=True)


class _DuplicateKey(Exception):
    def __init__(self, key, first: int, again: int):
        super().__init__(key, first, again)
        self.key, self.first, self.again = key, first, again


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML config file; a key repeated within one mapping is a ``ConfigError`` naming the
    file, the key and both lines."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)
    except _DuplicateKey as dup:
        raise ConfigError(f"config file '{path}' gives the key {dup.key!r} twice in one mapping "
                          f"(lines {dup.first} and {dup.again}); YAML would silently keep the second. "
                          f"Delete one of them") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None


def _is_source(value: Any) -> bool:
    return isinstance(value, dict) and bool(SOURCE_KEYS & set(value))


REPLACED_WHOLE = {"preference"}  # mappings that are one choice: an overlay replaces them


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``; nested dicts merge, everything else replaces.

    A model ``source`` mapping replaces the one below it whole: merging ``{tiny: ...}`` with
    ``{id: ..., revision: ...}`` key by key would give a source that is both; so does a training
    ``preference`` (``{name: colorfulness}`` over ``{name: spm, run: ...}`` is colourfulness, not
    colourfulness with an SPM run). ``key: null`` in the overlay removes the key (``spm: null`` in
    a profile that trains nothing).
    """
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if value is None and key in out:
            del out[key]
        elif (isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_source(value)
              and key not in REPLACED_WHOLE):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_extends(config: dict[str, Any], root: str | Path = ".", _seen: tuple = ()) -> dict[str, Any]:
    """Apply ``extends: <file>`` (relative to ``root``), recursively, then drop the key.

    A config with neither ``extends`` nor ``profile`` (for example only ``--config seed=3`` on
    the command line) extends the embedded default ``config/config.yaml``.
    """
    config = dict(config)
    parent = config.pop("extends", None)
    if parent is None and "profile" not in config:
        parent = DEFAULT_CONFIG
    if parent is None:
        return config
    path = Path(root) / parent
    if str(path) in _seen:
        raise ConfigError(f"config key 'extends' makes a cycle: {' -> '.join(_seen + (str(path),))}")
    if not path.is_file():
        raise ConfigError(f"config key 'extends' names '{parent}', which does not exist under '{root}'")
    base = load_yaml(path) or {}
    return deep_merge(resolve_extends(base, root, _seen + (str(path),)), config)


def resolve_method_templates(config: dict[str, Any]) -> dict[str, Any]:
    """Expand ``methods.<name>.like: <other>``: a copy of the other method, overridden key by key.

    The copy has neither the other method's ``label`` nor its ``paper`` rows (a variant is a row of
    its own).
    """
    methods = config.get("methods")
    if not isinstance(methods, dict):
        return config
    resolved: dict[str, Any] = {}

    def expand(name: str, chain: tuple = ()) -> dict[str, Any]:
        if name in resolved:
            return resolved[name]
        spec = methods[name]
        parent = spec.get("like") if isinstance(spec, dict) else None
        if parent is None:
            resolved[name] = spec
            return spec
        if parent not in methods:
            raise ConfigError(f"config key 'methods.{name}.like' names '{parent}', which is not "
                              f"under 'methods'{_suggest(parent, methods)}")
        if parent in chain + (name,):
            raise ConfigError(f"config key 'methods.{name}.like' makes a cycle: "
                              f"{' -> '.join(chain + (name, parent))}")
        base = {k: v for k, v in expand(parent, chain + (name,)).items() if k not in ("label", "paper")}
        resolved[name] = deep_merge(base, {k: v for k, v in spec.items() if k != "like"})
        return resolved[name]

    config = dict(config)
    config["methods"] = {name: expand(name) for name in methods}
    return config


def resolve_config(config: dict[str, Any], root: str | Path = ".") -> dict[str, Any]:
    """``extends`` then ``like``: the config every stage and the DAG see."""
    return resolve_method_templates(resolve_extends(config, root))


def load_config(paths: Iterable[str | Path], root: str | Path = ".") -> dict[str, Any]:
    """Read YAML files (later ones override earlier ones), apply ``extends`` and validate."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        data = load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
        merged = deep_merge(merged, data)
    merged = resolve_config(merged, root)
    validate_config(merged)
    return merged


def validate_config(config: dict[str, Any]) -> None:
    """Raise ``ConfigError`` (all problems at once, one per line) if ``config`` is invalid."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    messages = [schema_error_message(e, config) for e in errors]
    if not messages:  # each block as its typed object (spo.config_blocks), then what they name
        from spo.report.figure_registry import figure_problems

        messages = (block_errors(config) + figure_problems(config)) or _cross_reference_errors(config)
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))


def _cross_reference_errors(config: dict[str, Any]) -> list[str]:
    out = []
    models, methods, sets = config["models"], config["methods"], config["prompt_sets"]
    for name in methods:
        model = method_spec(config, name).model
        if model not in models:
            out.append(f"config key 'methods.{name}.model' names model '{model}', which is "
                       f"not under 'models'{_suggest(model, models)}; defined: "
                       f"{', '.join(sorted(models))}")
    for key, pool in (("methods", methods), ("prompt_sets", sets)):
        for group in evaluate_groups(config):
            for item in getattr(group, key):
                if item not in pool:
                    out.append(f"config key 'evaluate.{key}' names '{item}', which is not under "
                               f"'{key}'{_suggest(item, pool)}; defined: {', '.join(sorted(pool))}")
    for name in methods:
        method = method_spec(config, name)
        if method.baseline is not None and method.baseline not in methods:
            out.append(f"config key 'methods.{name}.baseline' names '{method.baseline}', which is "
                       f"not under 'methods'{_suggest(method.baseline, methods)}")
        if method.trained:
            out += _train_errors(config, name, method)
        try:  # a `lora: {path}` into the training outputs must name a trained method here
            lora_transfer_method(config, name)
        except LayoutError as exc:
            out.append(str(exc))
    from spo.metrics import registered_scorers

    known = registered_scorers()
    for name in config["metrics"]:
        scorer = metric_spec(config, name).scorer_of(name)
        if scorer not in known:
            out.append(f"config key 'metrics.{name}' names scorer '{scorer}', which does not exist"
                       f"{_suggest(scorer, known)}; available: {', '.join(sorted(known))}")
    out += _replicate_errors(config)
    geneval = geneval_settings(config)
    if geneval is not None and geneval.enabled:  # what Table 3 names (a disabled block: unchecked)
        if geneval.prompt_set not in sets:
            out.append(f"config key 'geneval.prompt_set' names '{geneval.prompt_set}', which is not "
                       f"under 'prompt_sets'{_suggest(geneval.prompt_set, sets)}")
        out += [f"config key 'geneval.methods' names '{m}', which is not under 'methods'"
                f"{_suggest(m, methods)}" for m in geneval.methods if m not in methods]
    if config.get("world") is not None:  # parsed by the classes the stages get (spo.world.settings)
        from spo.world.settings import world_problems

        out += world_problems(config)
    if config.get("spm"):  # cross references and settings the schema cannot express
        from spo.spm.config_check import spm_block_errors

        out += spm_block_errors(config)
    if config.get("figures"):  # issue 7: methods and prompt sets the figures name
        from spo.report.figure_registry import check_figures

        out += check_figures(config)
    return out


def _replicate_errors(config: dict[str, Any]) -> list[str]:
    """``tables.replicates``: each pooled row names scored methods with one baseline."""
    out, methods = [], config["methods"]
    scored = {m for m, _ in evaluated_pairs(config, scored=True)}
    for name, members in tables_settings(config).replicates.items():
        key = f"config key 'tables.replicates.{name}'"
        if name in methods:
            out.append(f"{key}: a pooled row needs a name of its own, '{name}' is a method")
        for m in members:
            if m not in methods:
                out.append(f"{key} names '{m}', which is not under 'methods'{_suggest(m, methods)}")
            elif m not in scored:
                out.append(f"{key} names '{m}', which no 'evaluate' group scores: add it there")
        bases = {method_spec(config, m).baseline for m in members if m in methods}
        if len(bases) > 1:
            out.append(f"{key}: its runs must share one baseline, they have {sorted(map(str, bases))}")
        if len(set(members)) != len(members):
            out.append(f"{key} names a method twice: {members}")
    return out


def train_settings(config: dict[str, Any], method: str):
    """``methods.<method>.train`` as a ``spo.training.settings.TrainSettings``. The config check
    at load parses every block; the parse is memoised by content (``spo.config_spec.parse``), so
    the training job gets that object back rather than parsing the mapping again."""
    from spo.training.settings import TrainSettings

    return TrainSettings.from_config(method_spec(config, method).train, key=f"methods.{method}.train")


def _train_errors(config: dict[str, Any], name: str, method) -> list[str]:
    """A method's ``train`` block: its own keys (types, ranges, cross-field rules: the settings
    classes), then what it names elsewhere in the config. All at DAG start."""
    key = f"methods.{name}.train"
    try:
        settings = train_settings(config, name)
    except ConfigError as exc:
        return exc.problems
    out = []
    if settings.prompts not in config["prompt_sets"]:
        out.append(f"config key '{key}.prompts' names prompt set '{settings.prompts}', which is not "
                   f"under 'prompt_sets'{_suggest(settings.prompts, config['prompt_sets'])}")
    if method.lora is not None or method.unet is not None:
        out.append(f"config key 'methods.{name}' has both 'train' and a released 'lora'/'unet'; "
                   f"a trained method's LoRA is the training output")
    if settings.algorithm == "diffusion-dpo":  # its pair dataset is a DAG input: name it at start
        data = (settings.diffusion_dpo or {}).get("data")
        datasets = (config.get("spm") or {}).get("datasets") or {}
        if data not in datasets:
            out.append(f"config key '{key}.diffusion_dpo.data' is {data!r}, not a key of "
                       f"'spm.datasets'{_suggest(str(data), datasets)}; defined: "
                       f"{', '.join(sorted(datasets)) or 'none'} (add the dataset there, or name "
                       f"one of these)")
    from spo.preference import registered_preferences

    pref = settings.preference.get("name")
    if pref not in registered_preferences():
        out.append(f"config key '{key}.preference.name' is {pref!r}{_suggest(str(pref), registered_preferences())}; "
                   f"allowed: {', '.join(registered_preferences())}")
    elif pref in ("spm", "spm-no-step") and "run" in settings.preference:
        runs = (config.get("spm") or {}).get("runs", {})
        if settings.preference["run"] not in runs:
            out.append(f"config key '{key}.preference.run' names SPM run '{settings.preference['run']}', "
                       f"which is not under 'spm.runs'{_suggest(settings.preference['run'], runs)}")
    return out
