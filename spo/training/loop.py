"""The pieces every trainer's loop shares (SPO / MSPO, DDPO, D3PO, Diffusion-DPO).

One optimizer step over the trained parameters (a LoRA, or a whole UNet), a micro-batch's
backward pass with gradient accumulation, the stop on a non-finite loss, gradient or weight, the
end-of-unit checkpoint with SLURM preemption (and the mid-unit one: ``Unit``), the output folder,
and the accelerate state on the models' device: one implementation, so that the four trainers
checkpoint, resume and write alike.

A diverging training stops *before* the update that would poison it is kept: a non-finite loss
or gradient stops before ``optimizer.step()``, non-finite weights after it stop before anything
uses or saves them, and no checkpoint is written from such a state (the newest checkpoint is the
state at the end of an earlier unit, every value finite). A rerun with the same settings fails
the same way, and the message names the key to change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from spo.checkpoint import (PREEMPTED_EXIT_CODE, Preempted, list_checkpoints, received_signal,
                            should_checkpoint_and_exit)
from spo.io import atomic_path, json_line, provenance, write_json_atomic
from spo.training import checkpoints
from spo.training.lora import save_lora_diffusers

log = logging.getLogger(__name__)

# Consecutive rounds in which every candidate pair is rejected before the training stops: one such
# round is noise, three in a row mean the threshold or the preference model cannot give a signal.
MAX_EMPTY_ROUNDS = 3


class NonFiniteTrainingError(RuntimeError):
    """The loss, a gradient or a weight became NaN or infinite; the update was not kept and no
    checkpoint was written from that state."""


NonFiniteLossError = NonFiniteTrainingError  # the earlier name


class NoTrainingSignalError(RuntimeError):
    """Every candidate pair of too many rounds (or of the whole training) was rejected: the LoRA
    would be the base model's, silently."""


@dataclass
class Guard:
    """What a trainer's divergence message says besides what diverged: where its checkpoints are
    and how to fix the settings (``fix``: e.g. "lower config key 'train.lr' (now 1e+30)")."""

    checkpoint_dir: str | Path
    fix: str

    def error(self, what: str, where: str) -> NonFiniteTrainingError:
        found = list_checkpoints(self.checkpoint_dir)
        newest = (f"the newest, '{found[0][1].name}', holds the state before it, every value finite"
                  if found else "there is none yet")
        return NonFiniteTrainingError(
            f"{what} at {where}: the training diverged and was stopped before that state was kept "
            f"(no checkpoint was written from it; {newest}, in '{self.checkpoint_dir}'). A rerun "
            f"with the same settings fails the same way: {self.fix}, then rerun (a changed `train` "
            f"block starts afresh)")


def lr_fix(settings, extra: str = "", resolved: dict | None = None) -> str:
    """The usual fix of a diverging training, naming the key (``methods.<m>.train.lr`` when the
    stage said which method) and the value now configured."""
    method = (resolved or {}).get("method")
    key = f"methods.{method}.train.lr" if method else "train.lr"
    return f"lower config key '{key}' (now {settings.lr:g}, e.g. to a tenth of it){extra}"


def nonfinite_params(params) -> list[int]:
    """Indices of the parameters (or, for tensors of gradients, the gradients) that hold NaN / inf."""
    tensors = [p for p in params if p is not None]
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in tensors]).cpu().tolist()
    return [i for i, ok in enumerate(finite) if not ok]


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Same type, and for GPUs the same index ("cuda" alone is the current GPU; "cpu:0" is "cpu")."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or not torch.cuda.is_available():
        return True
    current = torch.cuda.current_device()
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def accelerator_on(device: torch.device | str, mixed_precision: str = "no"):
    """An ``accelerate.Accelerator`` on the device the models were loaded on.

    The stage chooses the device (``spo.devices.process_device``; a caller may pass ``cpu`` on a
    GPU machine); the trainers move tensors to ``accelerator.device``, so the two must agree:
    asking accelerate for "a GPU if there is one" put the labels on ``cuda:0`` while a model
    loaded on the CPU stayed there. accelerate's process state is one per process: once it is set
    up on one device it stays there, and a model on another device (another type, or another GPU
    under a multi-GPU launch) is an error here, not at the first mixed operation.
    """
    from accelerate import Accelerator

    want = torch.device(device)
    accelerator = Accelerator(cpu=want.type == "cpu", mixed_precision=mixed_precision)
    if not _same_device(accelerator.device, want):
        raise RuntimeError(f"the models are on '{want}' but this process's accelerate state is "
                           f"on '{accelerator.device}' (one device per process): run the stage in "
                           "a fresh process, or load the models on that device "
                           "(spo.devices.process_device)")
    return accelerator


