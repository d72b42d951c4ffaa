"""DDPO (Black et al. 2023, DDPO_IS): PPO on the log-probability ratios of sampled DDIM trajectories.

Follows kvablack/ddpo-pytorch@1958463f020112c9a7bc85768d296daacc2e1b4b (read, not copied):

* scripts/train.py: each epoch samples trajectories with DDIM(eta 1) and CFG, recording every
  transition's log-prob under the sampling policy; the reward of the final image is normalised to
  an advantage; training recomputes each transition's log-prob under the current LoRA policy with
  CFG and minimises the PPO clipped surrogate mean(max(-A r, -A clip(r, 1 - c, 1 + c))),
  r = exp(logp - logp_sampled), advantages clipped to [-adv_clip_max, adv_clip_max]
  (clip range 1e-4, adv_clip_max 5 in config/base.py); ``timestep_fraction`` trains a random
  subset of each trajectory's steps; ``num_inner_epochs`` passes over the samples.
* ddpo_pytorch/stat_tracking.py: per-prompt running mean / std over a buffer of the last
  ``buffer_size`` rewards of that prompt (kept across epochs), falling back to the mean / std of
  the whole gathered batch while a prompt has fewer than ``min_count`` rewards; std + 1e-6. Without
  tracking, the batch is normalised as a whole (std + 1e-8). trl's DDPOTrainer does the same.

Differences, by design: an optimizer step averages ``train_batch_size x grad_accum`` transitions
drawn at random from the round (the official step covers whole trajectories, every trained step
of ``batch x accum`` samples); the tracker state is rebuilt on resume from the rewards the log
records per round, so a resumed run continues with the same statistics.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob
from spo.sampling.trajectory import sample_trajectories, score_final, step_subset
from spo.training.baseline_settings import DDPOSettings
from spo.training.loop import accelerator_on
from spo.training.rollout import all_round_prompts, generator, train_rounds
from spo.training.settings import TrainSettings
from spo.training.spo_trainer import round_prompts

# The code version of the algorithm (see spo.training.spo_trainer.ALGORITHM_VERSION).
ALGORITHM_VERSION = 1
log = logging.getLogger(__name__)





def ddpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, *,
              clip_range: float, adv_clip_max: float) -> dict[str, torch.Tensor]:
    """The PPO clipped surrogate of DDPO, averaged over transitions.

    Args:
        logp: (M,) log-probs of the sampled transitions under the current policy.
        logp_old: (M,) the same under the policy that sampled them.
        advantages: (M,) the trajectory's normalised reward.
    Returns:
        ``loss`` (scalar), ``ratio`` (mean r), ``clipfrac`` (share with |r - 1| > clip range),
        ``approx_kl`` (0.5 mean (logp - logp_old)^2, the official diagnostic).
    """
    adv = advantages.to(logp.dtype).clamp(-adv_clip_max, adv_clip_max)
    log_ratio = logp - logp_old.to(logp.dtype)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    return {"loss": loss, "ratio": ratio.mean().detach(),
            "clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean().detach(),
            "approx_kl": (0.5 * log_ratio ** 2).mean().detach()}


class PerPromptStatTracker:
    """Running per-prompt reward statistics (the official tracker's semantics)."""

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        prompts, rewards = np.asarray(prompts, dtype=object), np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts.tolist()):
            mine = prompts == prompt
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mine].tolist())
            ref = np.asarray(buffer) if len(buffer) >= self.min_count else rewards
            advantages[mine] = (rewards[mine] - ref.mean()) / (ref.std() + 1e-6)
        return advantages


