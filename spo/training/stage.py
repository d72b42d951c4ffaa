"""``python -m spo train``: build everything a method's training needs, then run the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spo.io import stable_hash


def train_method(config: dict[str, Any], method: str, out_dir: str | Path, *,
                 checkpoint_dir: str | Path, models_root: str | Path, root: str | Path = ".",
                 device: str | None = None, pairs: str | Path | None = None,
                 latents: str | Path | None = None) -> dict[str, Any]:
    """Train ``methods.<method>`` (its ``train`` block) and write its LoRA folder to ``out_dir``.

    ``pairs`` / ``latents``: the preference-pair folder (and an optional latent cache) of an
    offline trainer (``train.algorithm: diffusion-dpo``); on-line trainers ignore them.
    """
    from spo.models.backbone import Backbone, default_resolution
    from spo.models.pipelines import load_model_pipeline, pipeline_class
    from spo.preference import build_preference
    from spo.prompts import load_prompt_set
    from spo.devices import process_device
    from spo.training.settings import TrainSettings, trainer_for

    method_cfg = config["methods"][method]
    if "train" not in method_cfg:
        raise ValueError(f"method '{method}' has no 'train' block; nothing to train")
    settings = TrainSettings.from_config(method_cfg["train"])
    model_cfg = config["models"][method_cfg["model"]]
    device = device or process_device()  # cuda:<LOCAL_RANK> under a multi-GPU launch
    pipe = load_model_pipeline(config, method_cfg["model"], models_root=models_root, device=device)
    resolution = (settings.resolution or config["generation"]["resolution"]
                  or default_resolution(pipe))
    extra: dict[str, Any] = {}
    if settings.algorithm == "diffusion-dpo":
        from spo.training.diffusion_dpo import check_dpo_config

        check_dpo_config(config, settings)
        # Offline: the pairs carry prompts and labels; no prompt set, no preference model.
        prompts, preference, extra = [], None, {"pairs": pairs, "latents": latents}
    else:
        prompts = load_prompt_set(config["prompt_sets"][settings.prompts], root)["prompt"].tolist()
        spec = dict(settings.preference)
        if spec["name"] == "pickscore" and "path" not in spec and (config.get("spm") or {}).get("pickscore"):
            # Plain PickScore as the preference: the same weights the SPM starts from (spm.pickscore:
            # hub id + revision, local path, or the tiny one the DAG builds).
            from spo.spm.stage import resolve_pickscore

            spec["model_dir"], spec["processor_dir"] = resolve_pickscore(config, models_root)
        preference = build_preference(spec, device=device, models_root=str(models_root))
    resolved = {"method": method, "settings": settings.__dict__, "model": model_cfg,
                "resolution": resolution, "n_prompts": len(prompts),
                "fingerprint": stable_hash(method_cfg)}
    trainer = trainer_for(settings.algorithm)
    return trainer(Backbone(pipe, resolution), pipeline_class(model_cfg["family"]), prompts,
                   preference, settings, out_dir, checkpoint_dir, resolved=resolved, **extra)
