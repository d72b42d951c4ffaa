"""Offline Diffusion-DPO (Wallace et al. 2023, arXiv 2311.12908) as a baseline trainer (issue 6).

Each step takes ``batch_size`` decisive preference pairs (winner x_w, loser x_l; ties dropped),
draws ONE noise eps and ONE timestep t ~ U{0..T-1} per pair, noises both latents with them, and
compares the per-sample noise-prediction errors of the policy (UNet + LoRA) and the reference
(the same UNet with the LoRA disabled, ``spo.training.lora.reference_mode``: no copy in memory):

    m_w = mean_{C,h,w} (eps_theta(x_w,t, t, c) - eps)^2      (and m_l, r_w, r_l for loser / reference)
    loss = -log sigmoid( -(beta / 2) * ((m_w - m_l) - (r_w - r_l)) )

beta convention: the official Salesforce code's ``--beta_dpo`` (the ``-0.5 * beta`` scale term),
SalesforceAIResearch/DiffusionDPO@8d3ee5c6cf312575fb33f2a20689fa0fc1b21955:train.py (loss block,
"scale_term = -0.5 * args.beta_dpo"). The diffusers port
(huggingface/diffusers@071190da:examples/research_projects/diffusion_dpo/train_diffusion_dpo.py)
has no 1/2, so its beta is 2x ours: diffusers 2500 == Salesforce/ours 5000 (../shared/METRICS.md
§5.1-5.2). The conditioning is text only (no CFG in training), with ``empty_prompt_rate`` of the
prompts replaced by "" (official default 0.2).

Two parametrisations: a LoRA (``full_unet: false``; reference = adapter disabled), or, as the
official runs, every UNet weight (``full_unet: true``; reference = a frozen copy of the starting
UNet, the adapter trick cannot apply; output ``unet/`` in diffusers' layout, which generation
loads in place of the base model's UNet, ``spo.models.pipelines.load_method_pipeline``).

The LoRA, optimizer and step are checkpointed every ``checkpoint_every`` steps
(``spo.training.checkpoints``); every random draw of a step is seeded by (seed, step, rank, micro
batch) and the pairs of a step are a pure function of (seed, step) (``spo.training.dpo_data``), so
a killed and rerun training ends with the same LoRA. Output: the diffusers LoRA folder, log.jsonl
and provenance.json, exactly as ``train_spo`` writes them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spo.checkpoint import Preempted, install_signal_handlers
from spo.models.backbone import Backbone, Conditioning
from spo.seeds import image_seed
from spo.training import checkpoints
from spo.training.baseline_settings import KEY, DPOSettings
from spo.training.dpo_data import PairSource, pair_latents
from spo.training.lora import reference_mode
from spo.training.loop import (Guard, Unit, accelerator_on, check_trained, end_of_unit, lr_fix,
                               optimizer_step, restore_loss_scale, save_state, stop_if_not_finite,
                               write_outputs)
from spo.training.settings import TrainSettings
from spo.training.spo_trainer import adamw, start_checkpoints, trainable_lora

log = logging.getLogger(__name__)

# The code version of the algorithm (see spo.training.spo_trainer.ALGORITHM_VERSION).
ALGORITHM_VERSION = 1


def diffusion_dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor,
                       ref_l: torch.Tensor, *, beta: float) -> dict[str, torch.Tensor]:
    """The Diffusion-DPO loss, Salesforce beta convention, averaged over pairs.

    Args:
        model_w, model_l: (M,) policy noise-prediction MSE of winner / loser (mean over C, h, w).
        ref_w, ref_l: (M,) the reference's MSE on the same noisy inputs (no gradient needed).
        beta: the official ``--beta_dpo`` (5000); diffusers' beta is twice this.
    Returns:
        ``loss`` (scalar), ``inside`` ((M,) the logit -beta/2 * (model_diff - ref_diff)),
        ``implicit_acc`` (scalar, share of pairs with inside > 0).
    """
    inside = -0.5 * beta * ((model_w - model_l) - (ref_w - ref_l))
    return {"loss": -F.logsigmoid(inside).mean(), "inside": inside.detach(),
            "implicit_acc": (inside > 0).float().mean().detach()}


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) x2 -> (B,) mean squared error in float32."""
    return (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def conditional_eps(backbone: Backbone, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                    dtype: torch.dtype, unet=None) -> torch.Tensor:
    """eps_theta(x, t, c), text-conditional only (training has no CFG); SD-1.5 and SDXL alike
    (SDXL's pooled embedding and time ids come from ``Backbone``). x: (B, C, h, w); t: (B,).
    ``unet``: another UNet of the same architecture (the full-UNet reference), else the policy."""
    unet = backbone.unet if unet is None else unet
    extra = {}
    if backbone.is_sdxl:
        extra["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(dtype),
                                      "time_ids": backbone.time_ids(x).repeat(len(x), 1)}
    return unet(x.to(dtype), t.to(x.device), encoder_hidden_states=cond.cond.to(dtype),
                **extra).sample


def micro_loss(backbone: Backbone, rows, dpo: DPOSettings, generator: torch.Generator,
               dtype: torch.dtype, ref_unet=None) -> dict[str, torch.Tensor]:
    """Loss of one micro-batch of oriented pair rows (``dpo_data.PairSource.rows_of``).

    The reference is ``ref_unet`` (full-UNet training: a frozen copy of the starting weights),
    else the policy UNet with its LoRA disabled."""
    scheduler, device = backbone.pipe.scheduler, backbone.device
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"Diffusion-DPO needs an epsilon-prediction model; the scheduler says "
                         f"{scheduler.config.prediction_type!r}")
    lat_w, lat_l = pair_latents(rows, backbone.pipe.vae, backbone.resolution, generator, dpo.hflip)
    m = len(rows)
    # One noise and one timestep per pair, shared by winner and loser (the official code).
    noise = torch.randn(lat_w.shape, generator=generator)
    lo, hi = dpo.timestep_range
    if hi >= scheduler.config.num_train_timesteps:
        raise ValueError(f"config key '{KEY}.timestep_range' is {list(dpo.timestep_range)}; its upper "
                         f"end must be < {scheduler.config.num_train_timesteps} (num_train_timesteps)")
    t = torch.randint(lo, hi + 1, (m,), generator=generator)
    empty = torch.rand(m, generator=generator) < dpo.empty_prompt_rate
    prompts = ["" if e else p for e, p in zip(empty.tolist(), rows["prompt"])]
    cond = backbone.encode(prompts).take(torch.arange(m).repeat(2))
    x0 = torch.cat([lat_w, lat_l])
    noise2, t2 = noise.repeat(2, 1, 1, 1), t.repeat(2)
    x_t = scheduler.add_noise(x0, noise2, t2).to(device)
    target = noise2.to(device)
    reference = reference_mode(backbone.unet) if ref_unet is None else contextlib.nullcontext()
    with torch.no_grad(), reference:
        ref = per_sample_mse(conditional_eps(backbone, x_t, t2, cond, dtype, ref_unet), target)
    model = per_sample_mse(conditional_eps(backbone, x_t, t2, cond, dtype), target)
    out = diffusion_dpo_loss(model[:m], model[m:], ref[:m], ref[m:], beta=dpo.beta)
    out.update(model_mse=model.detach().mean(), ref_mse=ref.mean())
    return out


