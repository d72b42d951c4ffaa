"""train-spm on the tiny world: resume gives the uninterrupted weights; NaN and bad settings stop
with a message; tiny pairs carry latents; the latent cache joins by pair_id."""

from __future__ import annotations

import pandas as pd
import pytest
import torch


def _train(config, world, tmp, name, **kw):
    from spo.spm.stage import train_spm

    _, models_root, root = world
    return train_spm(config, "tiny-sd15-spm", pairs=root / "pairs/train", val_pairs=root / "pairs/validation",
                     out_dir=tmp / name / "model", validation_csv=tmp / name / "val.csv",
                     checkpoints=tmp / name / "ckpt", models_root=models_root, device="cpu", **kw)


def test_tiny_pairs_schema(spm_world):
    from spo.spm.data import read_pairs

    train = read_pairs([spm_world[2] / "pairs/train"])
    val = read_pairs([spm_world[2] / "pairs/validation"])
    assert len(train) == 8 * 3 and len(val) == 3 * 3  # 3 pairs from 3 images per prompt
    assert set(train["examples_per_prompt"]) == {3} and set(train["label"]) <= {0.0, 0.5, 1.0}
    assert list(train["latent_shape"].iloc[0]) == [4, 4, 4]
    from spo.spm.stream import PairStream

    stream = PairStream(spm_world[2] / "pairs/train")  # tiny pairs carry their own latents
    assert len(stream) == 24 and stream.latent_shape == (4, 4, 4)


