"""The precision policy of an SPM run (``spm.runs.<run>.mixed_precision``: ``no`` | ``fp16`` | ``bf16``).

The same policy as SPO training (``spo.training.precision``), applied to train-spm:

* the frozen diffusion backbone that makes the noisy x̂0 (UNet, VAE, text encoders) is stored in
  the policy's dtype and runs under autocast of that dtype (``spm.runs.<run>.backbone_dtype``
  overrides its dtype: the official SPM training stores the pipeline in float16
  (``torch_dtype=torch.float16`` in ``trainer/tasks/spm_task.py``) while DeepSpeed trains the SPM
  in bf16 (PAPER.md §1.2));
* the trained SPM (the whole CLIP and the adaLN layers) and so its AdamW state stay float32;
* the SPM's forward passes (training, validation, PickScore relabelling) and the loss run under
  ``torch.autocast`` of the policy's dtype; ``fp16`` scales the loss (accelerate's GradScaler).

``no`` is float32 everywhere without autocast: the code path as it was, bit for bit. The older
key ``spm.runs.<run>.dtype`` (float32 | bfloat16 | float16) names the same policy by its dtype and
is still read when ``mixed_precision`` is absent; giving both with different meanings is an error.
Torch-free at import (the config check at load calls ``run_precision_errors``).
"""

from __future__ import annotations

from typing import Any

from spo.config_spec import show

LEGACY_DTYPE = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # spm.runs.<run>.dtype


def run_mixed_precision(spec: dict[str, Any]) -> str:
    """The run's ``mixed_precision`` value: the key, else the one its legacy ``dtype`` names, else ``no``."""
    if "mixed_precision" in spec:
        return spec["mixed_precision"]
    return LEGACY_DTYPE.get(spec.get("dtype", "float32"), spec.get("dtype"))


def run_precision_errors(run: str, spec: dict[str, Any]) -> list[str]:
    """``mixed_precision`` and the legacy ``dtype`` disagreeing (device-free; empty: fine)."""
    if "mixed_precision" in spec and "dtype" in spec \
            and LEGACY_DTYPE.get(spec["dtype"]) != spec["mixed_precision"]:
        return [f"config key 'spm.runs.{run}.dtype' is {show(spec['dtype'])}; it is the older name "
                f"of 'spm.runs.{run}.mixed_precision' ({show(spec['mixed_precision'])}) and "
                f"disagrees with it: remove 'dtype'"]
    return []


def spm_precision(run: str, spec: dict[str, Any], device):
    """(the run's policy, the frozen backbone's policy) on ``device``, checked before any model
    loads: a ``ConfigError`` naming ``spm.runs.<run>.mixed_precision`` (or ``.dtype`` where the
    run uses the older key, or ``.backbone_dtype``) and the values the device supports."""
    from spo.config_spec import ConfigError
    from spo.training.precision import check_dtype, check_precision

    problems = run_precision_errors(run, spec)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), problems)
    if "mixed_precision" in spec or "dtype" not in spec:
        policy = check_precision(run_mixed_precision(spec), device,
                                 key=f"spm.runs.{run}.mixed_precision")
    else:
        policy = check_dtype(spec["dtype"], device, key=f"spm.runs.{run}.dtype")
    backbone = policy
    if spec.get("backbone_dtype") is not None:
        backbone = check_dtype(spec["backbone_dtype"], device, key=f"spm.runs.{run}.backbone_dtype")
    return policy, backbone