def _generator(seed: int, *key: Any) -> torch.Generator:
    return torch.Generator().manual_seed(image_seed(seed, "dpo/" + "/".join(map(str, key)), 0))


def _optimizer(params, settings: TrainSettings, dpo: DPOSettings):
    if dpo.optimizer == "adamw":
        return adamw(params, settings)
    from transformers.optimization import Adafactor

    # The official SDXL run's Adafactor (fixed lr, no relative step, update clipping 1.0).
    return Adafactor(params, lr=settings.lr, weight_decay=settings.weight_decay, clip_threshold=1.0,
                     scale_parameter=False, relative_step=False)


def train_diffusion_dpo(backbone: Backbone, pipeline_class, prompts, preference,
                        settings: TrainSettings, out_dir: str | Path, checkpoint_dir: str | Path,
                        accelerator=None, resolved: dict | None = None, *,
                        pairs: str | Path | None = None, latents: str | Path | None = None) -> dict[str, Any]:
    """Train a LoRA with offline Diffusion-DPO on the pairs folder ``pairs`` (``prompts`` and
    ``preference`` are unused: the pairs carry prompts and labels). ``latents``: an optional
    ``spm-latents`` cache of the same pairs. Resumes from ``checkpoint_dir``; returns a summary."""

    dpo = settings.algorithm_settings()  # parsed with the config (spo.config_spec.parse)
    if pairs is None:
        from spo.layout import spm_pairs_dir

        raise ValueError(f"Diffusion-DPO needs the pairs of '{KEY}.data' ({dpo.data}); pass "
                         f"--pairs {spm_pairs_dir(dpo.data, 'train')}")
    accelerator = accelerator or accelerator_on(backbone.device, settings.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if dpo.batch_size % (dpo.micro_batch * world):
        raise ValueError(f"config key '{KEY}.batch_size' is {dpo.batch_size}; with {world} processes "
                         f"it must be a multiple of {KEY}.micro_batch x processes = {dpo.micro_batch * world}")
    source = PairSource(pairs, latents)
    log.info("%d decisive pairs (%d ties dropped) from %s", source.n_pairs, source.n_ties, pairs)
    unet = backbone.unet
    backbone.pipe.vae.requires_grad_(False)
    ref_unet = None
    if dpo.full_unet:
        # The official recipe: every UNet weight trains against a frozen copy of the starting
        # weights (SalesforceAIResearch/DiffusionDPO@8d3ee5c:train.py loads ref_unet apart); the
        # copy is taken before a resume loads trained weights into the policy.
        ref_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        params = list(unet.requires_grad_(True).parameters())
    else:
        params, _ = trainable_lora(unet, settings)
    optimizer = _optimizer(params, settings, dpo)
    full = dpo.full_unet
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    dtype = unet.dtype
    start_checkpoints(checkpoint_dir, accelerator, "diffusion-dpo", ALGORITHM_VERSION, settings, [],
                      resolved)
    start, step, log_lines = checkpoints.resume(checkpoint_dir, unet, optimizer)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers()
    if start:
        log.info("resuming at step %d/%d from %s", start, dpo.steps, checkpoint_dir)
    per_rank = dpo.batch_size // world
    n_micro = per_rank // dpo.micro_batch
    guard = Guard(checkpoint_dir, lr_fix(settings, f" or config key '{KEY}.beta' (now {dpo.beta:g})",
                                         resolved))
    unet.train()
    began = time.perf_counter()
    for step in range(start, dpo.steps):
        tic = time.perf_counter()
        # The warm-up is a pure function of the step: nothing to checkpoint.
        lr = settings.lr * min(1.0, (step + 1) / dpo.warmup_steps) if dpo.warmup_steps else settings.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        first = step * dpo.batch_size + rank * per_rank
        entries = source.positions(settings.seed, first, first + per_rank)
        sums = {"loss": 0.0, "implicit_acc": 0.0, "model_mse": 0.0, "ref_mse": 0.0}
        # A signal between micro-batches: nothing of this step is applied yet, so the state now
        # is the step's start (``Unit``), written as checkpoint ``step``.
        unit = Unit(step, step, log_lines, unet=unet, optimizer=optimizer, accelerator=accelerator,
                    checkpoint_dir=checkpoint_dir, full_unet=full)
        try:
            for j in range(n_micro):
                unit.check()
                rows = source.rows_of(entries[j * dpo.micro_batch:(j + 1) * dpo.micro_batch])
                with accelerator.autocast():
                    out = micro_loss(backbone, rows, dpo, _generator(settings.seed, step, rank, j), dtype,
                                     ref_unet)
                stop_if_not_finite(out["loss"], guard=guard, where=f"step {step}", world=world)
                restore_loss_scale(accelerator, optimizer)
                accelerator.backward(out["loss"] / n_micro)
                for key in sums:
                    sums[key] += out[key].item() / n_micro
        except Preempted:
            unit.checkpoint_and_exit(f"step {step + 1}")
        optimizer_step(params, optimizer, accelerator, world, settings.grad_clip, guard=guard,
                       where=f"step {step}")
        log_lines.append({"step": step + 1, "epoch": (step + 1) * dpo.batch_size / source.n_pairs,
                          **sums, "lr": lr, "pairs": dpo.batch_size,
                          "pairs_per_s": per_rank / (time.perf_counter() - tic)})
        end_of_unit(due=(step + 1) % settings.checkpoint_every == 0 or step + 1 == dpo.steps,
                    accelerator=accelerator, what=f"step {step + 1}", checkpoint_dir=checkpoint_dir,
                    save=save_state(checkpoint_dir, step + 1, step + 1, unet, optimizer, log_lines,
                                    full_unet=full))
        if (step + 1) % 50 == 0:
            log.info("step %d/%d: loss %.4f, implicit acc %.3f", step + 1, dpo.steps, sums["loss"],
                     sums["implicit_acc"])
    seconds = time.perf_counter() - began
    check_trained(unet, full_unet=full, steps=dpo.steps, guard=guard, no_signal="no step was run")
    info = {**(resolved or {}), "pairs": str(pairs), "latents": str(latents) if latents else None,
            "decisive_pairs": source.n_pairs, "ties_dropped": source.n_ties,
            "train_seconds_this_run": seconds}
    write_outputs(out_dir, pipeline_class, unet, log_lines, info, accelerator, full_unet=full)
    return {"steps": dpo.steps, "seconds": seconds,
            "final_loss": log_lines[-1]["loss"] if log_lines else math.nan}
