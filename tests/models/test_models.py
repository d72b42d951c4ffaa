"""Tiny models in the real formats, and the one loader that reads them and the real ones."""

import numpy as np
import pytest
import torch

from spo.models.pipelines import load_method_pipeline
from spo.models.sources import SourceError, fetch_file, from_pretrained
from spo.models.tiny import tiny_tokenizer


def test_full_bpe_tokenizer_matches_real_clip_ids():
    # Reference ids of SD's CLIP tokenizer (also open_clip's), recorded in ../shared/STACK.md §2.
    tok = tiny_tokenizer(n_merges=None)
    ids = tok("a photo of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(tok) == 49408


def test_tiny_tokenizer_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "a watercolor of a golden castle at dawn"
    assert again(text).input_ids == tok(text).input_ids
    assert tiny_tokenizer(pad_token="!").pad_token_id == 0  # as real SDXL's tokenizer_2


def _images(pipe, prompts, seed=0, steps=4):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(prompt=prompts, generator=generators, num_inference_steps=steps,
                guidance_scale=5.0, height=32, width=32, output_type="np").images


@pytest.mark.parametrize("method, family", [("tiny-sd15-base", "sd15"), ("tiny-sdxl-base", "sdxl")])
def test_loader_reads_tiny_models_like_real_ones(tiny_config, tiny_models, method, family):
    from diffusers import DDIMScheduler

    pipe = load_method_pipeline(tiny_config, method, models_root=tiny_models)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    if family == "sdxl":
        assert pipe.text_encoder_2 is not None and pipe.unet.config.addition_embed_type == "text_time"
    images = _images(pipe, ["a red car", "a blue bird"])
    assert images.shape == (2, 32, 32, 3)
    # Not a constant image: a working decoder on a random VAE still gives structure and colour.
    assert images.std() > 0.05


def test_unet_replacement_and_missing_sources(tiny_config, tiny_models, tmp_path):
    from spo.models.tiny import tiny_sd15_pipeline

    other = tiny_sd15_pipeline(seed=99)
    other.unet.save_pretrained(tmp_path / "other" / "unet")
    tiny_config["methods"]["swapped"] = {"model": "tiny-sd15",
                                         "unet": {"path": str(tmp_path / "other"), "subfolder": "unet"}}
    base = load_method_pipeline(tiny_config, "tiny-sd15-base", models_root=tiny_models)
    swapped = load_method_pipeline(tiny_config, "swapped", models_root=tiny_models)
    for name, param in other.unet.state_dict().items():
        assert torch.equal(swapped.unet.state_dict()[name], param)
    assert not np.allclose(_images(base, ["a cat"]), _images(swapped, ["a cat"]))

    with pytest.raises(SourceError, match="does not exist"):
        from_pretrained(lambda *a, **k: None, {"path": str(tmp_path / "missing")})
    with pytest.raises(SourceError, match="`snakemake --cores 1 "):
        from_pretrained(lambda *a, **k: None, {"tiny": {"seed": 0}}, tiny_dir=tmp_path / "nope")


def test_hub_model_offline_names_id_revision_and_fix(monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {"id": "spo-repro-tests/not-a-model", "revision": "0" * 40}
    with pytest.raises(SourceError) as err:
        from_pretrained(StableDiffusionPipeline.from_pretrained, spec)
    msg = str(err.value)
    assert "spo-repro-tests/not-a-model" in msg and "0" * 40 in msg
    assert "`hf download spo-repro-tests/not-a-model --revision" in msg  # huggingface_hub's CLI
    assert "path:" in msg


def test_checkpoint_sha256_is_verified(tmp_path):
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    good = "6f2f4f4bd4a6c8b3f4e8c1f09b1e4a0a8d2f7bc1d2a1bf3c4d6f7e8a9b0c1d2e"
    with pytest.raises(SourceError) as err:
        fetch_file({"path": str(ckpt), "sha256": good})
    assert str(ckpt) in str(err.value) and good in str(err.value) and "found" in str(err.value)
    import hashlib
    real = hashlib.sha256(b"weights").hexdigest()
    assert fetch_file({"path": str(ckpt), "sha256": real}) == ckpt
