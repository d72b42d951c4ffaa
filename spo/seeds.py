"""Seed policy: an image's seed is a pure function of (base seed, prompt id, image index).

Any shard can therefore be regenerated alone and gives the same images, whatever the shard size
or batch order. The hash is SHA-256 (stable across Python versions and platforms, unlike hash()).
"""

from __future__ import annotations

import hashlib


def image_seed(base_seed: int, prompt_id: str, image_index: int) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed``; deterministic, well mixed."""
    key = f"{base_seed}\x1f{prompt_id}\x1f{image_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & ((1 << 63) - 1)
