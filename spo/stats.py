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


def replicated_mean_ci(values: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` over independent runs and prompts, and a CI that counts both.

    One training run moves a model in one direction of its own (a random preference included), and
    every prompt then sees that same move: a CI over the prompts of one run does not see how much
    the move varies from run to run. Here the runs are the replicates:

        values[r, p]   run r's per-prompt value (a paired difference to the base, or a mean), R >= 2
        a = var_r(mean_p values[r, p]) / R     run-to-run variation of the mean
        b = var_p(mean_r values[r, p]) / P     prompt sampling variation (the runs share the prompts,
                                               so it is common to every run and counted once)
        se^2 = a + b                           (sample variances, ddof 1)
        CI = mean +- t(1 - (1 - confidence) / 2, dof) * se,
        dof = se^4 / (a^2 / (R - 1) + b^2 / (P - 1))      (Welch-Satterthwaite)

    With few runs and a run-to-run spread that dominates, dof is close to R - 1 and the interval is
    wide, as it should be; where the prompts dominate (a mean score), dof is close to P - 1.

    Args:
        values: (R, P) float, R >= 2 runs, P >= 2 prompts, no NaN.
        confidence: in (0, 1).
    Returns:
        (mean, low, high).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2 or values.shape[1] < 2 or not np.isfinite(values).all():
        raise ValueError(f"expected a finite (runs >= 2, prompts >= 2) array, got shape {values.shape}")
    runs, prompts = values.shape
    a = values.mean(axis=1).var(ddof=1) / runs
    b = values.mean(axis=0).var(ddof=1) / prompts
    mean = float(values.mean())
    if a + b == 0.0:
        return mean, mean, mean
    dof = (a + b) ** 2 / (a ** 2 / (runs - 1) + b ** 2 / (prompts - 1))
    half = student_t_quantile(1.0 - (1.0 - confidence) / 2.0, dof) * np.sqrt(a + b)
    return mean, float(mean - half), float(mean + half)


def student_t_quantile(q: float, dof: float) -> float:
    """The q-quantile of Student's t with ``dof`` >= 1 degrees of freedom (real, as Welch-Satterthwaite
    gives them), q in [0.5, 1). No scipy here: bisection on the CDF, whose density is integrated by
    Simpson's rule; error < 1e-6 for dof >= 1."""
    import math

    if not 0.5 <= q < 1.0 or not dof >= 1.0:
        raise ValueError(f"student_t_quantile needs 0.5 <= q < 1 and dof >= 1, got q={q}, dof={dof}")
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def upper_mass(x: float) -> float:   # P(0 <= T <= x), by Simpson's rule on 2000 intervals
        grid = np.linspace(0.0, x, 2001)
        density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(grid ** 2 / dof))
        weights = np.ones(2001)
        weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
        return float(density @ weights) * (x / 2000) / 3

    low, high = 0.0, 1.0
    while upper_mass(high) < q - 0.5:    # t(0.9995, 1) is about 637: doubling finds it quickly
        high *= 2.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if upper_mass(mid) < q - 0.5 else (low, mid)
    return (low + high) / 2
