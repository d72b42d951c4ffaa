"""Offline preference pairs for Diffusion-DPO: decisive pairs, a resumable order, winner/loser latents.

Pairs are the ``spo.spm.data`` Parquet schema (``spm-pairs`` output: Pick-a-Pic or the tiny
pairs). Ties (label 0.5) are dropped, as the official trainer does. Files are read one at a time
(Pick-a-Pic v2 is hundreds of GB; only the label column of every file is read up front).

Order: epoch e is a "shard shuffle" seeded by (seed, e): the files in a permuted order, the rows of
each file permuted. Optimizer step s takes positions [s*B, (s+1)*B) of the concatenated epochs, so
the pairs of any step are a pure function of (seed, s): a resumed run sees the same batches.

Latents: pairs that carry ``latent_0/1`` (the tiny pairs carry the generation's own latents, already
scaled; a random tiny VAE is no autoencoder) or a separate ``spm-latents`` cache are used as they
are; otherwise the images are resized (shorter side), centre-cropped to the training resolution,
optionally flipped and VAE-encoded (a posterior sample x scaling factor), as the official loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from spo.spm.data import (LATENT_COLUMNS, PairsError, attach_latents, decode_image,
                          latents_from_column, pair_files, validate_pairs)


def decisive(labels: np.ndarray) -> np.ndarray:
    """Indices of rows with a decision (label 0 or 1); ties (0.5) are dropped."""
    labels = np.asarray(labels, dtype=float)
    return np.flatnonzero((labels == 0.0) | (labels == 1.0))


class PairSource:
    """The decisive pairs of a pairs folder (+ an optional latent cache folder).

    Attributes:
        n_pairs: decisive pairs in all; n_ties: ties dropped.
    """

    def __init__(self, pairs: str | Path, latents: str | Path | None = None):
        self.files = pair_files([pairs])
        self.latents = Path(latents) if latents else None
        self.rows = []  # per file: row indices of decisive pairs
        n_all = 0
        for f in self.files:
            labels = pd.read_parquet(f, columns=["label"])["label"].to_numpy(dtype=float)
            self.rows.append(decisive(labels))
            n_all += len(labels)
        self.n_pairs = sum(len(r) for r in self.rows)
        self.n_ties = n_all - self.n_pairs
        if self.n_pairs == 0:
            raise PairsError(f"pairs '{pairs}' have no decisive pair (all {n_all} are ties)")
        self._loaded: tuple[int, pd.DataFrame] | None = None
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """(n_pairs, 2) int array of (file index, row index): files permuted, rows within each."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        rng = np.random.default_rng([seed, epoch])
        parts = [np.stack([np.full(len(self.rows[i]), i), rng.permutation(self.rows[i])], axis=1)
                 for i in rng.permutation(len(self.files))]
        order = np.concatenate(parts)
        self._epoch = (epoch, order)
        return order

    def positions(self, seed: int, start: int, stop: int) -> np.ndarray:
        """Entries of stream positions [start, stop), across epoch boundaries: (stop-start, 2)."""
        out = []
        while start < stop:
            epoch, offset = divmod(start, self.n_pairs)
            take = min(stop - start, self.n_pairs - offset)
            out.append(self.epoch_order(seed, epoch)[offset:offset + take])
            start += take
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=int)

    def _frame(self, file_index: int) -> pd.DataFrame:
        if self._loaded is None or self._loaded[0] != file_index:
            file = self.files[file_index]
            frame = validate_pairs(pd.read_parquet(file), str(file), check_images=False)
            if self.latents is not None:
                cache = self.latents / file.name if self.latents.is_dir() else self.latents
                frame = attach_latents(frame, [cache])
            self._loaded = (file_index, frame)
        return self._loaded[1]

    def rows_of(self, entries: np.ndarray) -> pd.DataFrame:
        """The pair rows of ``entries`` (in order), oriented: ``win``/``lose`` column suffixes."""
        parts = []
        for file_index in dict.fromkeys(entries[:, 0].tolist()):  # files in first-seen order
            mask = entries[:, 0] == file_index
            frame = self._frame(file_index).iloc[entries[mask, 1]]
            parts.append((np.flatnonzero(mask), frame))
        index = np.concatenate([p[0] for p in parts])
        frame = pd.concat([p[1] for p in parts], ignore_index=True).iloc[np.argsort(index)]
        return orient(frame.reset_index(drop=True))


def orient(frame: pd.DataFrame) -> pd.DataFrame:
    """Winner / loser columns from ``label`` (1: image_0 wins, 0: image_1 wins); ties are an error."""
    labels = frame["label"].to_numpy(dtype=float)
    if np.any(labels == 0.5):
        raise PairsError("a tie (label 0.5) reached orient(); ties must be dropped first")
    first = labels == 1.0
    out = pd.DataFrame({"prompt": frame["prompt"].to_numpy()})
    for kind in ("image", "latent"):
        if f"{kind}_0" in frame:
            a, b = frame[f"{kind}_0"].to_numpy(), frame[f"{kind}_1"].to_numpy()
            out[f"{kind}_win"] = np.where(first, a, b)
            out[f"{kind}_lose"] = np.where(first, b, a)
    if "latent_shape" in frame:
        out["latent_shape"] = frame["latent_shape"].to_numpy()
    return out


def pixels(blobs: Sequence[bytes], resolution: int, flips: torch.Tensor) -> torch.Tensor:
    """Encoded images -> (N, 3, R, R) in [-1, 1]: bilinear resize of the shorter side to R, centre
    crop, horizontal flip where ``flips`` (N,) bool is set (the official train transforms)."""
    import torch.nn.functional as F

    out = []
    for i, blob in enumerate(blobs):
        im = decode_image(blob, f"Diffusion-DPO pair image {i}")[None]
        h, w = im.shape[-2:]
        scale = resolution / min(h, w)
        size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
        im = F.interpolate(im, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        im = im[..., top:top + resolution, left:left + resolution]
        out.append(im.flip(-1) if flips[i] else im)
    return torch.cat(out) * 2 - 1


def pair_latents(rows: pd.DataFrame, vae, resolution: int, generator: torch.Generator,
                 hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner and loser latents, each (M, C, h, w) float32 on the CPU (scaled like the UNet's input)."""
    if "latent_win" in rows:
        shapes = rows["latent_shape"]
        return (latents_from_column(rows["latent_win"].tolist(), shapes, "Diffusion-DPO pairs"),
                latents_from_column(rows["latent_lose"].tolist(), shapes, "Diffusion-DPO pairs"))
    m = len(rows)
    flips = (torch.rand(2 * m, generator=generator) < 0.5) if hflip else torch.zeros(2 * m, dtype=torch.bool)
    images = pixels(list(rows["image_win"]) + list(rows["image_lose"]), resolution, flips)
    with torch.no_grad():
        dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        latents = (dist.mean + dist.std * noise) * vae.config.scaling_factor
    latents = latents.float().cpu()
    return latents[:m], latents[m:]


__all__ = ["PairSource", "decisive", "orient", "pair_latents", "pixels", "LATENT_COLUMNS"]
