"""Preference pairs for SPM training: one Parquet schema for Pick-a-Pic and the tiny profile.

Columns (fixed; ``validate_pairs`` checks them)::

    pair_id              str     unique key (latent caches join on it)
    prompt_id            str     pairs of one prompt share it
    prompt               str
    image_0, image_1     binary  encoded images (PNG/JPEG bytes, any size, RGB)
    label                float64 preference for image_0: 1 (image_0 wins), 0 (image_1 wins), 0.5 tie,
                                 -1 no label (a kept unlabelled Pick-a-Pic row: weight only)
    examples_per_prompt  int64   pairs that share the prompt; the loss weight is its inverse
optional (the VAE latents of each image, already multiplied by the VAE's scaling factor)::

    latent_0, latent_1   binary  float32, C order
    latent_shape         list<int64>  (C, h, w)

The latent cache (``spm-latents`` stage) holds, per pairs file ``<stem>.parquet``, a memory-mappable
``<stem>.latents.npy`` (n, 2, C, h, w) float32 in the file's row order and ``<stem>.pair_id.parquet``
(its pair ids, checked against the pairs). The former cache (``<stem>.parquet`` with ``pair_id,
latent_0, latent_1, latent_shape``) is still read. ``spo.spm.stream`` reads both per batch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

PAIR_COLUMNS = ["pair_id", "prompt_id", "prompt", "image_0", "image_1", "label", "examples_per_prompt"]
LATENT_COLUMNS = ["latent_0", "latent_1", "latent_shape"]
LABELS = (0.0, 0.5, 1.0, -1.0)  # -1: no label (spm.datasets.<name>.unlabelled: keep)
ROW_GROUP_SIZE = 256  # pairs per Parquet row group (see write_pairs_parquet)


class PairsError(ValueError):
    """A pairs file is malformed; the message names the file, the row (pair_id) and the fix."""


def _plain(value) -> str:
    """A cell as a user wrote it (0.7, not np.float64(0.7))."""
    return repr(value.item() if hasattr(value, "item") else value)


def _row_name(frame: pd.DataFrame, i: int) -> str:
    pid = frame["pair_id"].iloc[i] if "pair_id" in frame else "?"
    return f"row {i} (pair_id {pid!r})"


def check_labels(frame: pd.DataFrame, origin: str) -> None:
    """Labels in {0, 0.5, 1, -1} and examples_per_prompt >= 1; PairsError naming the first bad row.

    Split out of ``validate_pairs`` so that the streaming reader (``spo.spm.stream``) can check
    each batch's rows as it reads them, without the image columns.
    """
    labels = pd.to_numeric(frame["label"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isin(labels, LABELS))
    if bad.size:
        i = int(bad[0])
        raise PairsError(f"pairs file '{origin}' {_row_name(frame, i)}: label {_plain(frame['label'].iloc[i])} "
                         f"is not one of 0, 0.5, 1 (1 = image_0 preferred, 0.5 = tie) or -1 (no label); "
                         f"{bad.size} bad rows in all")
    epp = pd.to_numeric(frame["examples_per_prompt"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~(epp >= 1))
    if bad.size:
        i = int(bad[0])
        raise PairsError(f"pairs file '{origin}' {_row_name(frame, i)}: examples_per_prompt "
                         f"{_plain(frame['examples_per_prompt'].iloc[i])} must be an integer >= 1")


def validate_pairs(frame: pd.DataFrame, origin: str, *, check_images: bool = True) -> pd.DataFrame:
    """Check the schema, labels, weights and images of a pairs table; return it re-indexed.

    Raises:
        PairsError naming ``origin`` and the first bad row: a missing column, a label outside
        {0, 0.5, 1}, examples_per_prompt < 1, a missing or undecodable image, half-given latents.
    """
    missing = [c for c in PAIR_COLUMNS if c not in frame]
    if missing:
        raise PairsError(f"pairs file '{origin}' lacks the columns {missing}; the schema is "
                         f"{PAIR_COLUMNS} (+ optional {LATENT_COLUMNS})")
    if frame.empty:
        raise PairsError(f"pairs file '{origin}' has no rows")
    frame = frame.reset_index(drop=True)
    dup = frame["pair_id"][frame["pair_id"].duplicated()].tolist()
    if dup:
        raise PairsError(f"pairs file '{origin}' repeats pair_id {dup[:5]}; pair ids must be unique")
    check_labels(frame, origin)
    has_latents = [c in frame for c in LATENT_COLUMNS]
    if any(has_latents) and not all(has_latents):
        raise PairsError(f"pairs file '{origin}' has only some of {LATENT_COLUMNS}; give all or none")
    if check_images:
        for i in range(len(frame)):
            for col in ("image_0", "image_1"):
                decode_image(frame[col].iloc[i], f"pairs file '{origin}' {_row_name(frame, i)} {col}",
                             verify_only=True)
    return frame.astype({"label": "float64", "examples_per_prompt": "int64"})


def decode_image(blob, where: str, *, verify_only: bool = False):
    """Encoded bytes -> (3, H, W) float32 tensor in [0, 1]; PairsError naming ``where`` if bad."""
    from PIL import Image

    if blob is None or (isinstance(blob, float) and np.isnan(blob)) or len(blob) == 0:
        raise PairsError(f"{where}: the image is missing; drop the row or fix the source")
    try:
        with Image.open(io.BytesIO(blob)) as im:
            if verify_only:
                im.verify()
                return None
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise PairsError(f"{where}: the image cannot be decoded ({type(exc).__name__}: {exc}); "
                         f"drop the row or re-export the image") from exc
    import torch

    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def encode_png(image) -> bytes:
    """(3, H, W) tensor in [0, 1] -> PNG bytes (8-bit, rounded)."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def latents_to_bytes(latents) -> tuple[list[bytes], list[int]]:
    """(N, C, h, w) float tensor -> N float32 blobs and the shared shape (C, h, w)."""
    arr = latents.detach().float().cpu().numpy()
    return [a.tobytes() for a in arr], list(arr.shape[1:])


