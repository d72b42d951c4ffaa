"""The SPO / MSPO trainer: orchestration only (sampling, pairs, loss and LoRA live elsewhere).

Each *round*: ``prompts_per_round`` prompts per process are sampled with the current policy by the
step-wise resampler (``spo.sampling.stepwise``); the accepted pairs of all processes are gathered,
shuffled with a round-seeded generator and split evenly across processes; each process then runs
its share in micro-batches of ``train_batch_size`` with the single-step DPO loss
(``spo.training.losses.spo_loss``). The reference is the same UNet with the LoRA disabled. Where the
win and lose transitions share x_t, one policy pass and one reference pass serve both.

Everything random in a round is drawn from generators seeded by (seed, round, rank), and a
checkpoint (LoRA + optimizer + round counter) is written after every ``checkpoint_every`` rounds,
so a run killed mid-epoch and rerun ends with the same LoRA as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spo.checkpoint import Preempted, install_signal_handlers
from spo.io import write_json_atomic
from spo.models.backbone import Backbone
from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob
from spo.sampling.stepwise import PairBatch, sample_pairs
from spo.seeds import image_seed
from spo.training import checkpoints
from spo.training.lora import attach_lora, reference_mode
from spo.training.loop import (MAX_EMPTY_ROUNDS, Guard, Unit, accelerator_on, backward_micro_batch,
                               check_trained, empty_round_error, end_of_unit, lr_fix, save_state,
                               write_outputs)
from spo.training.round_speed import apply_speed_keys, merged_lora
from spo.training.loop import (NonFiniteLossError, NonFiniteTrainingError,  # re-exported: the trainer's API
                               NoTrainingSignalError, average_gradients)

__all__ = ["ALGORITHM_VERSION", "NonFiniteLossError", "NonFiniteTrainingError", "NoTrainingSignalError",
           "RoundContext", "RoundResult", "average_gradients", "adamw", "micro_batches", "pair_loss",
           "redistribute", "round_prompts", "run_round", "total_rounds", "train_spo", "trainable_lora",
           "transition_logprobs", "write_examples", "start_checkpoints"]

# The code version of the algorithm: raise it with any change that alters what a training computes
# from the same inputs (the sampler, the pair rule, the loss): checkpoints of another version are
# never resumed (spo.training.checkpoints.claim).
ALGORITHM_VERSION = 1
from spo.training.losses import spo_loss
from spo.training.settings import TrainSettings

log = logging.getLogger(__name__)


def transition_logprobs(backbone: Backbone, schedule: DDIMSchedule, pairs: PairBatch, cond,
                        settings: TrainSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x_w | xt_w) and log p(x_l | xt_l) under the UNet as it is now (policy or reference).

    Rows whose transitions share x_t get one UNet pass for both; others get one pass each.
    Returns two (M,) tensors.
    """
    device = backbone.device
    m = len(pairs)
    not_shared = torch.nonzero(~pairs.shared).flatten()
    x_in = torch.cat([pairs.xt_w, pairs.xt_l[not_shared]]).to(device)
    t_in = torch.cat([pairs.t, pairs.t[not_shared]]).to(device)
    rows = torch.cat([pairs.prompt_index, pairs.prompt_index[not_shared]])
    eps = backbone.eps(x_in, t_in, cond.take(rows), settings.guidance_scale)
    mean, std, _ = ddim_transition(schedule, eps, x_in, t_in, settings.eta)
    mean_w, std_w = mean[:m], std[:m]
    mean_l, std_l = mean[:m].clone(), std[:m].clone()
    mean_l[not_shared.to(device)] = mean[m:]
    std_l[not_shared.to(device)] = std[m:]
    logp_w = gaussian_logprob(pairs.x_w.to(device), mean_w, std_w, settings.logprob_reduce)
    logp_l = gaussian_logprob(pairs.x_l.to(device), mean_l, std_l, settings.logprob_reduce)
    return logp_w, logp_l