def average_gradients(params, world: int) -> None:
    """Data parallelism by hand: mean of every trained parameter's gradient over the processes.

    Each process holds an equal share of the step's data and runs the same number of
    micro-batches, so the mean of the per-process gradients of a mean loss is the gradient of the
    whole global batch, as DDP would give (the UNet is not wrapped: the reference pass needs the
    adapter switched off on the plain module).
    """
    if world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world


def restore_loss_scale(accelerator, optimizer) -> None:
    """fp16: set accelerate's GradScaler to the state a resumed optimizer carries (its first
    param group's ``loss_scaler``, which ``optimizer_step`` keeps there, so that checkpoints hold
    it with the optimizer); call before the first backward pass. Nothing without a scaler."""
    scaler = getattr(accelerator, "scaler", None)
    saved = optimizer.param_groups[0].get("loss_scaler")
    if scaler is not None and saved is not None and getattr(optimizer, "_spo_scale_restored", None) is not scaler:
        scaler.load_state_dict(saved)
        optimizer._spo_scale_restored = scaler


def optimizer_step(params, optimizer, accelerator, world: int, grad_clip: float, *,
                   guard: Guard | None = None, where: str = "an optimizer step") -> None:
    """Average the gradients over processes, clip (when ``grad_clip``), step, zero them.

    With a ``guard``: non-finite gradients (after averaging, so every process decides alike) stop
    before the step is applied, and non-finite weights after it stop before they are used or
    saved; either raises ``guard.error``."""
    params = list(params)
    average_gradients(params, world)
    # fp16 (spo.training.precision): accelerator.backward scaled the loss; the optimizer is not
    # accelerate's, so the gradients are unscaled here, and an overflow skips the step and
    # lowers the scale (GradScaler's rule) instead of stopping the training.
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if guard is not None:
        bad = nonfinite_params([p.grad for p in params])
        if bad and scaler is not None:
            log.warning("fp16 loss scale %g overflowed at %s: step skipped, scale lowered",
                        scaler.get_scale(), where)
        elif bad:
            optimizer.zero_grad(set_to_none=True)
            raise guard.error(f"the gradients of {len(bad)} of {len(params)} trained tensors are "
                              f"NaN or infinite", where)
    if grad_clip:
        accelerator.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        optimizer.param_groups[0]["loss_scaler"] = scaler.state_dict()  # checkpointed with it
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if guard is not None:
        bad = nonfinite_params([p.detach() for p in params])
        if bad:
            raise guard.error(f"the update made {len(bad)} of {len(params)} trained tensors NaN or "
                              f"infinite", where)


def stop_if_not_finite(loss: torch.Tensor, *, guard: Guard, where: str, world: int = 1) -> None:
    """Raise ``guard.error`` on a NaN / infinite loss, before its backward pass. With several
    processes the loss differs between them: the averaged gradient, which then is not finite on
    any of them, stops all of them alike (``optimizer_step``)."""
    if world <= 1 and not bool(torch.isfinite(loss).all()):
        raise guard.error(f"the loss is {loss.detach().float().item()}", where)


def backward_micro_batch(loss: torch.Tensor, j: int, n_micro: int, step: int, *, params, optimizer,
                         accelerator, world: int, settings, guard: Guard, where: str,
                         unit: "Unit | None" = None) -> int:
    """Micro-batch ``j`` of ``n_micro`` in a round: stop on a non-finite loss, back-propagate
    ``loss / grad_accum``, and take an optimizer step after every ``grad_accum`` micro-batches and
    after the last one (``unit`` keeps the round's starting state before its first update).
    Returns the optimizer step count after it."""
    stop_if_not_finite(loss, guard=guard, where=where, world=world)
    restore_loss_scale(accelerator, optimizer)
    accelerator.backward(loss / settings.grad_accum)
    if (j + 1) % settings.grad_accum == 0 or j + 1 == n_micro:
        if unit is not None:
            unit.before_update()
        optimizer_step(params, optimizer, accelerator, world, settings.grad_clip, guard=guard,
                       where=where)
        return step + 1
    return step


