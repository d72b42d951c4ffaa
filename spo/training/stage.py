"""``python -m spo train``: build everything a method's training needs, then run the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spo.io import content_digest, sha256_file, stable_hash
from spo.source_kind import source_kind


def _digest(path: str | Path) -> str:
    return content_digest(path)[:16]


def source_digest(spec: dict[str, Any], tiny_dir: str | Path | None) -> str:
    """What a model ``source`` loads, as a short string: a hub id at its pinned revision (the
    config demands a full commit hash, so that is the resolved revision), the manifest of the
    shipped tiny world it lies in, or the content of the local / DAG-built folder."""
    from spo.models.sources import local_root, shipped_manifest

    sub = f"/{spec['subfolder']}" if spec.get("subfolder") else ""
    if source_kind(spec) == "hub":
        return f"hub {spec['id']}@{spec['revision']}{sub}"
    manifest = shipped_manifest(spec)
    if manifest is not None:
        return f"shipped world, manifest sha256 {sha256_file(manifest)[:16]}{sub}"
    root = local_root(spec, tiny_dir)
    return f"content {_digest(root / spec['subfolder'] if spec.get('subfolder') else root)}"


def model_digest(config: dict[str, Any], model_name: str, models_root: str | Path) -> dict[str, str]:
    """``models.<model_name>``: its source and, when given, its own VAE and UNet."""
    from spo.config_blocks import model_spec
    from spo.models.pipelines import tiny_model_dir

    spec = model_spec(config, model_name)
    tiny = tiny_model_dir(models_root, model_name)
    out = {"source": source_digest(spec.source, tiny)}
    for part in ("vae", "unet"):
        if getattr(spec, part) is not None:
            out[part] = source_digest(getattr(spec, part), tiny / part)
    return out


def preference_digest(spec: dict[str, Any], models_root: str | Path) -> str:
    """The preference model's weights: the content of its folder(s); an analytic one is its spec."""
    folders = []
    if spec.get("official"):
        folders = [spec["official"][k] for k in ("checkpoint", "pickscore_model", "processor")]
    elif spec.get("model_dir"):  # plain PickScore, resolved from spm.pickscore
        folders = [spec["model_dir"], spec.get("processor_dir")]
    elif spec["name"] in ("spm", "spm-no-step", "pickscore"):
        from spo.preference.spm import _folder

        if spec["name"] == "pickscore" and not spec.get("path"):
            from spo.layout import pickscore_init_dir

            folders = [pickscore_init_dir(models_root)]
        else:
            folders = [_folder(spec, models_root)]
    found = [str(f) for f in folders if f and Path(f).exists()]
    if not found:
        return f"spec {stable_hash(spec, 16)}"
    return "content " + stable_hash([_digest(f) for f in found], 16)


def training_input_digests(config: dict[str, Any], method: str, settings, *, models_root,
                           root: str | Path = ".", preference_spec: dict | None = None,
                           pairs=None, latents=None, resolution=None) -> dict[str, Any]:
    """Every input of ``methods.<method>``'s training besides its settings and prompt list (which
    the trainer adds): base model, resolution, preference model weights, the prompt file, the
    offline pairs. A training resumes only checkpoints whose record of these equals this."""
    from spo.config_blocks import method_spec

    model = method_spec(config, method).model
    inputs: dict[str, Any] = {"base_model": model_digest(config, model, models_root),
                              "resolution": resolution}
    if preference_spec is not None:
        inputs["preference"] = preference_digest(preference_spec, models_root)
    if settings.algorithm != "diffusion-dpo":
        from spo.config import prompt_set_spec
        from spo.prompts import fetched_prompt_file

        source = prompt_set_spec(config, settings.prompts).source
        file = (Path(root) / source["path"] if "path" in source
                else fetched_prompt_file(source, root) if "url" in source else None)
        inputs["prompt_file"] = (f"sha256 {sha256_file(file)[:16]}" if file is not None and file.is_file()
                                 else f"spec {stable_hash(source, 16)}")
    if pairs is not None:
        inputs["pairs"] = f"content {_digest(pairs)}"
    if latents is not None:
        inputs["latents"] = f"content {_digest(latents)}"
    return inputs


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
    from spo.config import (generation_spec, method_spec, model_spec, prompt_set_spec,
                            train_settings)
    from spo.training.settings import trainer_for

    method_cfg = config["methods"][method]  # the mapping: its hash is the run's fingerprint
    if not method_spec(config, method).trained:
        raise ValueError(f"method '{method}' has no 'train' block; nothing to train")
    settings = train_settings(config, method)  # the object the config check parsed at load
    # Before any model is loaded: the global recipe must split over this launch's processes.
    from spo.training.batching import launch_world_size

    settings.process_batches(launch_world_size())
    model_name = method_spec(config, method).model
    model_cfg = config["models"][model_name]  # the mapping: recorded as the run's resolved model
    device = device or process_device()  # cuda:<LOCAL_RANK> under a multi-GPU launch
    # ... and the precision policy must run on this device (spo.training.precision).
    from spo.training.precision import cast_frozen, check_precision, under_policy

    precision = check_precision(settings.mixed_precision, device,
                                key=f"methods.{method}.train.mixed_precision")
    pipe = load_model_pipeline(config, model_name, models_root=models_root, device=device)
    full_unet = settings.algorithm == "diffusion-dpo" and settings.algorithm_settings().full_unet
    cast_frozen(pipe, precision, keep_unet=full_unet)  # a wholly trained UNet stays float32
    resolution = (settings.resolution or generation_spec(config).resolution
                  or default_resolution(pipe))
    extra: dict[str, Any] = {}
    if settings.algorithm == "diffusion-dpo":  # its pair dataset was checked at load
        # Offline: the pairs carry prompts and labels; no prompt set, no preference model.
        prompts, preference, extra = [], None, {"pairs": pairs, "latents": latents}
    else:
        prompts = load_prompt_set(prompt_set_spec(config, settings.prompts), root)["prompt"].tolist()
        spec = dict(settings.preference)
        if spec["name"] == "pickscore" and "path" not in spec and (config.get("spm") or {}).get("pickscore"):
            # Plain PickScore as the preference: the same weights the SPM starts from (spm.pickscore:
            # hub id + revision, local path, or the tiny one the DAG builds).
            from spo.spm.stage import resolve_pickscore

            spec["model_dir"], spec["processor_dir"] = resolve_pickscore(config, models_root)
        preference = under_policy(build_preference(spec, device=device, dtype=precision.dtype_name,
                                                   models_root=str(models_root)), precision)
    inputs = training_input_digests(
        config, method, settings, models_root=models_root, root=root,
        preference_spec=spec if preference is not None else None, resolution=resolution,
        pairs=extra.get("pairs"), latents=extra.get("latents"))
    resolved = {"method": method, "settings": settings.__dict__, "model": model_cfg,
                "resolution": resolution, "n_prompts": len(prompts),
                "fingerprint": stable_hash(method_cfg), "inputs": inputs}
    trainer = trainer_for(settings.algorithm)
    return trainer(Backbone(pipe, resolution, autocast=precision.autocast),
                   pipeline_class(model_spec(config, model_name).family), prompts,
                   preference, settings, out_dir, checkpoint_dir, resolved=resolved, **extra)
