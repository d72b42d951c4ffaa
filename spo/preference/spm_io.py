"""Build, save and load SPMs; read the official released checkpoints through a key map.

On-disk format of an SPM folder (what ``train-spm`` writes and ``spm`` preference models read)::

    <dir>/model.safetensors     the whole model's state dict (CLIP + adaLN), keys of
                                ``StepAwarePreferenceModel`` (``clip.…``, ``t_embedder.…``,
                                ``final_adaLN.…``)
    <dir>/spm_config.json       {"format": "spo-spm", "version": 1, "time_condition": bool,
                                 "clip_config": CLIPConfig.to_dict()}
    <dir>/processor/            tokenizer files + preprocessor_config.json (from PickScore's processor)

The official checkpoints (``SPO-Diffusion-Models/Step-Aware_Preference_Models``, ``*.bin``) are the
fp32 state dict of the official ``StepAwarePreferenceModel`` (transformers 4.27): keys ``model.`` +
``HFTimeConditionedCLIPModel`` keys, the pooled-output adaLN at ``model.vision_model.adaLN_modulation``
and 4.27's ``position_ids`` buffers. ``official_to_spm_key`` maps them; everything else is identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from spo.preference.spm_model import StepAwarePreferenceModel, clip_pixels

FORMAT, VERSION = "spo-spm", 1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SPMError(ValueError):
    """An SPM folder or checkpoint is missing, malformed or does not match the architecture."""


class SPMScorer:
    """The preference-model interface around a ``StepAwarePreferenceModel``.

    ``scorer(images (N,3,H,W) in [0,1], prompts, timesteps (N,) long) -> (N,) float32`` scores;
    ``step_aware`` is False for ``spm-no-step`` and ``pickscore`` (their timesteps are ignored).

    ``resize``: how images become CLIP pixels. ``"torch-bicubic"`` for an SPM, as the official SPM
    is trained and used (torch bicubic without antialiasing on the decoded x̂0:
    RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/tasks/spm_task.py ``train_step`` and
    spo_training_and_inference/spo/preference_models/models/step_aware_preference_model.py
    ``get_preference_score``); ``"processor"`` for PickScore itself (the reward, pseudo-labels):
    ``spo.metrics._preprocess.processor_pixels``, equal to the PIL-based CLIP processor.
    """

    RESIZES = ("torch-bicubic", "processor")

    def __init__(self, model: StepAwarePreferenceModel, tokenizer, pre: dict, processor_dir: Path,
                 resize: str = "torch-bicubic"):
        self.model, self.tokenizer, self.pre = model, tokenizer, pre
        self.processor_dir = Path(processor_dir)
        self.step_aware = model.time_condition
        if resize not in self.RESIZES:
            raise ValueError(f"SPM pixel resize {resize!r}; allowed: {self.RESIZES}")
        self.resize = resize

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def pixels(self, images: torch.Tensor, resize: str | None = None) -> torch.Tensor:
        """[0, 1] images -> normalised CLIP pixels (N, 3, S, S) on the model's device and dtype
        (``resize``: this scorer's own, or one of ``RESIZES``)."""
        if (resize or self.resize) == "processor":
            from spo.metrics._preprocess import processor_pixels

            px = processor_pixels(images, size=self.pre["size"], crop=self.pre["crop"],
                                  mean=self.pre["mean"], std=self.pre["std"]).to(self.device)
        else:
            px = clip_pixels(images.to(self.device), self.pre["crop"], self.pre["mean"], self.pre["std"])
        return px.to(self.model.logit_scale.dtype)

    def tokens(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        return {"input_ids": tok["input_ids"].to(self.device), "attention_mask": tok["attention_mask"].to(self.device)}

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], timesteps: torch.Tensor) -> torch.Tensor:
        if len(images) != len(prompts) or len(images) != len(timesteps):
            raise ValueError(f"SPM got {len(images)} images, {len(prompts)} prompts and "
                             f"{len(timesteps)} timesteps; they must match")
        with torch.no_grad():
            out = self.model(self.pixels(images), **self.tokens(prompts),
                             timesteps=timesteps.to(self.device) if self.step_aware else None)
        return out.float().to(images.device)


def _tokenizer(processor_dir: Path):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(str(processor_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SPMError(f"no CLIP tokenizer in '{processor_dir}' ({exc}); the processor folder must "
                       f"hold the tokenizer files and preprocessor_config.json") from exc


def _pre(processor_dir: Path) -> dict:
    from spo.metrics._preprocess import read_clip_processor_config

    return read_clip_processor_config(processor_dir)


def from_pickscore(model_dir, processor_dir, *, time_condition: bool = True, device: str = "cpu",
                   dtype: str = "float32") -> SPMScorer:
    """An SPM initialised from PickScore (equal to it at every t), or plain PickScore."""
    from transformers import CLIPModel

    from spo.metrics._common import hf_from_pretrained

    clip = hf_from_pretrained(CLIPModel, Path(model_dir), "SPM init (PickScore)", dtype=DTYPES[dtype])
    model = StepAwarePreferenceModel(clip, time_condition=time_condition).to(device).eval()
    return SPMScorer(model, _tokenizer(Path(processor_dir)), _pre(Path(processor_dir)), Path(processor_dir))


def save_spm(scorer: SPMScorer, out_dir) -> Path:
    """Write the SPM folder (see the module docstring) atomically."""
    from safetensors.torch import save_file

    from spo.io import atomic_path

    model = scorer.model
    with atomic_path(out_dir, is_dir=True) as tmp:
        state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "spm_config.json").write_text(json.dumps({
            "format": FORMAT, "version": VERSION, "time_condition": model.time_condition,
            "clip_config": model.clip.config.to_dict()}, indent=2, default=str))
        (tmp / "processor").mkdir()
        for item in scorer.processor_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / "processor" / item.name)
    return Path(out_dir)