def latents_from_column(blobs: Sequence[bytes], shapes, origin: str):
    """Blobs + shapes -> (N, C, h, w) float32 tensor; every row must have the same shape."""
    import torch

    shape = tuple(int(s) for s in shapes.iloc[0]) if hasattr(shapes, "iloc") else tuple(shapes[0])
    size = int(np.prod(shape)) * 4
    out = np.empty((len(blobs),) + shape, dtype=np.float32)
    for i, blob in enumerate(blobs):
        if blob is None or len(blob) != size:
            raise PairsError(f"pairs/latents file '{origin}' row {i}: latent has "
                             f"{0 if blob is None else len(blob)} bytes, expected {size} for shape {shape}")
        out[i] = np.frombuffer(blob, dtype=np.float32).reshape(shape)
    return torch.from_numpy(out)


def pair_files(paths: Sequence[str | Path], what: str = "pairs") -> list[Path]:
    """The Parquet files of ``paths`` (files, or folders of ``*.parquet``) in a fixed order.

    The order defines every pair's global index, which the batch order and the latent cache use.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.glob("*.parquet") if not f.name.endswith(".pair_id.parquet"))
        elif p.is_file():
            files.append(p)
        else:
            raise PairsError(f"{what} path '{p}' does not exist; build it with the spm_{what} rule")
    if not files:
        raise PairsError(f"no {what} Parquet files under {list(map(str, paths))}")
    return files


def write_pairs_parquet(frame: pd.DataFrame, path, row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write a pairs table atomically in row groups of ``row_group_size`` pairs.

    Small row groups are what make the streaming reader cheap: reading one pair's images decodes
    its whole row group (a Pick-a-Pic pair is ~1 MB of JPEGs, so 256 pairs ~ 250 MB at most).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spo.io import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp,
                       row_group_size=row_group_size)


def read_pairs(paths: Sequence[str | Path], *, check_images: bool = True) -> pd.DataFrame:
    """Read and validate one or more pairs Parquet files (or folders of them) into one table.

    In memory: for small tables and tests only; training streams (``spo.spm.stream``).
    """
    files = pair_files(paths)
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return validate_pairs(frame, ", ".join(map(str, files)), check_images=check_images)


def _cache_tables(cache_paths: Sequence[str | Path]) -> list[pd.DataFrame]:
    """Latent cache tables (pair_id, latent_0, latent_1, latent_shape) of either cache format.

    A path may be a cache folder, a former-format ``<stem>.parquet``, or that name where the cache
    now holds ``<stem>.latents.npy`` (callers that address the cache per pairs file keep working).
    """
    tables = []
    for p in map(Path, cache_paths):
        if p.is_dir():
            npys = sorted(p.glob("*.latents.npy"))
            items = npys or sorted(f for f in p.glob("*.parquet") if not f.name.endswith(".pair_id.parquet"))
        else:
            npy = p.with_name(p.name.removesuffix(".parquet") + ".latents.npy")
            items = [npy] if not p.exists() and npy.exists() else [p]
        for item in items:
            if item.name.endswith(".latents.npy"):
                arr = np.load(item, mmap_mode="r")
                ids = pd.read_parquet(item.with_name(item.name.replace(".latents.npy", ".pair_id.parquet")))
                tables.append(pd.DataFrame({
                    "pair_id": ids["pair_id"], "latent_0": [np.asarray(a[0]).tobytes() for a in arr],
                    "latent_1": [np.asarray(a[1]).tobytes() for a in arr],
                    "latent_shape": [list(arr.shape[2:])] * len(arr)}))
            else:
                tables.append(pd.read_parquet(item))
    return tables


def attach_latents(pairs: pd.DataFrame, cache_paths: Sequence[str | Path]) -> pd.DataFrame:
    """Join cached latents (``spm-latents`` output) onto ``pairs`` by pair_id; all must be found.

    In memory: for one pairs file at a time (Diffusion-DPO's reader); SPM training streams.
    """
    cache = pd.concat(_cache_tables(cache_paths), ignore_index=True)
    joined = pairs.drop(columns=[c for c in LATENT_COLUMNS if c in pairs]).merge(
        cache[["pair_id"] + LATENT_COLUMNS], on="pair_id", how="left", validate="one_to_one")
    lost = joined["pair_id"][joined["latent_0"].isna()].tolist()
    if lost:
        raise PairsError(f"latent cache {list(map(str, cache_paths))} lacks {len(lost)} pairs (first "
                         f"{lost[:3]}); rebuild it with the spm_latents rule")
    return joined
