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
