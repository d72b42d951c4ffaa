"""The baseline trainers' own ``train.<algorithm>`` blocks (Diffusion-DPO, DDPO, D3PO) as frozen
dataclasses, torch-free: ``TrainSettings`` parses them when the config loads (DAG start, every
light stage), and the trainers (spo/training/{diffusion_dpo,ddpo,d3po}.py) import them from here."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the settings module imports this one lazily
    from spo.training.settings import TrainSettings

KEY = "train.diffusion_dpo"


def parse_block(cls, block: dict | None, algorithm: str):
    """Build the dataclass ``cls`` from ``train.<algorithm>``; unknown keys name the allowed ones."""
    block = dict(block or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"config keys {[f'train.{algorithm}.{u}' for u in unknown]} are not "
                         f"allowed; allowed: {', '.join(sorted(known))}")
    return cls(**block)


@dataclass(frozen=True)
class DPOSettings:
    """The ``train.diffusion_dpo`` block (LoRA, lr, weight decay, clip, seed and precision are the
    shared ``train.*`` keys; SPO's sampler keys such as ``train.beta`` are not used)."""

    data: str                       # a key of spm.datasets: trains on its train split's pairs
    beta: float = 5000.0            # Salesforce convention (official launchers: 5000)
    steps: int = 2000               # optimizer steps (official: 2000)
    batch_size: int = 2048          # pairs per optimizer step, all processes (official: 2048)
    micro_batch: int = 1            # pairs per forward pass per process (gradient accumulation)
    warmup_steps: int = 0           # linear warm-up, then constant (official: 500 SD-1.5, 200 SDXL)
    empty_prompt_rate: float = 0.2  # prompts replaced by "" (official default 0.2)
    hflip: bool = True              # random horizontal flip of encoded images (not cached latents)
    optimizer: str = "adamw"        # adamw (train.weight_decay) | adafactor (official SDXL)
    full_unet: bool = False         # true: every UNet weight (official); false: a LoRA
    timestep_range: tuple = (0, 999)  # t ~ U{lo..hi} (official: all of 0..999)

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"config key '{KEY}.{key}' is {getattr(self, key)!r}; {why}")
        if not isinstance(self.data, str) or not self.data:
            bad("data", "give the name of a pair dataset under spm.datasets")
        if not self.beta > 0:
            bad("beta", "it must be > 0 (Salesforce convention; official 5000)")
        for key in ("steps", "batch_size", "micro_batch"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "it must be an integer >= 1")
        if self.batch_size % self.micro_batch:
            bad("batch_size", f"it must be a multiple of {KEY}.micro_batch ({self.micro_batch})")
        if self.warmup_steps < 0:
            bad("warmup_steps", "it must be >= 0")
        if not 0.0 <= self.empty_prompt_rate < 1.0:
            bad("empty_prompt_rate", "use a rate in [0, 1)")
        if self.optimizer not in ("adamw", "adafactor"):
            bad("optimizer", "allowed: 'adamw', 'adafactor'")
        lo_hi = tuple(self.timestep_range)
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
            bad("timestep_range", "give [lo, hi] with 0 <= lo <= hi < the scheduler's num_train_timesteps")
        if not isinstance(self.full_unet, bool):
            bad("full_unet", "it must be true (train every UNet weight, the official recipe) or false (a LoRA)")

    @classmethod
    def from_train(cls, settings: TrainSettings) -> "DPOSettings":
        block = settings.diffusion_dpo
        if block is None:
            raise ValueError(f"config key '{KEY}' is missing; 'train.algorithm: diffusion-dpo' needs "
                             f"it (at least '{KEY}.data: <spm.datasets name>')")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"config keys {[KEY + '.' + k for k in unknown]} are not allowed; "
                             f"allowed: {', '.join(sorted(known))}")
        if "data" not in block:
            raise ValueError(f"config key '{KEY}.data' is missing; name a pair dataset under spm.datasets")
        return cls(**block)


@dataclass(frozen=True)
class DDPOSettings:
    """``train.ddpo``: the official config/base.py defaults."""

    clip_range: float = 1e-4           # PPO clip range
    adv_clip_max: float = 5.0          # advantages clipped to [-adv_clip_max, adv_clip_max]
    timestep_fraction: float = 1.0     # share of each trajectory's steps trained
    inner_epochs: int = 1              # passes over a round's samples
    images_per_prompt: int = 1         # trajectories per prompt per round
    per_prompt_stat_tracking: bool = True
    buffer_size: int = 16              # per-prompt reward buffer
    min_count: int = 16                # below it, the batch statistics are used
    sample_batch_size: int | None = None   # trajectories per sampling call (None: all)

    def __post_init__(self):
        def bad(key, why):
            raise ValueError(f"config key 'train.ddpo.{key}' is {getattr(self, key)!r}; {why}")
        if not self.clip_range > 0:
            bad("clip_range", "it must be > 0")
        if not self.adv_clip_max > 0:
            bad("adv_clip_max", "it must be > 0")
        if not 0 < self.timestep_fraction <= 1:
            bad("timestep_fraction", "it must be in (0, 1]")
        for key in ("inner_epochs", "images_per_prompt", "buffer_size", "min_count"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                bad(key, "it must be an integer >= 1")
        if self.sample_batch_size is not None and self.sample_batch_size < 1:
            bad("sample_batch_size", "it must be >= 1 or null")

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> "DDPOSettings":
        return parse_block(cls, settings.ddpo, "ddpo")


@dataclass(frozen=True)
class D3POSettings:
    """``train.d3po``."""

    timestep_fraction: float = 1.0     # share of each trajectory pair's steps trained
    same_initial_noise: bool = True    # the official pairing: both trajectories start at one x_T
    sample_batch_size: int | None = None   # trajectories per sampling call (None: all)

    def __post_init__(self):
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"config key 'train.d3po.timestep_fraction' is {self.timestep_fraction}; "
                             f"it must be in (0, 1]")
        if not isinstance(self.same_initial_noise, bool):
            raise ValueError(f"config key 'train.d3po.same_initial_noise' is "
                             f"{self.same_initial_noise!r}; it must be true or false")
        if self.sample_batch_size is not None and self.sample_batch_size < 1:
            raise ValueError(f"config key 'train.d3po.sample_batch_size' is {self.sample_batch_size}; "
                             f"it must be >= 1 or null")

    @classmethod
    def from_settings(cls, settings: TrainSettings) -> "D3POSettings":
        return parse_block(cls, settings.d3po, "d3po")
