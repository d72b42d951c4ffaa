"""Pairs schema: bad input names the row; Pick-a-Pic mapping; tiny labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spo.spm.data import PairsError, encode_png, validate_pairs


def _frame(n=3, **over):
    png = encode_png(torch.rand(3, 8, 8))
    data = {"pair_id": [f"p{i}" for i in range(n)], "prompt_id": ["a"] * n, "prompt": ["cat"] * n,
            "image_0": [png] * n, "image_1": [png] * n, "label": [1.0, 0.5, 0.0][:n],
            "examples_per_prompt": [n] * n}
    data.update(over)
    return pd.DataFrame(data)


def test_valid_frame_passes():
    assert len(validate_pairs(_frame(), "f.parquet")) == 3


@pytest.mark.parametrize("over, match", [
    ({"label": [1.0, 0.7, 0.0]}, r"row 1 \(pair_id 'p1'\): label 0.7"),
    ({"examples_per_prompt": [3, 0, 3]}, r"row 1 .*examples_per_prompt 0"),
    ({"image_1": [b"", b"x", b"x"]}, r"row 0 .*image_1: the image is missing"),
    ({"image_0": [encode_png(torch.rand(3, 4, 4)), b"not a png", b"x"]}, r"row 1 .*image_0: the image cannot be decoded"),
])
def test_bad_rows_are_named(over, match):
    with pytest.raises(PairsError, match=match):
        validate_pairs(_frame(**over), "f.parquet")


def test_missing_column_is_named():
    with pytest.raises(PairsError, match=r"lacks the columns \['label'\]"):
        validate_pairs(_frame().drop(columns="label"), "f.parquet")


def test_pickapic_mapping(tmp_path):
    from spo.spm.pickapic import to_pairs

    png = encode_png(torch.rand(3, 8, 8))
    src = pd.DataFrame({"caption": ["a", "a", "b"], "jpg_0": [png] * 3, "jpg_1": [png] * 3,
                        "label_0": [1.0, 0.5, 0.0], "label_1": [0.0, 0.5, 1.0],
                        "num_example_per_prompt": [2, 2, 1], "has_label": [True, True, False]})
    out = to_pairs(src, "train", str(tmp_path / "train-00000.parquet"))
    assert out["label"].tolist() == [1.0, 0.5] and out["examples_per_prompt"].tolist() == [2, 2]
    assert out["pair_id"].tolist() == ["train-train-00000-0", "train-train-00000-1"]


def test_tiny_labels_ties_and_noise():
    from spo.spm.tiny_pairs import colorfulness_labels, flip_labels

    labels = colorfulness_labels(np.array([10.0, 10.0, 9.0]), np.array([9.0, 10.1, 10.0]), 0.02)
    assert labels.tolist() == [1.0, 0.5, 0.0]
    many = np.tile([1.0, 0.0, 0.5], 2000)
    flipped = flip_labels(many, 0.1, seed=0)
    assert (flipped[2::3] == 0.5).all()  # ties stay ties
    rate = (flipped != many).sum() / 4000
    assert 0.08 < rate < 0.12
    with pytest.raises(ValueError, match="label_noise"):
        flip_labels(many, 1.5, seed=0)
