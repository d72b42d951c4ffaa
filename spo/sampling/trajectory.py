"""Full DDIM(eta) trajectories with CFG and the log-probability of every sampled transition.

The sampler of the trajectory-level baselines DDPO and D3PO (issue 6): one trajectory per row of
``cond``, x_T -> x_0 over the ``num_inference_steps`` DDIM grid, every transition drawn from
N(mean, std^2) of ``spo.sampling.ddim.ddim_transition`` and its log-density
``gaussian_logprob(x_{t-1}; mean, std)`` recorded under the policy that sampled it (averaged over the
latent dimensions by default, as kvablack/ddpo-pytorch@1958463:ddpo_pytorch/diffusers_patch/
ddim_with_logprob.py does). The maths lives in ``spo.sampling.ddim`` and the model calls in
``Backbone``; this module only loops, as the step-wise SPO sampler does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from spo.models.backbone import Backbone, Conditioning
from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob, sample_transition


@dataclass
class Trajectories:
    """N sampled trajectories, on the CPU.

    Attributes:
        latents: (N, S + 1, C, h, w): x_T, then the state after each of the S steps (x_0 last).
        timesteps: (S,) long, the timestep each step starts from (``latents[:, s]`` is at
            ``timesteps[s]``).
        logprobs: (N, S) float32, log p(latents[:, s + 1] | latents[:, s]) under the sampling policy.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    logprobs: torch.Tensor

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def final(self) -> torch.Tensor:
        return self.latents[:, -1]

    @staticmethod
    def cat(parts: Sequence["Trajectories"]) -> "Trajectories":
        return Trajectories(torch.cat([p.latents for p in parts]), parts[0].timesteps,
                            torch.cat([p.logprobs for p in parts]))


def check_eta(eta: float) -> None:
    if not eta > 0:
        raise ValueError(f"config key 'train.eta' is {eta}; trajectory log-probabilities need a "
                         f"stochastic sampler, eta > 0 (DDPO and D3PO sample with 1.0)")


@torch.no_grad()
def sample_trajectories(backbone: Backbone, scheduler, cond: Conditioning, *, num_inference_steps: int,
                        guidance_scale: float, eta: float, generator: torch.Generator,
                        x_T: torch.Tensor | None = None, logprob_reduce: str = "mean",
                        batch_size: int | None = None,
                        should_stop: Callable[[], bool] | None = None) -> Trajectories:
    """Sample one trajectory per row of ``cond`` with the UNet as it is now.

    Args:
        cond: N rows of text conditioning (repeat rows for several trajectories per prompt).
        x_T: (N, C, h, w) initial latents; None draws them from ``generator``.
        batch_size: rows per UNet call (None: all N at once); the noise is drawn per chunk in
            order, so the result depends on it.
        should_stop: polled before every DDIM step; True raises ``spo.checkpoint.Preempted``.
    """
    check_eta(eta)
    n = len(cond.cond)
    if x_T is None:
        x_T = backbone.initial_latents(n, generator)
    size = batch_size or n
    parts = [_sample_chunk(backbone, scheduler, cond.take(torch.arange(s, min(s + size, n))),
                           x_T[s:s + size], num_inference_steps, guidance_scale, eta, generator,
                           logprob_reduce, should_stop) for s in range(0, n, size)]
    return Trajectories.cat(parts)


def _sample_chunk(backbone, scheduler, cond, x, steps, guidance_scale, eta, generator, reduce,
                  should_stop=None):
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.cpu().long()
    schedule = DDIMSchedule.from_scheduler(scheduler, steps)
    x = x.to(backbone.device)
    latents, logprobs = [x.float().cpu()], []
    for t in timesteps:
        if should_stop is not None and should_stop():
            from spo.checkpoint import Preempted

            raise Preempted()
        tt = torch.full((len(x),), int(t), dtype=torch.long, device=backbone.device)
        mean, std, _ = ddim_transition(schedule, backbone.eps(x, tt, cond, guidance_scale), x, tt, eta)
        if not bool((std > 0).all()):
            raise ValueError(f"the DDIM step from t = {int(t)} has zero variance; its log-probability "
                             f"is undefined (config key 'train.eta' must be > 0)")
        x = sample_transition(mean, std, generator)
        logprobs.append(gaussian_logprob(x, mean, std, reduce).float().cpu())
        latents.append(x.float().cpu())
    return Trajectories(torch.stack(latents, dim=1), timesteps, torch.stack(logprobs, dim=1))


@torch.no_grad()
def score_final(backbone: Backbone, preference, latents: torch.Tensor, prompts: Sequence[str],
                batch_size: int = 16) -> torch.Tensor:
    """The reward: the preference model on the decoded final images at t = 0; (N,) float32 CPU."""
    scores = []
    for s in range(0, len(latents), batch_size):
        images = backbone.decode(latents[s:s + batch_size].to(backbone.device))
        t0 = torch.zeros(len(images), dtype=torch.long, device=images.device)
        scores.append(preference(images, list(prompts[s:s + batch_size]), t0).float().cpu())
    return torch.cat(scores)


def step_subset(n: int, steps: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """(n, k) step indices, k = int(steps * fraction) random distinct steps per trajectory, as
    the official ``timestep_fraction`` (kvablack/ddpo-pytorch@1958463:scripts/train.py: a random
    permutation of the steps per sample, of which the first k are trained)."""
    k = int(steps * fraction)
    if k < 1:
        raise ValueError(f"timestep_fraction {fraction} of {steps} steps trains no step; raise it")
    return torch.stack([torch.randperm(steps, generator=generator)[:k] for _ in range(n)])
