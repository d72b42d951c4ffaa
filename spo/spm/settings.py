"""The ``spm`` block as typed settings (``spo.config_spec``), torch-free: ``spm.runs.<run>``
(``SPMRunSettings``) and ``spm.datasets.<name>`` (``SPMDatasetSpec``, its ``tiny`` source
``TinyPairsSettings``). The JSON Schema keeps the datasets' shape (exactly one of ``tiny`` or
``train`` + ``validation``, the Parquet sources) and ``spm.pickscore``'s sources.

Defaults are those the SPM stages used when a key was absent (``spo.spm.train``, ``spo.spm.stage``),
so a stage reading these settings computes what it computed from the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spo.config_blocks import DTYPES
from spo.config_spec import (Spec, bad, block, choice, flag, integer, items, mapping, number, parse,
                             string, text)



@dataclass(frozen=True)
class PickscoreLabels:
    threshold: float = number(ge=0, le=1, why="a win when the PickScore probability gap is above it")


@dataclass(frozen=True, kw_only=True)  # required keys (seed, val_timesteps) follow optional ones
class SPMRunSettings:
    model: str = text(why="a key of models: the base model whose UNet with CFG predicts x̂0")
    data: str = text(why="a key of spm.datasets")
    time_condition: bool = flag(why="true: the SPM (adaLN on t); false: spm-no-step")
    lr: float = number(gt=0, lt=1, why="the peak learning rate, e.g. 3.0e-6")
    steps: int = integer(ge=1, why="optimiser steps")
    batch_size: int = integer(ge=1, why="pairs per optimiser step, all processes together")
    warmup_steps: int = integer(0, ge=0)
    warmup_shape: str = choice("linear", ("linear", "log"))
    lr_schedule: str = choice("warmup_decay", ("constant", "warmup_decay"),
                              why="after warm-up: constant, or linear decay to 0")
    weight_decay: float = number(0.0, ge=0)
    weight_decay_on: str = choice("matrices", ("matrices", "all"))
    vae_latents: str = choice("mean", ("mean", "sample"))
    betas: list = items(Spec("number"), (0.9, 0.999), min_items=2, max_items=2)
    grad_clip: float | None = number(None, ge=0, why="max gradient norm; 0 or absent: none")
    mixed_precision: str | None = choice(None, ("no", "fp16", "bf16"), nullable=True,
                                         why='the precision policy (spo.spm.precision); absent: '
                                             'what dtype names, else "no"')
    dtype: str | None = choice(None, DTYPES, nullable=True,
                               why="older name of mixed_precision, by dtype")
    backbone_dtype: str | None = choice(None, DTYPES, nullable=True,
                                        why="the frozen UNet / VAE / text encoders; absent: the policy's")
    guidance_scale: float = number(5.0, ge=0, why="CFG of the x̂0 prediction")
    resolution: int | None = integer(None, ge=8, nullable=True, why="null: as stored")
    pickscore_labels: dict | None = block(PickscoreLabels)
    augment: bool = flag(False, why="random horizontal flip of the decoded x̂0")
    checkpoint_every: int = integer(0, ge=0, why="steps between checkpoints; 0: never")
    seed: int = integer(ge=0)
    val_timesteps: list = items(Spec("int", ge=0, le=999), min_items=1)
    val_batch_size: int = integer(64, ge=1)
    label: str | None = string(None)

    @classmethod
    def cross_checks(cls, values: dict[str, Any], key: str) -> list[str]:
        # Only an explicit warmup_decay: an absent lr_schedule (the trainer's default is the same
        # schedule) was never checked here, and stays unchecked so no loaded config starts failing.
        steps = values["steps"]
        if values.get("lr_schedule") == "warmup_decay" and values.get("warmup_steps", 0) >= steps:
            return [bad(f"{key}.warmup_steps", values.get("warmup_steps", 0),
                        f"it must be below steps ({steps}) for lr_schedule: warmup_decay")]
        return []

    def pickscore_threshold(self) -> float | None:
        """``pickscore_labels.threshold`` (None: keep the pairs' labels)."""
        return None if self.pickscore_labels is None else self.pickscore_labels["threshold"]


@dataclass(frozen=True, kw_only=True)
class TinyPairsSettings:
    model: str = text(why="a key of models (its latents are stored with the pairs)")
    prompts: str = text(why="TSV prompt file (prompt_id, prompt)")
    images_per_prompt: int = integer(ge=2, why="all pairs of them are used")
    val_images_per_prompt: int | None = integer(None, ge=2, why="absent: images_per_prompt")
    val_prompts: int = integer(ge=1, why="the last N prompts of the file are validation prompts")
    label_noise: float = number(ge=0, le=1, why="share of decisive training labels flipped")
    tie_margin: float = number(ge=0, why="relative colourfulness difference below which a pair ties")

    def images_for(self, split: str) -> int:
        if split == "validation" and self.val_images_per_prompt is not None:
            return self.val_images_per_prompt
        return self.images_per_prompt


@dataclass(frozen=True)
class SPMDatasetSpec:
    tiny: dict | None = block(TinyPairsSettings)
    train: dict | None = mapping(nullable=True, why="Pick-a-Pic-layout Parquet of the train split")
    validation: dict | None = mapping(nullable=True, why="the same for the validation split")
    unlabelled: str = choice("drop", ("drop", "keep"), why="train rows with has_label false")

    def tiny_settings(self, key: str) -> TinyPairsSettings | None:
        return None if self.tiny is None else parse(TinyPairsSettings, self.tiny, f"{key}.tiny")


def spm_run(config: dict[str, Any], run: str) -> SPMRunSettings:
    return parse(SPMRunSettings, config["spm"]["runs"][run], f"spm.runs.{run}")


def spm_dataset(config: dict[str, Any], name: str) -> SPMDatasetSpec:
    return parse(SPMDatasetSpec, config["spm"]["datasets"][name], f"spm.datasets.{name}")


def tiny_pairs_settings(config: dict[str, Any], name: str) -> TinyPairsSettings | None:
    return spm_dataset(config, name).tiny_settings(f"spm.datasets.{name}")

