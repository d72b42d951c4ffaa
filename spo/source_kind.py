"""What a config ``source`` mapping is, named once (instead of ``"tiny" in spec`` in every module).

A model, metric-weight or pair-dataset source is exactly one kind (the schema's ``oneOf``):
``id`` + ``revision`` (hub), ``path`` (a local folder, the shipped tiny world included), or
``tiny`` (a random-init stand-in the DAG builds itself).
"""

from __future__ import annotations

from typing import Any

_KINDS = (("id", "hub"), ("path", "path"), ("tiny", "tiny"), ("hub_parquet", "hub_parquet"), ("url", "url"))


def source_kind(spec: dict[str, Any]) -> str:
    """'hub', 'path', 'tiny', 'hub_parquet' (a Parquet split on the hub) or 'url'."""
    for key, kind in _KINDS:
        if key in spec:
            return kind
    raise ValueError(f"a source needs one of {', '.join(k for k, _ in _KINDS)}; got keys {sorted(spec)}")


def is_tiny(spec: dict[str, Any]) -> bool:
    """A random-init stand-in the DAG builds (``tiny:``); the shipped tiny world is a ``path:``
    source and is not (``spo.models.sources.is_tiny_source`` counts both as tiny)."""
    return "tiny" in spec