def preemption_requested(accelerator) -> bool:
    """Whether a preemption signal has arrived, agreed by every process (a signal on any of them
    stops all at the same point, so that their collective calls stay in step)."""
    flag = should_checkpoint_and_exit()
    if accelerator is None or accelerator.num_processes <= 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=accelerator.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Unit:
    """One round (or step) of a trainer, for a checkpoint *within* it.

    SLURM sends SIGTERM ``KillWait`` seconds (30 by default) before its SIGKILL, and the paper
    profile's rounds last minutes: waiting for the round's end may be too late. The trainer polls
    ``check`` between micro-batches and the samplers poll it every DDIM step; on a signal,
    ``Preempted`` is raised, and ``checkpoint_and_exit`` writes the state at the unit's *start*
    (kept on the CPU before its first update, ``before_update``) as checkpoint ``index``, then
    exits with ``PREEMPTED_EXIT_CODE``. The rerun redoes the unit from its start, and since every
    random draw of a unit is seeded by its index, ends as an uninterrupted run does.
    """

    def __init__(self, index: int, step: int, log_lines: list, *, unet, optimizer, accelerator,
                 checkpoint_dir, full_unet: bool = False):
        self.index, self.step, self.n_log = index, step, len(log_lines)
        self.log_lines, self.unet, self.optimizer = log_lines, unet, optimizer
        self.accelerator, self.checkpoint_dir, self.full_unet = accelerator, checkpoint_dir, full_unet
        self.captured: dict[str, Any] | None = None

    def before_update(self) -> None:
        if self.captured is None:
            self.captured = checkpoints.capture(self.unet, self.optimizer, full_unet=self.full_unet)

    def requested(self) -> bool:
        return preemption_requested(self.accelerator)

    def check(self) -> None:
        if self.requested():
            raise Preempted()

    def checkpoint_and_exit(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.is_main_process:
            log_lines = self.log_lines[:self.n_log]
            if self.captured is not None:
                checkpoints.save_captured(self.checkpoint_dir, self.index, self.step, self.captured,
                                          log_lines)
            else:  # no update in this unit yet: the state now is the state at its start
                checkpoints.save(self.checkpoint_dir, self.index, self.step, self.unet,
                                 self.optimizer, log_lines, full_unet=self.full_unet)
        self.accelerator.wait_for_everyone()
        log.warning("signal %s during %s: checkpoint of its start written to %s; rerun to resume",
                    received_signal(), what, self.checkpoint_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE)


def end_of_unit(*, due: bool, accelerator, save: Callable[[], Any], what: str,
                checkpoint_dir) -> None:
    """After a round / step: checkpoint when ``due`` or when SLURM signalled a preemption, and on
    a signal exit with ``PREEMPTED_EXIT_CODE`` so that the rerun resumes."""
    preempted = should_checkpoint_and_exit()  # SLURM's SIGUSR1 / SIGTERM before a kill
    if (due or preempted) and accelerator.is_main_process:
        save()
    accelerator.wait_for_everyone()
    if preempted:
        log.warning("signal %s: checkpoint of %s written to %s; rerun to resume",
                    received_signal(), what, checkpoint_dir)
        raise SystemExit(PREEMPTED_EXIT_CODE)


def check_trained(unet, *, full_unet: bool, steps: int, guard: Guard, no_signal: str) -> None:
    """Before the output is written: every trained weight finite, and at least one update made
    (``no_signal``: why there was none and what to change)."""
    named = ([(n, p) for n, p in unet.named_parameters()] if full_unet
             else [(n, p) for n, p in unet.named_parameters() if "lora_" in n])
    bad = nonfinite_params([p.detach() for _, p in named])
    if bad:
        raise guard.error(f"the trained weights hold NaN or infinite values ({len(bad)} tensors, "
                          f"first: {named[bad[0]][0]}); not writing them", "the end of the training")
    if steps == 0:
        raise NoTrainingSignalError(f"the training made no update: {no_signal}; the LoRA would be "
                                    f"the base model's, so none is written")


def empty_round_error(what: str, round_index: int, count: int, why: str) -> NoTrainingSignalError:
    return NoTrainingSignalError(f"{what} in {count} rounds in a row (the last: round {round_index}): "
                                 f"{why}; stopped, as the LoRA would not train")


def write_outputs(out_dir: str | Path, pipeline_class, unet, log_lines: list[dict[str, Any]],
                  info: dict[str, Any], accelerator,
                  extra: Callable[[Path], None] | None = None, *, full_unet: bool = False) -> None:
    """The trained method's folder, atomically, by the main process: the diffusers LoRA (or, with
    ``full_unet``, the whole UNet as ``unet/`` in diffusers' layout), ``log.jsonl`` (valid JSON:
    a NaN is written as null and its key listed under ``nonfinite``), ``provenance.json`` (and
    whatever ``extra`` adds to the folder)."""
    if accelerator.is_main_process:  # every rank holds the same weights: one writes them
        with atomic_path(out_dir, is_dir=True) as tmp:
            if full_unet:
                unet.save_pretrained(tmp / "unet", safe_serialization=True)
            else:
                save_lora_diffusers(pipeline_class, unet, tmp)
            (tmp / "log.jsonl").write_text("".join(json_line(line) for line in log_lines))
            if extra is not None:
                extra(tmp)
            write_json_atomic(tmp / "provenance.json", provenance("train", info))
    accelerator.wait_for_everyone()


def save_state(checkpoint_dir, index: int, step: int, unet, optimizer, log_lines, *,
               full_unet: bool = False) -> Callable[[], Any]:
    """A ``save`` callable for the two functions above (``spo.training.checkpoints.save``)."""
    return lambda: checkpoints.save(checkpoint_dir, index, step, unet, optimizer, log_lines,
                                    full_unet=full_unet)
