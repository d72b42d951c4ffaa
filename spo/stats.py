"""Summary statistics with bootstrap confidence intervals over prompts.

Images of the same prompt are not independent (same text, often similar content), so the unit of
resampling is the prompt: each bootstrap replicate draws prompts with replacement and averages
their per-prompt mean scores.
"""

from __future__ import annotations

import numpy as np


def bootstrap_mean_ci(per_prompt: np.ndarray, *, samples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``per_prompt`` (shape (P,), P >= 1)."""
    values = np.asarray(per_prompt, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"expected a non-empty 1-d array of per-prompt values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, **kwargs) -> tuple[float, float, float]:
    """Mean of ``a - b`` over matched prompts and its bootstrap CI: (diff, low, high)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    low, high = bootstrap_mean_ci(diff, **kwargs)
    return float(diff.mean()), low, high
