"""Which device a stage's process computes on: one answer for every stage.

Generation, scoring and the latent cache run one process per job; the trainings (SPO / MSPO, the
baselines, the SPM) may run one process per GPU under ``accelerate launch --multi_gpu``. Both get
their device here, so a single-GPU job and rank r of a multi-GPU job follow the same rule.
"""

from __future__ import annotations

import os


def process_device() -> str:
    """The device this process computes on: ``cuda:<LOCAL_RANK>`` under a launcher that starts one
    process per GPU (``accelerate launch --multi_gpu`` and ``torchrun`` set ``LOCAL_RANK``; the
    index modulo the visible GPUs, as accelerate assigns them), ``cuda`` for one process, else
    ``cpu``. A plain ``cuda`` in every process would load all N copies of the model on GPU 0."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK")
    return "cuda" if local is None else f"cuda:{int(local) % torch.cuda.device_count()}"
