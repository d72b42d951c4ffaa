"""The SPO trainer's settings: a frozen dataclass built from a method's ``train:`` config block.

The JSON schema checks types; ``__post_init__`` checks the arithmetic and cross-field rules, and
every error names the config key (``methods.<name>.train.<key>``) and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from spo.sampling.settings import SamplerSettings


# algorithm -> trainer "module:function"; every trainer has the signature of ``train_spo``.
ALGORITHMS = {
    "spo": "spo.training.spo_trainer:train_spo",
    "diffusion-dpo": "spo.training.diffusion_dpo:train_diffusion_dpo",
    "ddpo": "spo.training.ddpo:train_ddpo",
    "d3po": "spo.training.d3po:train_d3po",
}
# algorithm -> the name of its own settings block in ``train:``
ALGORITHM_BLOCKS = {"diffusion-dpo": "diffusion_dpo", "ddpo": "ddpo", "d3po": "d3po"}


def trainer_for(algorithm: str):
    """The trainer function of ``algorithm`` (imported lazily)."""
    import importlib

    module, function = ALGORITHMS[algorithm].split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class TrainSettings:
    prompts: str                                   # a prompt set name (training prompts)
    preference: dict = field(default_factory=lambda: {"name": "colorfulness"})
    algorithm: str = "spo"                         # spo (MSPO = inner_steps > 1) | diffusion-dpo | ddpo | d3po
    # sampler (paper: DDIM eta 1, 20 steps, CFG 5, k 4, kappa 750, threshold 0.3)
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    eta: float = 1.0
    resolution: int | None = None                  # None: generation.resolution
    k: int = 4
    inner_steps: int = 1                           # MSPO's j
    # MSPO's window tiling (spo.sampling.stepwise.window_schedule): "split" (every trained step may
    # open a window, the last one too: official SD-1.5 pipeline), "extend" (no branch at the last
    # trained step, the last window runs to its end: official SDXL pipeline); null: the official
    # pipeline of the model family ("split" for SD-1.5 with j = 1, else "extend")
    window_tiling: str | None = None
    timestep_range: tuple = (0, 750)
    threshold: float = 0.3
    pair_mode: str = "best-worst"
    next_init: str = "random"
    # objective
    beta: float = 10.0
    clamp_eps: float | None = 0.1                  # the official ratio clamp; null: none
    logprob_reduce: str = "mean"
    # LoRA and optimisation
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_init: str = "gaussian"
    lr: float = 6e-5
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    # Batches are GLOBAL (all processes together; spo.training.batching derives each process's share
    # from the world size, so any number of GPUs trains the same recipe).
    grad_accum: int = 1                            # micro-batches per optimizer step
    prompts_per_round: int = 10                    # prompts sampled per round, all processes
    train_batch_size: int = 10                     # pairs per micro-batch, all processes
    micro_batch: int | None = None                 # memory cap: most pairs per forward pass per process
    accumulate_across_rounds: bool = False         # official SDXL trainer: accumulation carries over rounds
    epochs: int = 10
    max_rounds: int | None = None                  # stop early (tiny profile, smoke tests)
    mixed_precision: str = "no"                    # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1                      # rounds between resumable checkpoints
    dump_examples: int = 0                         # Figure 5: x̂0 win / lose pairs of the first and last round
    seed: int = 0
    # Baseline trainers' own keys, one block per algorithm (each module validates its block).
    diffusion_dpo: dict | None = None
    ddpo: dict | None = None
    d3po: dict | None = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"{self._key('algorithm')} is {self.algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
        for algorithm, block in ALGORITHM_BLOCKS.items():
            if getattr(self, block) is not None and algorithm != self.algorithm:
                raise ValueError(f"{self._key(block)} is given but {self._key('algorithm')} is "
                                 f"{self.algorithm!r}; remove the block or set the algorithm to {algorithm!r}")
        if not self.lr > 0:
            raise ValueError(f"{self._key('lr')} is {self.lr}; it must be > 0")
        for name in ("prompts_per_round", "train_batch_size", "grad_accum", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{self._key(name)} is {getattr(self, name)}; it must be >= 1")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise ValueError(f"{self._key('micro_batch')} is {self.micro_batch!r}; it must be an integer >= 1 "
                             f"(most pairs one process runs per forward pass) or null")
        if not isinstance(self.accumulate_across_rounds, bool):
            raise ValueError(f"{self._key('accumulate_across_rounds')} is {self.accumulate_across_rounds!r}; "
                             f"it must be true (official SDXL trainer) or false")
        if self.dump_examples < 0:
            raise ValueError(f"{self._key('dump_examples')} is {self.dump_examples}; it must be >= 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"{self._key('mixed_precision')} is {self.mixed_precision!r}; "
                             f"allowed: 'no', 'fp16', 'bf16'")
        if self.logprob_reduce not in ("mean", "sum"):
            raise ValueError(f"{self._key('logprob_reduce')} is {self.logprob_reduce!r}; allowed: 'mean', 'sum'")
        if "name" not in self.preference:
            raise ValueError(f"{self._key('preference')} needs a 'name'")
        self.sampler()  # validates k, inner_steps, range, threshold, modes
        if self.algorithm != "spo":
            self.algorithm_settings()  # a bad key of the baseline's block fails at config load

    def algorithm_settings(self):
        """The parsed ``train.<algorithm>`` block of a baseline trainer (None for spo)."""
        import importlib

        parsers = {"diffusion-dpo": ("spo.training.baseline_settings", "DPOSettings", "from_train"),
                   "ddpo": ("spo.training.baseline_settings", "DDPOSettings", "from_settings"),
                   "d3po": ("spo.training.baseline_settings", "D3POSettings", "from_settings")}
        if self.algorithm not in parsers:
            return None
        module, cls, method = parsers[self.algorithm]
        return getattr(getattr(importlib.import_module(module), cls), method)(self)

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
        from dataclasses import replace

        share = self.process_batches(world)
        return replace(self, prompts_per_round=share.prompts, train_batch_size=share.micro_batch,
                       grad_accum=share.accumulation)

    @staticmethod
    def _key(name: str) -> str:
        return f"config key 'train.{name}'"

    @classmethod
    def from_config(cls, block: dict[str, Any]) -> "TrainSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"config keys {['train.' + u for u in unknown]} are not allowed; "
                             f"allowed: {', '.join(sorted(known))}")
        values = dict(block)
        if "timestep_range" in values:
            values["timestep_range"] = tuple(values["timestep_range"])
        return cls(**values)

    def sampler(self) -> SamplerSettings:
        if len(self.timestep_range) != 2:
            raise ValueError(f"{self._key('timestep_range')} must be [lo, hi], got {self.timestep_range}")
        return SamplerSettings(num_inference_steps=self.num_inference_steps,
                               guidance_scale=self.guidance_scale, eta=self.eta, k=self.k,
                               inner_steps=self.inner_steps, window_tiling=self.window_tiling,
                               timestep_range=tuple(self.timestep_range), threshold=self.threshold,
                               pair_mode=self.pair_mode, next_init=self.next_init)
