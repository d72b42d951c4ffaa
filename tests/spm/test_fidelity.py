"""Issue 17, items 3 and 4: one processor-equal pixel path for PickScore-type preferences, and the
official SPM training details as keys (warm-up shape, weight decay, VAE posterior sample,
unlabelled rows)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from spo.metrics._preprocess import processor_pixels


def _images(h: int, w: int, seed: int, smooth: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if smooth:  # photo-like: low-frequency colour fields plus a little grain
        base = torch.rand(1, 3, max(2, h // 64), max(2, w // 64), generator=g)
        x = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)
        x = x + 0.05 * torch.randn(1, 3, h, w, generator=g)
    else:  # worst case for aliasing: per-pixel noise
        x = torch.rand(1, 3, h, w, generator=g)
    return x.clamp(0, 1)


def _reference(images: torch.Tensor, **kwargs) -> torch.Tensor:
    """transformers' PIL-backend CLIP processor on the PIL images diffusers' numpy_to_pil makes."""
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    pil = [Image.fromarray(a) for a in arr]
    return CLIPImageProcessorPil(**kwargs)(images=pil, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("h, w", [(512, 512), (1024, 1024), (768, 512)])
@pytest.mark.parametrize("smooth", [True, False])
def test_processor_pixels_equal_the_clip_processor(h, w, smooth):
    images = _images(h, w, seed=h + w, smooth=smooth)
    ours = processor_pixels(images, size=224, crop=224)
    ref = _reference(images)
    assert ours.shape == ref.shape == (1, 3, 224, 224)
    assert (ours - ref).abs().max().item() <= 1e-3


def test_the_resize_before_the_vae_is_the_processors_too():
    """The official dataset resizes Pick-a-Pic images with the processor at 512 / 1024, no
    normalisation (pick_a_pic_spm_dataset.py: do_normalize False, size = crop = resolution)."""
    images = _images(768, 640, seed=3, smooth=True)
    ours = processor_pixels(images, size=512, crop=512, mean=(0, 0, 0), std=(1, 1, 1))
    ref = _reference(images, do_normalize=False, size={"shortest_edge": 512},
                     crop_size={"height": 512, "width": 512})
    assert (ours - ref).abs().max().item() <= 1e-3 and 0 <= ours.min() and ours.max() <= 1


def test_the_non_antialiased_torch_resize_was_not_the_processor():
    """What the DDPO / D3PO reward and the pseudo-labels used before: 1024 px noise differs."""
    from spo.metrics._preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from spo.preference.spm_model import clip_pixels

    images = _images(1024, 1024, seed=1, smooth=False)
    old = clip_pixels(images, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    assert (old - _reference(images)).abs().max().item() > 0.1


def test_pickscore_preference_sees_processor_pixels(tiny_pickscore):
    from spo.preference.spm import build_pickscore

    folder = tiny_pickscore["model"].parent
    scorer = build_pickscore({"name": "pickscore", "path": str(folder)})
    assert scorer.resize == "processor"
    images = _images(64, 48, seed=2, smooth=True)
    pre = scorer.pre
    want = processor_pixels(images, size=pre["size"], crop=pre["crop"], mean=pre["mean"], std=pre["std"])
    assert torch.equal(scorer.pixels(images), want)
    assert scorer.pixels(images, "torch-bicubic").shape == want.shape  # an SPM's own path


class _Pairs:
    """The part of a PairStream ``add_pseudo_labels`` reads."""

    def __init__(self, images):
        self._images, self.pseudo = images, None

    def chunks(self, batch):
        yield torch.arange(len(self._images) // 2)

    def meta(self, idx):
        return {"prompts": ["a red car"] * len(idx)}

    def images(self, idx):
        return self._images


def test_pseudo_labels_score_through_the_processor(tiny_pickscore):
    from spo.preference.spm_io import from_pickscore
    from spo.spm.objective import pseudo_labels
    from spo.spm.train import add_pseudo_labels

    scorer = from_pickscore(tiny_pickscore["model"], tiny_pickscore["processor"], time_condition=True)
    assert scorer.resize == "torch-bicubic"  # the SPM being trained keeps the official x̂0 path
    images = torch.cat([_images(80, 64, seed=s, smooth=False) for s in range(4)])
    pairs = _Pairs(images)
    add_pseudo_labels(scorer, pairs, 0.0)
    with torch.no_grad():
        px = scorer.pixels(images, "processor")
        tok = scorer.tokens(["a red car"] * 4)
        s = scorer.model.scores_from_features(scorer.model.image_features(px, torch.zeros(4, dtype=torch.long)),
                                              scorer.model.text_features(tok["input_ids"], tok["attention_mask"]))
    assert torch.equal(pairs.pseudo, pseudo_labels(s[:2], s[2:], 0.0))


# --- item 4: the official SPM training details -------------------------------------------------

def _deepspeed_warmup_decay(steps: int, base: float, warmup: int, total: int) -> list[float]:
    """The lr of each optimizer step under DeepSpeed's WarmupDecayLR as the official run drives it
    (deepspeed/runtime/lr_schedules.py, warmup_type 'log', warmup_min_lr 0): the constructor sets
    the lr for iteration -1 (= warmup_min_lr), and the engine calls step() after each update."""
    w = max(2, warmup)

    def lr_at(iteration):
        if iteration < 0:
            return 0.0
        if iteration < w:
            return base * math.log(iteration + 1) / math.log(w)
        return base * max(0.0, (total - iteration) / max(1.0, total - w))

    lrs, iteration = [], -1
    for _ in range(steps):
        lrs.append(lr_at(iteration))  # used by this optimizer step
        iteration += 1                # lr_scheduler.step() after it
    return lrs


def test_log_warmup_is_deepspeeds_warmup_decay():
    from spo.spm.objective import learning_rate

    want = _deepspeed_warmup_decay(120, 3e-6, 20, 100)
    got = [learning_rate(s, 3e-6, 20, 100, "warmup_decay", "log") for s in range(120)]
    assert got == pytest.approx(want, abs=1e-15)
    assert got[0] == got[1] == 0.0 and got[21] == pytest.approx(3e-6) and got[-1] == 0.0
    # the linear shape stays the default
    assert learning_rate(0, 1.0, 10, 100, "warmup_decay") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warm-up shape"):
        learning_rate(3, 1.0, 10, 100, "warmup_decay", "cosine")


def test_weight_decay_on_every_parameter_or_on_matrices():
    from spo.spm.train import optimizer_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.tensor(4.6))
    every = optimizer_groups(model, 0.3, "all")
    assert len(every[0]["params"]) == 5 and every[0]["weight_decay"] == 0.3 and not every[1]["params"]
    torch.optim.AdamW(every, lr=1e-3)  # an empty group is fine
    mats = optimizer_groups(model, 0.3, "matrices")
    assert len(mats[0]["params"]) == 1 and len(mats[1]["params"]) == 4


def test_vae_posterior_sample_is_mean_plus_std_noise(tiny_models):
    from diffusers import StableDiffusionPipeline

    from spo.spm.backbone import DiffusionBackbone

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sd15", local_files_only=True)
    backbone = DiffusionBackbone(pipe, "sd15")
    images = _images(32, 32, seed=4, smooth=True)
    mean = backbone.encode(images)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    dist = pipe.vae.encode(images * 2 - 1).latent_dist
    assert torch.allclose(backbone.encode(images, noise=noise),
                          (dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor, atol=1e-6)
    assert torch.equal(backbone.encode(images, noise=torch.zeros_like(noise)), mean)


def test_spm_keys_are_checked():
    from spo.config import ConfigError
    from spo.spm.train import check_run_spec

    base = {"lr": 1e-6, "steps": 10, "batch_size": 4}
    for key in ("warmup_shape", "weight_decay_on", "vae_latents"):
        with pytest.raises(ConfigError, match=f"'spm.runs.r.{key}'"):
            check_run_spec("r", {**base, key: "nope"})


def _source(has_label, label_0, label_1):
    from spo.spm.data import encode_png

    png = encode_png(torch.rand(3, 8, 8))
    n = len(label_0)
    return pd.DataFrame({"caption": ["a"] * n, "jpg_0": [png] * n, "jpg_1": [png] * n,
                         "label_0": label_0, "label_1": label_1, "num_example_per_prompt": [n] * n,
                         "has_label": has_label})


def test_unlabelled_rows_are_kept_as_the_official_loader_or_dropped(tmp_path):
    from spo.spm.pickapic import to_pairs

    src = _source([True, False, False], [1.0, 0.0, 0.5], [0.0, 0.0, 0.5])
    dropped = to_pairs(src, "train", str(tmp_path / "train-0.parquet"))
    assert dropped["label"].tolist() == [1.0]
    kept = to_pairs(src, "train", str(tmp_path / "train-0.parquet"), unlabelled="keep")
    assert kept["label"].tolist() == [1.0, -1.0, 0.5]  # (0, 0): no preference; (0.5, 0.5): a tie


def test_an_unlabelled_row_weighs_but_pushes_nothing_as_the_official_criterion():
    """spm_criterion.py: loss = label_0 ce_0 + label_1 ce_1 + [label_0 == label_1] log 0.5,
    weighted 1 / examples-per-prompt normalised over the batch; label -1 is (label_0, label_1) = (0, 0)."""
    from spo.spm.objective import pair_loss, pairwise_accuracy

    s0 = torch.tensor([2.0, 0.3], requires_grad=True)
    s1 = torch.tensor([0.0, 1.0], requires_grad=True)
    label, epp = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 2.0])
    loss = pair_loss(s0, s1, label, epp)
    logp = torch.log_softmax(torch.stack([s0, s1], -1), -1)
    l0, l1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    official = -(l0 * logp[:, 0] + l1 * logp[:, 1]) + (l0 == l1).float() * math.log(0.5)
    w = (1 / epp) / (1 / epp).sum()
    assert loss.item() == pytest.approx((official * w).sum().item())
    loss.backward()
    assert s0.grad[1] == 0 and s1.grad[1] == 0 and s0.grad[0] != 0
    acc, n = pairwise_accuracy(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), label)
    assert (acc, n) == (1.0, 1)  # the unlabelled row is not a decision


def test_the_pair_schema_accepts_the_no_label_value():
    from spo.spm.data import check_labels

    check_labels(pd.DataFrame({"label": [1.0, -1.0, 0.5], "examples_per_prompt": [1, 1, 1],
                               "pair_id": ["a", "b", "c"]}), "f")
    with pytest.raises(Exception, match="or -1"):
        check_labels(pd.DataFrame({"label": [0.7], "examples_per_prompt": [1], "pair_id": ["a"]}), "f")
    assert np.isin([-1.0], [0.0, 0.5, 1.0, -1.0]).all()
