"""Streaming SPM pairs: batches read from Parquet and a memory-mapped latent cache (issue 4).

Pick-a-Pic v1 is ~1M pairs (~76 GB of images + SD-1.5 latents, ~4x that for SDXL), so training
never loads the data set. What is held in memory:

* per pairs file its Parquet footer (row-group sizes), and at most ``cache_groups`` decoded row
  groups of the columns a read asked for (LRU; a row group is 256 pairs, ``data.ROW_GROUP_SIZE``);
* memory maps of the latent cache (pages the OS can drop; only a batch's rows are copied out);
* the current epoch's order: one int64 per pair (8 MB per million pairs).

A pair's *global index* is its row position in the pairs files taken in ``data.pair_files``
order; the batch order, the data-parallel shards and the latent cache all address pairs by it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from spo.spm.data import LATENT_COLUMNS, PAIR_COLUMNS, PairsError, check_labels, pair_files

META_COLUMNS = ["pair_id", "prompt", "label", "examples_per_prompt"]


class ParquetRows:
    """Parquet files as one table with random row access: ``take(idx, columns)``.

    Opening reads the footers only. A read decodes the row groups the indices fall in (just the
    asked-for columns) and keeps the most recent ones, at most ``cache_groups`` and ``cache_bytes``
    per column set (never fewer than one), so a sequential pass reads each row group once and
    memory stays at that bound (+ one row group) whatever the data set's size.
    """

    def __init__(self, paths: Sequence[str | Path], *, cache_groups: int = 4, cache_bytes: int = 256 << 20,
                 what: str = "pairs"):
        import pyarrow.parquet as pq

        self.files = pair_files(paths, what)
        self._meta = [pq.read_metadata(f) for f in self.files]
        self.columns = self._meta[0].schema.to_arrow_schema().names
        self._groups = [(fi, g) for fi, m in enumerate(self._meta) for g in range(m.num_row_groups)]
        self.group_sizes = np.array([self._meta[fi].row_group(g).num_rows for fi, g in self._groups],
                                    dtype=np.int64)
        self.group_start = np.concatenate([[0], np.cumsum(self.group_sizes)]).astype(np.int64)
        self.file_rows = np.array([m.num_rows for m in self._meta], dtype=np.int64)
        self.cache_groups, self.cache_bytes = max(1, cache_groups), cache_bytes
        self._cache: dict[tuple[str, ...], OrderedDict] = {}

    def __len__(self) -> int:
        return int(self.group_start[-1])

    def _group(self, gi: int, columns: tuple[str, ...]):
        import pyarrow.parquet as pq

        # One LRU per column set: metadata reads must not evict the image row groups of a window.
        cache = self._cache.setdefault(columns, OrderedDict())
        if gi in cache:
            cache.move_to_end(gi)
            return cache[gi]
        fi, g = self._groups[gi]
        table = pq.ParquetFile(self.files[fi], metadata=self._meta[fi]).read_row_group(g, columns=list(columns))
        cache[gi] = table
        while len(cache) > 1 and (len(cache) > self.cache_groups or
                                  sum(t.nbytes for t in cache.values()) > self.cache_bytes):
            cache.popitem(last=False)
        return table

    def take(self, idx, columns: Sequence[str]):
        """The rows ``idx`` (global indices, any order, repeats allowed) as a pyarrow Table."""
        import pyarrow as pa

        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"pair index out of range [0, {len(self)}) in {self.files[0].parent}")
        groups = np.searchsorted(self.group_start, idx, side="right") - 1
        pieces, where = [], []
        for gi in dict.fromkeys(groups.tolist()):  # row groups in first-seen order: sequential reads
            sel = np.flatnonzero(groups == gi)
            local = idx[sel] - self.group_start[gi]
            pieces.append(self._group(gi, tuple(columns)).take(pa.array(local)))
            where.append(sel)
        if not pieces:
            return self._group(0, tuple(columns)).slice(0, 0)
        table = pa.concat_tables(pieces)
        back = np.empty(len(idx), dtype=np.int64)
        back[np.concatenate(where)] = np.arange(len(idx))
        return table.take(pa.array(back))

    def iter_column(self, column: str, chunk: int = 65536) -> Iterator[list]:
        """One column, file by file, in chunks (bounded memory; bypasses the row-group cache)."""
        import pyarrow.parquet as pq

        for f, m in zip(self.files, self._meta):
            for batch in pq.ParquetFile(f, metadata=m).iter_batches(batch_size=chunk, columns=[column]):
                yield batch.column(0).to_pylist()


# --- latent stores: global index -> (B, 2, C, h, w) float32 ---------------------------------------

def _blobs_to_array(blobs, shape, origin: str) -> np.ndarray:
    size = int(np.prod(shape)) * 4
    out = np.empty((len(blobs),) + tuple(shape), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if blob is None or len(blob) != size:
            raise PairsError(f"latents in '{origin}': a latent has {0 if blob is None else len(blob)} "
                             f"bytes, expected {size} for shape {tuple(shape)}; rebuild the cache")
        out[i] = np.frombuffer(blob, dtype=np.float32).reshape(shape)
    return out


class ColumnLatents:
    """Latents kept as ``latent_0``/``latent_1`` binary columns: tiny pairs, the former cache."""

    def __init__(self, rows: ParquetRows):
        self.rows = rows
        self.shape = tuple(int(s) for s in rows.take([0], ["latent_shape"]).column(0)[0].as_py())

    def get(self, idx) -> torch.Tensor:
        table = self.rows.take(idx, ["latent_0", "latent_1"])
        where = str(self.rows.files[0].parent)
        l0 = _blobs_to_array(table.column(0).to_pylist(), self.shape, where)
        l1 = _blobs_to_array(table.column(1).to_pylist(), self.shape, where)
        return torch.from_numpy(np.stack([l0, l1], axis=1))


class NpyLatents:
    """The ``spm-latents`` cache: per pairs file a ``<stem>.latents.npy`` (n, 2, C, h, w) float32,
    opened with ``np.load(mmap_mode="r")``: a batch copies out only its own rows."""

    def __init__(self, folder: Path, stems: Sequence[str]):
        self.arrays = []
        for stem in stems:
            path = folder / f"{stem}.latents.npy"
            if not path.exists():
                raise PairsError(f"latent cache '{folder}' lacks '{path.name}' for pairs file "
                                 f"'{stem}.parquet'; rebuild it with the spm_latents rule")
            self.arrays.append(np.load(path, mmap_mode="r"))
        self.starts = np.concatenate([[0], np.cumsum([len(a) for a in self.arrays])]).astype(np.int64)
        self.shape = tuple(self.arrays[0].shape[2:])

    def get(self, idx) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), 2) + self.shape, dtype=np.float32)
        files = np.searchsorted(self.starts, idx, side="right") - 1
        for fi in np.unique(files):
            sel = np.flatnonzero(files == fi)
            out[sel] = self.arrays[fi][idx[sel] - self.starts[fi]]  # fancy index: reads these rows only
        return torch.from_numpy(out)


def open_latents(pairs: ParquetRows, cache: str | Path | None):
    """The latent store of ``pairs``: the cache folder (either format) or the pairs' own columns.

    The cache must hold every pairs file's rows in the same order; that is checked here by
    streaming both pair-id columns (bounded memory), so a stale cache fails before training.
    """
    if cache is None:
        return ColumnLatents(pairs) if all(c in pairs.columns for c in LATENT_COLUMNS) else None
    folder = Path(cache)
    stems = [f.name.removesuffix(".parquet") for f in pairs.files]
    if any(folder.glob("*.latents.npy")):
        store = NpyLatents(folder, stems)
        ids = ParquetRows([folder / f"{s}.pair_id.parquet" for s in stems], what="latents")
        counts = np.diff(store.starts)
    else:  # the former format: one Parquet per pairs file with latent_0/latent_1 columns
        ids = ParquetRows([folder / f"{s}.parquet" for s in stems], what="latents")
        store, counts = ColumnLatents(ids), ids.file_rows
    bad = np.flatnonzero(counts != pairs.file_rows)
    if bad.size:
        raise PairsError(f"latent cache '{folder}' has {counts[bad[0]]} rows for '{pairs.files[bad[0]]}' "
                         f"({pairs.file_rows[bad[0]]} pairs); rebuild it with the spm_latents rule")
    for mine, theirs in zip(pairs.iter_column("pair_id"), ids.iter_column("pair_id")):
        if mine != theirs:
            k = next(i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
            raise PairsError(f"latent cache '{folder}' is out of step with the pairs: pair {mine[k]!r} "
                             f"meets cached {theirs[k]!r}; rebuild it with the spm_latents rule")
    return store


# --- batch order: a pure function of (seed, epoch, layout) ----------------------------------------

def epoch_order(n: int, seed: int, epoch: int, group_sizes=None, window: int | None = None) -> torch.Tensor:
    """The permutation (n,) of global indices that epoch ``epoch`` visits.

    ``window=None``: a uniform permutation, exactly ``objective.batch_indices``' (pair-level
    shuffle; cheap when latents are memory-mapped). ``window=k``: row groups in a seeded order,
    taken k at a time, pairs shuffled within each k (for reading images: each row group is decoded
    once per epoch with a k-group cache).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if window is None:
        return torch.randperm(n, generator=gen)
    sizes = torch.as_tensor(np.asarray(group_sizes, dtype=np.int64))
    starts = torch.cumsum(sizes, 0) - sizes
    groups = torch.randperm(len(sizes), generator=gen)
    out = []
    for w in range(0, len(groups), window):
        rows = torch.cat([torch.arange(int(starts[g]), int(starts[g] + sizes[g])) for g in groups[w:w + window]])
        out.append(rows[torch.randperm(len(rows), generator=gen)])
    return torch.cat(out)


