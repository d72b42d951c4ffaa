"""Prompt sets: load, validate, shard.

A prompt set is a table with the columns ``prompt_id`` (str, unique) and ``prompt`` (str, non-empty),
loaded from a TSV in the repository or from a Parquet split on the hub (Pick-a-Pic v1
``validation_unique`` in the paper profile). Prompt ids are what seeds and tables key on, so they must
be stable: TSV ids are given in the file; hub rows get their row index, zero-padded.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pandas as pd


class PromptError(ValueError):
    """A prompt file is empty, malformed or has duplicate ids."""


def read_utf8(path: Path) -> str:
    """The text of a prompt file; a byte sequence that is not UTF-8 is a ``PromptError`` naming
    the file, the line and column, the bytes, and how to convert the file."""
    blob = path.read_bytes()
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = blob.count(b"\n", 0, exc.start) + 1
        column = exc.start - (blob.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PromptError(
            f"prompt file '{path}' is not UTF-8: line {line}, column {column} has the bytes "
            f"{blob[exc.start:exc.end + 3]!r} ({exc.reason}). Save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 '{path}' > '{path}.utf8' && mv '{path}.utf8' '{path}'` "
            f"(if it was written in Latin-1; `file '{path}'` guesses the encoding)") from None


def read_prompt_tsv(path: str | Path) -> pd.DataFrame:
    """Read a ``prompt_id<TAB>prompt`` file with a header line. Returns a validated frame."""
    import io

    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file '{path}' does not exist; fix `prompt_sets.<name>.source.path`")
    with io.StringIO(read_utf8(path), newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise PromptError(f"prompt file '{path}' is empty; it needs a header 'prompt_id<TAB>prompt' "
                          f"and at least one prompt")
    header, body = rows[0], [r for r in rows[1:] if r]
    if header != ["prompt_id", "prompt"]:
        raise PromptError(f"prompt file '{path}' must start with the header 'prompt_id<TAB>prompt', "
                          f"found {header!r}")
    for line_no, row in enumerate(rows[1:], start=2):
        if row and len(row) != 2:
            raise PromptError(f"prompt file '{path}' line {line_no} has {len(row)} fields, expected 2 "
                              f"(prompt_id<TAB>prompt; prompts must not contain tabs)")
    frame = pd.DataFrame(body, columns=["prompt_id", "prompt"])
    return validate_prompts(frame, str(path))


def validate_prompts(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    if frame.empty:
        raise PromptError(f"prompt set from '{origin}' is empty; add at least one prompt")
    frame = frame.astype({"prompt_id": str, "prompt": str})
    dup = frame["prompt_id"][frame["prompt_id"].duplicated()].unique().tolist()
    if dup:
        raise PromptError(f"prompt set from '{origin}' has duplicate prompt ids {dup[:5]}; "
                          f"each prompt_id must be unique")
    empty = frame["prompt_id"][frame["prompt"].str.strip() == ""].tolist()
    if empty:
        raise PromptError(f"prompt set from '{origin}' has empty prompts for ids {empty[:5]}")
    return frame.reset_index(drop=True)


def read_prompt_json(path: str | Path, sha256: str | None = None) -> pd.DataFrame:
    """Read a JSON list of ``{"caption": ..., "trainset_idx": ...}`` (SPO's 4k training prompts).

    Prompt ids are ``trainset_idx`` when present (the row in Pick-a-Pic v1's train split), else the
    position. With ``sha256`` the file's checksum is verified first.
    """
    import json

    from spo.io import sha256_file

    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file '{path}' does not exist; fix `prompt_sets.<name>.source`")
    if sha256 and sha256_file(path) != sha256:
        raise PromptError(f"checksum mismatch for '{path}': expected sha256 {sha256}, found "
                          f"{sha256_file(path)}; delete it and fetch it again")
    rows = json.loads(read_utf8(path))
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "caption" in r for r in rows):
        raise PromptError(f"prompt file '{path}' must be a JSON list of objects with a 'caption'")
    ids = [str(r.get("trainset_idx", i)) for i, r in enumerate(rows)]
    return validate_prompts(pd.DataFrame({"prompt_id": ids, "prompt": [r["caption"] for r in rows]}),
                            str(path))


def fetched_prompt_file(source: dict[str, Any], root: str | Path = ".") -> Path:
    """Where the DAG stores a ``url`` prompt source: named by its checksum, never overwritten."""
    from spo.layout import fetched_prompts

    return Path(root) / fetched_prompts(source["url"]["sha256"][:16])


def fetch_prompt_file(url: str, sha256: str, out: str | Path) -> Path:
    """Download ``url`` to ``out`` atomically, refusing it unless its sha256 matches."""
    import hashlib
    import urllib.request

    from spo.io import atomic_path

    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - config-given URL
            blob = response.read()
    except OSError as exc:
        raise PromptError(f"cannot download '{url}' ({type(exc).__name__}: {exc}); download it by "
                          f"hand to '{out}' (sha256 {sha256})") from exc
    found = hashlib.sha256(blob).hexdigest()
    if found != sha256:
        raise PromptError(f"checksum mismatch for '{url}': expected sha256 {sha256}, found {found}")
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    return Path(out)


def _source_and_count(spec: Any) -> tuple[dict[str, Any], int | None]:
    """A prompt set's source and declared count, from its ``spo.config_blocks.PromptSetSpec`` or
    a mapping of the same keys."""
    if isinstance(spec, dict):
        return spec["source"], spec.get("count")
    return spec.source, spec.count


def load_prompt_set(spec: Any, root: str | Path = ".") -> pd.DataFrame:
    """Load a prompt set from its config entry (``prompt_sets.<name>``: ``spo.config.prompt_set_spec``,
    or a mapping with ``source`` and an optional ``count``)."""
    source, count = _source_and_count(spec)
    if "path" in source:
        path = Path(root) / source["path"]
        frame = read_prompt_json(path) if path.suffix == ".json" else read_prompt_tsv(path)
    elif "url" in source:
        frame = read_prompt_json(fetched_prompt_file(source, root), source["url"]["sha256"])
    else:
        frame = _load_hub_parquet(source["hub_parquet"])
    if count is not None and len(frame) != count:
        raise PromptError(f"prompt set has {len(frame)} prompts but the config declares count "
                          f"{count}; fix `count` (it plans the shards)")
    return frame


def _load_hub_parquet(hub: dict[str, str]) -> pd.DataFrame:
    """Read one text column of a hub dataset split, downloading only the matching Parquet files."""
    import pyarrow.parquet as pq

    from spo.models.sources import snapshot

    folder = snapshot({"id": hub["id"], "revision": hub["revision"], "repo_type": "dataset"},
                      allow_patterns=[hub["pattern"]])
    files = sorted(folder.glob(hub["pattern"]))
    if not files:
        raise PromptError(f"no files match '{hub['pattern']}' in dataset {hub['id']}@{hub['revision']}")
    texts = []
    for file in files:
        texts += pq.read_table(file, columns=[hub["column"]]).column(hub["column"]).to_pylist()
    width = max(4, len(str(len(texts))))
    frame = pd.DataFrame({"prompt_id": [str(i).zfill(width) for i in range(len(texts))],
                          "prompt": texts})
    return validate_prompts(frame, f"{hub['id']}:{hub['pattern']}")


def count_prompts(spec: Any, root: str | Path = ".") -> int:
    """Number of prompts, known without downloading (``count`` for hub sources)."""
    count = _source_and_count(spec)[1]
    if count is not None:
        return int(count)
    return len(load_prompt_set(spec, root))


def num_shards(n_prompts: int, shard_size: int) -> int:
    return max(1, math.ceil(n_prompts / shard_size))


def shard_slice(frame: pd.DataFrame, shard: int, shard_size: int) -> pd.DataFrame:
    """Rows ``[shard * shard_size, (shard + 1) * shard_size)`` of the prompt set."""
    n = num_shards(len(frame), shard_size)
    if not 0 <= shard < n:
        raise PromptError(f"shard {shard} is out of range: the set has {len(frame)} prompts, "
                          f"{n} shards of {shard_size}")
    return frame.iloc[shard * shard_size:(shard + 1) * shard_size].reset_index(drop=True)