def test_killed_run_resumes_to_the_uninterrupted_weights(spm_world, spm_config, tmp_path):
    full = _train(spm_config, spm_world, tmp_path, "full")
    table = pd.read_csv(tmp_path / "full/val.csv")
    assert set(table["stage"]) == {"init", "final"} and sorted(set(table["t"])) == [0, 501]
    assert table["ceiling"].notna().all()
    # "Killed" after 3 steps: the newest checkpoint is step 2, no outputs exist.
    part = _train(spm_config, spm_world, tmp_path, "cut", stop_after=3)
    assert part["step"] == 3 and not (tmp_path / "cut/model").exists()
    again = _train(spm_config, spm_world, tmp_path, "cut")
    assert again["resumed_from"] == 2 and full["resumed_from"] is None
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full/model/model.safetensors"))
    b = load_file(str(tmp_path / "cut/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(str(tmp_path / "full/model/model.safetensors"))
    assert any("adaLN" in k for k in init)


def test_nan_loss_stops_with_a_checkpoint(spm_world, spm_config, tmp_path, monkeypatch):
    import spo.spm.train as train_mod

    monkeypatch.setattr(train_mod, "pair_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(train_mod.SPMTrainingError, match=r"loss is nan at step 0.*spm.runs.tiny-sd15-spm.lr"):
        _train(spm_config, spm_world, tmp_path, "nan")
    assert (tmp_path / "nan/ckpt/step-00000000/state.pt").exists()


@pytest.mark.parametrize("key, value, match", [
    ("lr", -1.0, "spm.runs.tiny-sd15-spm.lr"),
    ("lr", float("nan"), "spm.runs.tiny-sd15-spm.lr"),
    ("steps", 0, "spm.runs.tiny-sd15-spm.steps"),
])
def test_bad_settings_name_the_key(key, value, match):
    from spo.config import ConfigError
    from spo.spm.train import check_run_spec

    spec = {"lr": 1e-4, "steps": 5, "batch_size": 2, key: value}
    with pytest.raises(ConfigError, match=match):
        check_run_spec("tiny-sd15-spm", spec)


@pytest.mark.parametrize("key, value, match", [
    ("data", "nope", r"'spm.runs.tiny-sd15-spm.data' is 'nope'; it must be a key of 'spm.datasets'"),
    ("model", "nope", r"'spm.runs.tiny-sd15-spm.model' is 'nope'; it must be a key of 'models'"),
    ("lr", 1.0, r"'spm.runs.tiny-sd15-spm.lr' is 1.0; it must be a number in \(0, 1\) \(the peak learning rate"),
])
def test_spm_settings_the_schema_cannot_express_fail_at_load(spm_config, key, value, match):
    """What the SPM stages check before loading a model, the config check at load checks too
    (`snakemake -n` stops on it; until issue 19 these stopped only the SPM job)."""
    from spo.config import ConfigError, validate_config

    spm_config["spm"]["runs"]["tiny-sd15-spm"][key] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(spm_config)


def test_schema_rejects_bad_learning_rate(spm_config):
    from spo.config import ConfigError, validate_config

    spm_config["spm"]["runs"]["tiny-sd15-spm"]["lr"] = 0
    with pytest.raises(ConfigError, match="spm.runs.tiny-sd15-spm.lr"):
        validate_config(spm_config)


def test_latent_cache_is_memory_mapped_and_checked(spm_world, spm_config, tmp_path):
    """spm-latents writes <stem>.latents.npy + <stem>.pair_id.parquet; the stream maps it, the
    in-memory join (Diffusion-DPO's reader) reads it, the former Parquet cache still reads, and a
    cache out of step with the pairs fails naming the pair."""
    import numpy as np

    from spo.spm.data import PairsError, attach_latents, latents_to_bytes, pair_files, read_pairs
    from spo.spm.stage import cache_latents
    from spo.spm.stream import NpyLatents, PairStream

    _, models_root, root = spm_world
    cache_latents(spm_config, root / "pairs/validation", "tiny-sd15", tmp_path / "lat", models_root=models_root,
                  batch=4)
    assert sorted(f.name for f in (tmp_path / "lat").iterdir()) == ["part-0000.latents.npy",
                                                                    "part-0000.pair_id.parquet"]
    stream = PairStream(root / "pairs/validation", tmp_path / "lat")
    assert isinstance(stream.store, NpyLatents) and stream.latent_shape == (4, 4, 4)
    idx = torch.tensor([5, 0, 7])
    full = np.load(tmp_path / "lat/part-0000.latents.npy")
    assert torch.equal(stream.latents(idx), torch.from_numpy(full[[5, 0, 7]]))
    pairs = read_pairs([root / "pairs/validation"]).drop(columns=["latent_0", "latent_1", "latent_shape"])
    joined = attach_latents(pairs, [tmp_path / "lat"])
    assert joined["latent_0"].notna().all() and len(joined) == len(pairs)
    assert attach_latents(pairs, [tmp_path / "lat/part-0000.parquet"])["latent_1"].tolist() == joined["latent_1"].tolist()
    with pytest.raises(Exception, match="lacks 1 pairs"):
        extra = pd.concat([pairs, pairs.iloc[:1].assign(pair_id="new")], ignore_index=True)
        attach_latents(extra, [tmp_path / "lat"])
    # The former format: one Parquet per pairs file with latent_0/latent_1 columns.
    old = tmp_path / "old"
    old.mkdir()
    b0, shape = latents_to_bytes(torch.from_numpy(full[:, 0]))
    b1, _ = latents_to_bytes(torch.from_numpy(full[:, 1]))
    pd.DataFrame({"pair_id": pairs["pair_id"], "latent_0": b0, "latent_1": b1,
                  "latent_shape": [shape] * len(b0)}).to_parquet(old / pair_files([root / "pairs/validation"])[0].name)
    assert torch.equal(PairStream(root / "pairs/validation", old).latents(idx), stream.latents(idx))
    ids = pd.read_parquet(tmp_path / "lat/part-0000.pair_id.parquet")
    ids.iloc[::-1].to_parquet(tmp_path / "lat/part-0000.pair_id.parquet")
    with pytest.raises(PairsError, match="out of step with the pairs"):
        PairStream(root / "pairs/validation", tmp_path / "lat")
