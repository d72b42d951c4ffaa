"""The tiny world's pretraining end to end (shortened), its resume, its manifest and the shipped files."""

import json
import shutil

import pytest
import torch

from spo.world.manifest import ShippedWorldError, read_manifest, verify

SHORT = {"pretrain": {"vae_images": 128, "unet_images": 128, "checkpoint_every": 2,
                      "vae": {"steps": 3, "batch": 8}, "clip": {"steps": 3, "batch": 16},
                      "pickscore": {"steps": 3, "batch": 8}, "unet": {"steps": 3, "batch": 8}}}


def _typed(block):
    """The world block as ``run_part`` gets it: (grammar, pretraining recipe), typed."""
    from spo.world.settings import pretrain_settings, world_spec

    return world_spec({"world": block}), pretrain_settings({"world": block})


@pytest.fixture(scope="module")
def short_world(tmp_path_factory):
    """Every part of a shortened pretraining, then the release, through ``run_part``."""
    from spo.world.pretrain import run_part

    root = tmp_path_factory.mktemp("world")
    for part in ("vae", "clip-a", "clip-b", "pickscore", "sd15", "sdxl"):
        run_part(part, *_typed(SHORT), root / "parts", root / "parts" / part, checkpoints=root / "ckpt" / part)
    run_part("release", *_typed(SHORT), root / "parts", root / "release", checkpoints=None)
    return root


def test_the_release_loads_in_stock_diffusers_pipelines(short_world):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    release = short_world / "release"
    for cls, family in ((StableDiffusionPipeline, "sd15"), (StableDiffusionXLPipeline, "sdxl")):
        pipe = cls.from_pretrained(str(release / family), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a large red circle on a white background", num_inference_steps=2, height=32,
                     width=32, output_type="np", generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, 32, 32, 3)
        assert pipe.vae.config.scaling_factor != 1.0  # calibrated to unit-std latents
        assert pipe.tokenizer.model_max_length == 16
    sdxl = StableDiffusionXLPipeline.from_pretrained(str(release / "sdxl"), local_files_only=True)
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.tokenizer_2.pad_token == "!"


def test_the_tiny_pickscore_loads_as_the_pickscore_metric(short_world):
    from PIL import Image

    from spo.metrics import build_scorer

    root = short_world / "release" / "pickscore"
    scorer = build_scorer("pickscore", {}, weights={"model": str(root / "model"),
                                                    "processor": str(root / "processor")})
    scores = scorer([Image.new("RGB", (32, 32), (200, 30, 30))] * 2,
                    ["a large red circle on a white background"] * 2)
    assert scores.shape == (2,) and scores[0] == scores[1]


def test_the_manifest_hashes_every_shipped_file(short_world):
    release = short_world / "release"
    manifest = read_manifest(release)
    assert manifest["command"] == "snakemake --cores 2 pretrain_tiny"
    assert manifest["config"]["pretrain"]["vae"]["steps"] == 3 and manifest["seed"] == 0
    assert set(manifest["parts"]) == {"vae", "clip-a", "clip-b", "pickscore", "sd15", "sdxl"}
    assert manifest["parts"]["sd15"]["command"].startswith("python -m spo")  # argv of the part
    assert manifest["environment"]["lock_sha256"]
    assert {n.split("/")[0] for n in manifest["files"]} == {"sd15", "sdxl", "pickscore", "sdxl-half-way"}
    # the VAE and CLIP-a's text tower are one set of weights in both pipelines: stored once
    assert manifest["links"] == {"sdxl/text_encoder": "../sd15/text_encoder", "sdxl/vae": "../sd15/vae"}
    assert not any(name.startswith(("sdxl/vae/", "sdxl/text_encoder/")) for name in manifest["files"])
    assert verify(release) == []
    report = json.loads((short_world / "reproduction.json").read_text())
    assert "compared" in report


def test_a_changed_or_missing_file_is_named_with_its_hash_and_the_rebuild_command(short_world, tmp_path):
    from spo.models.sources import SourceError, local_root

    world = tmp_path / "tiny-world"
    shutil.copytree(short_world / "release", world, symlinks=True)
    unet = world / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    expected = read_manifest(world)["files"]["sd15/unet/diffusion_pytorch_model.safetensors"]["sha256"]
    unet.write_bytes(unet.read_bytes()[:-8] + b"\0" * 8)
    problems = verify(world)
    assert len(problems) == 1 and str(unet) in problems[0] and expected in problems[0]
    with pytest.raises(SourceError, match="pretrain_tiny") as info:
        local_root({"path": str(world / "sd15")}, None)
    assert expected in str(info.value) and str(unet) in str(info.value)
    local_root({"path": str(world / "sdxl")}, None)  # the other model is intact
    dereferenced = tmp_path / "copied-without-links"
    shutil.copytree(short_world / "release", dereferenced)  # follows the links: real folders
    assert not (dereferenced / "sdxl" / "vae").is_symlink() and verify(dereferenced) == []
    shutil.rmtree(world / "pickscore")
    problems = verify(world, only="pickscore")
    assert problems and all("is missing" in p for p in problems)
    with pytest.raises(ShippedWorldError, match="git checkout -- data/tiny-world"):
        read_manifest(tmp_path)


