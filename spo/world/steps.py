"""The step loop every pretraining part shares: lr schedule, EMA, non-finite stop, checkpoints,
resume, SIGTERM, and a progress bar with the running loss.

Every random draw of step i comes from ``data.step_generator(seed, part, i)``, so the state to
resume is only the weights, the optimizer and the EMA: a killed part, rerun, ends bit-identical
to an uninterrupted one (tested).
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from spo.checkpoint import (PREEMPTED_EXIT_CODE, install_signal_handlers, latest_checkpoint,
                            save_checkpoint, should_checkpoint_and_exit)

log = logging.getLogger(__name__)
_STARTED = time.perf_counter()  # the part's process start: pretrain.json records its wall time


class PretrainError(RuntimeError):
    """A pretraining part cannot go on (non-finite loss); the message names the part and the key."""


def cosine_lr(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


class EMA:
    """Exponential moving average of a module's parameters (decay warmed up as (1 + n) / (10 + n))."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = int(state["updates"])


def run_steps(part: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
              steps: int, lr: Callable[[int], float], loss_at: Callable[[int], torch.Tensor],
              checkpoint_dir: str | Path, checkpoint_every: int, ema: EMA | None = None,
              grad_clip: float | None = 1.0, part_key: str | None = None,
              on_step: Callable[[int], None] | None = None, progress: bool = True) -> list[float]:
    """Train ``model`` for ``steps`` optimizer steps, resuming from ``checkpoint_dir``.

    Args:
        loss_at: the loss of step i (forward pass only; this loop runs backward and the step).
        lr: the learning rate of step i.
        on_step: called with the number of steps done after each step (before its checkpoint).
    Returns:
        The loss of every step run in this call (not the resumed ones).
    """
    from tqdm import tqdm

    def load(folder: Path):
        return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)

    found = latest_checkpoint(checkpoint_dir, load=load)
    start = 0
    if found is not None:
        model.load_state_dict(found.state["model"])
        optimizer.load_state_dict(found.state["optimizer"])
        if ema is not None:
            ema.load_state_dict(found.state["ema"])
        start = found.step
        log.info("%s: resuming at step %d/%d from %s", part, start, steps, found.path)

    def save(step: int) -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        if ema is not None:
            state["ema"] = ema.state_dict()
        save_checkpoint(checkpoint_dir, step, lambda d: torch.save(state, d / "state.pt"))

    install_signal_handlers()
    losses: list[float] = []
    bar = tqdm(range(start, steps), desc=f"pretrain {part}", initial=start, total=steps,
               file=sys.stderr, disable=not progress, mininterval=5.0)
    model.train()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        loss = loss_at(step)
        if not torch.isfinite(loss):
            raise PretrainError(f"pretrain {part}: the loss is {loss.item()} at step {step}; nothing "
                                f"was applied and the last checkpoint in '{checkpoint_dir}' is "
                                f"clean. Lower 'world.pretrain.{part_key or part}.lr' and rerun to resume")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        losses.append(float(loss.detach()))
        recent = losses[-50:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        done = step + 1
        if on_step is not None:
            on_step(done)
        if done % checkpoint_every == 0 or done == steps or should_checkpoint_and_exit():
            save(done)
            if should_checkpoint_and_exit() and done < steps:
                log.warning("%s: stopped by a signal at step %d; rerun to resume", part, done)
                sys.exit(PREEMPTED_EXIT_CODE)
    bar.close()
    model.eval()
    return losses


def write_record(folder: Path, part: str, losses: list[float], **extra: Any) -> None:
    """``pretrain.json`` beside a part's weights: the command, the loss curve (every 10th step,
    those run in this process), the environment (``spo.io.provenance``). Never shipped. (Here, not
    in ``pretrain``, because ``pretrain_unet`` writes it too: pretrain <-> pretrain_unet was a cycle.)"""
    from spo.io import provenance, write_json_atomic

    write_json_atomic(folder / "pretrain.json", provenance(f"pretrain-tiny {part}", {
        "argv": sys.argv, "seconds": round(time.perf_counter() - _STARTED, 1), "steps_run": len(losses), "losses_every_10": losses[::10],
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])) if losses else None, **extra}))
