"""D3PO (Yang et al. 2024): DPO on every step of two trajectories ranked by a reward.

Follows yk7333/d3po@40d31758048f62ff49814eaa0403d820493ad374 (read, not copied),
scripts/rm/train_d3po.py (the reward-model mode) and config/base.py:

* per prompt two DDIM(eta 1) trajectories with CFG; the second starts from the first one's x_T
  (``latents = latents1[:, 0]``), so the pair shares the initial noise and differs in the noise
  drawn at every step after it; the reward of the two final images ranks them;
* for each trained step j the transition pair (x^w_t -> x^w_{t-1}, x^l_t -> x^l_{t-1}) at the same
  timestep gets loss -log sigmoid(beta log r_w - beta log r_l), r = clamp(p_theta / p_ref, 1 - eps,
  1 + eps) with the reference = the UNet before the LoRA (eps 0.1, beta 0.1, lr 3e-5 in base.py);
  the official ``compare`` gives ties the weight 0 (no gradient): tied pairs are dropped here;
* ``timestep_fraction`` trains the same random subset of steps of both trajectories of a pair.

That loss is SPO's single-step DPO with the official ratio clamp, so a micro-batch of transition
pairs is ``spo.training.spo_trainer.pair_loss`` (reference = the same UNet with the LoRA disabled,
``spo.training.lora.reference_mode``; the shared x_T of step 0 gets one UNet pass for both), with
``train.beta`` and ``train.clamp_eps``. The pairs of a round are gathered, shuffled and split
evenly across processes as SPO's (``redistribute``). An optimizer step averages
``train_batch_size x grad_accum`` transition pairs drawn at random from the round (the official
step covers every step of ``batch x accum`` trajectory pairs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spo.sampling.ddim import DDIMSchedule
from spo.sampling.stepwise import PairBatch
from spo.sampling.trajectory import Trajectories, sample_trajectories, score_final, step_subset
from spo.training.loop import accelerator_on
from spo.training.rollout import all_round_prompts, generator, train_rounds
from spo.training.settings import TrainSettings
from spo.training.spo_trainer import pair_loss, redistribute, round_prompts

# The code version of the algorithm (see spo.training.spo_trainer.ALGORITHM_VERSION).
ALGORITHM_VERSION = 1


def ranked_pairs(traj: Trajectories, rewards: torch.Tensor, prompt_index: torch.Tensor,
                 steps: torch.Tensor, shared_start: bool) -> PairBatch | None:
    """Transition pairs of trajectory pairs (rows 2i, 2i + 1), ranked by the final reward.

    Args:
        traj: 2P trajectories, the two of prompt i in rows 2i and 2i + 1.
        rewards: (2P,) rewards of the final images.
        prompt_index: (P,) index of each pair's prompt in the conditioning.
        steps: (P, k) step indices trained per pair (the same for both trajectories).
        shared_start: both trajectories of a pair start at the same x_T (step 0 shares x_t).
    Returns:
        the pairs of every untied trajectory pair and trained step, or None.
    """
    r = rewards.view(-1, 2)
    keep = torch.nonzero(r[:, 0] != r[:, 1]).flatten()
    if len(keep) == 0:
        return None
    first_wins = r[keep, 0] > r[keep, 1]
    win = 2 * keep + (~first_wins).long()
    lose = 2 * keep + first_wins.long()
    k = steps.shape[1]
    w_rows, l_rows = win.repeat_interleave(k), lose.repeat_interleave(k)
    cols = steps[keep].flatten()
    return PairBatch(xt_w=traj.latents[w_rows, cols], xt_l=traj.latents[l_rows, cols],
                     x_w=traj.latents[w_rows, cols + 1], x_l=traj.latents[l_rows, cols + 1],
                     t=traj.timesteps[cols], prompt_index=prompt_index[keep].repeat_interleave(k),
                     shared=(cols == 0) & shared_start)


def train_d3po(backbone, pipeline_class, prompts: list[str], preference, settings: TrainSettings,
               out_dir: str | Path, checkpoint_dir: str | Path, accelerator=None,
               resolved: dict | None = None) -> dict[str, Any]:
    """Train the LoRA with D3PO; writes what ``train_spo`` writes. Signature of ``train_spo``."""

    opts = settings.algorithm_settings()  # parsed with the config; its checks (eta > 0) ran there
    accelerator = accelerator or accelerator_on(backbone.device, settings.mixed_precision)
    settings = settings.for_world(accelerator.num_processes)  # the global recipe -> this process's share
    scheduler = backbone.pipe.scheduler
    schedule = DDIMSchedule.from_scheduler(scheduler, settings.num_inference_steps)

    def collect(round_index, world, rank, should_stop=None):
        mine = round_prompts(prompts, settings, round_index, world, rank)
        every = all_round_prompts(prompts, settings, round_index, world)
        cond = backbone.encode(every)
        n = len(mine)
        prompt_index = torch.arange(n) + rank * settings.prompts_per_round
        gen = generator(settings.seed, "sample", round_index, rank)
        if opts.same_initial_noise:
            x_T = backbone.initial_latents(n, gen).repeat_interleave(2, dim=0)
        else:
            x_T = backbone.initial_latents(2 * n, gen)
        rows = prompt_index.repeat_interleave(2)
        traj = sample_trajectories(
            backbone, scheduler, cond.take(rows), num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta, generator=gen, x_T=x_T,
            logprob_reduce=settings.logprob_reduce, batch_size=opts.sample_batch_size,
            should_stop=should_stop)
        rewards = score_final(backbone, preference, traj.final, [every[i] for i in rows.tolist()])
        steps = step_subset(n, settings.num_inference_steps, opts.timestep_fraction,
                            generator(settings.seed, "timesteps", round_index, rank))
        pairs = ranked_pairs(traj, rewards, prompt_index, steps, opts.same_initial_noise)
        n_pairs = 0 if pairs is None else len(pairs)
        pairs = redistribute(pairs, accelerator, generator(settings.seed, "shuffle", round_index))
        gap = (rewards.view(-1, 2)[:, 0] - rewards.view(-1, 2)[:, 1]).abs()
        stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                 "reward_gap_mean": float(gap.mean()), "pairs": n_pairs,
                 "ties": int((gap == 0).sum())}
        return [pairs], cond, stats

    def loss_fn(batch, cond):
        out = pair_loss(backbone, schedule, batch, cond, settings)
        return {"loss": out["loss"], "ratio_win": out["ratio_w"].mean(), "ratio_lose": out["ratio_l"].mean()}

    return train_rounds(backbone, pipeline_class, prompts, settings, out_dir, checkpoint_dir,
                        accelerator, resolved, collect=collect, loss_fn=loss_fn,
                        algorithm="d3po", version=ALGORITHM_VERSION,
                        no_data="every trajectory pair tied (both got the same reward): the reward "
                                f"model is constant on these images; check config key "
                                f"'train.preference' ({settings.preference})")
