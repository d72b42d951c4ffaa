"""The SPM family as preference models: ``spm``, ``spm-no-step`` and ``pickscore``.

Spec keys (``preference:`` in the config; the factory signature of ``spo.preference.base``):

    spm / spm-no-step:  run: <a key of spm.runs>   -> spo.layout.spm_model_dir (train-spm output)
                        path: <an SPM folder>        (spo.preference.spm_io format)
                        official: {checkpoint, pickscore_model, processor}   (spm only: a released
                                  ``*.bin`` of SPO-Diffusion-Models/Step-Aware_Preference_Models)
    pickscore:          path: <folder with model/ and processor/>  (default:
                        spo.layout.pickscore_init_dir, the SPM's initialisation)

``spm`` must be time-conditioned and ``spm-no-step`` must not: a mix-up is an error, not a silent
ablation. ``pickscore`` ignores t (``step_aware = False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spo import layout
from spo.preference.spm_io import SPMError, from_pickscore, load_official_spm, load_spm


def _folder(spec: dict[str, Any], models_root) -> Path:
    if spec.get("path"):
        return Path(spec["path"])
    if spec.get("run"):
        if models_root is None:
            raise SPMError(f"preference spec 'run' needs models_root (the DAG's {layout.MODELS_ROOT})")
        return Path(layout.spm_model_dir(spec["run"], models_root))
    raise SPMError(f"preference '{spec.get('name')}' needs `run: <a key of spm.runs>` or "
                   f"`path: <an SPM folder>`; got keys {sorted(spec)}")


def _build(spec, device, dtype, models_root, step_aware: bool):
    if spec.get("official"):
        off = spec["official"]
        scorer = load_official_spm(off["checkpoint"], off["pickscore_model"], off["processor"],
                                   device=device, dtype=dtype)
    else:
        scorer = load_spm(_folder(spec, models_root), device=device, dtype=dtype)
    if scorer.step_aware != step_aware:
        raise SPMError(f"preference '{spec['name']}' loaded an SPM "
                       f"{'with' if scorer.step_aware else 'without'} time conditioning; use "
                       f"'{'spm' if scorer.step_aware else 'spm-no-step'}' for it")
    return scorer


def build_spm(spec, *, device="cpu", dtype="float32", models_root=None):
    return _build(spec, device, dtype, models_root, step_aware=True)


def build_spm_no_step(spec, *, device="cpu", dtype="float32", models_root=None):
    return _build(spec, device, dtype, models_root, step_aware=False)


def build_pickscore(spec, *, device="cpu", dtype="float32", models_root=None):
    """PickScore sees pixels as its CLIP processor makes them (``SPMScorer.resize``: "processor")."""
    scorer = _pickscore(spec, device, dtype, models_root)
    scorer.resize = "processor"
    return scorer


def _pickscore(spec, device, dtype, models_root):
    if spec.get("model_dir") and spec.get("processor_dir"):  # resolved from spm.pickscore by the stage
        return from_pickscore(spec["model_dir"], spec["processor_dir"], time_condition=False,
                              device=device, dtype=dtype)
    root = Path(spec.get("path") or layout.pickscore_init_dir(models_root or layout.MODELS_ROOT))
    if not (root / "model").is_dir() or not (root / "processor").is_dir():
        raise SPMError(f"preference 'pickscore': '{root}' must hold model/ and processor/ folders "
                       f"(PickScore's layout); set `path:` or build it with the spm_tiny_pickscore rule")
    return from_pickscore(root / "model", root / "processor", time_condition=False, device=device, dtype=dtype)
