"""The step-wise resampler's settings (``spo.sampling.stepwise``), torch-free: the config check at
DAG start and every light stage (tables, report) import them without paying torch's import."""

from __future__ import annotations

from dataclasses import dataclass

NEXT_INIT = ("random", "win", "lose")
WINDOW_TILINGS = ("split", "extend")


@dataclass(frozen=True)
class SamplerSettings:
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    k: int = 4
    inner_steps: int = 1
    window_tiling: str | None = None   # "split" | "extend" | None: the model family's official one
    timestep_range: tuple[int, int] = (0, 750)
    threshold: float = 0.3
    pair_mode: str = "best-worst"
    next_init: str = "random"

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"config key 'train.k' is {self.k}; it must be >= 2 (a pair needs two candidates)")
        if self.inner_steps < 1:
            raise ValueError(f"config key 'train.inner_steps' is {self.inner_steps}; it must be >= 1")
        if self.window_tiling is not None and self.window_tiling not in WINDOW_TILINGS:
            raise ValueError(f"config key 'train.window_tiling' is {self.window_tiling!r}; allowed: "
                             f"'split' (official SD-1.5 pipeline), 'extend' (official SDXL pipeline) or null")
        lo, hi = self.timestep_range
        if not 0 <= lo <= hi:
            raise ValueError(f"config key 'train.timestep_range' is [{lo}, {hi}]; it needs 0 <= lo <= hi")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"config key 'train.threshold' is {self.threshold}; it must be in [0, 1)")
        if self.next_init not in NEXT_INIT:
            raise ValueError(f"config key 'train.next_init' is {self.next_init!r}; allowed: {NEXT_INIT}")
