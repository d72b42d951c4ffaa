"""Building both sides of the SPO comparisons from one tiny pipeline, in identical states.

Ours is the library as ``spo.training.spo_trainer.train_spo`` runs it (``pair_loss`` with the
LoRA-disabled reference and the shared-x_t pass, ``sample_pairs``); a round is
``spo.training.spo_trainer.run_round``, the function ``train_spo`` calls for each round, on one
process (encode, sample, score, shuffle, micro-batches of ``train_batch_size``: loss, backward,
clip, AdamW step, with the trainer's non-finite guards and preemption polls). The official side is
``bench.official``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.official import OfficialPairs, OfficialSPO, encode, multi_sample, pack_pooled
from spo.models.backbone import Backbone
from spo.sampling.ddim import DDIMSchedule
from spo.sampling.stepwise import PairBatch, sample_pairs
from spo.training.settings import TrainSettings
from spo.training.loop import Unit
from spo.training.round_speed import apply_speed_keys
from spo.training.spo_trainer import RoundContext, pair_loss, run_round, trainable_lora

# The tiny profile's recipe (config/config.yaml, methods.tiny-sd15-spo.train), preference swapped
# for the analytic colourfulness so that both sides score with the same cheap function.
TINY_RECIPE = dict(prompts="tiny-train", preference={"name": "colorfulness"}, k=4, inner_steps=1,
                   timestep_range=[0, 750], threshold=0.0, beta=10.0, clamp_eps=0.1, lora_rank=8,
                   lora_init="default", lr=1.0e-2, prompts_per_round=32, train_batch_size=64,
                   epochs=1, seed=0)


def tiny_pipe(family: str = "sd15", seed: int | None = None):
    from diffusers import DDIMScheduler

    from spo.models.tiny import tiny_sd15_pipeline, tiny_sdxl_pipeline

    build = tiny_sd15_pipeline if family == "sd15" else tiny_sdxl_pipeline
    pipe = build({"sd15": 1, "sdxl": 2}[family] if seed is None else seed)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings(**overrides) -> TrainSettings:
    return TrainSettings.from_config({**TINY_RECIPE, **overrides})


def perturb_lora(unet, scale: float, seed: int = 0) -> None:
    """Give lora_B seeded non-zero values, so the policy differs from the reference."""
    with torch.no_grad():
        for i, (name, p) in enumerate(sorted(unet.named_parameters())):
            if "lora_B" in name:
                g = torch.Generator().manual_seed(seed * 100003 + i)
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def copy_lora(src, dst) -> None:
    s = {n: p for n, p in src.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for n, p in dst.named_parameters():
            if "lora_" in n:
                p.copy_(s[n])


def _sync(module) -> None:
    if next(module.parameters()).is_cuda:
        torch.cuda.synchronize()


class Ours:
    """The library's trainer state on ``pipe``: LoRA on the UNet, AdamW on the LoRA."""

    def __init__(self, pipe, s: TrainSettings, resolution: int):
        self.pipe, self.s = pipe, s
        self.backbone = Backbone(pipe, resolution)
        self.params, self.optimizer = trainable_lora(pipe.unet, s)
        apply_speed_keys(self.backbone, s)  # as train_spo, after the LoRA (train.channels_last, ...)
        self.schedule = DDIMSchedule.from_scheduler(pipe.scheduler, s.num_inference_steps)
        self.ctx, self.n_steps, self.log_lines = None, 0, []

    def step(self, batch: PairBatch, cond) -> float:
        out = pair_loss(self.backbone, self.schedule, batch, cond, self.s)
        out["loss"].backward()
        if self.s.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return out["loss"].item()

    def round(self, prompts, preference, index: int) -> dict[str, Any]:
        """Round ``index`` of ``train_spo`` on one process: ``spo.training.spo_trainer.run_round``
        itself (the prompts are one round's worth, so every round samples all of them)."""
        if self.ctx is None or self.ctx.preference is not preference or self.ctx.prompts != list(prompts):
            import tempfile

            from spo.training.loop import Guard, accelerator_on

            scratch = Path(tempfile.mkdtemp(prefix="bench-round-"))
            self.ctx = RoundContext(self.backbone, preference, self.s.for_world(1), list(prompts),
                                    accelerator_on(self.backbone.device), self.params,
                                    self.optimizer, Guard(scratch, "bench"), n_rounds=10 ** 6,
                                    examples_dir=scratch / "examples")
        unit = Unit(index, self.n_steps, self.log_lines, unet=self.pipe.unet,
                    optimizer=self.optimizer, accelerator=self.ctx.accelerator,
                    checkpoint_dir=self.ctx.guard.checkpoint_dir)
        done = run_round(self.ctx, unit, self.n_steps, 0)
        _sync(self.pipe.unet)
        steps, self.n_steps = done.step - self.n_steps, done.step
        return {"pairs": done.pairs, "steps": steps, "loss": self.log_lines[-1]["loss"],
                "sample_s": done.sample_s, "train_s": done.train_s}


