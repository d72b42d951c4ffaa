"""``python -m spo train-spm``: fine-tune PickScore into a step-aware preference model.

One optimiser step (issue 4, "Training"; official ``SPMTask.train_step``): a batch of pairs;
t ~ U{0..999} per pair; both images' latents get the *same* noise; the frozen base UNet with CFG
predicts x̂0; the VAE decodes it; the SPM scores both decoded x̂0 against the prompt with time
condition t; the loss is ``objective.pair_loss``. Batches, t and noise are pure functions of
(seed, step), and checkpoints hold the model, the optimiser and the step, so a run killed and rerun
ends with the weights of an uninterrupted run.

Outputs: the SPM folder (``spo.preference.spm_io``) and a validation CSV with one row per
(stage, t): pairwise accuracy on held-out pairs, beside the ceiling (colourfulness of the decoded x̂0
itself, for pairs labelled by colourfulness). Checkpoints live in ``<ckpt_dir>/step-<N>/`` (``spo.checkpoint``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from spo.checkpoint import (PREEMPTED_EXIT_CODE, install_signal_handlers, latest_checkpoint,
                            received_signal, should_checkpoint_and_exit)
from spo.spm.objective import (batch_indices, learning_rate, pair_loss, pairwise_accuracy,
                               pseudo_labels, step_generator)

log = logging.getLogger(__name__)
VAL_COLUMNS = ["run", "stage", "step", "t", "accuracy", "ceiling", "pairs"]


class SPMTrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad setting); the message names the key or the checkpoint."""


def check_run_spec(run: str, spec: dict[str, Any]) -> None:
    """Numeric settings the schema cannot fully express; errors name ``spm.runs.<run>.<key>``."""
    def bad(key, why):
        raise SPMTrainingError(f"config key 'spm.runs.{run}.{key}' is {spec.get(key)!r}: {why}")

    lr = spec.get("lr")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or not 0 < lr < 1:
        bad("lr", "the learning rate must be a finite number in (0, 1), e.g. 3e-6")
    for key in ("steps", "batch_size"):
        if not isinstance(spec.get(key), int) or spec[key] < 1:
            bad(key, "must be an integer >= 1")
    if spec.get("warmup_steps", 0) >= spec["steps"] and spec.get("lr_schedule") == "warmup_decay":
        bad("warmup_steps", f"must be below steps ({spec['steps']}) for warmup_decay")


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


class PairTensors:
    """A pairs table as tensors: latents (P, 2, C, h, w), labels, weights, prompt indices."""

    def __init__(self, frame: pd.DataFrame, backbone, origin: str, resolution: int | None = None):
        from spo.spm.data import decode_image, latents_from_column

        self.frame = frame
        self.prompts = frame["prompt"].tolist()
        self.label = torch.tensor(frame["label"].to_numpy(), dtype=torch.float32)
        self.epp = torch.tensor(frame["examples_per_prompt"].to_numpy(), dtype=torch.float32)
        if "latent_0" in frame:
            l0 = latents_from_column(frame["latent_0"].tolist(), frame["latent_shape"], origin)
            l1 = latents_from_column(frame["latent_1"].tolist(), frame["latent_shape"], origin)
        else:  # no cache: encode once here (the official recipe re-encodes in every step)
            def enc(col):
                imgs = []
                for i, blob in enumerate(frame[col]):
                    im = decode_image(blob, f"'{origin}' row {i} (pair_id {frame['pair_id'].iloc[i]!r}) {col}")
                    if resolution:
                        from spo.preference.spm_model import clip_pixels
                        im = clip_pixels(im[None], resolution, (0, 0, 0), (1, 1, 1))[0]
                    imgs.append(im)
                return torch.cat([backbone.encode(torch.stack(imgs[i:i + 16])) for i in range(0, len(imgs), 16)])
            l0, l1 = enc("image_0"), enc("image_1")
        self.latents = torch.stack([l0, l1], dim=1).float()

    def __len__(self) -> int:
        return len(self.label)

    def clean_images(self, idx: torch.Tensor) -> torch.Tensor:
        """(2B, 3, H, W): the stored images of pairs ``idx`` (image 0s, then image 1s)."""
        from spo.spm.data import decode_image

        rows = self.frame.iloc[idx.tolist()]
        return torch.stack([decode_image(b, "validation image") for b in
                            list(rows["image_0"]) + list(rows["image_1"])])


