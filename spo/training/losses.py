"""Preference losses as pure functions of log-probabilities.

SPO (paper eq. 4-5, with the official code's additions; ../shared/PAPER.md §1.4):

    log r = log p_theta(x_{t-1} | x_t) - log p_ref(x_{t-1} | x_t)
    loss  = -log sigmoid(beta * (log r_w - log r_l))

The official code clamps each ratio r to [1 - eps, 1 + eps] before the log (eps = 0.1), so the
gradient stops once the policy has moved a ratio out of that band; ``clamp_eps=None`` is the
paper's unclamped objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def clamped_log_ratio(logp: torch.Tensor, logp_ref: torch.Tensor,
                      clamp_eps: float | None) -> torch.Tensor:
    """log clamp(exp(logp - logp_ref), 1 - eps, 1 + eps), elementwise; no clamp when eps is None."""
    log_ratio = logp - logp_ref
    if clamp_eps is None:
        return log_ratio
    if not 0.0 < clamp_eps < 1.0:
        raise ValueError(f"ratio clamp eps must be in (0, 1) or null, got {clamp_eps}")
    return log_ratio.clamp(math.log(1.0 - clamp_eps), math.log(1.0 + clamp_eps))


def spo_loss(logp_w: torch.Tensor, logp_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             *, beta: float, clamp_eps: float | None = 0.1) -> dict[str, torch.Tensor]:
    """The single-step DPO loss of SPO, averaged over pairs.

    Args:
        logp_w, logp_l: (M,) policy log-probs of the win / lose transition.
        ref_w, ref_l: (M,) reference log-probs of the same transitions (no gradient needed).
        beta: inverse temperature (paper: 10).
        clamp_eps: the official ratio clamp, or None.

    Returns:
        dict with ``loss`` (scalar), ``ratio_w`` and ``ratio_l`` ((M,), unclamped p/p_ref).
    """
    lr_w = clamped_log_ratio(logp_w, ref_w, clamp_eps)
    lr_l = clamped_log_ratio(logp_l, ref_l, clamp_eps)
    loss = -F.logsigmoid(beta * (lr_w - lr_l)).mean()
    return {"loss": loss, "ratio_w": torch.exp(logp_w - ref_w).detach(),
            "ratio_l": torch.exp(logp_l - ref_l).detach()}
