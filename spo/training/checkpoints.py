"""Resumable SPO training state on top of ``spo.checkpoint`` (atomic, verified step folders).

A checkpoint is ``<checkpoint_dir>/step-<round>/`` holding ``lora.safetensors`` (or, for a
full-UNet training, ``unet.safetensors``), ``optimizer.pt`` and ``state.json`` (round, optimizer
step, the step log). ``resume`` loads the
newest complete one and falls back to the previous one when the newest is damaged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spo.checkpoint import latest_checkpoint, save_checkpoint
from spo.training.lora import load_lora_state_dict, lora_state_dict


def save(checkpoint_dir: str | Path, round_index: int, step: int, unet, optimizer,
         log_lines: list[dict[str, Any]], *, full_unet: bool = False) -> Path:
    """``full_unet``: store every UNet weight (no adapter), else the LoRA's."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        if full_unet:
            weights = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
            save_file(weights, str(folder / "unet.safetensors"))
        else:
            save_file(lora_state_dict(unet), str(folder / "lora.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
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