def pair_loss(backbone: Backbone, schedule: DDIMSchedule, pairs: PairBatch, cond,
              settings: TrainSettings) -> dict[str, torch.Tensor]:
    """SPO loss of a micro-batch: reference pass (no grad, adapter off), then the policy pass."""
    with torch.no_grad(), reference_mode(backbone.pipe.unet):
        ref_w, ref_l = transition_logprobs(backbone, schedule, pairs, cond, settings)
    logp_w, logp_l = transition_logprobs(backbone, schedule, pairs, cond, settings)
    return spo_loss(logp_w, logp_l, ref_w, ref_l, beta=settings.beta, clamp_eps=settings.clamp_eps)


def _generator(seed: int, *key: Any) -> torch.Generator:
    return torch.Generator().manual_seed(image_seed(seed, "/".join(map(str, key)), 0))


def round_prompts(prompts: list[str], settings: TrainSettings, round_index: int, world: int,
                  rank: int) -> list[str]:
    """This process's prompts for a round: epochs are seeded permutations of the prompt set."""
    per_round = settings.prompts_per_round * world
    rounds_per_epoch = max(1, len(prompts) // per_round)
    epoch, within = divmod(round_index, rounds_per_epoch)
    order = torch.randperm(len(prompts), generator=_generator(settings.seed, "epoch", epoch))
    start = within * per_round + rank * settings.prompts_per_round
    return [prompts[int(i)] for i in order[start:start + settings.prompts_per_round]]


def total_rounds(n_prompts: int, settings: TrainSettings, world: int) -> int:
    rounds = max(1, n_prompts // (settings.prompts_per_round * world)) * settings.epochs
    return min(rounds, settings.max_rounds) if settings.max_rounds else rounds


def redistribute(pairs: PairBatch | None, accelerator, generator: torch.Generator) -> PairBatch | None:
    """Gather every process's pairs, shuffle them identically everywhere, keep this rank's share."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if world > 1:
        from accelerate.utils import gather_object

        gathered = [p for p in gather_object([pairs]) if p is not None]
        pairs = PairBatch.cat(gathered) if gathered else None
    if pairs is None or len(pairs) == 0:
        return None
    order = torch.randperm(len(pairs), generator=generator)
    per_rank = len(pairs) // world  # equal shares keep DDP's collective calls in step
    return pairs.select(order[rank * per_rank:(rank + 1) * per_rank]) if per_rank else None


def trainable_lora(unet, settings: TrainSettings) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """Attach the LoRA (its random A matrices depend on ``settings.seed`` alone) and its AdamW
    (the official betas and eps)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        params = attach_lora(unet, rank=settings.lora_rank, alpha=settings.lora_alpha,
                             init=settings.lora_init)
    return params, adamw(params, settings)


def adamw(params, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with the official betas and eps, ``train.lr`` and ``train.weight_decay``."""
    return torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999),
                             weight_decay=settings.weight_decay, eps=1e-8)


def pending_micro_batches(log_lines: list[dict[str, Any]], step: int) -> int:
    """Micro-batches back-propagated since the last optimizer step, read from the step log (one
    line per micro-batch, with the step count after it): what ``train.accumulate_across_rounds``
    carries into the next round. The official SDXL trainer lets accelerate count micro-batches
    over rounds and never forces a step at a round's end
    (RockeyCoss/SPO@27a8642:spo_training_and_inference/train_scripts/train_spo_sdxl.py, the
    ``end_of_dataloader = False`` before training and ``accelerator.accumulate``)."""
    n = 0
    for line in reversed(log_lines):
        if line.get("loss") is None:  # a round without pairs, or a round's sampling record
            continue
        if line.get("step") != step:
            break
        n += 1
    return n - 1 if step > 0 and n > 0 else n


def micro_batches(pairs: PairBatch | None, size: int) -> list[PairBatch]:
    """Consecutive slices of ``size`` pairs (the last one may be shorter); none for no pairs."""
    if pairs is None:
        return []
    return [pairs.select(torch.arange(s, min(s + size, len(pairs)))) for s in range(0, len(pairs), size)]


def write_examples(folder: Path, examples: dict[int, list]) -> None:
    """Figure 5's dump: ``round-<r>_<i>_{win,lose}.png`` and ``index.json`` (one entry per pair).

    Adds to what ``folder`` holds (entries of other rounds are kept), so the first round's
    examples, written beside the checkpoints, survive a resumed run.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else []
    index = [e for e in index if e["round"] not in examples]
    for round_index, items in sorted(examples.items()):
        for i, ex in enumerate(items):
            entry = {"round": round_index, "pair": i, "t": ex["t"], "t_scored": ex["t_scored"],
                     "prompt": ex["prompt"], "score_win": ex["score_win"], "score_lose": ex["score_lose"]}
            for side in ("win", "lose"):
                name = f"round-{round_index:05d}_{i:03d}_{side}.png"
                pixels = (ex[side].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / name)
                entry[side] = name
            index.append(entry)
    index.sort(key=lambda e: (e["round"], e["pair"]))
    write_json_atomic(index_path, index)


def start_checkpoints(checkpoint_dir: str | Path, accelerator, algorithm: str, version: int,
                      settings: TrainSettings, prompts: list[str], resolved: dict | None) -> None:
    """Before resuming: the checkpoints in ``checkpoint_dir`` are resumed only when they were
    trained on the same inputs (``checkpoints.training_inputs``); else they are moved aside and
    the log says which input changed (the main process decides, the others wait)."""
    if accelerator.is_main_process:
        checkpoints.claim(checkpoint_dir, checkpoints.training_inputs(algorithm, version, settings,
                                                                      prompts, resolved))
    accelerator.wait_for_everyone()


def no_pairs_reason(stats: dict[str, Any], settings: TrainSettings) -> str:
    """Why a round accepted no pair, from its sampling statistics."""
    std, gap = stats.get("score_std", math.nan), stats.get("gap_max", math.nan)
    if std == 0:
        return (f"the preference model gave every candidate the same score ({stats['score_mean']:g}): "
                f"it is constant on these images; check config key 'train.preference' "
                f"({settings.preference}) and the model it loads")
    return (f"no candidate pair's probability gap exceeded config key 'train.threshold' "
            f"({settings.threshold:g}; the largest gap was {gap:.3g}, score std {std:.3g}): the "
            f"threshold is too high for this preference model's scores; lower it")


def train_spo(backbone: Backbone, pipeline_class, prompts: list[str], preference,
              settings: TrainSettings, out_dir: str | Path, checkpoint_dir: str | Path,
              accelerator=None, resolved: dict | None = None) -> dict[str, Any]:
    """Run SPO rounds until done; write the diffusers-format LoRA and the step log to ``out_dir``.

    Resumes from the newest complete checkpoint in ``checkpoint_dir``. Returns summary statistics.
    """
    accelerator = accelerator or accelerator_on(backbone.device, settings.mixed_precision)
    unet = backbone.pipe.unet
    params, optimizer = trainable_lora(unet, settings)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    apply_speed_keys(backbone, settings)
    world, rank = accelerator.num_processes, accelerator.process_index
    settings = settings.for_world(world)  # the global recipe -> this process's share (spo.training.batching)
    n_rounds = total_rounds(len(prompts), settings, world)
    start_checkpoints(checkpoint_dir, accelerator, "spo", ALGORITHM_VERSION, settings, prompts, resolved)
    start_round, step, log_lines = checkpoints.resume(checkpoint_dir, unet, optimizer)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers()
    if start_round:
        log.info("resuming at round %d/%d (step %d) from %s", start_round, n_rounds, step, checkpoint_dir)
    guard = Guard(checkpoint_dir, lr_fix(settings, ", or enable 'train.clamp_eps'"
                                         if settings.clamp_eps is None else "", resolved))
    empty = 0  # rounds in a row without a pair (a resumed run counts those in its log)
    for line in reversed(log_lines):
        if line.get("loss") is not None or "loss" not in line:
            break
        empty += 1
    examples_dir = Path(checkpoint_dir) / "examples"  # Figure 5 (train.dump_examples)
    ctx = RoundContext(backbone, preference, settings, prompts, accelerator, params, optimizer,
                       guard, n_rounds, examples_dir)
    for round_index in range(start_round, n_rounds):
        unit = Unit(round_index, step, log_lines, unet=unet, optimizer=optimizer,
                    accelerator=accelerator, checkpoint_dir=checkpoint_dir)
        try:
            done = run_round(ctx, unit, step, empty)
            step, empty = done.step, done.empty
        except Preempted:
            unit.checkpoint_and_exit(f"round {round_index + 1}")
        # Accumulating across rounds: a checkpoint only where no gradient is pending (it holds none).
        settled = not (settings.accumulate_across_rounds and pending_micro_batches(log_lines, step))
        end_of_unit(due=((round_index + 1) % settings.checkpoint_every == 0 and settled)
                    or round_index + 1 == n_rounds,
                    accelerator=accelerator, what=f"round {round_index + 1}", checkpoint_dir=checkpoint_dir,
                    save=save_state(checkpoint_dir, round_index + 1, step, unet, optimizer, log_lines))

    check_trained(unet, full_unet=False, steps=step, guard=guard,
                  no_signal=no_pairs_reason(log_lines[-1] if log_lines else {}, settings))

    def copy_examples(folder: Path) -> None:
        if settings.dump_examples and examples_dir.is_dir():
            shutil.copytree(examples_dir, folder / "examples")

    write_outputs(out_dir, pipeline_class, unet, log_lines, resolved or {}, accelerator,
                  extra=copy_examples)
    return {"rounds": n_rounds, "steps": step,
            "final_loss": next((l["loss"] for l in reversed(log_lines) if l.get("loss") is not None), math.nan)}


@dataclass
class RoundContext:
    """What every round of a training shares, built once by ``train_spo`` (and by ``bench/``,
    which times ``run_round`` itself): the model, the scorer, this process's settings
    (``for_world`` applied) and their sampler keys, the optimisation state and the divergence
    guard."""

    backbone: Backbone
    preference: Any
    settings: TrainSettings
    prompts: list[str]
    accelerator: Any
    params: list
    optimizer: torch.optim.Optimizer
    guard: Guard
    n_rounds: int
    examples_dir: Path
    schedule: DDIMSchedule | None = None  # None: from the pipeline's scheduler
    sampler: Any = None  # None: ``settings.sampler()``

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = DDIMSchedule.from_scheduler(self.backbone.pipe.scheduler,
                                                        self.settings.num_inference_steps)
        if self.sampler is None:
            self.sampler = self.settings.sampler()  # the checked sampler keys, one object for every round


@dataclass
class RoundResult:
    """``run_round``'s outcome: the optimizer step count after it, the rounds in a row without a
    pair, the pairs this process trained on and the seconds of its two phases."""

    step: int
    empty: int
    pairs: int
    sample_s: float
    train_s: float


def run_round(ctx: RoundContext, unit: Unit, step: int, empty: int) -> RoundResult:
    """One SPO round ``unit.index``: sample with the step-wise resampler, score, gather, train.

    Appends the round's lines to ``unit.log_lines``. Raises ``Preempted`` (polled every DDIM step
    and micro-batch) on a signal."""
    backbone, settings, accelerator = ctx.backbone, ctx.settings, ctx.accelerator
    prompts, log_lines = ctx.prompts, unit.log_lines
    unet = backbone.pipe.unet
    world, rank = accelerator.num_processes, accelerator.process_index
    round_index = unit.index
    tic = time.perf_counter()
    # Pairs move between processes, so they index the prompts of the whole round (all ranks'
    # prompts are a deterministic function of the round) and every rank encodes all of them,
    # once: the sampler takes this rank's rows.
    all_prompts = [p for r in range(world)
                   for p in round_prompts(prompts, settings, round_index, world, r)]
    cond = backbone.encode(all_prompts)
    batch_prompts = round_prompts(prompts, settings, round_index, world, rank)
    first = rank * settings.prompts_per_round
    unet.eval()
    dump = settings.dump_examples if round_index in (0, ctx.n_rounds - 1) else 0
    with merged_lora(unet, settings.sampling_merge_lora):
        pairs, stats = sample_pairs(
            backbone, backbone.pipe.scheduler, batch_prompts, ctx.preference, ctx.sampler,
            _generator(settings.seed, "sample", round_index, rank), dump_examples=dump,
            should_stop=unit.requested,
            cond=cond if world == 1 else cond.take(torch.arange(first, first + len(batch_prompts))))
    if not math.isfinite(stats["score_mean"]):
        raise ctx.guard.error(f"the preference scores of the sampled candidates are "
                              f"{stats['score_mean']} (the policy's samples are not finite)",
                              f"round {round_index}")
    if stats.get("examples") and accelerator.is_main_process:
        write_examples(ctx.examples_dir, {round_index: stats["examples"]})
    if pairs is not None:
        pairs.prompt_index += first
    pairs = redistribute(pairs, accelerator, _generator(settings.seed, "shuffle", round_index))
    mid = time.perf_counter()
    unet.train()
    micro = micro_batches(pairs, settings.train_batch_size)
    for j, batch in enumerate(micro):
        unit.check()
        with accelerator.autocast():
            out = pair_loss(backbone, ctx.schedule, batch, cond, settings)
        loss = out["loss"]
        # accumulate_across_rounds (official SDXL trainer): count micro-batches over rounds, no
        # forced step at the round's end (n_micro 0 never matches)
        j_acc, n_acc = ((pending_micro_batches(log_lines, step), 0) if settings.accumulate_across_rounds
                        else (j, len(micro)))
        step = backward_micro_batch(
            loss, j_acc, n_acc, step, params=ctx.params, optimizer=ctx.optimizer,
            accelerator=accelerator, world=world, settings=settings, guard=ctx.guard,
            where=f"optimizer step {step} (round {round_index})", unit=unit)
        log_lines.append({
            "round": round_index, "step": step, "epoch": round_index * world * settings.prompts_per_round // max(1, len(prompts)),
            "loss": loss.item(), "ratio_win": out["ratio_w"].mean().item(),
            "ratio_lose": out["ratio_l"].mean().item(),
            "accepted_fraction": stats["pairs_accepted"] / max(1, stats["pairs_total"]),
            "score_mean": stats["score_mean"], "score_std": stats["score_std"],
            "lr": ctx.optimizer.param_groups[0]["lr"], "pairs": len(batch),
            "pairs_per_s": len(pairs) / (time.perf_counter() - tic)})
    empty = 0 if micro else empty + 1
    if not micro:
        log_lines.append({"round": round_index, "step": step, "loss": None, "accepted_fraction": 0.0,
                          "score_mean": stats["score_mean"], "score_std": stats["score_std"],
                          "gap_max": stats["gap_max"], "empty_rounds": empty})
        log.warning("round %d/%d: every candidate pair was rejected (%d rounds in a row): %s",
                    round_index + 1, ctx.n_rounds, empty, no_pairs_reason(stats, settings))
        if empty >= MAX_EMPTY_ROUNDS:
            raise empty_round_error("every candidate pair was rejected", round_index, empty,
                                    no_pairs_reason(stats, settings))
    toc = time.perf_counter()
    log.info("round %d/%d: %d pairs accepted of %d, score %.3f, %.1f s", round_index + 1,
             ctx.n_rounds, stats["pairs_accepted"], stats["pairs_total"], stats["score_mean"],
             toc - tic)
    return RoundResult(step, empty, 0 if pairs is None else len(pairs), mid - tic, toc - mid)
