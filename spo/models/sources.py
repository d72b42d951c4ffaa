"""Resolve a config ``source`` (hub id + pinned revision, local path, or tiny) to something loadable.

One function family serves every model the harness loads: pipelines, UNets, LoRAs, scorer
checkpoints. Hub downloads go through ``huggingface_hub`` and honour ``HF_HUB_OFFLINE`` /
``HF_HOME``; when a model is missing offline, the error names the id, the revision and the command
that pre-downloads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from spo import layout
from spo.io import safetensors_problem, sha256_file
from spo.source_kind import is_tiny

T = TypeVar("T")


class SourceError(RuntimeError):
    """A model or checkpoint cannot be found, downloaded or verified."""


def describe(spec: dict[str, Any]) -> str:
    if "id" in spec:
        sub = f" (subfolder {spec['subfolder']})" if spec.get("subfolder") else ""
        file = f" file {spec['file']}" if spec.get("file") else ""
        return f"'{spec['id']}' at revision {spec['revision']}{file}{sub}"
    if "path" in spec:
        return f"local path '{spec['path']}'"
    return "a tiny random-init model"


def _download_hint(spec: dict[str, Any]) -> str:
    # huggingface_hub's CLI is `hf` (its `huggingface-cli` is gone since huggingface_hub 1.0)
    repo_type = spec.get("repo_type", "model")
    cmd = f"hf download {spec['id']} --revision {spec['revision']}"
    if repo_type != "model":
        cmd += f" --repo-type {repo_type}"
    if spec.get("file"):
        cmd += f" {spec.get('subfolder', '') + '/' if spec.get('subfolder') else ''}{spec['file']}"
    return (f"pre-download it on a machine with internet access with `{cmd}` (into the same HF_HOME, "
            f"now {os.environ.get('HF_HOME', '~/.cache/huggingface')}), or download it anywhere and "
            f"set `path:` to the local copy instead of `id`/`revision`")


def is_tiny_source(spec: dict[str, Any]) -> bool:
    """A tiny stand-in rather than a real checkpoint: built by the DAG (``tiny:``), or a model of
    a shipped tiny world (a ``path:`` inside ``data/tiny-world``). Tiny sources run on the CPU
    and their numbers are never compared with the paper's."""
    if is_tiny(spec):
        return True
    if "path" in spec:
        from spo.world.manifest import world_root_of

        return world_root_of(spec["path"]) is not None
    return False


def shipped_manifest(spec: dict[str, Any]) -> str | None:
    """The manifest of the shipped tiny world a ``path:`` source lies in (a DAG input: a rebuilt
    world reruns what used it), else None."""
    if "path" not in spec:
        return None
    from spo.world.manifest import MANIFEST, world_root_of

    root = world_root_of(spec["path"])
    if root is None:
        return None
    try:
        return str((root / MANIFEST).relative_to(Path.cwd()))
    except ValueError:
        return str(root / MANIFEST)


def local_root(spec: dict[str, Any], tiny_dir: str | os.PathLike | None) -> Path | None:
    """The local folder for a path or tiny source; None for a hub source."""
    if "path" in spec:
        root = Path(spec["path"])
        from spo.world.manifest import ShippedWorldError, check_path, world_root_of

        if not root.exists():
            if world_root_of(root.parent) is not None:  # inside the shipped tiny world: say how to get it back
                check_path(root.parent)
            raise SourceError(f"{describe(spec)} does not exist; fix `path:` in the config or create it")
        try:
            check_path(root)  # a shipped tiny-world model: every file must match its manifest
        except ShippedWorldError as exc:
            raise SourceError(str(exc)) from None
        return root
    if is_tiny(spec):
        if tiny_dir is None:
            raise SourceError("a tiny source needs the folder the DAG built it in (tiny_dir)")
        root = Path(tiny_dir)
        if not root.exists():
            raise SourceError(f"the tiny model folder '{root}' does not exist; build it with "
                              f"`snakemake --cores 1 {dag_target(root)}`")
        return root
    return None


# The DAG's folders of tiny models (rules tiny_pipeline, tiny_metric, spm_tiny_pickscore): a part
# of one (``.../pipelines/<model>/vae``) is built with the whole folder, its rule's output.
_MODELS_FOLDER = Path(layout.MODELS_ROOT).name


def dag_target(path: str | os.PathLike) -> Path:
    """The Snakemake target that builds ``path``: the model folder under ``<models_root>/<kind>/``
    (``spo.layout.TINY_MODEL_KINDS``) that contains it (``path`` itself when it is not inside one)."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in layout.TINY_MODEL_KINDS and (i == 0 or parts[i - 1] == _MODELS_FOLDER):
            return Path(*parts[:i + 2])
    return Path(path)


def damaged_files(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """The safetensors files under ``root`` that are not whole (truncated, bad header)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors")) if root.is_dir() else []
    return [(f, why) for f in files if f.suffix == ".safetensors" and (why := safetensors_problem(f))]


