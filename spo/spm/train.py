"""``python -m spo train-spm``: fine-tune PickScore into a step-aware preference model.

One optimiser step (issue 4, "Training"; official ``SPMTask.train_step``): a batch of pairs;
t ~ U{0..999} per pair; both images' latents get the *same* noise; the frozen base UNet with CFG
predicts x̂0; the VAE decodes it; the SPM scores both decoded x̂0 against the prompt with time
condition t; the loss is ``objective.pair_loss``. Batches, t and noise are pure functions of
(seed, step), and checkpoints hold the model, the optimiser and the step, so a run killed and rerun
ends with the weights of an uninterrupted run. Pairs and latents are read per batch from a
``spo.spm.stream.PairStream`` (Pick-a-Pic's ~1M pairs are never loaded).

Outputs: the SPM folder (``spo.preference.spm_io``) and a validation CSV with one row per
(stage, t): pairwise accuracy on held-out pairs, beside the ceiling (colourfulness of the decoded x̂0
itself, for pairs labelled by colourfulness). Checkpoints live in ``<ckpt_dir>/step-<N>/`` (``spo.checkpoint``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from spo.checkpoint import (PREEMPTED_EXIT_CODE, install_signal_handlers, latest_checkpoint,
                            received_signal, should_checkpoint_and_exit)
from spo.spm.objective import (learning_rate, pair_loss, pairwise_accuracy, pseudo_labels,
                               step_generator)

log = logging.getLogger(__name__)
VAL_COLUMNS = ["run", "stage", "step", "t", "accuracy", "ceiling", "pairs"]


class SPMTrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad setting); the message names the key or the checkpoint."""


def check_run_spec(run: str, spec: dict[str, Any]) -> None:
    """Numeric settings the schema cannot fully express (``spo.spm.config_check``; the config
    check at load runs the same); raises ``ConfigError`` naming ``spm.runs.<run>.<key>``."""
    from spo.config_spec import ConfigError
    from spo.spm.config_check import run_spec_errors

    problems = run_spec_errors(run, spec)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems), problems)


def run_settings(run: str, spec: dict[str, Any]):
    """``spm.runs.<run>`` as ``spo.spm.settings.SPMRunSettings`` (memoised: the object the config
    check at load parsed)."""
    from spo.config_spec import parse
    from spo.spm.settings import SPMRunSettings

    return parse(SPMRunSettings, spec, f"spm.runs.{run}")


def save_checkpoint(ckpt_dir: Path, step: int, model, optimizer) -> Path:
    """Atomically write ``<ckpt_dir>/step-<N>/state.pt`` (model, optimiser, step) through
    ``spo.checkpoint`` (verified manifest; the newest two are kept)."""
    from spo.checkpoint import save_checkpoint as save_verified

    def write(folder: Path) -> None:
        torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   folder / "state.pt")

    return save_verified(ckpt_dir, step, write)


def _load_state(folder: Path) -> dict:
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)