class BatchOrder:
    """``order(step, batch)`` -> the (batch,) global indices of optimiser step ``step``.

    Positions step*batch .. (step+1)*batch - 1 of the concatenated epoch orders: a pure function of
    the arguments, so a resumed run sees the batches of an uninterrupted one. Data-parallel rank r
    of w takes ``indices[r::w]``: disjoint shares whose union is the global batch.
    """

    def __init__(self, n: int, seed: int, group_sizes=None, window: int | None = None):
        self.n, self.seed, self.group_sizes, self.window = n, seed, group_sizes, window
        self._epochs: OrderedDict = OrderedDict()

    def _epoch(self, epoch: int) -> torch.Tensor:
        if epoch not in self._epochs:
            self._epochs[epoch] = epoch_order(self.n, self.seed, epoch, self.group_sizes, self.window)
            while len(self._epochs) > 2:  # a batch spans at most two epochs when batch <= n
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def __call__(self, step: int, batch: int) -> torch.Tensor:
        pos = torch.arange(step * batch, (step + 1) * batch)
        epoch = pos.div(self.n, rounding_mode="floor")
        out = torch.empty(batch, dtype=torch.long)
        for e in epoch.unique().tolist():
            sel = epoch == e
            out[sel] = self._epoch(e)[pos[sel] % self.n]
        return out


