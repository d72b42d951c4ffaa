"""Generation shards and scoring on the tiny models."""

import hashlib

import pandas as pd
import pytest

from spo.generate import MANIFEST_COLUMNS, generate_shard, read_manifest
from spo.score import ImageDecodeError, score_shards
from spo.seeds import image_seed


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


@pytest.fixture()
def small_config(tiny_config):
    tiny_config["generation"].update(num_inference_steps=3, shard_size=3, batch_size=4)
    return tiny_config


def test_shard_manifest_and_determinism(small_config, tiny_models, repo_root, tmp_path):
    out = tmp_path / "shard-1"
    manifest = generate_shard(small_config, "tiny-sd15-base", "tiny-eval", 1, out,
                              models_root=tiny_models, root=repo_root, progress=False)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    # Shard 1 of size 3 holds prompts 3..5, each with images_per_prompt = 2 images.
    assert manifest.prompt_id.tolist() == ["eval003"] * 2 + ["eval004"] * 2 + ["eval005"] * 2
    assert manifest.image_index.tolist() == [0, 1] * 3
    assert manifest.seed.tolist() == [image_seed(0, p, i) for p, i in
                                      zip(manifest.prompt_id, manifest.image_index)]
    assert (out / "provenance.json").is_file()
    again = tmp_path / "again"
    generate_shard(small_config, "tiny-sd15-base", "tiny-eval", 1, again,
                   models_root=tiny_models, root=repo_root, progress=False)
    assert _digests(out) == _digests(again) and len(_digests(out)) == 6
    assert manifest.config_hash.nunique() == 1


def test_images_depend_on_seed_not_on_shard_layout(small_config, tiny_models, repo_root, tmp_path):
    # batch 1: each image alone, so the shard size changes nothing numerically.
    small_config["generation"].update(batch_size=1, shard_size=8)
    generate_shard(small_config, "tiny-sdxl-base", "figure2", 0, tmp_path / "a",
                   models_root=tiny_models, root=repo_root, progress=False)
    small_config["generation"]["shard_size"] = 2
    generate_shard(small_config, "tiny-sdxl-base", "figure2", 1, tmp_path / "b",
                   models_root=tiny_models, root=repo_root, progress=False)
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert set(b) == {"fig2_c3_0.png", "fig2_c4_0.png"}
    assert all(a[name] == b[name] for name in b)


def test_interrupted_generation_leaves_nothing(small_config, tiny_models, repo_root, tmp_path,
                                               monkeypatch):
    import spo.generate as gen

    def broken(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-shard")

    monkeypatch.setattr(gen, "write_parquet_atomic", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_shard(small_config, "tiny-sd15-base", "figure2", 0, tmp_path / "shard-0",
                       models_root=tiny_models, root=repo_root, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_every_image_scored_and_bad_image_refused(small_config, tiny_models, repo_root, tmp_path):
    shard = tmp_path / "shard-0"
    generate_shard(small_config, "tiny-sd15-base", "tiny-eval", 0, shard,
                   models_root=tiny_models, root=repo_root, progress=False)
    out = tmp_path / "scores.parquet"
    scores = score_shards(small_config, "colorfulness", [shard], out, models_root=tiny_models)
    assert len(scores) == len(read_manifest(shard)) == 6  # every image, not one per prompt
    assert pd.read_parquet(out).score.between(0, 300).all()
    assert set(scores.metric_version) == {"hasler2003_m3"}

    (shard / "eval001_1.png").write_bytes(b"not a png")
    out.unlink()
    with pytest.raises(ImageDecodeError) as err:
        score_shards(small_config, "colorfulness", [shard], out, models_root=tiny_models)
    assert "eval001_1.png" in str(err.value) and "delete the folder" in str(err.value)
    assert not out.exists()


def test_unfinished_shard_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished generation shard"):
        read_manifest(tmp_path)


def test_a_trained_method_needs_its_training_output_and_no_other_method_takes_one(small_config,
                                                                                   tiny_models):
    """The generate rule passes --lora only for a method with a `train` block; a missing or stray
    one is an error before anything loads, never a silently untrained (or ignored) LoRA."""
    import re

    from spo.layout import train_dir
    from spo.models.pipelines import load_method_pipeline

    with pytest.raises(ValueError, match=r"has a `train` block: pass its training output folder.*"
                                         + re.escape(f"--lora {train_dir('tiny-sd15-spo')}")):
        load_method_pipeline(small_config, "tiny-sd15-spo", models_root=tiny_models)
    with pytest.raises(ValueError, match=r"'tiny-sd15-base' has no `train` block"):
        load_method_pipeline(small_config, "tiny-sd15-base", models_root=tiny_models, lora="x")
