"""Scorers under the precision policy (issue 18 item 1, ``metrics.<m>.dtype``): the dtype is
checked against the device before any scorer loads, and a scorer stored in bf16 on the CPU gives
finite scores close to float32's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spo.config_spec import ConfigError

SCORERS = ("pickscore", "hpsv2", "hpsv2.1", "aesthetic", "imagereward")
# bf16 keeps 8 bits of mantissa (0.4 % relative per rounding). On the tiny random-init scorers and
# the 7 noise images of conftest, bf16 moved the scores by at most (of the largest |score|):
# pickscore 2.0 % (0.43 of 21.5), hpsv2 / hpsv2.1 0.75 %, aesthetic 0.94 %, imagereward 0.67 %.
REL_TOL = 0.04


def _no_load(*args, **kwargs):
    raise AssertionError("a scorer was loaded before the dtype check")


@pytest.fixture()
def metrics_config():
    return {"metrics": {"colorfulness": {"batch_size": 4},
                        "pickscore": {"scorer": "pickscore", "dtype": "float16", "weights": {}}}}


def test_float16_on_the_cpu_stops_before_any_scorer_loads(metrics_config, tmp_path, monkeypatch):
    """Every metric of the job is checked first: the float32 one listed before it loads nothing."""
    import spo.metrics
    from spo.score import score_shards

    monkeypatch.setattr(spo.metrics, "build_scorer", _no_load)
    monkeypatch.setattr(spo.metrics, "resolve_weights", _no_load)
    with pytest.raises(ConfigError, match=r"config key 'metrics.pickscore.dtype' is 'float16'; the device "
                                          r"'cpu' supports 'float32', 'bfloat16' \(float16 needs a CUDA "
                                          r"GPU\); set one of them"):
        score_shards(metrics_config, ["colorfulness", "pickscore"], [tmp_path / "shard"], tmp_path / "s.parquet",
                     models_root=tmp_path, device="cpu")
    assert not (tmp_path / "s.parquet").exists()


def test_bf16_on_a_gpu_without_it(metrics_config, monkeypatch):
    from spo.score import check_scorer_dtypes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    metrics_config["metrics"]["pickscore"]["dtype"] = "bfloat16"
    with pytest.raises(ConfigError, match=r"'metrics.pickscore.dtype' is 'bfloat16'; the device 'cuda:0' "
                                          r"supports 'float32', 'float16' \(this GPU has no bf16 support\)"):
        check_scorer_dtypes(metrics_config, ["colorfulness", "pickscore"], "cuda:0")
    metrics_config["metrics"]["pickscore"]["dtype"] = "float16"
    check_scorer_dtypes(metrics_config, ["colorfulness", "pickscore"], "cuda:0")  # a GPU stores float16
    metrics_config["metrics"]["pickscore"]["dtype"] = "bfloat16"
    check_scorer_dtypes(metrics_config, ["pickscore"], "cpu")


@pytest.mark.parametrize("name", SCORERS)
def test_a_bf16_scorer_on_the_cpu_is_close_to_float32(name, tiny_weights, scorers, images, prompts):
    from spo.metrics import build_scorer

    bf16 = build_scorer(name, {"batch_size": 3}, dtype="bfloat16", weights=tiny_weights[name])
    assert bf16.dtype == torch.bfloat16
    got, want = bf16(images, prompts), scorers[name](images, prompts)
    assert got.dtype == np.float64 and got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() <= REL_TOL * np.abs(want).max(), (got, want)