def test_pretraining_is_deterministic_and_resumes_exactly(tmp_path, monkeypatch):
    """Two runs of a part are identical; a run killed after a checkpoint, rerun, equals both."""
    from spo.io import sha256_file
    from spo.world.pretrain import run_part

    block = {"pretrain": {**SHORT["pretrain"], "clip": {"steps": 4, "batch": 16}}}
    a, b, c = (tmp_path / x for x in "abc")
    run_part("clip-a", *_typed(block), a, a / "clip-a", checkpoints=a / "ckpt")
    run_part("clip-a", *_typed(block), b, b / "clip-a", checkpoints=b / "ckpt")
    # c: stopped at step 3 (after the step-2 checkpoint), then rerun
    import spo.world.steps as steps

    real = steps.run_steps

    def interrupted(*args, **kwargs):
        inner = kwargs["loss_at"]

        def loss_at(step):
            if step == 3:
                raise KeyboardInterrupt
            return inner(step)
        return real(*args, **{**kwargs, "loss_at": loss_at})

    import spo.world.pretrain as pretrain

    with monkeypatch.context() as patch:
        patch.setattr(pretrain, "run_steps", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_part("clip-a", *_typed(block), c, c / "clip-a", checkpoints=c / "ckpt")
    assert not (c / "clip-a").exists()  # nothing half-written
    run_part("clip-a", *_typed(block), c, c / "clip-a", checkpoints=c / "ckpt")
    hashes = {sha256_file(x / "clip-a" / "model.safetensors") for x in (a, b, c)}
    assert len(hashes) == 1


def test_a_non_finite_loss_stops_before_the_step(tmp_path):
    from spo.world.steps import PretrainError, run_steps

    model = torch.nn.Linear(2, 1)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PretrainError, match="world.pretrain.unet.lr"):
        run_steps("sd15", model, opt, steps=3, lr=lambda s: 0.1, part_key="unet",
                  loss_at=lambda s: model(torch.ones(1, 2)).sum() * float("nan"),
                  checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    assert torch.equal(model.weight, before)


def test_the_shipped_world_matches_its_manifest(repo_root):
    world = repo_root / "data" / "tiny-world"
    assert verify(world) == [], "data/tiny-world differs from its manifest"
    manifest = read_manifest(world)
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    assert total <= 40 * 2**20, f"the shipped world is {total / 2**20:.1f} MiB, over the 40 MB budget"
    assert all(name.endswith((".json", ".safetensors", ".txt")) for name in manifest["files"])


def test_release_tokenizers_do_not_depend_on_their_history(short_world, tmp_path):
    """A tokenizer saved after a call records that call's padding; the release writes every
    tokenizer fresh, so a part that trained here and one resumed from its checkpoint ship the same
    files, and the ids of every call the project makes are those of the tokenizer before."""
    from transformers import CLIPTokenizer

    from spo.world.pretrain import tokenizer
    from spo.world.grammar import WorldSpec
    from spo.world.release import TOKENIZER_FOLDERS, write_fresh_tokenizers

    release = short_world / "release"
    used = tokenizer()
    captions = [s.caption for s in WorldSpec().scenes(held_out=False)]
    used(captions[:3], padding=True, return_tensors="pt")
    used.save_pretrained(str(tmp_path / "used"))
    assert json.loads((tmp_path / "used" / "tokenizer.json").read_text())["padding"] is not None
    for folder in TOKENIZER_FOLDERS:   # a release whose tokenizers carry a call's state
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tmp_path / "used" / name, release / folder / name)
    copy = tmp_path / "again"
    shutil.copytree(release, copy, symlinks=True)
    write_fresh_tokenizers(release)
    write_fresh_tokenizers(copy)
    for folder in TOKENIZER_FOLDERS:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            assert (release / folder / name).read_bytes() == (copy / folder / name).read_bytes()
        assert json.loads((release / folder / "tokenizer.json").read_text())["padding"] is None
    fresh = CLIPTokenizer.from_pretrained(str(release / "sd15" / "tokenizer"))
    before = CLIPTokenizer.from_pretrained(str(tmp_path / "used"))
    for kwargs in ({"padding": "max_length", "max_length": fresh.model_max_length, "truncation": True},
                   {"padding": True}, {}):
        assert fresh(captions, **kwargs).input_ids == before(captions, **kwargs).input_ids, kwargs
