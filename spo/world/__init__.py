"""The tiny world: a procedural text-to-image world and the tiny models pretrained on it.

``grammar`` (captions, held-out combinations), ``render`` (images), ``detect`` (the adherence
detector), ``data`` / ``steps`` / ``pretrain`` / ``pretrain_unet`` (pretraining, ``python -m spo
pretrain-tiny``), ``manifest`` (the shipped weights under ``data/tiny-world/`` and their hashes).
"""