class Official:
    """The official structure on ``pipe`` (``bench.official``), same recipe."""

    def __init__(self, pipe, s: TrainSettings, resolution: int, autocast_dtype=None):
        self.pipe, self.s = pipe, s
        self.latent_side = resolution // pipe.vae_scale_factor
        _, neg = encode(pipe, [""])
        self.trainer = OfficialSPO(pipe, rank=s.lora_rank, alpha=s.lora_alpha, init=s.lora_init,
                                   lr=s.lr, weight_decay=s.weight_decay, grad_clip=s.grad_clip,
                                   beta=s.beta, clamp_eps=s.clamp_eps, guidance_scale=s.guidance_scale,
                                   eta=s.eta, num_inference_steps=s.num_inference_steps, seed=s.seed,
                                   neg_embed=neg, autocast_dtype=autocast_dtype)

    def step(self, batch: OfficialPairs) -> float:
        return self.trainer.step(batch)

    def round(self, prompts, preference, generator) -> dict[str, Any]:
        import time

        s, unet = self.s, self.pipe.unet
        tic = time.perf_counter()
        lo, hi = s.timestep_range
        if (lo, hi) != (0, 750) or s.inner_steps != 1:
            raise ValueError("the official SD-1.5 sampler trains [0, 750] (divert_start_step 4), j = 1")
        unet.eval()
        embeds, neg = encode(self.pipe, prompts)
        pairs, _ = multi_sample(self.pipe, embeds, neg, preference=preference, prompts=prompts,
                                num_inference_steps=s.num_inference_steps,
                                guidance_scale=s.guidance_scale, eta=s.eta, divert_start_step=4,
                                k=s.k, threshold=s.threshold, latent_side=self.latent_side,
                                generator=generator)
        pairs = pairs.select(torch.randperm(len(pairs), generator=generator))
        _sync(unet)
        mid = time.perf_counter()
        unet.train()
        losses = []
        for start in range(0, len(pairs), s.train_batch_size):
            losses.append(self.step(pairs.select(slice(start, start + s.train_batch_size))))
        _sync(unet)
        return {"pairs": len(pairs), "steps": len(losses), "loss": losses[-1],
                "sample_s": mid - tic, "train_s": time.perf_counter() - mid}


def to_official(batch: PairBatch, cond) -> OfficialPairs:
    """The same pairs in the official layout (per-pair prompt embeddings, shared x_t)."""
    if not bool(batch.shared.all()):
        raise ValueError("the official SD-1.5 trainer has no unshared (MSPO inner-step) pairs")
    rows = batch.prompt_index.to(cond.cond.device)
    embeds = cond.cond[rows] if cond.pooled is None else pack_pooled(cond.cond[rows], cond.pooled[rows])
    return OfficialPairs(timesteps=batch.t.clone(), latents=batch.xt_w.clone(),
                         next_win=batch.x_w.clone(), next_lose=batch.x_l.clone(),
                         prompt_embeds=embeds.detach().clone())


@dataclass
class SampledPairs:
    pairs: PairBatch
    cond: Any
    prompts: list[str]


def sampled_pairs(pipe, s: TrainSettings, prompts: list[str], resolution: int, seed: int = 0) -> SampledPairs:
    """Real training pairs from the library's sampler on the base model (no LoRA attached yet)."""
    from spo.preference import build_preference

    backbone = Backbone(pipe, resolution)
    pairs, _ = sample_pairs(backbone, pipe.scheduler, prompts, build_preference(s.preference),
                            s.sampler(), torch.Generator().manual_seed(seed))
    return SampledPairs(pairs, backbone.encode(prompts), prompts)


def twin_pipes(family: str = "sd15"):
    """Two identical pipelines (one per side), built before anything is attached."""
    pipe = tiny_pipe(family)
    return pipe, copy.deepcopy(pipe)