def max_rewards_per_prompt(n_prompts: int, prompts_per_round: int, images_per_prompt: int,
                           rounds: int) -> int:
    """The most rewards any prompt collects in a training: each pass over the prompt set (a seeded
    permutation, ``round_prompts``) visits a prompt at most once, ``n // prompts_per_round``
    rounds a pass (global numbers)."""
    per_pass = max(1, n_prompts // prompts_per_round)
    return -(-rounds // per_pass) * images_per_prompt


def warn_if_tracker_never_used(n_prompts: int, settings: TrainSettings, opts: DDPOSettings) -> int:
    """Log when per-prompt tracking can never leave the whole-batch fallback (fewer rewards per
    prompt than ``min_count`` over the whole training: the paper profile's 4,000 prompts, 256 a
    round, 200 rounds give at most 14 < 16). Returns that most."""
    from spo.training.spo_trainer import total_rounds

    most = max_rewards_per_prompt(n_prompts, settings.prompts_per_round, opts.images_per_prompt,
                                  total_rounds(n_prompts, settings, 1))
    if opts.per_prompt_stat_tracking and most < opts.min_count:
        log.warning("DDPO: a prompt collects at most %d rewards in this training, fewer than "
                    "'train.ddpo.min_count' (%d): the per-prompt statistics never switch on and every "
                    "advantage is the whole-batch normalisation (the official tracker's fallback)",
                    most, opts.min_count)
    return most


def normalise_rewards(prompts: Sequence[str], rewards: np.ndarray,
                      tracker: PerPromptStatTracker | None) -> np.ndarray:
    """Advantages of a gathered round: per-prompt tracking, or whole-batch normalisation."""
    if tracker is not None:
        return tracker.update(prompts, rewards)
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)


@dataclass
class TransitionBatch:
    """Sampled transitions on the CPU: x_t -> x_next at t, with the sampling log-prob and advantage."""

    x_t: torch.Tensor
    x_next: torch.Tensor
    t: torch.Tensor
    prompt_index: torch.Tensor
    logp_old: torch.Tensor
    advantage: torch.Tensor

    def __len__(self) -> int:
        return len(self.t)

    def select(self, index: torch.Tensor) -> "TransitionBatch":
        return TransitionBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def transitions(traj, steps: torch.Tensor, prompt_index: torch.Tensor,
                advantages: torch.Tensor) -> TransitionBatch:
    """Flatten the (trajectory, step) pairs ``steps`` ((N, k) step indices) into a batch."""
    rows = torch.arange(len(traj)).repeat_interleave(steps.shape[1])
    cols = steps.flatten()
    return TransitionBatch(traj.latents[rows, cols], traj.latents[rows, cols + 1], traj.timesteps[cols],
                           prompt_index[rows], traj.logprobs[rows, cols], advantages[rows].float())


def transition_logprob(backbone, schedule: DDIMSchedule, batch: TransitionBatch, cond,
                       settings: TrainSettings) -> torch.Tensor:
    """log p(x_next | x_t) under the UNet as it is now (CFG as in sampling): (M,)."""
    device = backbone.device
    x_t, t = batch.x_t.to(device), batch.t.to(device)
    eps = backbone.eps(x_t, t, cond.take(batch.prompt_index), settings.guidance_scale)
    mean, std, _ = ddim_transition(schedule, eps, x_t, t, settings.eta)
    return gaussian_logprob(batch.x_next.to(device), mean, std, settings.logprob_reduce)


def _gather(values: list, accelerator) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return values
    from accelerate.utils import gather_object

    return list(gather_object(values))


def train_ddpo(backbone, pipeline_class, prompts: list[str], preference, settings: TrainSettings,
               out_dir: str | Path, checkpoint_dir: str | Path, accelerator=None,
               resolved: dict | None = None) -> dict[str, Any]:
    """Train the LoRA with DDPO; writes what ``train_spo`` writes. Signature of ``train_spo``."""

    opts = settings.algorithm_settings()  # parsed with the config; its checks (eta > 0) ran there
    accelerator = accelerator or accelerator_on(backbone.device, settings.mixed_precision)
    warn_if_tracker_never_used(len(prompts), settings, opts)
    settings = settings.for_world(accelerator.num_processes)  # the global recipe -> this process's share
    scheduler = backbone.pipe.scheduler
    schedule = DDIMSchedule.from_scheduler(scheduler, settings.num_inference_steps)
    tracker = (PerPromptStatTracker(opts.buffer_size, opts.min_count)
               if opts.per_prompt_stat_tracking else None)
    m = opts.images_per_prompt

    def replay(log_lines):  # the tracker is a function of the rewards so far
        for line in log_lines:
            if line.get("kind") == "samples" and tracker is not None:
                tracker.update([prompts[i] for i in line["prompt_ids"]], np.asarray(line["rewards"]))

    def collect(round_index, world, rank, should_stop=None):
        mine = round_prompts(prompts, settings, round_index, world, rank)
        every = all_round_prompts(prompts, settings, round_index, world)
        cond = backbone.encode(every)
        prompt_index = (torch.arange(len(mine)) + rank * settings.prompts_per_round).repeat_interleave(m)
        traj = sample_trajectories(
            backbone, scheduler, cond.take(prompt_index), num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta,
            generator=generator(settings.seed, "sample", round_index, rank),
            logprob_reduce=settings.logprob_reduce, batch_size=opts.sample_batch_size,
            should_stop=should_stop)
        rewards = score_final(backbone, preference, traj.final, [every[i] for i in prompt_index.tolist()])
        ids = {p: i for i, p in enumerate(prompts)}
        local = [(ids[every[i]], float(r)) for i, r in zip(prompt_index.tolist(), rewards.tolist())]
        gathered = _gather(local, accelerator)  # rank order: rank r's rows are the r-th block
        all_ids, all_rewards = [g[0] for g in gathered], np.asarray([g[1] for g in gathered])
        advantages = normalise_rewards([prompts[i] for i in all_ids], all_rewards, tracker)
        advantages = torch.as_tensor(advantages).view(world, -1)[rank]
        steps = step_subset(len(traj), settings.num_inference_steps, opts.timestep_fraction,
                            generator(settings.seed, "timesteps", round_index, rank))
        data = transitions(traj, steps, prompt_index, advantages)
        datasets = [data.select(torch.randperm(len(data), generator=generator(
            settings.seed, "shuffle", round_index, rank, e))) for e in range(opts.inner_epochs)]
        stats = {"prompt_ids": all_ids, "rewards": all_rewards.tolist(),
                 "reward_mean": float(all_rewards.mean()), "reward_std": float(all_rewards.std()),
                 "logprob_mean": float(traj.logprobs.mean())}
        return datasets, cond, stats

    def loss_fn(batch, cond):
        logp = transition_logprob(backbone, schedule, batch, cond, settings)
        return ddpo_loss(logp, batch.logp_old.to(logp.device), batch.advantage.to(logp.device),
                         clip_range=opts.clip_range, adv_clip_max=opts.adv_clip_max)

    return train_rounds(backbone, pipeline_class, prompts, settings, out_dir, checkpoint_dir,
                        accelerator, resolved, collect=collect, loss_fn=loss_fn, replay=replay,
                        algorithm="ddpo", version=ALGORITHM_VERSION)
