"""Atomic file and folder writes, and provenance records.

Every stage writes through these helpers so that an interrupted job leaves either the old output or
nothing, never a half-written file (Snakemake would otherwise see a fresh mtime on a broken file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``.

    Args:
        path: the final file or folder.
        is_dir: yield a freshly created temporary folder instead of a file name.

    On an exception the temporary is removed and ``path`` is left as it was. An existing folder
    is replaced without a moment where neither it nor the new one is on disk under some name: the
    old one is renamed aside (``.<name>.<random>.old``), the new one renamed in, and only then is
    the old one deleted; a kill between the two renames leaves the old folder aside, whole.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and (final.exists() or final.is_symlink()):
            _replace_dir(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _replace_dir(new: Path, final: Path) -> None:
    """Put folder ``new`` at ``final`` where a file or folder already is: rename the old one aside,
    rename the new one in (putting the old one back if that fails), then delete the old one."""
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    aside.rmdir()  # a free name next to ``final`` (same file system: the renames are atomic)
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def json_safe(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every non-finite float (NaN, +-inf, which JSON cannot hold: ``json.dumps``
    writes a bare ``NaN``) replaced by None, and the dotted keys of the replaced values."""
    import math

    replaced: list[str] = []

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(key)
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    return walk(obj, ""), replaced


def json_line(record: dict[str, Any]) -> str:
    """One line of a JSON-lines log, valid JSON: non-finite numbers become null and their keys
    are listed under ``"nonfinite"`` (the flag a reader checks instead of parsing ``NaN``)."""
    clean, replaced = json_safe(record)
    if replaced:
        clean["nonfinite"] = replaced
    return json.dumps(clean, allow_nan=False) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as Parquet, atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hex digest of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole by ``content_digest``
SAMPLED_BLOCKS, BLOCK_BYTES = 16, 256 << 10


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(f"{size}\n".encode())
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            return
        # A large file (a multi-GB checkpoint, a Parquet shard of images): its size and 16 blocks
        # of 256 KiB spread evenly from the first byte to the last. Retraining or re-exporting
        # changes every block of a weight file, so this tells two versions apart in a moment.
        for i in range(SAMPLED_BLOCKS):
            handle.seek((size - BLOCK_BYTES) * i // (SAMPLED_BLOCKS - 1))
            digest.update(handle.read(BLOCK_BYTES))


def content_digest(path: str | os.PathLike) -> str:
    """A SHA-256 over a file's or a folder's content: every file (hidden ones, such as a save in
    progress, left out) by relative path, size and bytes (files over ``FULL_HASH_BYTES``: size and
    ``SAMPLED_BLOCKS`` evenly spread blocks). What a training records of its inputs."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _file_digest(path, digest)
        return digest.hexdigest()
    if not path.is_dir():
        raise FileNotFoundError(f"'{path}' does not exist")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(rel.as_posix().encode() + b"\0")
        _file_digest(file, digest)
    return digest.hexdigest()


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` is a whole safetensors file, else what is wrong with it (truncated, an
    unreadable header, ...): checked from the header alone, without loading the tensors."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"it has {size} bytes, too few for a safetensors header"
            length = int.from_bytes(head, "little")
            if length > size - 8:
                return (f"its header claims {length} bytes but the file has {size}: it is "
                        f"truncated (an interrupted write or copy)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"it cannot be read ({exc})"
    except ValueError as exc:
        return f"its header is not valid JSON ({exc}): it is damaged or not a safetensors file"
    try:
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items()
                   if key != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as exc:
        return f"its header is malformed ({type(exc).__name__}: {exc}): it is damaged"
    if 8 + length + end > size:
        return (f"it has {size} bytes but its tensors end at byte {8 + length + end}: it is "
                f"truncated (an interrupted write or copy)")
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(stage: str, resolved: dict[str, Any]) -> dict[str, Any]:
    """What a stage resolved, for the record written beside its output (DESIGN principle 4)."""
    from importlib import metadata

    versions = {}
    for dist in ("torch", "diffusers", "transformers", "open_clip_torch", "peft", "accelerate",
                 "numpy", "pandas", "pillow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    from spo import __version__
    from spo.environment import summary

    return {
        "stage": stage,
        "spo_version": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "environment": summary(),
        "resolved": resolved,
    }
