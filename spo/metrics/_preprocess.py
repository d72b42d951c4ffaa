"""Image preprocessing of the reference scorers, re-implemented on PIL + torch (no torchvision).

Two pipelines cover all four metrics:

* ``center_crop_pixels``: resize the shortest side (PIL bicubic), centre-crop, scale to [0, 1],
  normalise. This is OpenAI CLIP's ``_transform`` (aesthetic predictor, ImageReward) and transformers
  4.27's ``CLIPImageProcessor`` (PickScore). They differ in two details, both parameters here:
  where the RGB conversion happens (CLIP/ImageReward convert *after* the crop, so e.g. an RGBA image
  is resized with PIL's premultiplied alpha; transformers converts first) and how an odd crop
  margin is rounded (torchvision ``CenterCrop``: ``round(d / 2)``; transformers: ``d // 2``).
* ``longest_pad_pixels``: HPSv2's validation transform: RGB, to a tensor in [0, 1], resize the
  longest side to ``size`` on the tensor (bicubic, antialiased), zero-pad to a square, normalise
  (tgxs002/HPSv2@708ffb31:hpsv2/src/open_clip/transform.py ``ResizeMaxSize``; METRICS.md §2).

Both return float32 tensors (N, 3, S, S). Writing our own keeps the result independent of whether
transformers picks its torchvision or its PIL image-processor backend (they differ by up to 0.015).

``processor_pixels`` is ``center_crop_pixels`` for image *tensors*: the one function through which
a PickScore-type preference model sees generated or dataset pixels (the DDPO / D3PO reward, the
SDXL SPM's PickScore pseudo-labels, the resize of Pick-a-Pic images before the VAE), equal to the
PIL-based CLIP processor the PickScore metric and the official code use (antialiased bicubic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from spo.metrics.base import ScorerError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def read_clip_processor_config(folder: str | Path) -> dict:
    """Resize/crop/normalise settings from a CLIP ``preprocessor_config.json``.

    Returns ``{"size": int, "crop": int, "mean": tuple, "std": tuple}``. Accepts both the old
    (``"size": 224``) and the new (``{"shortest_edge": 224}``) layouts; only bicubic is supported,
    which is what every CLIP processor we load declares.
    """
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise ScorerError(f"no preprocessor_config.json in '{folder}'; the processor folder needs it")
    cfg = json.loads(path.read_text())
    size, crop = cfg.get("size", 224), cfg.get("crop_size", 224)
    if isinstance(size, dict):
        size = size.get("shortest_edge", size.get("height"))
    if isinstance(crop, dict):
        if crop.get("height") != crop.get("width"):
            raise ScorerError(f"{path}: non-square crop {crop} is not supported")
        crop = crop["height"]
    if cfg.get("resample", 3) != 3:
        raise ScorerError(f"{path}: resample={cfg['resample']}; only bicubic (3) is supported")
    if not (cfg.get("do_resize", True) and cfg.get("do_center_crop", True) and cfg.get("do_normalize", True)):
        raise ScorerError(f"{path}: resize, centre crop and normalise must all be enabled")
    return {"size": int(size), "crop": int(crop), "mean": tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            "std": tuple(cfg.get("image_std", OPENAI_CLIP_STD))}


def _to_normalised_tensor(arrays: list[np.ndarray], mean: Sequence[float], std: Sequence[float]):
    import torch

    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def center_crop_pixels(images: Sequence[Image.Image], *, size: int, crop: int,
                       mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                       convert_first: bool, crop_rounding: str):
    """Shortest-side resize + centre crop, as CLIP's reference preprocessing does.

    Args:
        images: PIL images of any mode and size.
        size: target of the shortest side; the long side becomes ``int(size * long / short)``
            (truncated, as both torchvision and transformers 4.27 compute it).
        crop: side of the square centre crop (<= size).
        convert_first: convert to RGB before resizing (transformers) or after cropping (OpenAI CLIP).
        crop_rounding: ``"round"`` (torchvision, ``int(round(d / 2.0))``) or ``"floor"`` (``d // 2``).

    Returns:
        float32 tensor (N, 3, crop, crop), normalised with ``mean``/``std``.
    """
    if crop_rounding not in ("round", "floor"):
        raise ValueError(f"crop_rounding must be 'round' or 'floor', got {crop_rounding!r}")
    arrays = []
    for im in images:
        if convert_first:
            im = im.convert("RGB")
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        if short != size:
            new_short, new_long = size, int(size * long / short)
            im = im.resize((new_short, new_long) if w <= h else (new_long, new_short),
                           Image.Resampling.BICUBIC)
        w, h = im.size
        if crop_rounding == "round":
            top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
        else:
            top, left = (h - crop) // 2, (w - crop) // 2
        im = im.crop((left, top, left + crop, top + crop)).convert("RGB")
        arrays.append(np.array(im, dtype=np.uint8))
    return _to_normalised_tensor(arrays, mean, std)


def longest_pad_pixels(images: Sequence[Image.Image], *, size: int,
                       mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD):
    """HPSv2's validation preprocessing: longest side to ``size``, zero-pad to a square.

    The resize runs on the float tensor (torch bicubic, ``antialias=True``, no clamping), with the new
    sides ``round(h * s), round(w * s)`` for ``s = size / max(h, w)``; the padding puts ``pad // 2``
    on the left/top. The reference skips the pad when ``max(h, w) == size`` already, which leaves a
    non-square tensor its ViT cannot take; we pad in that case too (a no-op for square images).
    RGBA is dropped to RGB (the reference would feed 4 channels and fail).

    Returns:
        float32 tensor (N, 3, size, size).
    """
    import torch
    import torch.nn.functional as F

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for im in images:
        arr = np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy for torch
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(255.0)
        h, w = x.shape[-2:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        h, w = x.shape[-2:]
        pad_h, pad_w = size - h, size - w
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        out.append((x - m) / s)
    return torch.cat(out)


def processor_pixels(images, *, size: int, crop: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                     std: Sequence[float] = OPENAI_CLIP_STD):
    """[0, 1] image tensors (N, 3, H, W), any device -> the CLIP processor's pixels (N, 3, crop, crop).

    Equal to transformers' PIL-backend ``CLIPImageProcessor`` (4.27's, which the official SPM and
    PickScore code call; ``CLIPImageProcessorPil`` in transformers 5) applied to the PIL images
    diffusers' ``numpy_to_pil`` makes of the tensors (``(x * 255).round()`` as uint8): RGB, PIL
    bicubic (antialiased) resize of the shortest side to ``size``, floor centre crop, normalise.
    With ``mean = 0``, ``std = 1`` it is the processor's resize and crop alone ([0, 1] output).
    Returns float32 on the images' device.
    """
    import torch

    arr = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    pil = [Image.fromarray(a) for a in arr]
    out = center_crop_pixels(pil, size=size, crop=crop, mean=mean, std=std, convert_first=True,
                             crop_rounding="floor")
    return out.to(images.device)
