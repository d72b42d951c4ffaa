import numpy as np
import pandas as pd
import pytest

from spo.io import atomic_path, stable_hash, write_text_atomic
from spo.seeds import image_seed
from spo.stats import bootstrap_mean_ci, paired_bootstrap_diff_ci
from spo.tables import summarise, to_markdown


def test_image_seed_is_a_pure_function():
    assert image_seed(0, "a", 0) == image_seed(0, "a", 0)
    seeds = {image_seed(s, p, i) for s in (0, 1) for p in ("a", "b", "ab") for i in range(3)}
    assert len(seeds) == 18
    # No ambiguity between ("a", 11) and ("a1", 1).
    assert image_seed(0, "a", 11) != image_seed(0, "a1", 1)
    assert 0 <= image_seed(0, "a", 0) < 2 ** 63
    # A fixed reference value: the policy must not drift silently between versions.
    import hashlib
    expected = int.from_bytes(hashlib.sha256(b"42\x1fp7\x1f3").digest()[:8], "big") & (2 ** 63 - 1)
    assert image_seed(42, "p7", 3) == expected


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left behind


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "shard", is_dir=True) as tmp:
            (tmp / "a.png").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    values = rng.normal(10.0, 2.0, size=400)
    low, high = bootstrap_mean_ci(values, samples=2000, confidence=0.95, seed=1)
    # Against the normal approximation of the standard error: 1.96 * 2 / sqrt(400) = 0.196.
    assert low < values.mean() < high
    assert abs((high - low) / 2 - 1.96 * values.std() / 20) < 0.03
    assert bootstrap_mean_ci(values, seed=1) == bootstrap_mean_ci(values, seed=1)
    assert bootstrap_mean_ci(np.full(5, 3.0)) == (3.0, 3.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean_ci(np.array([]))
    diff, lo, hi = paired_bootstrap_diff_ci(values + 1.0, values)
    assert diff == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_summary_resamples_prompts_not_images():
    # Two prompts, 3 images each: n_prompts 2, mean over all 6 images.
    scores = pd.DataFrame({
        "prompt_set": "s", "method": "m", "metric": "c", "metric_version": "v1",
        "prompt_id": ["a"] * 3 + ["b"] * 3, "image_index": [0, 1, 2] * 2,
        "score": [1.0, 2.0, 3.0, 5.0, 5.0, 5.0]})
    row = summarise(scores, samples=500, confidence=0.9, seed=0).iloc[0]
    assert (row.n_images, row.n_prompts) == (6, 2)
    assert row["mean"] == pytest.approx(3.5)
    assert row["std"] == pytest.approx(np.std([1, 2, 3, 5, 5, 5], ddof=1))
    # Per-prompt means are 2 and 5: every resample's mean lies in [2, 5].
    assert 2.0 <= row.ci_low <= row.ci_high <= 5.0
    md = to_markdown(summarise(scores, samples=100, confidence=0.95, seed=0), "T")
    assert "| m | 6 | 3.5 [" in md and "c (v1)" in md


def test_student_t_quantiles_match_the_tables():
    from spo.stats import student_t_quantile

    # Printed tables (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2), two-sided 95 % and 90 %.
    for q, dof, want in [(0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 5, 2.571),
                         (0.975, 30, 2.042), (0.95, 3, 2.353), (0.995, 10, 3.169)]:
        assert student_t_quantile(q, dof) == pytest.approx(want, abs=1e-3)
    assert 2.571 < student_t_quantile(0.975, 4.5) < 2.776   # between dof 5 and 4
    with pytest.raises(ValueError, match="dof"):
        student_t_quantile(0.975, 0.5)


def test_replicated_ci_by_hand():
    from spo.stats import replicated_mean_ci

    # 3 runs x 4 prompts. Run means 1, 2, 3: a = var / R = 1 / 3; prompt means 1.5, 2.5, 1.5, 2.5:
    # b = (1 / 3) / 4 = 1 / 12. se^2 = 5 / 12; Welch-Satterthwaite dof = (5/12)^2 / ((1/3)^2 / 2 +
    # (1/12)^2 / 3) = 3 exactly; t(0.975, 3) = 3.182446.
    values = np.array([[0.5, 1.5, 0.5, 1.5], [1.5, 2.5, 1.5, 2.5], [2.5, 3.5, 2.5, 3.5]])
    mean, low, high = replicated_mean_ci(values)
    half = 3.182446 * np.sqrt(5 / 12)
    assert mean == pytest.approx(2.0)
    assert (low, high) == (pytest.approx(2.0 - half, abs=1e-5), pytest.approx(2.0 + half, abs=1e-5))
    # Runs that agree: only the prompts' spread is left (a = 0, dof = P - 1 = 3).
    same = np.tile(values[1], (3, 1))
    assert replicated_mean_ci(same)[2] - 2.0 == pytest.approx(3.182446 * np.sqrt((1 / 3) / 4), abs=1e-5)
    # Runs that differ by a constant on every prompt: only the runs' spread (dof = R - 1 = 2).
    shifted = np.array([[1.0] * 4, [2.0] * 4, [3.0] * 4])
    assert replicated_mean_ci(shifted)[2] - 2.0 == pytest.approx(4.302653 * np.sqrt(1 / 3), abs=1e-5)
    assert replicated_mean_ci(np.ones((3, 4))) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="runs >= 2"):
        replicated_mean_ci(values[:1])


def test_a_consistent_drift_over_runs_is_not_hidden_by_pooling():
    """Three runs that each move by about +1 stay significant pooled; three runs that move in
    different directions (one of them significantly on its own prompts) do not."""
    from spo.tables import replicate_rows

    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(24)]
    base = rng.normal(50, 10, size=24)

    def frame(shifts):
        rows = [{"prompt_set": "s", "method": "base", "metric": "c", "metric_version": "v",
                 "prompt_id": p, "score": b} for p, b in zip(prompts, base)]
        for r, shift in enumerate(shifts):
            noise = rng.normal(0, 0.3, size=24)
            rows += [{"prompt_set": "s", "method": f"run{r}", "metric": "c", "metric_version": "v",
                      "prompt_id": p, "score": b + shift + e} for p, b, e in zip(prompts, base, noise)]
        return pd.DataFrame(rows)

    baselines = {f"run{r}": "base" for r in range(3)}
    replicates = {"pooled": ["run0", "run1", "run2"]}
    drift = replicate_rows(frame([1.0, 1.1, 0.9]), replicates, baselines, confidence=0.95).iloc[0]
    assert drift.delta_ci_low > 0 and drift.runs == 3 and drift.n_paired_prompts == 24
    assert drift.n_images == 72 and drift.baseline == "base"
    scatter = replicate_rows(frame([0.9, -0.6, 0.1]), replicates, baselines, confidence=0.95).iloc[0]
    assert scatter.delta_ci_low < 0 < scatter.delta_ci_high
    assert scatter.delta == pytest.approx(scatter["mean"] - base.mean(), abs=1e-9)

