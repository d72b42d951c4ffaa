import numpy as np
import pytest
from PIL import Image

from spo.metrics import build_scorer, registered_scorers
from spo.metrics.colorfulness import colorfulness_array


def test_hand_computed_value():
    # One red and one blue pixel. rg = [255, 0], yb = [127.5, -255].
    # std: rg 127.5, yb 191.25 -> sqrt(127.5^2 + 191.25^2) = 229.8539...
    # mean: rg 127.5, yb -63.75 -> sqrt(127.5^2 + 63.75^2) = 142.5493...
    # M = 229.8539 + 0.3 * 142.5493 = 272.6187
    image = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    assert float(colorfulness_array(image)) == pytest.approx(272.6187, abs=1e-3)


def test_grey_images_have_zero_colourfulness():
    grey = np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (10, 10, 10)], axis=-1)
    assert float(colorfulness_array(grey)) == 0.0


def test_scorer_converts_modes_and_orders_images():
    scorer = build_scorer("colorfulness")
    vivid = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8))
    grey = Image.new("L", (2, 1), 128)  # a single-channel image is converted to RGB
    rgba = vivid.convert("RGBA")
    scores = scorer([vivid, grey, rgba], ["", "", ""])
    assert scores.shape == (3,) and scores.dtype == np.float64
    assert scores[0] > scores[1] == 0.0 and scores[2] == pytest.approx(scores[0])
    assert scorer.version == "hasler2003_m3" and scorer.higher_is_better


def test_registry_names_the_choices():
    assert "colorfulness" in registered_scorers()
    with pytest.raises(KeyError, match="available: .*colorfulness"):
        build_scorer("colourfulness")


def test_shape_errors():
    with pytest.raises(ValueError, match="expected"):
        colorfulness_array(np.zeros((4, 4)))
