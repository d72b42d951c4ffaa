"""Bad input: missing roles, untrusted pickles, mismatched keys, swapped versions, sha256, batching."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spo.metrics import ScorerError, build_scorer, registered_scorers, resolve_weights


class _Evil:
    """Unpickling this would create a directory: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _copy_roles(weights, tmp_path):
    out = {}
    for role, path in weights.items():
        dst = tmp_path / role / Path(path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if Path(path).is_dir() else shutil.copy)(path, dst)
        out[role] = str(dst)
    return out


def test_all_paper_metrics_are_registered():
    assert {"pickscore", "hpsv2", "hpsv2.1", "aesthetic", "imagereward"} <= set(registered_scorers())


@pytest.mark.parametrize("name,role", [("pickscore", "processor"), ("hpsv2", "checkpoint"),
                                       ("aesthetic", "mlp"), ("imagereward", "tokenizer")])
def test_missing_role_names_role_and_config_key(tiny_weights, name, role):
    weights = {k: v for k, v in tiny_weights[name].items() if k != role}
    with pytest.raises(ScorerError, match=rf"'{role}'.*metrics\.<name>\.weights\.{role}"):
        build_scorer(name, {}, weights=weights)


def test_unknown_role_is_refused(tiny_weights):
    with pytest.raises(ScorerError, match="does not know the weights roles"):
        build_scorer("aesthetic", {}, weights={**tiny_weights["aesthetic"], "extra": "."})


def test_pickle_carrying_code_is_refused(tiny_weights, tmp_path):
    weights = _copy_roles(tiny_weights["aesthetic"], tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"layers.0.weight": _Evil(str(marker))}, weights["mlp"])
    with pytest.raises(ScorerError, match="refused to load checkpoint"):
        build_scorer("aesthetic", {}, weights=weights)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tiny_weights, tmp_path):
    weights = _copy_roles(tiny_weights["hpsv2.1"], tmp_path)
    data = Path(weights["checkpoint"]).read_bytes()
    Path(weights["checkpoint"]).write_bytes(data[: len(data) // 2])
    with pytest.raises(ScorerError, match="refused to load checkpoint"):
        build_scorer("hpsv2.1", {}, weights=weights)


@pytest.mark.parametrize("name,role,drop,add", [
    ("hpsv2", "checkpoint", "visual.ln_post.bias", "visual.head.weight"),
    ("aesthetic", "mlp", "layers.7.bias", "layers.8.weight"),
    ("imagereward", "checkpoint", "blip.visual_encoder.blocks.1.attn.qkv.weight",
     "blip.itm_head.weight"),
])
def test_key_mismatch_names_missing_and_unexpected(tiny_weights, tmp_path, name, role, drop, add):
    weights = _copy_roles(tiny_weights[name], tmp_path)
    obj = torch.load(weights[role], weights_only=True)
    state = obj.get("state_dict", obj)
    del state[drop]
    state[add] = torch.zeros(2)
    torch.save(obj, weights[role])
    with pytest.raises(ScorerError) as err:
        build_scorer(name, {}, weights=weights)
    assert "missing 1" in str(err.value) and drop in str(err.value)
    assert "unexpected 1" in str(err.value) and add in str(err.value)


def test_wrong_shape_is_named(tiny_weights, tmp_path):
    weights = _copy_roles(tiny_weights["aesthetic"], tmp_path)
    state = torch.load(weights["mlp"], weights_only=True)
    state["layers.6.weight"] = torch.zeros(16, 65)
    torch.save(state, weights["mlp"])
    with pytest.raises(ScorerError, match=r"layers\.6\.weight: \(16, 65\) != \(16, 64\)"):
        build_scorer("aesthetic", {}, weights=weights)


def test_hps_version_swap_is_refused(tiny_weights):
    # hpsv2 (v2.0) handed the v2.1 file: same keys, so only the name can tell.
    with pytest.raises(ScorerError, match="hpsv2.1 checkpoint"):
        build_scorer("hpsv2", {}, weights=tiny_weights["hpsv2.1"])


def test_sha256_mismatch_names_file_expected_and_found(tiny_weights):
    from spo.models.sources import SourceError

    mlp = Path(tiny_weights["aesthetic"]["mlp"])
    spec = {"weights": {"mlp": {"path": str(mlp.parent), "file": mlp.name, "sha256": "0" * 64}}}
    with pytest.raises(SourceError, match=rf"{re.escape(mlp.name)}.*expected sha256 0{{64}}, found [0-9a-f]{{64}}"):
        resolve_weights(spec)


def test_tiny_sources_resolve_to_the_written_weights(tiny_weights):
    """The config's tiny sources (plus `file:` for file roles) find what save_tiny_weights wrote."""
    from spo.metrics.tiny import TINY_LAYOUT

    for name, layout in TINY_LAYOUT.items():
        root = Path(tiny_weights[name][next(iter(layout))]).parents[0 if layout[next(iter(layout))] is None else 1]
        spec = {"weights": {role: {"tiny": {"seed": 0}, **({"file": f} if f else {})}
                            for role, f in layout.items()}}
        assert resolve_weights(spec, tiny_root=str(root)) == tiny_weights[name]


def test_batching_and_order_do_not_change_scores(scorers, tiny_weights, images, prompts):
    for name in ("pickscore", "hpsv2", "imagereward"):
        one = build_scorer(name, {"batch_size": 1}, weights=tiny_weights[name])(images, prompts)
        np.testing.assert_allclose(scorers[name](images, prompts), one, rtol=0, atol=1e-4)
        rev = scorers[name](images[::-1], prompts[::-1])[::-1]
        np.testing.assert_allclose(rev, one, rtol=0, atol=1e-4)


def test_bad_calls(scorers, images, prompts):
    with pytest.raises(ScorerError, match="7 images but 1 prompts"):
        scorers["pickscore"](images, prompts[:1])
    with pytest.raises(ScorerError, match="not a PIL image"):
        scorers["hpsv2"]([np.zeros((4, 4, 3))], ["x"])
    assert scorers["imagereward"]([], []).shape == (0,)


def test_half_precision_runs_close_to_float32(tiny_weights, images, prompts, scorers):
    s = build_scorer("hpsv2.1", {}, dtype="bfloat16", weights=tiny_weights["hpsv2.1"])
    got = s(images, prompts)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, scorers["hpsv2.1"](images, prompts), atol=3.0)


def test_tiny_weights_are_seeded(tmp_path):
    from spo.metrics.tiny import save_tiny_weights

    a = save_tiny_weights("aesthetic", tmp_path / "a", seed=3)["mlp"]
    b = save_tiny_weights("aesthetic", tmp_path / "b", seed=3)["mlp"]
    c = save_tiny_weights("aesthetic", tmp_path / "c", seed=4)["mlp"]
    sa, sb, sc = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.0.weight"], sc["layers.0.weight"])
