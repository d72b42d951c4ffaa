"""The baseline trainers' own ``train.<algorithm>`` blocks (Diffusion-DPO, DDPO, D3PO) as frozen
dataclasses, torch-free. Each field declares its range (``spo.config_spec``); ``TrainSettings``
parses the block with the rest of ``train`` when the config loads (DAG start, every stage), and a
trainer gets the parsed object from ``TrainSettings.algorithm_settings()``."""

from __future__ import annotations

from dataclasses import dataclass

from spo.config_spec import choice, flag, int_pair, integer, number, text

KEY = "train.diffusion_dpo"


@dataclass(frozen=True)
class DPOSettings:
    """The ``train.diffusion_dpo`` block (LoRA, lr, weight decay, clip, seed and precision are the
    shared ``train.*`` keys; SPO's sampler keys such as ``train.beta`` are not used)."""

    # a key of spm.datasets: trains on its train split's pairs
    data: str = text(why="the name of a pair dataset under spm.datasets")
    beta: float = number(5000.0, gt=0, why="Salesforce convention; official 5000")
    steps: int = integer(2000, ge=1, why="optimizer steps; official 2000")
    batch_size: int = integer(2048, ge=1, why="pairs per optimizer step, all processes; official 2048")
    micro_batch: int = integer(1, ge=1, why="pairs per forward pass per process")
    # linear warm-up, then constant (official: 500 SD-1.5, 200 SDXL)
    warmup_steps: int = integer(0, ge=0)
    empty_prompt_rate: float = number(0.2, ge=0, lt=1, why="prompts replaced by ''; official 0.2")
    hflip: bool = flag(True, why="random horizontal flip of encoded images, not cached latents")
    optimizer: str = choice("adamw", ("adamw", "adafactor"), why="adafactor: the official SDXL run")
    full_unet: bool = flag(False, why="true: every UNet weight, the official recipe; false: a LoRA")
    # t ~ U{lo..hi} (official: all of 0..999)
    timestep_range: tuple = int_pair((0, 999), why="below the scheduler's num_train_timesteps")

    @classmethod
    def cross_checks(cls, block: dict, key: str) -> list[str]:
        from spo.config_spec import bad

        micro = block.get("micro_batch", cls.micro_batch)
        size = block.get("batch_size", cls.batch_size)
        if size % micro:
            return [bad(f"{key}.batch_size", size, f"it must be a multiple of '{key}.micro_batch' ({micro})")]
        return []


@dataclass(frozen=True)
class DDPOSettings:
    """``train.ddpo``: the official config/base.py defaults."""

    clip_range: float = number(1e-4, gt=0, why="PPO clip range")
    adv_clip_max: float = number(5.0, gt=0, why="advantages clipped to [-adv_clip_max, adv_clip_max]")
    timestep_fraction: float = number(1.0, gt=0, le=1, why="share of each trajectory's steps trained")
    inner_epochs: int = integer(1, ge=1, why="passes over a round's samples")
    images_per_prompt: int = integer(1, ge=1, why="trajectories per prompt per round")
    per_prompt_stat_tracking: bool = flag(True)
    buffer_size: int = integer(16, ge=1, why="per-prompt reward buffer")
    min_count: int = integer(16, ge=1, why="below it, the batch statistics are used")
    sample_batch_size: int | None = integer(None, ge=1, nullable=True,
                                            why="trajectories per sampling call; null: all")


@dataclass(frozen=True)
class D3POSettings:
    """``train.d3po``."""

    timestep_fraction: float = number(1.0, gt=0, le=1, why="share of each trajectory pair's steps trained")
    same_initial_noise: bool = flag(True, why="the official pairing: both trajectories start at one x_T")
    sample_batch_size: int | None = integer(None, ge=1, nullable=True,
                                            why="trajectories per sampling call; null: all")
