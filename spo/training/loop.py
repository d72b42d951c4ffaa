"""The pieces every trainer's loop shares (SPO / MSPO, DDPO, D3PO, Diffusion-DPO).

One optimizer step over the trained parameters (a LoRA, or a whole UNet), a micro-batch's
backward pass with gradient accumulation, the stop on a non-finite loss, the end-of-unit
checkpoint with SLURM preemption, the output folder, and the accelerate state on the models'
device: one implementation, so that the four trainers checkpoint, resume and write alike.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from spo.checkpoint import PREEMPTED_EXIT_CODE, received_signal, should_checkpoint_and_exit
from spo.io import atomic_path, provenance, write_json_atomic
from spo.training import checkpoints
from spo.training.lora import save_lora_diffusers

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; a checkpoint was written before stopping."""


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


def optimizer_step(params, optimizer, accelerator, world: int, grad_clip: float) -> None:
    """Average the gradients over processes, clip (when ``grad_clip``), step, zero them."""
    average_gradients(params, world)
    if grad_clip:
        accelerator.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def stop_if_not_finite(loss: torch.Tensor, *, accelerator, save: Callable[[], Any],
                       message: str) -> None:
    """On a NaN / infinite loss: checkpoint the last good state (main process), then raise."""
    if torch.isfinite(loss):
        return
    if accelerator.is_main_process:
        save()
    raise NonFiniteLossError(message)


def backward_micro_batch(loss: torch.Tensor, j: int, n_micro: int, step: int, *, params, optimizer,
                         accelerator, world: int, settings, save: Callable[[], Any],
                         message: str) -> int:
    """Micro-batch ``j`` of ``n_micro`` in a round: stop on a non-finite loss (``message``), back-
    propagate ``loss / grad_accum``, and take an optimizer step after every ``grad_accum``
    micro-batches and after the last one. Returns the optimizer step count after it."""
    stop_if_not_finite(loss, accelerator=accelerator, save=save, message=message)
    accelerator.backward(loss / settings.grad_accum)
    if (j + 1) % settings.grad_accum == 0 or j + 1 == n_micro:
        optimizer_step(params, optimizer, accelerator, world, settings.grad_clip)
        return step + 1
    return step


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


def write_outputs(out_dir: str | Path, pipeline_class, unet, log_lines: list[dict[str, Any]],
                  info: dict[str, Any], accelerator,
                  extra: Callable[[Path], None] | None = None, *, full_unet: bool = False) -> None:
    """The trained method's folder, atomically, by the main process: the diffusers LoRA (or, with
    ``full_unet``, the whole UNet as ``unet/`` in diffusers' layout), ``log.jsonl``,
    ``provenance.json`` (and whatever ``extra`` adds to the folder)."""
    if accelerator.is_main_process:  # every rank holds the same weights: one writes them
        with atomic_path(out_dir, is_dir=True) as tmp:
            if full_unet:
                unet.save_pretrained(tmp / "unet", safe_serialization=True)
            else:
                save_lora_diffusers(pipeline_class, unet, tmp)
            (tmp / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log_lines))
            if extra is not None:
                extra(tmp)
            write_json_atomic(tmp / "provenance.json", provenance("train", info))
    accelerator.wait_for_everyone()


def save_state(checkpoint_dir, index: int, step: int, unet, optimizer, log_lines, *,
               full_unet: bool = False) -> Callable[[], Any]:
    """A ``save`` callable for the two functions above (``spo.training.checkpoints.save``)."""
    return lambda: checkpoints.save(checkpoint_dir, index, step, unet, optimizer, log_lines,
                                    full_unet=full_unet)
