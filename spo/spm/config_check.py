"""The ``spm`` block's checks that the JSON Schema cannot express, run when the config loads
(``spo.config.validate_config``, so ``snakemake -n`` stops on them) and again by the SPM stages
before they load a model. Torch-free. Messages have the config check's one shape:
``config key 'spm.runs.<run>.<key>' is <value>; <what it must be>``.
"""

from __future__ import annotations

import math
from typing import Any

from spo.config_spec import show
from spo.spm.precision import run_precision_errors
from spo.source_kind import is_tiny

_ENUMS = (("warmup_shape", ("linear", "log")), ("weight_decay_on", ("all", "matrices")),
          ("vae_latents", ("mean", "sample")))


def run_spec_errors(run: str, spec: dict[str, Any]) -> list[str]:
    """Numeric settings of ``spm.runs.<run>``, one message per problem (empty: fine)."""
    out = []

    def bad(key, why):
        out.append(f"config key 'spm.runs.{run}.{key}' is {show(spec.get(key))}; {why}")

    lr = spec.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr < 1:
        bad("lr", "the learning rate must be a finite number in (0, 1), e.g. 3.0e-6")
    for key in ("steps", "batch_size"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            bad(key, "it must be an integer >= 1")
    steps = spec.get("steps")
    if (spec.get("lr_schedule") == "warmup_decay" and isinstance(steps, int)
            and spec.get("warmup_steps", 0) >= steps):
        bad("warmup_steps", f"it must be below steps ({steps}) for lr_schedule: warmup_decay")
    for key, allowed in _ENUMS:
        if spec.get(key, allowed[0]) not in allowed:
            bad(key, f"it must be one of {', '.join(repr(a) for a in allowed)}")
    return out + run_precision_errors(run, spec)  # the device check: spo.spm.precision.spm_precision


def spm_block_errors(config: dict[str, Any]) -> list[str]:
    """What ``spm.datasets`` and ``spm.runs`` name must exist; each run's settings."""
    spm = config.get("spm") or {}
    models, datasets = config["models"], spm.get("datasets") or {}
    out = []
    for name, ds in datasets.items():
        if is_tiny(ds) and ds["tiny"]["model"] not in models:
            out.append(f"config key 'spm.datasets.{name}.tiny.model' is '{ds['tiny']['model']}'; it "
                       f"must be a key of 'models' ({', '.join(sorted(models))})")
    for name, run in (spm.get("runs") or {}).items():
        if run["model"] not in models:
            out.append(f"config key 'spm.runs.{name}.model' is '{run['model']}'; it must be a key of "
                       f"'models' ({', '.join(sorted(models))})")
        if run["data"] not in datasets:
            out.append(f"config key 'spm.runs.{name}.data' is '{run['data']}'; it must be a key of "
                       f"'spm.datasets' ({', '.join(sorted(datasets))})")
        out += run_spec_errors(name, run)
    return out