def _empty_model(clip_config, time_condition: bool) -> StepAwarePreferenceModel:
    from transformers import CLIPModel

    return StepAwarePreferenceModel(CLIPModel(clip_config), time_condition=time_condition)


def load_spm(folder, *, device: str = "cpu", dtype: str = "float32") -> SPMScorer:
    """Read an SPM folder written by ``save_spm``; every key must match."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig

    folder = Path(folder)
    cfg_file = folder / "spm_config.json"
    if not cfg_file.is_file():
        raise SPMError(f"'{folder}' is not an SPM folder (no spm_config.json); train one with "
                       f"`python -m spo train-spm` or point the config at the right folder")
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("format") != FORMAT or cfg.get("version") != VERSION:
        raise SPMError(f"{cfg_file}: format {cfg.get('format')!r} version {cfg.get('version')!r}; "
                       f"expected {FORMAT!r} version {VERSION}")
    model = _empty_model(CLIPConfig.from_dict(cfg["clip_config"]), cfg["time_condition"])
    state = load_file(str(folder / "model.safetensors"))
    _load_strict(model, state, str(folder / "model.safetensors"))
    model = model.to(device, DTYPES[dtype]).eval()
    proc = folder / "processor"
    return SPMScorer(model, _tokenizer(proc), _pre(proc), proc)


def _load_strict(model: torch.nn.Module, state: dict, what: str) -> None:
    from spo.metrics._common import check_keys, check_shapes

    expected = model.state_dict()
    try:
        check_keys(state, expected, what)
        check_shapes(state, expected, what)
    except Exception as exc:  # ScorerError -> SPMError, same message
        raise SPMError(str(exc)) from exc
    model.load_state_dict(state, strict=True)


# --- the official layout -------------------------------------------------------------------------

OFFICIAL_PREFIX = "model."
_OFFICIAL_FINAL = "vision_model.adaLN_modulation."


def official_to_spm_key(key: str) -> str | None:
    """Official ``final_ckpt.bin`` key -> ``StepAwarePreferenceModel`` key (None: drop it).

    ``model.t_embedder.*`` -> ``t_embedder.*``; ``model.vision_model.adaLN_modulation.*`` ->
    ``final_adaLN.*``; 4.27's ``*.position_ids`` buffers are dropped (transformers 5 recomputes
    them); everything else ``model.X`` -> ``clip.X`` (per-layer ``adaLN_modulation`` included).
    """
    if not key.startswith(OFFICIAL_PREFIX):
        raise SPMError(f"official SPM key {key!r} does not start with {OFFICIAL_PREFIX!r}; is this "
                       f"a final_ckpt.bin of RockeyCoss/SPO's step_aware_preference_model?")
    key = key[len(OFFICIAL_PREFIX):]
    if key.endswith("position_ids"):
        return None
    if key.startswith("t_embedder."):
        return key
    if key.startswith(_OFFICIAL_FINAL):
        return "final_adaLN." + key[len(_OFFICIAL_FINAL):]
    return "clip." + key


def spm_to_official_key(key: str) -> str:
    """The inverse of ``official_to_spm_key`` (used to write tiny checkpoints in that layout)."""
    if key.startswith("t_embedder."):
        return OFFICIAL_PREFIX + key
    if key.startswith("final_adaLN."):
        return OFFICIAL_PREFIX + _OFFICIAL_FINAL + key[len("final_adaLN."):]
    if key.startswith("clip."):
        return OFFICIAL_PREFIX + key[len("clip."):]
    raise SPMError(f"SPM key {key!r} has no official counterpart")


def save_official_layout(model: StepAwarePreferenceModel, path) -> Path:
    """Write ``model`` as the official ``final_ckpt.bin`` would be (torch pickle, 4.27 buffers)."""
    from spo.io import atomic_path

    state = {spm_to_official_key(k): v.detach().cpu().clone() for k, v in model.state_dict().items()}
    cfg = model.clip.config
    state["model.text_model.embeddings.position_ids"] = torch.arange(
        cfg.text_config.max_position_embeddings).unsqueeze(0)
    n_pos = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1
    state["model.vision_model.embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_official_spm(checkpoint, clip_model_dir, processor_dir, *, device: str = "cpu",
                      dtype: str = "float32") -> SPMScorer:
    """Load a released official SPM ``.bin`` (loaded with ``weights_only=True``).

    Args:
        checkpoint: the ``.bin`` file (e.g. ``sd-v1-5_step-aware_preference_model.bin``).
        clip_model_dir: PickScore's model folder, for its ``config.json`` (the architecture).
        processor_dir: the CLIP processor folder (laion/CLIP-ViT-H-14-laion2B-s32B-b79K).
    """
    from transformers import CLIPConfig

    from spo.metrics._common import load_state_dict_file

    try:
        raw = load_state_dict_file(checkpoint)
    except Exception as exc:
        raise SPMError(str(exc)) from exc
    state = {}
    for key, value in raw.items():
        new = official_to_spm_key(key)
        if new is not None:
            state[new] = value
    config = CLIPConfig.from_pretrained(str(clip_model_dir), local_files_only=True)
    model = _empty_model(config, time_condition=True)
    _load_strict(model, state, f"official SPM checkpoint '{checkpoint}'")
    model = model.to(device, DTYPES[dtype]).eval()
    return SPMScorer(model, _tokenizer(Path(processor_dir)), _pre(Path(processor_dir)), Path(processor_dir))
