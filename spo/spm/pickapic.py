"""Pick-a-Pic v1 (``yuvalkirstain/pickapic_v1``) -> the pairs schema of ``spo.spm.data``.

Source columns used: ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (1, 0 or 0.5 for a tie),
``num_example_per_prompt`` and, when present, ``has_label`` and ``label_1``. Rows without a label
are dropped from validation, as the official dataset's ``validation_unique`` filter; in train they
are dropped too unless ``spm.datasets.<name>.unlabelled: keep``, the official loader's choice
(RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/datasetss/pick_a_pic_spm_dataset.py,
``keep_only_with_label: False``), which feeds them to the loss with the labels the file holds: a
row whose ``label_0 + label_1`` is not 1 (no preference recorded) becomes label -1, which the loss
weighs like the official criterion (in the 1/examples-per-prompt normalisation, no gradient).
Ties are kept for training. Files come from the
hub (``hub_parquet``: id, pinned revision, a glob of the split's files) or a local path; one output
Parquet per input file, so a latent cache job per file stays small.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from spo.spm.data import PAIR_COLUMNS, ROW_GROUP_SIZE, PairsError, validate_pairs

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
                         f"pre-download them (`hf download {hub['id']} --repo-type dataset "
                         f"--revision {hub['revision']} --include '{hub['pattern']}'`) or give `path:`") from exc


def to_pairs(frame: pd.DataFrame, split: str, origin: str, *, first_row: int = 0,
             unlabelled: str = "drop") -> pd.DataFrame:
    """Map one Pick-a-Pic table (or a chunk of one: rows ``first_row``.. of its file) to the pairs
    schema (pair ids ``<split>-<file stem>-<row in the file>``); ``unlabelled``: "drop" or "keep"
    the rows whose ``has_label`` is false (see the module docstring)."""
    if unlabelled not in ("drop", "keep"):
        raise PairsError(f"unlabelled rows: {unlabelled!r}; allowed 'drop', 'keep'")
    missing = [c for c in SOURCE_COLUMNS if c not in frame]
    if missing:
        raise PairsError(f"Pick-a-Pic file '{origin}' lacks the columns {missing}")
    frame = frame.reset_index(drop=True)
    frame.index = frame.index + first_row
    label = pd.to_numeric(frame["label_0"], errors="coerce")
    if "has_label" in frame:
        labelled = frame["has_label"].astype(bool)
        if unlabelled == "keep":
            other = (pd.to_numeric(frame["label_1"], errors="coerce") if "label_1" in frame
                     else 1 - label)
            label = label.where(labelled | ((label + other) == 1), -1.0)
        else:
            frame, label = frame[labelled], label[labelled]
    stem = Path(origin).stem
    out = pd.DataFrame({
        "pair_id": [f"{split}-{stem}-{i}" for i in frame.index],
        # Pick-a-Pic has no prompt ids; the caption's hash is stable across files and splits.
        "prompt_id": [hashlib.sha256(c.encode()).hexdigest()[:16] for c in frame["caption"]],
        "prompt": frame["caption"].astype(str).to_numpy(),
        "image_0": frame["jpg_0"].to_numpy(), "image_1": frame["jpg_1"].to_numpy(),
        "label": label.to_numpy(),
        "examples_per_prompt": frame["num_example_per_prompt"].to_numpy()})
    return validate_pairs(out[PAIR_COLUMNS], origin) if len(out) else out[PAIR_COLUMNS]


def convert_pickapic(spec: dict[str, Any], split: str, out_dir, *, root=".", chunk: int = ROW_GROUP_SIZE,
                     unlabelled: str = "drop") -> None:
    """One pairs file per source file, converted ``chunk`` rows at a time (a Pick-a-Pic file is
    ~1 GB of JPEGs: never held whole) and written in row groups of ``chunk`` pairs, which the
    streaming trainer reads one at a time (``spo.spm.stream``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spo.io import atomic_path

    with atomic_path(out_dir, is_dir=True) as tmp:
        for i, file in enumerate(source_files(spec, root)):
            source = pq.ParquetFile(file)
            cols = [c for c in SOURCE_COLUMNS + ["has_label", "label_1"] if c in source.schema_arrow.names]
            writer, first, written = None, 0, 0
            try:
                for batch in source.iter_batches(batch_size=chunk, columns=cols):
                    pairs = to_pairs(batch.to_pandas(), split, str(file), first_row=first,
                                     unlabelled=unlabelled)
                    first += batch.num_rows
                    if pairs.empty:
                        continue
                    table = pa.Table.from_pandas(pairs, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp / f"part-{i:04d}.parquet", table.schema)
                    writer.write_table(table, row_group_size=chunk)
                    written += len(pairs)
            finally:
                if writer is not None:
                    writer.close()
            if not written:
                raise PairsError(f"Pick-a-Pic file '{file}' has no labelled rows")
