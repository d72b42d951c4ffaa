"""The pretraining recipe of the tiny world (config ``world.pretrain``), checked at load."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from spo.world.grammar import WorldError, WorldSpec

PARTS = ("vae", "clip-a", "clip-b", "pickscore", "sd15", "sdxl", "release")


@dataclass(frozen=True)
class PartRecipe:
    """One part's optimisation: ``steps`` of ``batch`` at a cosine lr from ``lr`` to ``lr_floor``."""

    steps: int
    batch: int
    lr: float
    lr_floor: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0


def _default(**kw) -> Any:
    return field(default_factory=lambda: PartRecipe(**kw))


@dataclass(frozen=True)
class PretrainSettings:
    """Every number of the tiny world's pretraining (defaults: the shipped weights' recipe).

    Attributes:
        seed: every random draw is a function of (seed, part, step).
        vae_images / unet_images: renders the VAE / the UNets train on (a fixed set each).
        kl_weight: the VAE's KL term (SD's is 1e-6, with perceptual and GAN terms we do not use).
        caption_dropout: share of empty captions in UNet training (classifier-free guidance).
        min_snr_gamma: min-SNR loss weighting of the epsilon objective (null: plain MSE).
        ema_decay: the UNets are saved as their EMA.
        label_noise / tie_margin: the tiny PickScore's preference labels (colourfulness, flipped
            with this probability; relative differences below the margin are ties).
    """

    seed: int = 0
    vae_images: int = 20000
    unet_images: int = 40000
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    min_snr_gamma: float | None = 5.0
    ema_decay: float = 0.999
    label_noise: float = 0.1
    tie_margin: float = 0.02
    checkpoint_every: int = 500
    vae: PartRecipe = _default(steps=2000, batch=32, lr=1e-3, lr_floor=1e-4, warmup=50)
    clip: PartRecipe = _default(steps=800, batch=96, lr=1e-3, lr_floor=1e-4, warmup=50, weight_decay=0.1)
    pickscore: PartRecipe = _default(steps=400, batch=48, lr=1e-4, lr_floor=1e-5, warmup=20)
    unet: PartRecipe = _default(steps=5000, batch=64, lr=1e-3, lr_floor=1e-4, warmup=100)

    def __post_init__(self):
        for name in ("vae", "clip", "pickscore", "unet"):
            recipe = getattr(self, name)
            for key in ("steps", "batch"):
                if getattr(recipe, key) < 1:
                    raise WorldError(f"config key 'world.pretrain.{name}.{key}' is "
                                     f"{getattr(recipe, key)}; it must be >= 1")
            if not recipe.lr > 0 or recipe.lr_floor < 0:
                raise WorldError(f"config key 'world.pretrain.{name}.lr' is {recipe.lr} (floor "
                                 f"{recipe.lr_floor}); use lr > 0 and lr_floor >= 0")
        for key in ("caption_dropout", "label_noise"):
            if not 0 <= getattr(self, key) < 1:
                raise WorldError(f"config key 'world.pretrain.{key}' is {getattr(self, key)}; use [0, 1)")
        if not 0 < self.ema_decay < 1:
            raise WorldError(f"config key 'world.pretrain.ema_decay' is {self.ema_decay}; use (0, 1)")
        for key in ("vae_images", "unet_images", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise WorldError(f"config key 'world.pretrain.{key}' is {getattr(self, key)}; it must be >= 1")

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> "PretrainSettings":
        block = dict(block or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise WorldError(f"config keys {['world.pretrain.' + k for k in unknown]} are not "
                             f"allowed; allowed: {', '.join(sorted(known))}")
        for name in ("vae", "clip", "pickscore", "unet"):
            if name in block:
                base = asdict(getattr(cls(), name))
                extra = sorted(set(block[name]) - set(base))
                if extra:
                    raise WorldError(f"config keys {[f'world.pretrain.{name}.{k}' for k in extra]} "
                                     f"are not allowed; allowed: {', '.join(base)}")
                block[name] = PartRecipe(**{**base, **block[name]})
        return cls(**block)


def world_spec(config: dict[str, Any]) -> WorldSpec:
    """The config's ``world`` grammar (every key but ``pretrain``) as a ``WorldSpec``; no ``world``
    block: the default world."""
    block = {k: v for k, v in (config.get("world") or {}).items() if k != "pretrain"}
    return WorldSpec.from_config(block)


def pretrain_settings(config: dict[str, Any]) -> PretrainSettings:
    """The config's ``world.pretrain`` as ``PretrainSettings`` (absent: the shipped recipe)."""
    return PretrainSettings.from_config((config.get("world") or {}).get("pretrain"))
