"""The round loop shared by the trajectory-level baselines DDPO and D3PO (issue 6).

A round: ``collect`` samples this process's prompts with the current policy and returns the
training data (one dataset per inner epoch, already shuffled and split for this process), then the
data is run in micro-batches of ``train_batch_size`` with gradient accumulation, exactly as
``train_spo`` does (``trainable_lora``, ``micro_batches``, ``average_gradients`` are its own
functions). Checkpoints (``spo.training.checkpoints``), SIGUSR1 / SIGTERM handling and the output
folder (diffusers LoRA, ``log.jsonl``, ``provenance.json``) are the SPO trainer's, so generation
loads the result unchanged and a killed run resumes to the same LoRA.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from spo.checkpoint import Preempted, install_signal_handlers
from spo.seeds import image_seed
from spo.training import checkpoints
from spo.training.loop import (MAX_EMPTY_ROUNDS, Guard, Unit, accelerator_on, backward_micro_batch,
                               check_trained, empty_round_error, end_of_unit, lr_fix, save_state,
                               write_outputs)
from spo.training.settings import TrainSettings
from spo.training.spo_trainer import (micro_batches, round_prompts, start_checkpoints, total_rounds,
                                      trainable_lora)

log = logging.getLogger(__name__)


def generator(seed: int, *key: Any) -> torch.Generator:
    """A CPU generator seeded by (seed, key...): every random draw of a round is reproducible."""
    return torch.Generator().manual_seed(image_seed(seed, "/".join(map(str, key)), 0))


def train_rounds(backbone, pipeline_class, prompts: list[str], settings: TrainSettings,
                 out_dir: str | Path, checkpoint_dir: str | Path, accelerator, resolved: dict | None, *,
                 collect: Callable, loss_fn: Callable, replay: Callable | None = None,
                 algorithm: str = "rollout", version: int = 1,
                 no_data: str = "the round gave no training data") -> dict[str, Any]:
    """Run the rounds of a trajectory-level trainer.

    Args:
        collect: ``collect(round_index, world, rank, should_stop) -> (datasets, cond, round_stats)``:
            a list of datasets (one per inner epoch; each has ``len`` and ``select`` or is None),
            the text conditioning they index, and JSON-able statistics logged with the round;
            ``should_stop`` is the preemption poll for its sampler.
        loss_fn: ``loss_fn(batch, cond) -> dict`` with a scalar ``loss`` and scalar metrics.
        replay: called with the resumed log, to rebuild state that lives in it (reward statistics).
        algorithm, version: the trainer's name and ``ALGORITHM_VERSION`` (its checkpoints' inputs).
        no_data: why a round can give no data (D3PO: every trajectory pair tied), for the error
            after ``MAX_EMPTY_ROUNDS`` such rounds in a row.
    """
    accelerator = accelerator or accelerator_on(backbone.device, settings.mixed_precision)
    unet = backbone.pipe.unet
    params, optimizer = trainable_lora(unet, settings)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    world, rank = accelerator.num_processes, accelerator.process_index
    n_rounds = total_rounds(len(prompts), settings, world)
    start_checkpoints(checkpoint_dir, accelerator, algorithm, version, settings, prompts, resolved)
    start_round, step, log_lines = checkpoints.resume(checkpoint_dir, unet, optimizer)
    if replay is not None:
        replay(log_lines)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers()
    if start_round:
        log.info("resuming at round %d/%d (step %d) from %s", start_round, n_rounds, step, checkpoint_dir)
    guard = Guard(checkpoint_dir, lr_fix(settings, resolved=resolved))
    empty = 0  # rounds in a row without training data (a resumed run counts those in its log)
    for line in reversed(log_lines):
        if line.get("kind") != "samples":
            break
        empty += 1
    for round_index in range(start_round, n_rounds):
        unit = Unit(round_index, step, log_lines, unet=unet, optimizer=optimizer,
                    accelerator=accelerator, checkpoint_dir=checkpoint_dir)
        tic = time.perf_counter()
        try:
            unet.eval()
            datasets, cond, stats = collect(round_index, world, rank, unit.requested)
            bad = sorted(k for k, v in stats.items() if isinstance(v, float) and not math.isfinite(v))
            if bad:
                raise guard.error(f"the round's statistics {bad} are not finite (the policy's "
                                  f"samples or their rewards are NaN / infinite)", f"round {round_index}")
            log_lines.append({"round": round_index, "kind": "samples", **stats})
            unet.train()
            epoch = round_index * world * settings.prompts_per_round // max(1, len(prompts))
            trained = False
            for data in datasets:
                micro = micro_batches(data, settings.train_batch_size)
                for j, batch in enumerate(micro):
                    unit.check()
                    trained = True
                    with accelerator.autocast():
                        out = loss_fn(batch, cond)
                    loss = out["loss"]
                    step = backward_micro_batch(
                        loss, j, len(micro), step, params=params, optimizer=optimizer,
                        accelerator=accelerator, world=world, settings=settings, guard=guard,
                        where=f"optimizer step {step} (round {round_index})", unit=unit)
                    log_lines.append({
                        "round": round_index, "step": step, "epoch": epoch, "loss": loss.item(),
                        **{k: float(v) for k, v in out.items() if k != "loss"},
                        "reward_mean": stats.get("reward_mean"), "reward_std": stats.get("reward_std"),
                        "lr": optimizer.param_groups[0]["lr"], "transitions": len(batch),
                        "transitions_per_s": len(batch) * (j + 1) / (time.perf_counter() - tic)})
        except Preempted:
            unit.checkpoint_and_exit(f"round {round_index + 1}")
        empty = 0 if trained else empty + 1
        if not trained:
            log.warning("round %d/%d gave no training data (%d rounds in a row): %s", round_index + 1,
                        n_rounds, empty, no_data)
            if empty >= MAX_EMPTY_ROUNDS:
                raise empty_round_error("no training data", round_index, empty, no_data)
        log.info("round %d/%d: reward %.3f, %.1f s", round_index + 1, n_rounds,
                 stats.get("reward_mean", math.nan), time.perf_counter() - tic)
        end_of_unit(due=(round_index + 1) % settings.checkpoint_every == 0 or round_index + 1 == n_rounds,
                    accelerator=accelerator, what=f"round {round_index + 1}", checkpoint_dir=checkpoint_dir,
                    save=save_state(checkpoint_dir, round_index + 1, step, unet, optimizer, log_lines))
    check_trained(unet, full_unet=False, steps=step, guard=guard, no_signal=no_data)
    write_outputs(out_dir, pipeline_class, unet, log_lines, resolved or {}, accelerator)
    return {"rounds": n_rounds, "steps": step,
            "final_loss": next((l["loss"] for l in reversed(log_lines) if l.get("loss") is not None), math.nan)}


def all_round_prompts(prompts: list[str], settings: TrainSettings, round_index: int,
                      world: int) -> list[str]:
    """Every process's prompts of a round, rank after rank (a deterministic function of the round)."""
    return [p for r in range(world) for p in round_prompts(prompts, settings, round_index, world, r)]
