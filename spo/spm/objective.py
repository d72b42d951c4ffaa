"""The SPM's pure pieces: loss, pseudo-labels, accuracy, learning-rate schedule, batch order.

Followed closely: the PickScore-style criterion of the official SPM
(RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/criterions/spm_criterion.py,
``in_batch_negatives=False``) and its PickScore relabelling (``trainer/tasks/spm_task.py``,
``update_as_pickscore_label``).
"""

from __future__ import annotations

import math

import torch


def pair_loss(s0: torch.Tensor, s1: torch.Tensor, label: torch.Tensor,
              examples_per_prompt: torch.Tensor) -> torch.Tensor:
    """Cross entropy over the two scores of each pair, weighted 1 / examples-per-prompt.

    Args:
        s0, s1: (B,) logits ``exp(logit_scale) * cos(text, image)`` of image 0 and image 1.
        label: (B,) preference for image 0 in {0, 0.5, 1}; a tie's target is (0.5, 0.5); -1 (no
            label, a kept unlabelled row) has target (0, 0): the official criterion's
            ``label_0 * ce_0 + label_1 * ce_1 + [label_0 == label_1] log 0.5`` is then the constant
            log 0.5, no gradient, but the row counts in the weight normalisation.
        examples_per_prompt: (B,) >= 1.
    Returns:
        scalar; ``log 0.5`` is added for ties so that a perfect model has loss 0 on every pair;
        weights are normalised to sum to 1 over the batch (as the official criterion).
    """
    logp = torch.log_softmax(torch.stack([s0, s1], dim=-1).float(), dim=-1)
    label = label.float()
    none = label < 0
    w0, w1 = torch.where(none, 0.0, label), torch.where(none, 0.0, 1 - label)
    ce = -(w0 * logp[:, 0] + w1 * logp[:, 1])
    ce = ce + ((label == 0.5) | none).float() * math.log(0.5)
    w = 1.0 / examples_per_prompt.float()
    return (ce * w / w.sum()).sum()


def pseudo_labels(s0: torch.Tensor, s1: torch.Tensor, threshold: float) -> torch.Tensor:
    """PickScore labels (the SDXL recipe): softmax probabilities over the pair; a win when
    ``|p0 - p1| > threshold``, else a tie. Returns (B,) in {0, 0.5, 1} (preference for image 0)."""
    p = torch.softmax(torch.stack([s0, s1], dim=-1).float(), dim=-1)
    gap = p[:, 0] - p[:, 1]
    return torch.where(gap > threshold, 1.0, torch.where(gap < -threshold, 0.0, 0.5))


def pairwise_accuracy(s0: torch.Tensor, s1: torch.Tensor, label: torch.Tensor) -> tuple[float, int]:
    """Share of decisive pairs (label 0 or 1) whose higher score is the preferred image.

    Equal scores count half. Returns (accuracy, number of decisive pairs); NaN when none.
    """
    keep = (label == 0) | (label == 1)
    if not bool(keep.any()):
        return float("nan"), 0
    d = (s0 - s1)[keep].float()
    want = label[keep] == 1
    right = torch.where(d == 0, 0.5, ((d > 0) == want).float())
    return float(right.mean()), int(keep.sum())


def learning_rate(step: int, base: float, warmup: int, total: int, schedule: str,
                  warmup_shape: str = "linear") -> float:
    """LR of optimiser step ``step`` (0-based): a warm-up over ``warmup`` steps, then constant or
    linear decay to 0 at ``total``.

    ``warmup_shape`` "linear": base * (step + 1) / warmup, then base * (total - step) / (total -
    warmup). "log": DeepSpeed's ``WarmupDecayLR`` as the official SPM run uses it (its default
    ``warmup_type: log``; warmup_min_lr 0; RockeyCoss/SPO@27a8642:step_aware_preference_model/
    trainer/accelerators/deepspeed_accelerator.py with accelerate@d1aa558's ``_prepare_deepspeed``):
    the scheduler sets lr 0 before the first step and advances after each step, so step s runs at
    iteration i = s - 1: base * ln(i + 1) / ln(max(2, warmup)) while i < warmup (steps 0 and 1 at
    lr 0), then base * (total - i) / (total - warmup).
    """
    if warmup_shape == "log":
        if step == 0:
            return 0.0
        it, w = step - 1, max(2, warmup)
        if it < w:
            return base * math.log(it + 1) / math.log(w)
        if schedule == "constant":
            return base
        if schedule == "warmup_decay":
            return base * max(0.0, (total - it) / max(1.0, total - w))
        raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, warmup_decay")
    if warmup_shape != "linear":
        raise ValueError(f"unknown warm-up shape {warmup_shape!r}; allowed: linear, log")
    warm = base * min(1.0, (step + 1) / warmup) if warmup > 0 else base
    if schedule == "constant" or step < warmup:
        return warm
    if schedule == "warmup_decay":
        return base * max(0.0, (total - step) / max(1, total - warmup))
    raise ValueError(f"unknown lr schedule {schedule!r}; allowed: constant, warmup_decay")


def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """The ``batch`` pair indices of ``step``: epoch-wise permutations seeded by (seed, epoch).

    A pure function of its arguments, so a resumed run sees exactly the batches an uninterrupted
    run sees. Returns (batch,) long in [0, n).
    """
    pos = torch.arange(step * batch, (step + 1) * batch)
    out = torch.empty(batch, dtype=torch.long)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        sel = pos.div(n, rounding_mode="floor") == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of a step's timesteps and noise (resume-safe, like ``batch_indices``)."""
    return torch.Generator().manual_seed((seed + 1) * 2_000_003 + step)
