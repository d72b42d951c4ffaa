"""The shipped tiny world (``data/tiny-world/``): its manifest, and the check every load makes.

``manifest.json`` (written by ``pretrain-tiny --part release``) records the recipe (the world's
grammar and ``world.pretrain`` as resolved), the seed, the exact commands, the code commit, the
environment, and the sha256 and size of every shipped file. ``verify`` compares a folder with its
manifest; ``check_path`` runs it (once per process) for any model path inside a shipped world, so a
missing or altered file stops the job with the file, the expected hash and the command that
rebuilds it, instead of loading other weights silently.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from spo.layout import pretrain_release_dir

FORMAT, VERSION = "spo-tiny-world", 1
MANIFEST = "manifest.json"
SHIPPED = ("sd15", "sdxl", "pickscore", "sdxl-half-way")
REBUILD = (f"`snakemake --cores 2 pretrain_tiny` rebuilds the world into {pretrain_release_dir()} "
           "(then copy it over data/tiny-world), or `git checkout -- data/tiny-world` restores "
           "the committed files")


class ShippedWorldError(RuntimeError):
    """A shipped tiny-world file is missing or differs from its manifest."""


def _ignored(path: Path) -> bool:
    return path.name == MANIFEST or path.name.startswith(".snakemake")


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: sha256 and size} of every regular file (symlinks are ``link_table``'s)."""
    from spo.io import sha256_file

    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and not _ignored(p)
            and not any(q.is_symlink() for q in p.relative_to(root).parents if str(q) != ".")}


def link_table(root: Path) -> dict[str, str]:
    """{relative path: link target} of every symlink (a part two pipelines share, stored once)."""
    return {p.relative_to(root).as_posix(): str(p.readlink()) for p in sorted(root.rglob("*"))
            if p.is_symlink()}


def read_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShippedWorldError(f"'{path}' does not exist; {REBUILD}")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ShippedWorldError(f"'{path}' is not a tiny-world manifest (format {data.get('format')!r})")
    return data


def verify(root: str | Path, only: str | None = None) -> list[str]:
    """Problems of ``root`` against its manifest, one line each ([] when every file matches).

    ``only``: a sub-folder (``sd15``) to check instead of everything.
    """
    from spo.io import sha256_file

    root = Path(root)
    manifest = read_manifest(root)
    links = manifest.get("links", {})
    prefixes = None
    if only:  # the folder's own files and those of the folders its links point to
        prefixes = [only.rstrip("/") + "/"]
        prefixes += [os.path.normpath(os.path.join(os.path.dirname(name), target)) + "/"
                     for name, target in links.items() if name.startswith(prefixes[0])]
    problems = []
    for name, target in sorted(links.items()):
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        path = root / name
        if path.is_symlink() and str(path.readlink()) == target:
            continue
        # a copy that followed the link (shutil.copytree's default, an archive without links)
        # is as good when it holds the same files
        shared = root / os.path.normpath(os.path.join(os.path.dirname(name), target))
        if path.is_dir() and not path.is_symlink() and file_table(path) == file_table(shared):
            continue
        problems.append(f"shipped link '{path}' should point to '{target}' (a part shared by two "
                        f"pipelines), or be a copy of it; it is missing or differs")
    for name, entry in sorted(manifest["files"].items()):
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        path = root / name
        if not path.is_file():
            problems.append(f"shipped file '{path}' is missing (expected sha256 {entry['sha256']})")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"shipped file '{path}' has sha256 {sha256_file(path)}, the manifest "
                            f"expects {entry['sha256']}")
    return problems


def world_root_of(path: str | Path) -> Path | None:
    """The shipped world folder holding ``path`` (a manifest in it or a parent), else None."""
    path = Path(path).resolve()
    for folder in [path, *path.parents][:4]:
        if (folder / MANIFEST).is_file():
            try:
                if json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT:
                    return folder
            except ValueError:
                return None
    return None


@lru_cache(maxsize=None)
def _checked(root: str, only: str | None) -> None:
    problems = verify(root, only)
    if problems:
        raise ShippedWorldError("the shipped tiny world does not match its manifest:\n  "
                                + "\n  ".join(problems[:10]) + f"\n{REBUILD}")


def check_path(path: str | Path) -> None:
    """Verify the shipped files a model path reads (a no-op for paths outside a shipped world)."""
    root = world_root_of(path)
    if root is None:
        return
    rel = Path(path).resolve().relative_to(root).parts
    _checked(str(root), rel[0] if rel else None)