def noisy_x0_images(backbone, latents: torch.Tensor, prompts: list[str], t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """Decoded x̂0 (2B, 3, H, W) in [0, 1]: latents (B, 2, C, h, w) noised to t (B,), the same
    noise (B, C, h, w) for both images of a pair; image 0s first, then image 1s."""
    lat = torch.cat([latents[:, 0], latents[:, 1]]).to(backbone.device)
    emb = backbone.prompt_embeddings(prompts + prompts)
    x0 = backbone.predict_x0(lat, torch.cat([t, t]).to(backbone.device),
                             torch.cat([noise, noise]).to(backbone.device), emb)
    return backbone.decode(x0)


def score_pairs(scorer, images: torch.Tensor, prompts: list[str], t: torch.Tensor,
                resize: str | None = None, autocast=None):
    """SPM logits of image 0s and image 1s: images (2B, ...) as ``noisy_x0_images`` orders them
    (``resize``: ``SPMScorer.pixels``; the scorer's own by default). ``autocast``: the context
    the forward pass runs in (the run's precision policy; none: as called)."""
    model = scorer.model
    with (autocast or contextlib.nullcontext)():
        tok = scorer.tokens(prompts)
        txt = model.text_features(tok["input_ids"], tok["attention_mask"])
        tt = torch.cat([t, t]).to(scorer.device) if model.time_condition else None
        img = model.image_features(scorer.pixels(images, resize), tt)
        s = model.scores_from_features(img, torch.cat([txt, txt]))
    return s.chunk(2)


@torch.no_grad()
def validate(scorer, backbone, pairs, timesteps, *, seed: int, batch: int,
             ceiling: bool, autocast=None) -> list[dict[str, Any]]:
    """Accuracy at each t (t = 0: the clean images, as the official validation), with fixed noise;
    the SPM under ``autocast`` (the run's policy; the backbone runs under its own).

    ``pairs`` (a ``stream.PairStream``) is read in consecutive blocks of ``batch``: memory holds
    one block and the (N,) scores, whatever the number of pairs.
    """
    from spo.preference.base import colorfulness_torch

    was_training = scorer.model.training
    scorer.model.eval()
    rows = []
    for t_val in timesteps:
        s0s, s1s, c0s, c1s, labels = [], [], [], [], []
        for idx in pairs.chunks(batch):
            start = int(idx[0])
            meta = pairs.meta(idx)
            t = torch.full((len(idx),), int(t_val), dtype=torch.long)
            if t_val == 0:
                images = pairs.images(idx)
            else:
                gen = torch.Generator().manual_seed(seed * 7919 + start)
                latents = pairs.latents(idx)
                noise = torch.randn(latents[:, 0].shape, generator=gen)
                images = noisy_x0_images(backbone, latents, meta["prompts"], t, noise)
            s0, s1 = score_pairs(scorer, images, meta["prompts"], t, autocast=autocast)
            s0s.append(s0.float().cpu()); s1s.append(s1.float().cpu()); labels.append(meta["label"])
            if ceiling:
                c = colorfulness_torch(images).chunk(2)
                c0s.append(c[0]); c1s.append(c[1])
        label = torch.cat(labels)
        acc, n = pairwise_accuracy(torch.cat(s0s), torch.cat(s1s), label)
        ceil = pairwise_accuracy(torch.cat(c0s), torch.cat(c1s), label)[0] if ceiling else float("nan")
        rows.append({"t": int(t_val), "accuracy": acc, "ceiling": ceil, "pairs": n})
    scorer.model.train(was_training)
    return rows


def _all_reduce_(tensors, world: int, op: str = "mean", bucket: int = 1 << 25) -> None:
    """In place over the data-parallel processes: the mean (gradients) or max (flags).

    Tensors go in flat buckets of <= ``bucket`` elements (a few hundred calls per step for
    PickScore's ~900 tensors would be latency-bound; one flat copy of all would double memory).
    """
    import torch.distributed as dist

    if world <= 1:
        return
    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    tensors, start = list(tensors), 0
    while start < len(tensors):
        stop, size = start, 0
        while stop < len(tensors) and (stop == start or size + tensors[stop].numel() <= bucket) \
                and tensors[stop].dtype == tensors[start].dtype:
            size += tensors[stop].numel()
            stop += 1
        group = tensors[start:stop]
        flat = torch.cat([x.reshape(-1) for x in group])
        dist.all_reduce(flat, op=reduce_op)
        if op == "mean":
            flat.div_(world)
        for x, part in zip(group, flat.split([x.numel() for x in group])):
            x.copy_(part.view_as(x))
        start = stop


def optimizer_groups(model, weight_decay: float, on: str = "matrices") -> list[dict[str, Any]]:
    """AdamW parameter groups. ``on`` "all": weight decay on every parameter, as the official
    DeepSpeed AdamW gets one group of ``model.parameters()``
    (RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/optimizers/dummy_optimizer.py);
    "matrices": not on biases, norms and ``logit_scale`` (the usual transformer practice)."""
    if on not in ("all", "matrices"):
        raise ValueError(f"weight decay on {on!r}; allowed: all, matrices")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if on == "matrices" and (p.ndim < 2 or "logit_scale" in name) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_loop(scorer, backbone, train, spec: dict[str, Any], ckpt_dir: Path, *,
               run: str = "spm", stop_after: int | None = None,
               record_batches: bool = False) -> dict[str, Any]:
    """Optimise ``scorer.model`` in place for ``spec['steps']`` steps, resuming from ``ckpt_dir``.

    Data parallel (``accelerate launch --multi_gpu``, or ``torchrun`` on CPUs: ``accelerate
    launch --cpu`` starts a single process without mpirun): every process draws the same global batch of
    ``batch_size`` pairs, t and noise; rank r of w reads and scores ``[r::w]`` of it and the
    gradients are averaged by hand (the model is not DDP-wrapped: the SPM is called through
    several methods, not ``forward``, so DDP's hooks would never synchronise). The per-rank loss is
    rescaled to its share of the global 1/examples-per-prompt weight, so w processes take the
    step of one process on the whole batch.

    Args:
        train: a ``stream.PairStream``; stop_after: tests only: return after this many steps of
            *this* invocation, as a kill would; record_batches: tests: return each step's pair ids.
    Returns:
        {"step": steps done, "resumed_from": step or None, "seconds": wall time of this call,
         "main": whether this is the main process, "batches": [[pair_id, ...], ...] if recorded}.
    """
    from spo.spm.precision import run_mixed_precision
    from spo.spm.stream import BatchOrder
    from spo.training.loop import accelerator_on, restore_loss_scale

    check_run_spec(run, spec)
    settings = run_settings(run, spec)  # the typed block (spo.spm.settings), its defaults filled in
    model = scorer.model
    # where the scorer was loaded; the policy's autocast and (fp16) loss scale (spo.spm.precision)
    accel = accelerator_on(next(model.parameters()).device, run_mixed_precision(spec))
    rank, world = accel.process_index, accel.num_processes
    params = list(model.parameters())  # model order: the clipping norm's sum as before, bitwise
    opt = torch.optim.AdamW(optimizer_groups(model, settings.weight_decay, settings.weight_decay_on),
                            lr=settings.lr, betas=tuple(settings.betas), eps=1e-8)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start, resumed = 0, None
    found = latest_checkpoint(ckpt_dir, load=_load_state)
    if found is not None:
        latest, state = found.path, found.state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = resumed = int(state["step"])
        log.info("resumed from %s (step %d)", latest, start)
    if world > 1:  # one starting point for all: rank 0's weights (seeded alike, but be sure)
        import torch.distributed as dist

        for p in model.state_dict().values():
            dist.broadcast(p.data, src=0)
    model.train()
    opt = accel.prepare(opt)  # the optimiser only: mixed-precision scaling; see the docstring
    restore_loss_scale(accel, opt)  # fp16: a resumed run goes on with its checkpointed loss scale
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers()  # SLURM's SIGUSR1 / SIGTERM: checkpoint at the next step
    began = time.perf_counter()
    total, bsz, every = settings.steps, settings.batch_size, settings.checkpoint_every
    # Memory-mapped latents: pair-level shuffle. Encoding images per step: row-group windows, so
    # each row group of images is decoded once per epoch (see stream.epoch_order).
    window = None if train.store is not None else train.rows.cache_groups
    order = BatchOrder(len(train), settings.seed, train.rows.group_sizes, window)
    latent_shape = tuple(train.latent_shape)
    batches = []
    step = start
    while step < total:
        idx = order(step, bsz)
        gen = step_generator(settings.seed, step)
        t = torch.randint(0, backbone.num_train_timesteps, (bsz,), generator=gen)
        noise = torch.randn((bsz,) + latent_shape, generator=gen)
        flip = torch.rand(bsz, generator=gen) < 0.5 if settings.augment else None
        # vae_latents "sample": a fresh VAE posterior sample per step, as the official
        # get_noised_imgs (latent_dist.sample()); its noise drawn for the whole batch, so any
        # number of processes sees the same latents. "mean": the cached posterior mean.
        posterior = (torch.randn((bsz, 2) + latent_shape, generator=gen)
                     if settings.vae_latents == "sample" else None)
        meta = train.meta(idx)  # the whole batch's labels and weights (small): the loss needs W
        mine = torch.arange(rank, bsz, world)
        prompts = [meta["prompts"][i] for i in mine.tolist()]
        latents = (train.latents(idx[mine]) if posterior is None
                   else train.latents(idx[mine], posterior_noise=posterior[mine]))
        images = noisy_x0_images(backbone, latents, prompts, t[mine], noise[mine])
        if flip is not None:  # label-preserving for colourfulness: a flip per pair, seeded
            images = torch.where(flip[mine].repeat(2).view(-1, 1, 1, 1), images.flip(-1), images)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings.lr, settings.warmup_steps, total,
                                        settings.lr_schedule, settings.warmup_shape)
        label, epp = meta["label"][mine].to(accel.device), meta["epp"][mine].to(accel.device)
        with accel.autocast():
            s0, s1 = score_pairs(scorer, images, prompts, t[mine])
            loss = pair_loss(s0, s1, label, epp)
            if world > 1:  # this share's part of the global weighted mean (x w: the mean below)
                loss = loss * ((1 / epp).sum() / (1 / meta["epp"]).sum().to(accel.device) * world)
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=accel.device)
        _all_reduce_([bad], world, "max")
        if bad.item():
            path = save_checkpoint(ckpt_dir, step, model, opt) if accel.is_main_process else ckpt_dir
            raise SPMTrainingError(f"spm run '{run}': the loss is {loss.item()} at step {step}; "
                                   f"stopped with the last good state in '{path}'. Lower "
                                   f"'spm.runs.{run}.lr' (now {settings.lr}) or check the pairs")
        opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        # Unused parameters have no gradient on every rank alike; AdamW leaves them untouched.
        _all_reduce_([p.grad for p in params if p.grad is not None], world)
        if settings.grad_clip:
            accel.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        if accel.scaler is not None:  # fp16: the loss scale is checkpointed with the optimiser
            opt.param_groups[0]["loss_scaler"] = accel.scaler.state_dict()
        if record_batches:
            batches.append([meta["pair_id"][i] for i in mine.tolist()])
        step += 1
        if step % 25 == 0 or step == total:
            log.info("step %d/%d loss %.4f (%.1f s)", step, total, loss.item(), time.perf_counter() - began)
        flag = torch.tensor([float(should_checkpoint_and_exit())], device=accel.device)
        _all_reduce_([flag], world, "max")  # a signal on any rank stops all at the same step
        preempted = bool(flag.item())
        if (every and step % every == 0) or preempted:
            if accel.is_main_process:
                save_checkpoint(ckpt_dir, step, model, opt)
            accel.wait_for_everyone()
        if preempted:
            log.warning("spm run '%s': signal %s at step %d; checkpoint saved in '%s', rerun to "
                        "resume", run, received_signal(), step, ckpt_dir)
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if stop_after is not None and step - start >= stop_after:
            break
    out = {"step": step, "resumed_from": resumed, "seconds": time.perf_counter() - began,
           "main": accel.is_main_process}
    return {**out, "batches": batches} if record_batches else out


def add_pseudo_labels(scorer, pairs, threshold: float, batch: int = 32, autocast=None) -> None:
    """Relabel ``pairs`` (a PairStream) with frozen PickScore on the clean images (the SDXL
    recipe): one streaming pass; keeps (N,) labels, 4 bytes a pair. The images reach PickScore
    through its CLIP processor, as the official ``update_as_pickscore_label`` passes them
    (RockeyCoss/SPO@27a8642:step_aware_preference_model/trainer/tasks/spm_task.py)."""
    s0s, s1s = [], []
    with torch.no_grad():
        for idx in pairs.chunks(batch):
            prompts = pairs.meta(idx)["prompts"]
            s0, s1 = score_pairs(scorer, pairs.images(idx), prompts, torch.zeros(len(idx), dtype=torch.long),
                                 resize="processor", autocast=autocast)
            s0s.append(s0.float().cpu()); s1s.append(s1.float().cpu())
    pairs.pseudo = pseudo_labels(torch.cat(s0s), torch.cat(s1s), threshold)
