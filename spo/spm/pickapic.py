"""Pick-a-Pic v1 (``yuvalkirstain/pickapic_v1``) -> the pairs schema of ``spo.spm.data``.

Source columns used: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (1, 0 or 0.5 for a tie),
``num_example_per_prompt`` and, when present, ``has_label`` (rows without a label are dropped, as
the official dataset's ``validation_unique`` filter; ties are kept for training). Files come from the
hub (``hub_parquet``: id, pinned revision, a glob of the split's files) or a local path; one output
Parquet per input file, so a latent cache job per file stays small.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from spo.spm.data import PAIR_COLUMNS, PairsError, validate_pairs

SOURCE_COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0", "num_example_per_prompt"]


def source_files(spec: dict[str, Any], root=".") -> list[Path]:
    """Local Parquet files of a ``pair_files`` spec (downloads hub files matching the glob)."""
    if "path" in spec:
        p = Path(root) / spec["path"]
        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not files or not files[0].exists():
            raise PairsError(f"Pick-a-Pic path '{p}' has no Parquet files; fix `path:` in spm.datasets")
        return files
    import fnmatch

    from huggingface_hub import hf_hub_download, list_repo_files

    hub = spec["hub_parquet"]
    try:
        names = [n for n in list_repo_files(hub["id"], revision=hub["revision"], repo_type="dataset")
                 if fnmatch.fnmatch(n, hub["pattern"])]
        return [Path(hf_hub_download(hub["id"], n, revision=hub["revision"], repo_type="dataset"))
                for n in sorted(names)]
    except (OSError, ValueError) as exc:
        raise PairsError(f"cannot fetch {hub['id']}@{hub['revision']} files {hub['pattern']!r}: {exc}; "
                         f"pre-download them (huggingface-cli download {hub['id']} --repo-type dataset "
                         f"--revision {hub['revision']} --include '{hub['pattern']}') or give `path:`") from exc


def to_pairs(frame: pd.DataFrame, split: str, origin: str) -> pd.DataFrame:
    """Map one Pick-a-Pic table to the pairs schema (pair ids ``<split>-<file stem>-<row>``)."""
    missing = [c for c in SOURCE_COLUMNS if c not in frame]
    if missing:
        raise PairsError(f"Pick-a-Pic file '{origin}' lacks the columns {missing}")
    frame = frame.reset_index(drop=True)
    if "has_label" in frame:
        frame = frame[frame["has_label"].astype(bool)]
    stem = Path(origin).stem
    out = pd.DataFrame({
        "pair_id": [f"{split}-{stem}-{i}" for i in frame.index],
        # Pick-a-Pic has no prompt ids; the caption's hash is stable across files and splits.
        "prompt_id": [hashlib.sha256(c.encode()).hexdigest()[:16] for c in frame["caption"]],
        "prompt": frame["caption"].astype(str).to_numpy(),
        "image_0": frame["jpg_0"].to_numpy(), "image_1": frame["jpg_1"].to_numpy(),
        "label": pd.to_numeric(frame["label_0"], errors="coerce").to_numpy(),
        "examples_per_prompt": frame["num_example_per_prompt"].to_numpy()})
    return validate_pairs(out[PAIR_COLUMNS], origin)


def convert_pickapic(spec: dict[str, Any], split: str, out_dir, *, root=".") -> None:
    from spo.io import atomic_path, write_parquet_atomic

    with atomic_path(out_dir, is_dir=True) as tmp:
        for i, file in enumerate(source_files(spec, root)):
            pairs = to_pairs(pd.read_parquet(file), split, str(file))
            write_parquet_atomic(tmp / f"part-{i:04d}.parquet", pairs)
