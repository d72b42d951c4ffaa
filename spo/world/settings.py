"""The tiny world's config block, typed and checked at load: its grammar (``world.<key>``, a
``WorldSpec``) and its pretraining recipe (``world.pretrain``, ``PretrainSettings``).

``world_spec(config)`` and ``pretrain_settings(config)`` are what the stages read; the config check
(``spo.config.validate_config``) runs ``world_problems`` first, so a bad key, type or range is a
``ConfigError`` naming ``world.<key>`` at ``snakemake -n``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from spo.config_spec import ConfigError, Spec, bad, block, integer, items, number, problems, show
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
                    raise WorldError(bad(f"world.pretrain.{name}.{key}", getattr(recipe, key),
                                         "it must be an integer >= 1"))
            if not recipe.lr > 0 or recipe.lr_floor < 0:
                raise WorldError(bad(f"world.pretrain.{name}.lr", recipe.lr,
                                     f"it must be a number > 0, with lr_floor >= 0 (lr_floor is "
                                     f"{show(recipe.lr_floor)})"))
        for key in ("caption_dropout", "label_noise"):
            if not 0 <= getattr(self, key) < 1:
                raise WorldError(bad(f"world.pretrain.{key}", getattr(self, key), "it must be a number in [0, 1)"))
        if not 0 < self.ema_decay < 1:
            raise WorldError(bad("world.pretrain.ema_decay", self.ema_decay, "it must be a number in (0, 1)"))
        for key in ("vae_images", "unet_images", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise WorldError(bad(f"world.pretrain.{key}", getattr(self, key), "it must be an integer >= 1"))

    @classmethod
    def from_config(cls, block: dict[str, Any] | None) -> "PretrainSettings":
        block = dict(block or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise WorldError("; ".join(f"config key 'world.pretrain.{k}' is not allowed" for k in unknown)
                             + f"; allowed: {', '.join(sorted(known))}")
        for name in ("vae", "clip", "pickscore", "unet"):
            if name in block:
                base = asdict(getattr(cls(), name))
                extra = sorted(set(block[name]) - set(base))
                if extra:
                    raise WorldError("; ".join(f"config key 'world.pretrain.{name}.{k}' is not allowed"
                                               for k in extra) + f"; allowed: {', '.join(base)}")
                block[name] = PartRecipe(**{**base, **block[name]})
        return cls(**block)



# --- what the config block accepts (types and ranges; the classes above add their vocabularies) ----
# Every default is None: an absent key keeps the class's own default (WorldSpec, PretrainSettings).

_WORD = Spec("text")


@dataclass(frozen=True)
class _RecipeKeys:
    """``world.pretrain.<vae|clip|pickscore|unet>``: absent keys keep that part's recipe."""

    steps: int = integer(None, ge=1)
    batch: int = integer(None, ge=1)
    lr: float = number(None, gt=0)
    lr_floor: float = number(None, ge=0)
    warmup: int = integer(None)
    weight_decay: float = number(None)


@dataclass(frozen=True)
class _PretrainKeys:
    seed: int = integer(None, why="every random draw is a function of (seed, part, step)")
    vae_images: int = integer(None, ge=1)
    unet_images: int = integer(None, ge=1)
    kl_weight: float = number(None)
    caption_dropout: float = number(None, ge=0, lt=1)
    min_snr_gamma: float | None = number(None, nullable=True, why="null: plain MSE")
    ema_decay: float = number(None, gt=0, lt=1)
    label_noise: float = number(None, ge=0, lt=1)
    tie_margin: float = number(None)
    checkpoint_every: int = integer(None, ge=1)
    vae: dict | None = block(_RecipeKeys)
    clip: dict | None = block(_RecipeKeys)
    pickscore: dict | None = block(_RecipeKeys)
    unet: dict | None = block(_RecipeKeys)


@dataclass(frozen=True)
class _WorldKeys:
    colours: list = items(_WORD, None, min_items=1)
    backgrounds: list = items(_WORD, None, min_items=1)
    shapes: list = items(_WORD, None, min_items=1)
    sizes: list = items(_WORD, None, min_items=1)
    held_out: list = items(Spec("list", item=_WORD, min_items=3, max_items=3), None,
                           why="[background, colour, shape] combinations never trained on")
    image_size: int = integer(None, ge=16, le=128, multiple_of=8)
    pretrain: dict | None = block(_PretrainKeys)


def world_problems(config: dict[str, Any]) -> list[str]:
    """Every problem of the config's ``world`` block (none: ``world_spec`` and
    ``pretrain_settings`` build)."""
    found = problems(_WorldKeys, config.get("world") or {}, "world")
    if found:
        return found
    try:
        world_spec(config)
        pretrain_settings(config)
    except ConfigError as exc:
        return exc.problems
    return []


def _checked(config: dict[str, Any]) -> dict[str, Any]:
    found = problems(_WorldKeys, config.get("world") or {}, "world")
    if found:
        raise ConfigError("\n".join(found), found)
    return dict(config.get("world") or {})


def world_spec(config: dict[str, Any]) -> WorldSpec:
    """The config's ``world`` grammar (every key but ``pretrain``) as a ``WorldSpec``; no ``world``
    block: the default world."""
    return WorldSpec.from_config({k: v for k, v in _checked(config).items() if k != "pretrain"})


def pretrain_settings(config: dict[str, Any]) -> PretrainSettings:
    """The config's ``world.pretrain`` as ``PretrainSettings`` (absent: the shipped recipe)."""
    return PretrainSettings.from_config(_checked(config).get("pretrain"))
