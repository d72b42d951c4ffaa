"""Resumable SPO training state on top of ``spo.checkpoint`` (atomic, verified step folders).

A checkpoint is ``<checkpoint_dir>/step-<round>/`` holding ``lora.safetensors`` (or, for a
full-UNet training, ``unet.safetensors``), ``optimizer.pt`` and ``state.json`` (round, optimizer
step, the step log). ``resume`` loads the newest complete one and falls back to the previous one
when the newest is damaged.

No checkpoint holds a NaN or an infinite value: ``save`` refuses to write one and ``resume``
treats one on disk (written by an older version) as damaged. A checkpoint belongs to the inputs
it was trained on: ``<checkpoint_dir>/inputs.json`` records a hash of each (settings, prompts,
preference model, base model, algorithm version, ...), and ``claim`` moves checkpoints of other
inputs aside (``superseded/``) so that a changed input starts afresh instead of resuming.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from spo.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, save_checkpoint
from spo.io import stable_hash, write_json_atomic
from spo.training.lora import load_lora_state_dict, lora_state_dict

log = logging.getLogger(__name__)

INPUTS = "inputs.json"
SUPERSEDED = "superseded"


class NonFiniteCheckpointError(CheckpointError):
    """A training state with NaN or infinite values: it is never written as a checkpoint."""


def nonfinite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` (nested dicts / lists, as an optimizer's
    state dict) holding a NaN or an infinity."""
    bad: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(key)
        elif isinstance(value, float):
            if not math.isfinite(value):
                bad.append(key)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(tensors, "")
    return bad


def capture(unet, optimizer, *, full_unet: bool = False) -> dict[str, Any]:
    """A CPU copy of the trained state (weights and optimizer), to write later with
    ``save_captured``: the state at a round's start, written if a signal arrives mid-round."""
    if full_unet:
        weights = {"unet": {k: v.detach().cpu().clone().contiguous()
                            for k, v in unet.state_dict().items()}}
    else:
        weights = {"lora": lora_state_dict(unet)}
    state = optimizer.state_dict()
    moved = {"state": {k: {n: (t.detach().cpu().clone() if isinstance(t, torch.Tensor) else copy.deepcopy(t))
                           for n, t in v.items()} for k, v in state["state"].items()},
             "param_groups": copy.deepcopy(state["param_groups"])}
    return {**weights, "optimizer": moved}


def save(checkpoint_dir: str | Path, round_index: int, step: int, unet, optimizer,
         log_lines: list[dict[str, Any]], *, full_unet: bool = False) -> Path:
    """``full_unet``: store every UNet weight (no adapter), else the LoRA's."""
    return save_captured(checkpoint_dir, round_index, step,
                         capture(unet, optimizer, full_unet=full_unet), log_lines)


def save_captured(checkpoint_dir: str | Path, round_index: int, step: int, captured: dict[str, Any],
                  log_lines: list[dict[str, Any]]) -> Path:
    """Write a ``capture``d state as checkpoint ``round_index``; refuses non-finite values."""
    from safetensors.torch import save_file

    bad = nonfinite_tensors(captured)
    if bad:
        raise NonFiniteCheckpointError(
            f"not writing checkpoint {round_index} to '{checkpoint_dir}': {len(bad)} tensors hold NaN "
            f"or infinite values (first: {', '.join(bad[:3])}); a checkpoint must be resumable. "
            f"Lower 'train.lr' and rerun")

    def write(folder: Path) -> None:
        if "unet" in captured:
            save_file(captured["unet"], str(folder / "unet.safetensors"))
        else:
            save_file(captured["lora"], str(folder / "lora.safetensors"))
        torch.save(captured["optimizer"], folder / "optimizer.pt")
        (folder / "state.json").write_text(json.dumps({"round": round_index, "step": step,
                                                       "log": log_lines}))

    return save_checkpoint(checkpoint_dir, round_index, write)


def _load(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if (folder / "unet.safetensors").is_file():
        state["unet"] = load_file(str(folder / "unet.safetensors"))
    else:
        state["lora"] = load_file(str(folder / "lora.safetensors"))
    state["optimizer"] = torch.load(folder / "optimizer.pt", weights_only=True)
    bad = nonfinite_tensors({k: state[k] for k in ("unet", "lora", "optimizer") if k in state})
    if bad:  # an older version wrote the state after an update that blew up: never resume it
        raise ValueError(f"{len(bad)} tensors hold NaN or infinite values (first: "
                         f"{', '.join(bad[:3])})")
    return state


def resume(checkpoint_dir: str | Path, unet, optimizer) -> tuple[int, int, list[dict[str, Any]]]:
    """Load the newest complete checkpoint into ``unet`` / ``optimizer``; (round, step, log)."""
    found = latest_checkpoint(checkpoint_dir, load=_load)
    if found is None:
        return 0, 0, []
    if "unet" in found.state:
        unet.load_state_dict(found.state["unet"], strict=True)
    else:
        load_lora_state_dict(unet, found.state["lora"])
    optimizer.load_state_dict(found.state["optimizer"])
    return int(found.state["round"]), int(found.state["step"]), list(found.state["log"])


def training_inputs(algorithm: str, version: int, settings, prompts: list[str],
                    resolved: dict[str, Any] | None) -> dict[str, str]:
    """What a training's result depends on, one hash per input: the trainer's algorithm and its
    code version, the settings (seed included), the prompts trained on, and what the stage
    resolved (``resolved["inputs"]``: preference model weights, prompt file, base model, pairs)."""
    inputs = {"algorithm": f"{algorithm} v{version}",
              "settings": stable_hash(dict(settings.__dict__), 16),
              "prompts": stable_hash(list(prompts), 16)}
    for key, value in sorted(((resolved or {}).get("inputs") or {}).items()):
        inputs[key] = value if isinstance(value, str) else stable_hash(value, 16)
    return inputs


def claim(checkpoint_dir: str | Path, inputs: dict[str, str]) -> list[str]:
    """Make ``checkpoint_dir`` the checkpoints of ``inputs``; return the inputs that changed.

    The record ``inputs.json`` is compared with ``inputs``: when an input differs (or the
    checkpoints have no record), the old checkpoints (``step-*``, ``examples/``) are moved to
    ``superseded/`` (replacing what an earlier change put there), a warning names each changed
    input, and the training starts afresh. The record is then (re)written. Call it on the main
    process before ``resume``.
    """
    root = Path(checkpoint_dir)
    record = root / INPUTS
    old: dict[str, str] | None = None
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError:
            old = None
    stale = [p for _, p in list_checkpoints(root)] + ([root / "examples"] if (root / "examples").exists() else [])
    changed: list[str] = []
    if old is not None:
        changed = sorted(k for k in set(old) | set(inputs) if old.get(k) != inputs.get(k))
    elif stale:
        changed = ["(no record of the inputs of the checkpoints there)"]
    if changed and stale:
        aside = root / SUPERSEDED
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for path in stale:
            path.rename(aside / path.name)
        if record.is_file():
            record.rename(aside / INPUTS)
        details = "; ".join(f"{k}: {(old or {}).get(k, '?')} -> {inputs.get(k, '(none)')}"
                            if old is not None else k for k in changed)
        log.warning("the training inputs changed since the checkpoints in '%s' were written (%s); "
                    "starting afresh, not resuming (the old checkpoints are in '%s')", root,
                    details, aside)
    if old != inputs:
        write_json_atomic(record, inputs)
    return changed if stale else []
