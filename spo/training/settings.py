"""The SPO trainer's settings: a frozen dataclass built from a method's ``train:`` config block.

Each field declares its type and range once (``spo.config_spec``; the sampler keys are declared on
``SamplerSettings`` and reused here). ``from_config`` checks a block against them and against the
cross-field rules of ``cross_checks``; every problem is a ``ConfigError`` naming the key
(``methods.<name>.train.<key>`` when the config loads, ``spo.config.train_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from spo.config_spec import (ConfigError, bad, block, choice, flag, integer, mapping, number, parse,
                             same_field, text)
from spo.sampling.settings import SamplerSettings
from spo.training.baseline_settings import D3POSettings, DDPOSettings, DPOSettings

# algorithm -> trainer "module:function"; every trainer has the signature of ``train_spo``.
ALGORITHMS = {
    "spo": "spo.training.spo_trainer:train_spo",
    "diffusion-dpo": "spo.training.diffusion_dpo:train_diffusion_dpo",
    "ddpo": "spo.training.ddpo:train_ddpo",
    "d3po": "spo.training.d3po:train_d3po",
}
# algorithm -> the name of its own settings block in ``train:``
ALGORITHM_BLOCKS = {"diffusion-dpo": "diffusion_dpo", "ddpo": "ddpo", "d3po": "d3po"}
_SAMPLER_KEYS = ("num_inference_steps", "guidance_scale", "eta", "k", "inner_steps", "window_tiling",
                 "timestep_range", "threshold", "pair_mode", "next_init")


def trainer_for(algorithm: str):
    """The trainer function of ``algorithm`` (imported lazily)."""
    import importlib

    module, function = ALGORITHMS[algorithm].split(":")
    return getattr(importlib.import_module(module), function)


def _sampler(name: str):
    return same_field(SamplerSettings, name)


@dataclass(frozen=True)
class TrainSettings:
    prompts: str = text(why="a prompt set name: the training prompts")
    preference: dict = mapping(lambda: {"name": "colorfulness"}, required_keys=("name",))
    # spo (MSPO = inner_steps > 1) | diffusion-dpo | ddpo | d3po
    algorithm: str = choice("spo", tuple(ALGORITHMS))
    # sampler (paper: DDIM eta 1, 20 steps, CFG 5, k 4, kappa 750, threshold 0.3)
    num_inference_steps: int = _sampler("num_inference_steps")
    guidance_scale: float = _sampler("guidance_scale")
    eta: float = _sampler("eta")
    resolution: int | None = integer(None, ge=8, multiple_of=8, nullable=True,
                                     why="image side in pixels; null: generation.resolution")
    k: int = _sampler("k")
    inner_steps: int = _sampler("inner_steps")                 # MSPO's j
    # MSPO's window tiling (spo.sampling.stepwise.window_schedule): "split" (every trained step may
    # open a window, the last one too: official SD-1.5 pipeline), "extend" (no branch at the last
    # trained step, the last window runs to its end: official SDXL pipeline); null: the official
    # pipeline of the model family ("split" for SD-1.5 with j = 1, else "extend")
    window_tiling: str | None = _sampler("window_tiling")
    timestep_range: tuple = _sampler("timestep_range")
    threshold: float = _sampler("threshold")
    pair_mode: str = _sampler("pair_mode")
    next_init: str = _sampler("next_init")
    # objective
    beta: float = number(10.0, gt=0, why="the DPO inverse temperature; paper 10")
    clamp_eps: float | None = number(0.1, gt=0, lt=1, nullable=True,
                                     why="the official ratio clamp; null: none")
    logprob_reduce: str = choice("mean", ("mean", "sum"))
    # LoRA and optimisation
    lora_rank: int = integer(4, ge=1)
    lora_alpha: float | None = number(None, gt=0, nullable=True, why="null: the rank")
    lora_init: str = choice("gaussian", ("gaussian", "default"),
                            why="gaussian: the official SPO init; default: peft's Kaiming A")
    lr: float = number(6e-5, gt=0)
    weight_decay: float = number(1e-4, ge=0)
    grad_clip: float = number(1.0, ge=0, why="gradient-norm clip; 0: none")
    # Batches are GLOBAL (all processes together; spo.training.batching derives each process's share
    # from the world size, so any number of GPUs trains the same recipe).
    grad_accum: int = integer(1, ge=1, why="micro-batches per optimizer step")
    prompts_per_round: int = integer(10, ge=1, why="prompts sampled per round, all processes")
    train_batch_size: int = integer(10, ge=1, why="pairs per micro-batch, all processes")
    micro_batch: int | None = integer(None, ge=1, nullable=True,
                                      why="memory cap: most pairs per forward pass per process")
    accumulate_across_rounds: bool = flag(False, why="true: the official SDXL trainer, accumulation carries over rounds")
    epochs: int = integer(10, ge=1)
    max_rounds: int | None = integer(None, ge=1, nullable=True, why="stop early; null: every round of the epochs")
    mixed_precision: str = choice("no", ("no", "fp16", "bf16"),
                                  why="the frozen weights' dtype and autocast; see spo.training.precision")
    gradient_checkpointing: bool = flag(False)
    # SPO / MSPO round speed keys (spo.training.round_speed): each changes the last bits, so off by default
    sampling_merge_lora: bool = flag(False, why="sample with each LoRA layer folded into a copy of its weight")
    channels_last: bool = flag(False, why="UNet and VAE in the channels-last memory format")
    compile_unet: bool = flag(False, why="torch.compile the UNet (compile time is paid in round 0)")
    checkpoint_every: int = integer(1, ge=1, why="rounds between resumable checkpoints")
    # Figure 5: x̂0 win / lose pairs of the first and last round
    dump_examples: int = integer(0, ge=0, why="x̂0 win / lose pairs dumped for Figure 5")
    seed: int = integer(0, ge=0)
    # Baseline trainers' own keys, one block per algorithm (spo.training.baseline_settings). The
    # field keeps the block as the config gave it; algorithm_settings() is the parsed object.
    diffusion_dpo: dict | None = block(DPOSettings)
    ddpo: dict | None = block(DDPOSettings)
    d3po: dict | None = block(D3POSettings)

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        """Rules between keys (each key already has a valid value)."""
        out = []
        algorithm = values.get("algorithm", "spo")
        for other, name in ALGORITHM_BLOCKS.items():
            if values.get(name) is not None and other != algorithm:
                out.append(bad(f"{key}.{name}", values[name],
                               f"it is given but '{key}.algorithm' is {algorithm!r}; remove the block "
                               f"or set the algorithm to {other!r}"))
        if algorithm == "diffusion-dpo" and values.get("diffusion_dpo") is None:
            out.append(f"config key '{key}.diffusion_dpo' is missing; 'train.algorithm: diffusion-dpo' "
                       f"needs it (at least '{key}.diffusion_dpo.data: <spm.datasets name>')")
        if algorithm in ("ddpo", "d3po") and not values.get("eta", cls.eta) > 0:
            out.append(bad(f"{key}.eta", values.get("eta", cls.eta),
                           f"algorithm {algorithm!r} needs eta > 0: trajectory log-probabilities need "
                           f"a stochastic sampler (DDPO and D3PO sample with 1.0)"))
        return out

    @classmethod
    def from_config(cls, block_: dict[str, Any], key: str = "train") -> "TrainSettings":
        """Parse a ``train`` block (memoised by content: ``spo.config_spec.parse``); a
        ``ConfigError`` names every bad key as ``<key>.<name>``."""
        return parse(cls, block_, key)

    def algorithm_settings(self):
        """The parsed ``train.<algorithm>`` block of a baseline trainer (None for spo); the same
        object the config check at load parsed."""
        name = ALGORITHM_BLOCKS.get(self.algorithm)
        if name is None:
            return None
        cls = {"diffusion_dpo": DPOSettings, "ddpo": DDPOSettings, "d3po": D3POSettings}[name]
        if name == "diffusion_dpo" and self.diffusion_dpo is None:  # only a hand-built TrainSettings
            raise ConfigError(f"config key 'train.diffusion_dpo' is missing; 'train.algorithm: "
                              f"diffusion-dpo' needs it")
        return parse(cls, getattr(self, name), f"train.{name}")

    def process_batches(self, world: int):
        """This recipe's share for each of ``world`` processes (``spo.training.batching``); raises
        ``WorldSizeError`` naming the keys when the global numbers cannot be split."""
        from spo.training.batching import check_dpo_world, per_process

        if self.algorithm == "diffusion-dpo":  # offline: its own global batch_size / micro_batch
            dpo = self.algorithm_settings()
            check_dpo_world(dpo.batch_size, dpo.micro_batch, world)
            return None
        return per_process(prompts_per_round=self.prompts_per_round,
                           train_batch_size=self.train_batch_size, grad_accum=self.grad_accum,
                           micro_batch=self.micro_batch, world=world)

    def for_world(self, world: int) -> "TrainSettings":
        """The settings one of ``world`` processes runs: ``prompts_per_round``, ``train_batch_size``
        and ``grad_accum`` replaced by the process's share, micro-batch and accumulation (apply
        once, in the trainer, after the number of processes is known)."""
        share = self.process_batches(world)
        return replace(self, prompts_per_round=share.prompts, train_batch_size=share.micro_batch,
                       grad_accum=share.accumulation)

    def sampler(self) -> SamplerSettings:
        """The sampler's keys of these (already checked) settings; a trainer builds it once."""
        values = {name: getattr(self, name) for name in _SAMPLER_KEYS}
        values["timestep_range"] = tuple(values["timestep_range"])  # a hand-built one may hold a list
        return SamplerSettings(**values)
