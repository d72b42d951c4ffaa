"""Choosing the win / lose pair among k candidates (pure functions).

Official rule (RockeyCoss/SPO@27a8642:spo_training_and_inference/spo/preference_models/compare_funcs.py,
read, not copied): take the best and the worst candidate by preference score, and keep the pair
only when the softmax probabilities of the two scores differ by more than a threshold
(0.3 for SD-1.5, 0.4 for SDXL). For two logits, p_best - p_worst = tanh((s_best - s_worst) / 2).
Ties as the official ``torch.sort(descending=True)`` leaves them (stable: tied candidates keep
their order): the best is the first of the highest scores, the worst the *last* of the lowest.
The "random" variant (paper Table 8) draws two distinct candidates and orders them by score.
"""

from __future__ import annotations

import torch


def probability_gap(s_a: torch.Tensor, s_b: torch.Tensor) -> torch.Tensor:
    """softmax([s_a, s_b])[0] - softmax([s_a, s_b])[1], elementwise; in (-1, 1)."""
    probs = torch.stack([s_a, s_b], dim=-1).float().softmax(dim=-1)
    return probs[..., 0] - probs[..., 1]


def select_pairs(scores: torch.Tensor, *, threshold: float, mode: str = "best-worst",
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Win and lose candidate per row, and whether the pair is kept.

    Args:
        scores: (B, k) preference scores of k >= 2 candidates per row.
        threshold: keep a pair when p_win - p_lose > threshold; in [0, 1).
        mode: "best-worst" (paper) or "random" (two distinct candidates, ordered by score).
        generator: for "random".

    Returns:
        win (B,) long, lose (B,) long, accepted (B,) bool.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (B, k) with k >= 2, got {tuple(scores.shape)}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"pair threshold must be in [0, 1), got {threshold}")
    scores = scores.detach().float().cpu()
    if mode == "best-worst":
        # argmax / argmin return the first index; the official sort puts the last tied lowest last
        k = scores.shape[1]
        win, lose = scores.argmax(dim=1), (k - 1) - scores.flip(1).argmin(dim=1)
    elif mode == "random":
        k = scores.shape[1]
        first = torch.randint(0, k, (len(scores),), generator=generator)
        second = (first + torch.randint(1, k, (len(scores),), generator=generator)) % k
        rows = torch.arange(len(scores))
        first_better = scores[rows, first] >= scores[rows, second]
        win = torch.where(first_better, first, second)
        lose = torch.where(first_better, second, first)
    else:
        raise ValueError(f"pair mode {mode!r}: allowed values 'best-worst', 'random'")
    rows = torch.arange(len(scores))
    gap = probability_gap(scores[rows, win], scores[rows, lose])
    accepted = (gap > threshold) & (win != lose)
    return win, lose, accepted
