"""The ``spm`` block's checks: each run and dataset against its typed settings
(``spo.spm.settings``), then the names they give. Run when the config loads
(``spo.config.validate_config``, so ``snakemake -n`` stops on them) and again by the SPM stages
before they load a model. Torch-free. Messages have the config check's one shape:
``config key 'spm.runs.<run>.<key>' is <value>; <what it must be>``.
"""

from __future__ import annotations

from typing import Any

from spo.config_spec import ConfigError, parse, problems
from spo.spm.settings import SPMDatasetSpec, SPMRunSettings
from spo.spm.precision import run_precision_errors


def run_spec_errors(run: str, spec: dict[str, Any]) -> list[str]:
    """``spm.runs.<run>`` against ``spo.spm.settings.SPMRunSettings``, one message per problem
    (empty: fine)."""
    # + mixed_precision vs its older name dtype (the device check: spo.spm.precision.spm_precision)
    return problems(SPMRunSettings, spec, f"spm.runs.{run}") + run_precision_errors(run, spec)


def _dataset_errors(name: str, spec: Any) -> list[str]:
    try:
        parse(SPMDatasetSpec, spec, f"spm.datasets.{name}")
    except ConfigError as exc:
        return exc.problems
    return []


def spm_block_errors(config: dict[str, Any]) -> list[str]:
    """What ``spm.datasets`` and ``spm.runs`` name must exist; each run's settings."""
    spm = config.get("spm") or {}
    models, datasets = config["models"], spm.get("datasets") or {}
    out = [p for name, ds in datasets.items() for p in _dataset_errors(name, ds)]
    if out:
        return out
    for name, ds in datasets.items():
        tiny = parse(SPMDatasetSpec, ds, f"spm.datasets.{name}").tiny_settings(f"spm.datasets.{name}")
        if tiny is not None and tiny.model not in models:
            out.append(f"config key 'spm.datasets.{name}.tiny.model' is '{tiny.model}'; it "
                       f"must be a key of 'models' ({', '.join(sorted(models))})")
    for name, spec in (spm.get("runs") or {}).items():
        found = run_spec_errors(name, spec)
        if found:  # its keys first: what it names is read only from a run whose keys are valid
            out += found
            continue
        run = parse(SPMRunSettings, spec, f"spm.runs.{name}")
        if run.model not in models:
            out.append(f"config key 'spm.runs.{name}.model' is '{run.model}'; it must be a key of "
                       f"'models' ({', '.join(sorted(models))})")
        if run.data not in datasets:
            out.append(f"config key 'spm.runs.{name}.data' is '{run.data}'; it must be a key of "
                       f"'spm.datasets' ({', '.join(sorted(datasets))})")
    return out
