"""The tiny world's grammar, renders, detector, tokenizer and prompt files (no models)."""

import numpy as np
import pytest

from spo.world.detect import adherence, name_colour, read_scene
from spo.world.grammar import COLOURS, Scene, WorldError, WorldSpec, parse_caption
from spo.world.render import draw_layout, render, render_many


def test_held_out_combinations_never_appear_in_training():
    spec = WorldSpec()
    train = {s.combination for s in spec.scenes(held_out=False)}
    held = {s.combination for s in spec.scenes(held_out=True)}
    assert held == set(spec.held_out) and not train & held
    assert len(train) + len(held) == len(spec.combinations()) == 99
    # every word still appears in training: held-out prompts test composition, not new words
    for attr in ("background", "colour", "shape"):
        train_words = {getattr(s, attr) for s in spec.scenes(held_out=False)}
        assert {getattr(s, attr) for s in spec.scenes(held_out=True)} <= train_words


def test_captions_parse_back_to_their_scene():
    spec = WorldSpec()
    for scene in spec.scenes(held_out=False) + spec.scenes(held_out=True):
        assert parse_caption(scene.caption, spec) == scene
    assert parse_caption("a photo of a cat", spec) is None
    assert parse_caption("a large pink circle on a white background", spec) is None


@pytest.mark.parametrize("block,key", [({"colours": ["red", "pink"]}, "world.colours"),
                                       ({"shapes": ["hexagon"]}, "world.shapes"),
                                       ({"image_size": 30}, "world.image_size"),
                                       ({"held_out": [["white", "white", "circle"]]}, "world.held_out"),
                                       ({"colour": ["red"]}, "world.colour")])
def test_a_world_that_cannot_render_names_the_key(block, key):
    with pytest.raises(WorldError, match=key.replace(".", r"\.")):
        WorldSpec.from_config(block)


def test_renders_are_deterministic_and_vary_within_a_caption():
    from spo.metrics.colorfulness import colorfulness_array

    scene = Scene("circle", "red", "white", "large")
    a = render_many([scene] * 16, seed=3)
    assert np.array_equal(a, render_many([scene] * 16, seed=3))
    assert not np.array_equal(a, render_many([scene] * 16, seed=4))
    colour = colorfulness_array(a)
    assert colour.std() > 0.1 * colour.mean()  # a preference has something to act on


def test_the_detector_reads_clean_renders():
    spec = WorldSpec()
    rng = np.random.default_rng(0)
    scenes = spec.scenes(held_out=False)
    picks = [scenes[i] for i in rng.integers(0, len(scenes), 400)]
    images = render_many(picks, seed=1)
    right = np.array([[adherence(im, s.caption, spec)[a] for a in ("background", "colour", "shape", "size")]
                      for im, s in zip(images, picks)])
    assert right.mean(axis=0).min() >= 0.98, right.mean(axis=0)


def test_the_detector_says_wrong_when_the_image_is_wrong():
    spec = WorldSpec()
    scene = Scene("square", "blue", "white", "large")
    image = render(scene, draw_layout(scene, np.random.default_rng(0)))
    assert adherence(image, scene.caption, spec)["all"] == 1.0
    wrong = adherence(image, "a small red triangle on a black background", spec)
    assert wrong == {"background": 0.0, "colour": 0.0, "shape": 0.0, "size": 0.0, "all": 0.0}
    blank = np.full((32, 32, 3), 240, np.uint8)  # no object at all
    seen = read_scene(blank, spec)
    assert seen["background"] == "white" and seen["shape"] is None
    assert adherence(blank, scene.caption, spec)["shape"] == 0.0


def test_colour_names_follow_hue_and_brightness():
    names = list(COLOURS)
    assert name_colour(np.array([0.9, 0.1, 0.1]), names) == "red"
    assert name_colour(np.array([0.2, 0.3, 0.9]), names) == "blue"
    assert name_colour(np.array([0.5, 0.5, 0.5]), names) == "gray"
    assert name_colour(np.array([0.02, 0.02, 0.02]), names) == "black"


def test_the_world_tokenizer_keeps_clips_ids_and_one_token_per_word():
    from spo.world.pretrain import tokenizer

    tok = tokenizer()
    caption = "a large purple triangle on a white background"
    assert tok.tokenize(caption) == [w + "</w>" for w in caption.split()]
    assert tok(caption)["input_ids"][:2] == [len(tok) - 2, 320]  # 320 = 'a</w>' in CLIP's vocabulary
    assert len(tok) < 600
    assert tok.tokenize("zebra")  # text outside the grammar still tokenizes (byte-level)


def test_committed_prompt_files_match_the_grammar(repo_root):
    from spo.world.prompts import prompt_files

    for name, text in prompt_files(WorldSpec()).items():
        path = repo_root / "data" / "prompts" / name
        assert path.read_text() == text, (f"{path} differs from the grammar: rewrite it with `python -m "
                                          f"spo world-prompts --config config/config.yaml --out data/prompts`")