# --- pairs + latents + labels ---------------------------------------------------------------------

class PairStream:
    """A pairs folder read per batch: metadata, latents, clean images, labels (pseudo if set).

    Args:
        paths: pairs Parquet files or folders; latents: a ``spm-latents`` folder, or None to use
            the pairs' own latent columns or, lacking those, ``encoder`` on the decoded images.
        encoder: images (N, 3, H, W) in [0, 1] -> scaled latents; resolution: square crop first.
        cache_groups, cache_bytes: decoded row groups kept per column set (``ParquetRows``); when
            training encodes images, row groups are also shuffled ``cache_groups`` at a time.
    """

    def __init__(self, paths, latents=None, *, encoder=None, resolution: int | None = None,
                 cache_groups: int = 4, cache_bytes: int = 256 << 20):
        self.rows = ParquetRows([paths] if isinstance(paths, (str, Path)) else paths,
                                cache_groups=cache_groups, cache_bytes=cache_bytes)
        self.origin = ", ".join(str(f) for f in self.rows.files[:3]) + (" ..." if len(self.rows.files) > 3 else "")
        missing = [c for c in PAIR_COLUMNS if c not in self.rows.columns]
        if missing:
            raise PairsError(f"pairs file '{self.origin}' lacks the columns {missing}; the schema is "
                             f"{PAIR_COLUMNS} (+ optional {LATENT_COLUMNS})")
        self.store = open_latents(self.rows, latents)
        if self.store is None and encoder is None:
            raise PairsError(f"pairs '{self.origin}' have no latents: give the spm_latents cache")
        self.encoder, self.resolution = encoder, resolution
        self.pseudo: torch.Tensor | None = None  # (N,) PickScore labels (the SDXL recipe)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.store.shape if self.store is not None else tuple(self.latents([0]).shape[2:])

    def meta(self, idx) -> dict:
        """{pair_id, prompts: list; label, epp: (B,) float32} of pairs ``idx``, checked."""
        frame = self.rows.take(idx, META_COLUMNS).to_pandas()
        check_labels(frame, self.origin)
        label = torch.tensor(frame["label"].to_numpy(dtype=np.float32))
        if self.pseudo is not None:
            label = self.pseudo[torch.as_tensor(np.asarray(idx, dtype=np.int64))]
        return {"pair_id": frame["pair_id"].tolist(), "prompts": frame["prompt"].tolist(), "label": label,
                "epp": torch.tensor(frame["examples_per_prompt"].to_numpy(dtype=np.float32))}

    def images(self, idx) -> torch.Tensor:
        """(2B, 3, H, W) clean images in [0, 1]: the image 0s of ``idx``, then the image 1s."""
        from spo.spm.data import decode_image

        table = self.rows.take(idx, ["pair_id", "image_0", "image_1"])
        ids = table.column("pair_id").to_pylist()
        return torch.stack([decode_image(b, f"pairs '{self.origin}' pair {ids[i]!r} {col}")
                            for col in ("image_0", "image_1")
                            for i, b in enumerate(table.column(col).to_pylist())])

    def latents(self, idx, posterior_noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 2, C, h, w) float32 latents of pairs ``idx``: the VAE posterior mean, or with
        ``posterior_noise`` (B, 2, C, h, w) the sample mean + std * noise (encoded now: a cache
        holds means only)."""
        if posterior_noise is not None:
            if self.encoder is None:
                raise PairsError(f"pairs '{self.origin}': a VAE posterior sample needs the encoder")
            images = self.images(idx)
            if self.resolution:
                from spo.metrics._preprocess import processor_pixels
                images = torch.stack([processor_pixels(im[None], size=self.resolution, crop=self.resolution,
                                                       mean=(0, 0, 0), std=(1, 1, 1))[0] for im in images])
            noise = torch.cat([posterior_noise[:, 0], posterior_noise[:, 1]])
            lat = self.encoder(images, noise=noise).float().cpu()
            return torch.stack(lat.chunk(2), dim=1)
        if self.store is not None:
            return self.store.get(idx)
        images = self.images(idx)  # no cache: encode now (the official recipe encodes every step)
        if self.resolution:  # the official dataset's CLIP processor resize and crop (PIL, antialiased)
            from spo.metrics._preprocess import processor_pixels
            images = torch.stack([processor_pixels(im[None], size=self.resolution, crop=self.resolution,
                                                   mean=(0, 0, 0), std=(1, 1, 1))[0] for im in images])
        lat = self.encoder(images).float().cpu()
        return torch.stack(lat.chunk(2), dim=1)

    def chunks(self, batch: int) -> Iterator[torch.Tensor]:
        """Consecutive index blocks (<= batch) in storage order, for validation and relabelling."""
        for start in range(0, len(self), batch):
            yield torch.arange(start, min(start + batch, len(self)))

    def unique_prompts(self, limit: int) -> set[str] | None:
        """The distinct prompts, or None as soon as there are more than ``limit`` (bounded)."""
        seen: set[str] = set()
        for part in self.rows.iter_column("prompt"):
            seen.update(part)
            if len(seen) > limit:
                return None
        return seen
