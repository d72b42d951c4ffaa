"""The DDIM(eta) transition x_t -> x_{t-1} as pure tensor functions, with its Gaussian log-density.

Notation (Song et al. 2021, eq. 12; diffusers ``DDIMScheduler.step``): with a = alphabar_t,
a' = alphabar_{max(t_prev, 0)} and eps the (CFG) noise prediction,

    x0_hat = (x_t - sqrt(1 - a) * eps) / sqrt(a)
    std    = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')
    mean   = sqrt(a') * x0_hat + sqrt(1 - a' - std^2) * eps
    x_{t-1} ~ N(mean, std^2 I)

The mean equals ``DDIMScheduler.step(eps, t, x_t, eta=eta, variance_noise=0)`` for epsilon prediction
without clipping or thresholding (SD-1.5 and SDXL settings), which tests check. SPO's objective uses
log N(x_{t-1}; mean, std^2) averaged over the latent dimensions, as the official code does
(RockeyCoss/SPO@27a8642:spo_training_and_inference/spo/custom_diffusers/ddim_with_logprob.py);
``reduce="sum"`` gives the exact joint log-density instead.

The last step (t_prev < 0) uses alphabar_0, never the scheduler's ``final_alpha_cumprod``: the
official samplers and log-probs clamp t_prev to 0 before the look-up
(RockeyCoss/SPO@27a8642:spo_training_and_inference/spo/custom_diffusers/ddim_with_logprob.py and
ddim_seperate.py, as kvablack/ddpo-pytorch's ddim_with_logprob.py), so with ``set_alpha_to_one:
true`` the last transition keeps a non-zero variance (alphabar_0 < 1) and a finite log-prob. For
SD-1.5 and SDXL (``set_alpha_to_one: false``) the two are the same number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDIMSchedule:
    """What a DDIM transition needs from the scheduler, as tensors.

    Attributes:
        alphas_cumprod: (T,) float64, alphabar_t for t = 0..T-1.
        final_alpha_cumprod: the scheduler's alphabar for t_prev < 0 (kept for reference; the
            transitions use alphabar_0 there, as the official code: see the module docstring).
        step: training timesteps between two inference steps (T // num_inference_steps).
    """

    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: float
    step: int

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int) -> "DDIMSchedule":
        cfg = scheduler.config
        return cls(alphas_cumprod=scheduler.alphas_cumprod.to(torch.float64),
                   final_alpha_cumprod=float(scheduler.final_alpha_cumprod),
                   step=cfg.num_train_timesteps // num_inference_steps)

    def alphas(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alphabar at t and at max(t - step, 0), each (B,) float64."""
        t = t.long().cpu()
        prev = t - self.step
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev.clamp(min=0)]  # official: t_prev clamped to 0, see above
        return a_t, a_prev


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (half-precision UNet outputs are upcast)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def predict_x0(schedule: DDIMSchedule, eps: torch.Tensor, x_t: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
    """x0_hat from x_t and eps; shapes (B, C, H, W), t (B,)."""
    dtype = _compute_dtype(eps, x_t)
    eps, x_t = eps.to(dtype), x_t.to(dtype)
    a_t, _ = schedule.alphas(t)
    a_t = _expand(a_t, x_t)
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddim_transition(schedule: DDIMSchedule, eps: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and std of p(x_{t-1} | x_t) under DDIM(eta), and x0_hat.

    Args:
        eps: (B, C, H, W) noise prediction (after CFG).
        x_t: (B, C, H, W) current latents.
        t: (B,) long timesteps in [0, T).
        eta: 0 (deterministic DDIM) to 1 (DDPM-like variance; SPO samples with 1).

    Returns:
        mean (B, C, H, W), std (B, 1, 1, 1), x0_hat (B, C, H, W); computed in float32 (float64
        when an input is float64).
    """
    dtype = _compute_dtype(eps, x_t)
    eps, x_t = eps.to(dtype), x_t.to(dtype)
    a_t, a_prev = schedule.alphas(t)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var.clamp(min=0).sqrt()
    a_t, a_prev, std = _expand(a_t, x_t), _expand(a_prev, x_t), _expand(std, x_t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std ** 2).clamp(min=0).sqrt() * eps
    return mean, std, x0


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                     reduce: str = "mean") -> torch.Tensor:
    """log N(x; mean, std^2 I) per sample: (B,), averaged ("mean") or summed over dims.

    ``x`` is detached: the sample is data, only the mean carries the policy's gradient.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"log-prob reduction {reduce!r}: allowed values 'mean', 'sum'")
    std = std.expand_as(mean)
    logp = (-((x.detach().to(mean.dtype) - mean) ** 2) / (2 * std ** 2) - torch.log(std)
            - 0.5 * math.log(2 * math.pi))
    dims = tuple(range(1, logp.ndim))
    return logp.mean(dim=dims) if reduce == "mean" else logp.sum(dim=dims)


def sample_transition(mean: torch.Tensor, std: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """x_{t-1} = mean + std * z, z ~ N(0, I) drawn on the CPU (reproducible across devices)."""
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return mean + std * noise.to(mean.device)