def noisy_x0_images(backbone, pairs: PairTensors, idx: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """Decoded x̂0 (2B, 3, H, W) in [0, 1] of pairs ``idx`` at t (B,), same noise for both images."""
    lat = pairs.latents[idx]
    lat = torch.cat([lat[:, 0], lat[:, 1]]).to(backbone.device)
    prompts = [pairs.prompts[i] for i in idx.tolist()]
    emb = backbone.prompt_embeddings(prompts + prompts)
    x0 = backbone.predict_x0(lat, torch.cat([t, t]).to(backbone.device),
                             torch.cat([noise, noise]).to(backbone.device), emb)
    return backbone.decode(x0)


def score_pairs(scorer, images: torch.Tensor, prompts: list[str], t: torch.Tensor):
    """SPM logits of image 0s and image 1s: images (2B, ...) as ``noisy_x0_images`` orders them."""
    model = scorer.model
    tok = scorer.tokens(prompts)
    txt = model.text_features(tok["input_ids"], tok["attention_mask"])
    tt = torch.cat([t, t]).to(scorer.device) if model.time_condition else None
    img = model.image_features(scorer.pixels(images), tt)
    s = model.scores_from_features(img, torch.cat([txt, txt]))
    return s.chunk(2)


@torch.no_grad()
def validate(scorer, backbone, pairs: PairTensors, timesteps, *, seed: int, batch: int,
             ceiling: bool) -> list[dict[str, Any]]:
    """Accuracy at each t (t = 0: the clean images, as the official validation), with fixed noise."""
    from spo.preference.base import colorfulness_torch

    was_training = scorer.model.training
    scorer.model.eval()
    rows = []
    for t_val in timesteps:
        s0s, s1s, c0s, c1s = [], [], [], []
        for start in range(0, len(pairs), batch):
            idx = torch.arange(start, min(start + batch, len(pairs)))
            t = torch.full((len(idx),), int(t_val), dtype=torch.long)
            if t_val == 0:
                images = pairs.clean_images(idx)
            else:
                gen = torch.Generator().manual_seed(seed * 7919 + start)
                noise = torch.randn(pairs.latents[idx][:, 0].shape, generator=gen)
                images = noisy_x0_images(backbone, pairs, idx, t, noise)
            s0, s1 = score_pairs(scorer, images, [pairs.prompts[i] for i in idx.tolist()], t)
            s0s.append(s0.float().cpu()); s1s.append(s1.float().cpu())
            if ceiling:
                c = colorfulness_torch(images).chunk(2)
                c0s.append(c[0]); c1s.append(c[1])
        acc, n = pairwise_accuracy(torch.cat(s0s), torch.cat(s1s), pairs.label)
        ceil = pairwise_accuracy(torch.cat(c0s), torch.cat(c1s), pairs.label)[0] if ceiling else float("nan")
        rows.append({"t": int(t_val), "accuracy": acc, "ceiling": ceil, "pairs": n})
    scorer.model.train(was_training)
    return rows


def train_loop(scorer, backbone, train: PairTensors, spec: dict[str, Any], ckpt_dir: Path, *,
               run: str = "spm", stop_after: int | None = None) -> dict[str, Any]:
    """Optimise ``scorer.model`` in place for ``spec['steps']`` steps, resuming from ``ckpt_dir``.

    Args:
        stop_after: tests only: return after this many steps of *this* invocation, as a kill would.
    Returns:
        {"step": steps done, "resumed_from": step or None, "seconds": wall time of this call}.
    """
    from accelerate import Accelerator

    check_run_spec(run, spec)
    precision = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[spec.get("dtype", "float32")]
    accel = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    model = scorer.model
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.get("weight_decay", 0.0)},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec["lr"],
                            betas=tuple(spec.get("betas", (0.9, 0.999))), eps=1e-8)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    start, resumed = 0, None
    found = latest_checkpoint(ckpt_dir, load=_load_state)
    if found is not None:
        latest, state = found.path, found.state
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = resumed = int(state["step"])
        log.info("resumed from %s (step %d)", latest, start)
    model.train()
    prepared, opt = accel.prepare(model, opt)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers()  # SLURM's SIGUSR1 / SIGTERM: checkpoint at the next step
    began = time.perf_counter()
    total, bsz, every = spec["steps"], spec["batch_size"], spec.get("checkpoint_every", 0)
    thr = (spec.get("pickscore_labels") or {}).get("threshold")
    shard = slice(accel.process_index, None, accel.num_processes)
    step = start
    while step < total:
        idx = batch_indices(step, bsz, len(train), spec["seed"])[shard]
        gen = step_generator(spec["seed"], step)
        t = torch.randint(0, backbone.num_train_timesteps, (bsz,), generator=gen)[shard]
        noise = torch.randn((bsz,) + tuple(train.latents.shape[2:]), generator=gen)[shard]
        images = noisy_x0_images(backbone, train, idx, t, noise)
        if spec.get("augment"):  # label-preserving for colourfulness: a flip per pair, seeded
            flip = (torch.rand(len(idx), generator=gen) < 0.5).repeat(2)
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, spec["lr"], spec.get("warmup_steps", 0), total,
                                        spec.get("lr_schedule", "warmup_decay"))
        label = train.label[idx].to(accel.device)
        if thr is not None:
            label = train.pseudo[idx].to(accel.device)
        with accel.autocast():
            s0, s1 = score_pairs(scorer, images, [train.prompts[i] for i in idx.tolist()], t)
            loss = pair_loss(s0, s1, label, train.epp[idx].to(accel.device))
        if not torch.isfinite(loss):
            path = save_checkpoint(ckpt_dir, step, accel.unwrap_model(prepared), opt)
            raise SPMTrainingError(f"spm run '{run}': the loss is {loss.item()} at step {step}; "
                                   f"stopped with the last good state in '{path}'. Lower "
                                   f"'spm.runs.{run}.lr' (now {spec['lr']}) or check the pairs")
        opt.zero_grad(set_to_none=True)
        accel.backward(loss)
        if spec.get("grad_clip"):
            accel.clip_grad_norm_(prepared.parameters(), spec["grad_clip"])
        opt.step()
        step += 1
        if step % 25 == 0 or step == total:
            log.info("step %d/%d loss %.4f (%.1f s)", step, total, loss.item(), time.perf_counter() - began)
        preempted = should_checkpoint_and_exit()
        if (every and step % every == 0) or preempted:
            if accel.is_main_process:
                save_checkpoint(ckpt_dir, step, accel.unwrap_model(prepared), opt)
        if preempted:
            log.warning("spm run '%s': signal %s at step %d; checkpoint saved in '%s', rerun to "
                        "resume", run, received_signal(), step, ckpt_dir)
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if stop_after is not None and step - start >= stop_after:
            break
    return {"step": step, "resumed_from": resumed, "seconds": time.perf_counter() - began}


def add_pseudo_labels(scorer, pairs: PairTensors, threshold: float, batch: int = 32) -> None:
    """Relabel ``pairs`` with frozen PickScore on the clean images (the SDXL recipe)."""
    s0s, s1s = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            idx = torch.arange(start, min(start + batch, len(pairs)))
            s0, s1 = score_pairs(scorer, pairs.clean_images(idx), [pairs.prompts[i] for i in idx.tolist()],
                                 torch.zeros(len(idx), dtype=torch.long))
            s0s.append(s0.float().cpu()); s1s.append(s1.float().cpu())
    pairs.pseudo = pseudo_labels(torch.cat(s0s), torch.cat(s1s), threshold)
