"""The step-wise resampler's settings (``spo.sampling.stepwise``), torch-free: the config check at
DAG start and every light stage (tables, report) import them without paying torch's import.

Each field declares its range once (``spo.config_spec``); ``TrainSettings`` reuses these
declarations for its sampler keys, and ``spo.config_spec.parse`` checks a config block against
them. The class itself does not re-check: it is built from a parsed ``TrainSettings``.
"""

from __future__ import annotations

from dataclasses import dataclass

from spo.config_spec import choice, int_pair, integer, number

NEXT_INIT = ("random", "win", "lose")
WINDOW_TILINGS = ("split", "extend")
PAIR_MODES = ("best-worst", "random")  # spo.preference.selection.select_pairs


@dataclass(frozen=True)
class SamplerSettings:
    num_inference_steps: int = integer(20, ge=1)
    guidance_scale: float = number(5.0, ge=0)
    eta: float = number(1.0, ge=0, le=1, why="the DDIM noise scale; 1 is DDPM-like sampling")
    k: int = integer(4, ge=2, why="a pair needs two candidates")
    inner_steps: int = integer(1, ge=1, why="MSPO's j; 1 is plain SPO")
    # "split" | "extend" | None: the model family's official one
    window_tiling: str | None = choice(None, WINDOW_TILINGS, nullable=True,
                                       why="'split' official SD-1.5, 'extend' official SDXL, null the family's")
    timestep_range: tuple[int, int] = int_pair((0, 750))
    threshold: float = number(0.3, ge=0, lt=1)
    pair_mode: str = choice("best-worst", PAIR_MODES)
    next_init: str = choice("random", NEXT_INIT)