def damaged_message(spec: dict[str, Any], root: Path, damaged: list[tuple[Path, str]],
                    tiny_dir: str | os.PathLike | None = None) -> str:
    """'<file>: <what is wrong>; <how to get a whole copy>' for a local or DAG-built source."""
    first, why = damaged[0]
    more = f" (and {len(damaged) - 1} more damaged files)" if len(damaged) > 1 else ""
    if is_tiny(spec):
        target = dag_target(tiny_dir if tiny_dir is not None else root)
        fix = (f"delete '{target}' and rebuild it with `snakemake --cores 1 {target}` (it was "
               f"written by an interrupted job or damaged since)")
    else:
        fix = (f"the copy at `path: {spec.get('path', root)}` is incomplete: copy or download it "
               f"again (e.g. `hf download <id> --revision <commit> --local-dir {root}`)")
    return f"cannot load {describe(spec)}: '{first}' {why}{more}; {fix}"


def from_pretrained(loader: Callable[..., T], spec: dict[str, Any], *,
                    tiny_dir: str | os.PathLike | None = None, **kwargs: Any) -> T:
    """Call a ``from_pretrained``-style ``loader`` on the source, with a clear error when it fails.

    Args:
        loader: e.g. ``StableDiffusionPipeline.from_pretrained`` or ``UNet2DConditionModel.from_pretrained``.
        spec: the config's source mapping.
        tiny_dir: where the DAG wrote the tiny stand-in, for ``tiny`` sources.
        kwargs: passed through (dtype, variant, ...).
    """
    root = local_root(spec, tiny_dir)
    if spec.get("subfolder"):
        kwargs["subfolder"] = spec["subfolder"]
    if root is not None:
        try:
            return loader(str(root), local_files_only=True, **kwargs)
        except Exception:  # noqa: BLE001 - a damaged file gets a message naming it, else re-raised
            damaged = damaged_files(root / spec.get("subfolder", ""))
            if not damaged:
                raise
            raise SourceError(damaged_message(spec, root, damaged, tiny_dir)) from None
    try:
        return loader(spec["id"], revision=spec["revision"], **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:  # hub errors subclass OSError
        raise SourceError(f"cannot load {describe(spec)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}\n"
                          f"It is not in the local cache and the hub cannot be reached (or is "
                          f"disabled with HF_HUB_OFFLINE=1): {_download_hint(spec)}") from exc


def fetch_file(spec: dict[str, Any], *, tiny_dir: str | os.PathLike | None = None,
               default_file: str | None = None) -> Path:
    """Resolve a single checkpoint file (``file:`` in the spec), verify its sha256 when given."""
    file = spec.get("file", default_file)
    root = local_root(spec, tiny_dir)
    if root is not None:
        path = root
        if root.is_dir():
            if not file:
                raise SourceError(f"{describe(spec)} is a folder; name the checkpoint with `file:`")
            path = root / spec.get("subfolder", "") / file
        if not path.is_file():
            raise SourceError(f"checkpoint file '{path}' does not exist; fix `path:`/`file:` in the config")
    else:
        if not file:
            raise SourceError(f"{describe(spec)}: name the checkpoint file with `file:`")
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(spec["id"], file, subfolder=spec.get("subfolder") or None,
                                        revision=spec["revision"],
                                        repo_type=spec.get("repo_type", "model")))
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot fetch {describe({**spec, 'file': file})}: "
                              f"{type(exc).__name__}; {_download_hint({**spec, 'file': file})}") from exc
    if spec.get("sha256"):
        found = sha256_file(path)
        if found != spec["sha256"]:
            raise SourceError(f"checksum mismatch for '{path}': expected sha256 {spec['sha256']}, "
                              f"found {found}; the file is corrupt or another version: delete it and "
                              f"download again, or fix `sha256:` if the config is wrong")
    return path


def snapshot(spec: dict[str, Any], *, tiny_dir: str | os.PathLike | None = None,
             allow_patterns: list[str] | None = None) -> Path:
    """Resolve a whole repository (or local folder) to a local folder."""
    root = local_root(spec, tiny_dir)
    if root is not None:
        return root / spec.get("subfolder", "")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec["id"], revision=spec["revision"],
                                   repo_type=spec.get("repo_type", "model"),
                                   allow_patterns=allow_patterns)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot fetch {describe(spec)}: {type(exc).__name__}; "
                          f"{_download_hint(spec)}") from exc
    return Path(folder) / spec.get("subfolder", "")
