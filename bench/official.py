"""The reference for the speed comparisons: SPO as the official code structures it.

Written here from the official code's structure (RockeyCoss/SPO@27a8642,
``train_scripts/train_spo.py``, ``spo/custom_diffusers/multi_sample_pipeline.py`` and
``ddim_seperate.py``; ../shared/PAPER.md §1.3-1.5 and §5), read, not copied, without its
accelerate / wandb / mmengine scaffolding:

* the reference model is ``copy.deepcopy(unet)`` taken before the LoRA is attached, kept in memory
  beside the policy;
* every training pair costs four separate CFG UNet calls (policy on the win transition, reference
  on it, policy on the lose transition, reference on it), although win and lose start from the same
  x_t; the two policy calls both keep their autograd graphs until the one backward;
* the sampler runs the UNet on all k candidates at every trained step, decodes and scores all k
  predicted x0, keeps (best, worst) when their softmax gap passes the threshold, continues from one
  uniformly random candidate, and branches k new candidates from it with that candidate's noise
  prediction; candidates are laid out k-major, (k, b, ...), as in the official code;
* the log-probability is the DDIM(eta) Gaussian log-density averaged over latent dimensions, the
  ratio is clamped to [1 - eps, 1 + eps], loss = -log sigmoid(beta log r_w - beta log r_l).

One deliberate difference: the official script builds its optimizer from a ``filter`` iterator and
later passes the same, by then exhausted, iterator to ``clip_grad_norm_``, so its gradient clipping
clips nothing. Here gradients are clipped at ``grad_clip`` like ours (same work, comparable updates).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from spo.training.lora import attach_lora


# ---------------------------------------------------------------------------------------- DDIM math
def _alphas(scheduler, timestep: torch.Tensor, num_inference_steps: int):
    ac = scheduler.alphas_cumprod
    prev = timestep - scheduler.config.num_train_timesteps // num_inference_steps
    prev = prev.clamp(0, scheduler.config.num_train_timesteps - 1)  # as the official code
    a_t = ac.gather(0, timestep.cpu().long())
    a_prev = torch.where(prev.cpu() >= 0, ac.gather(0, prev.cpu().long()),
                         torch.as_tensor(scheduler.final_alpha_cumprod, dtype=ac.dtype))
    return a_t, a_prev


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.device, like.dtype).reshape(v.shape + (1,) * (like.ndim - v.ndim)).broadcast_to(like.shape)


def fetch_x0(scheduler, eps, timestep, sample, num_inference_steps):
    """x0 prediction and the alphas of a DDIM step (``ddim_step_fetch_x0``); timestep (B,)."""
    a_t, a_prev = _alphas(scheduler, timestep, num_inference_steps)
    a_t, a_prev = _bcast(a_t, sample), _bcast(a_prev, sample)
    x0 = (sample - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return {"pred_original_sample": x0, "alpha_prod_t_prev": a_prev, "pred_epsilon": eps,
            "timestep": timestep}


def fetch_x_t_1(scheduler, pred, eta, k, num_inference_steps, generator):
    """Draw k next states from one DDIM(eta) mean (``ddim_step_fetch_x_t_1``): (k, B, ...) or (B, ...)."""
    x0, a_prev, eps, t = pred["pred_original_sample"], pred["alpha_prod_t_prev"], pred["pred_epsilon"], pred["timestep"]
    a_t, a_p = _alphas(scheduler, t, num_inference_steps)
    std = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
    std = _bcast(std, x0)
    mean = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    shape = (k, *mean.shape) if k > 1 else mean.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
    return mean[None] + std[None] * noise if k > 1 else mean + std * noise


def logprob(scheduler, eps, timestep, sample, prev_sample, eta, num_inference_steps):
    """``ddim_step_with_logprob``: log N(prev_sample; DDIM mean, std^2), mean over latent dims."""
    eps, sample = eps.float(), sample.float()
    a_t, a_prev = _alphas(scheduler, timestep, num_inference_steps)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = _bcast(eta * var ** 0.5, sample)
    a_t, a_prev = _bcast(a_t, sample), _bcast(a_prev, sample)
    x0 = (sample - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    mean = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    lp = (-((prev_sample.detach().float() - mean) ** 2) / (2 * std ** 2) - torch.log(std)
          - math.log(math.sqrt(2 * math.pi)))
    return lp.mean(dim=tuple(range(1, lp.ndim)))


# ---------------------------------------------------------------------------------------- trainer
@dataclass
class OfficialPairs:
    """Training tuples as the official sampler returns them (after the win/lose split)."""

    timesteps: torch.Tensor       # (M,)
    latents: torch.Tensor         # (M, C, h, w) x_t, shared by win and lose
    next_win: torch.Tensor        # (M, C, h, w)
    next_lose: torch.Tensor       # (M, C, h, w)
    prompt_embeds: torch.Tensor   # (M, L, D) per-pair copy of the text embedding

    def __len__(self):
        return len(self.timesteps)

    def select(self, idx):
        return OfficialPairs(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


class OfficialSPO:
    """Policy = the pipeline's UNet with a LoRA; reference = deep copy taken before the LoRA."""

    def __init__(self, pipe, *, rank, alpha=None, init="default", lr, weight_decay=1e-4,
                 grad_clip=1.0, beta=10.0, clamp_eps=0.1, guidance_scale=5.0, eta=1.0,
                 num_inference_steps=20, seed=0, neg_embed=None, autocast_dtype=None):
        self.pipe, self.unet = pipe, pipe.unet
        self.ref = copy.deepcopy(self.unet)          # the official "Prepare reference model"
        self.ref.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.params = attach_lora(self.unet, rank=rank, alpha=alpha, init=init)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999),
                                           weight_decay=weight_decay, eps=1e-8)
        self.grad_clip, self.beta, self.clamp_eps = grad_clip, beta, clamp_eps
        self.g, self.eta, self.steps = guidance_scale, eta, num_inference_steps
        self.neg_embed = neg_embed
        self.autocast_dtype = autocast_dtype

    def _cfg(self, model, latents, t, embeds, neg):
        out = unet_call(model, torch.cat([latents] * 2).to(model.dtype), torch.cat([t] * 2),
                        torch.cat([neg, embeds]).to(model.dtype))
        u, c = out.chunk(2)
        return u + self.g * (c - u)

    def loss(self, b: OfficialPairs) -> torch.Tensor:
        sched, dev = self.pipe.scheduler, self.unet.device
        lat, t = b.latents.to(dev), b.timesteps.to(dev)
        embeds = b.prompt_embeds.to(dev)
        neg = self.neg_embed.to(dev).repeat(len(b), 1, 1)
        win, lose = b.next_win.to(dev), b.next_lose.to(dev)
        ctx = (torch.autocast(dev.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else torch.autocast(dev.type, enabled=False))
        with ctx:
            eps_0 = self._cfg(self.unet, lat, t, embeds, neg)
            ref_0 = self._cfg(self.ref, lat, t, embeds, neg)
            eps_1 = self._cfg(self.unet, lat, t, embeds, neg)
            ref_1 = self._cfg(self.ref, lat, t, embeds, neg)
        lp_0 = logprob(sched, eps_0, t, lat, win, self.eta, self.steps)
        lr_0 = logprob(sched, ref_0, t, lat, win, self.eta, self.steps)
        lp_1 = logprob(sched, eps_1, t, lat, lose, self.eta, self.steps)
        lr_1 = logprob(sched, ref_1, t, lat, lose, self.eta, self.steps)
        ratio_0 = torch.clamp(torch.exp(lp_0 - lr_0), 1 - self.clamp_eps, 1 + self.clamp_eps)
        ratio_1 = torch.clamp(torch.exp(lp_1 - lr_1), 1 - self.clamp_eps, 1 + self.clamp_eps)
        return -torch.log(torch.sigmoid(self.beta * torch.log(ratio_0)
                                        - self.beta * torch.log(ratio_1))).mean()

    def step(self, b: OfficialPairs) -> float:
        loss = self.loss(b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


# ---------------------------------------------------------------------------------------- sampler
def unet_call(unet, latents, t, embeds):
    """The UNet's noise prediction. SDXL: ``embeds`` carries the pooled text embedding as one extra
    last row (zero-padded to the width; ``encode``), so that every per-pair copy, repeat and
    concatenation of the official structure moves it along, as the official SDXL trainer's
    per-sample ``pooled_prompt_embeds``; the time ids are the image's size, no crop."""
    cfg = unet.config
    if cfg.addition_embed_type != "text_time":
        return unet(latents, t, encoder_hidden_states=embeds).sample
    width = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    side = latents.shape[-1] * 8
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=embeds.dtype,
                            device=latents.device).repeat(len(latents), 1)
    return unet(latents, t, encoder_hidden_states=embeds[:, :-1],
                added_cond_kwargs={"text_embeds": embeds[:, -1, :width], "time_ids": time_ids}).sample


def pack_pooled(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """SDXL: (B, L, D) and (B, P) -> (B, L + 1, D), the pooled embedding as the last row."""
    row = torch.nn.functional.pad(pooled, (0, hidden.shape[-1] - pooled.shape[-1]))
    return torch.cat([hidden, row[:, None].to(hidden.dtype)], dim=1)


def encode(pipe, prompts):
    """Text embeddings the official way: tokenizer + text_encoder(ids)[0]; and the empty prompt's.
    SDXL: both encoders as the official SDXL script (penultimate states, concatenated; pooled of
    the second), packed with ``pack_pooled``."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        with torch.no_grad():
            cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
                list(prompts), device=pipe.unet.device, num_images_per_prompt=1,
                do_classifier_free_guidance=True)
        return pack_pooled(cond, pooled), pack_pooled(uncond[:1], uncond_pooled[:1])
    tok = pipe.tokenizer
    dev = pipe.text_encoder.device

    def emb(texts):
        ids = tok(texts, return_tensors="pt", padding="max_length", truncation=True,
                  max_length=tok.model_max_length).input_ids.to(dev)
        return pipe.text_encoder(ids)[0]

    with torch.no_grad():
        return emb(list(prompts)), emb([""])


@torch.no_grad()
def multi_sample(pipe, prompt_embeds, neg_embed, *, preference, prompts, num_inference_steps=20,
                 guidance_scale=5.0, eta=1.0, divert_start_step=4, k=4, threshold=0.0,
                 latent_side, generator):
    """The official step-wise resampler (SD-1.5 ``multi_sample_pipeline``); returns OfficialPairs
    and the preference scores of every scored candidate."""
    unet, vae, sched = pipe.unet, pipe.vae, pipe.scheduler
    dev, dtype = unet.device, unet.dtype
    sched.set_timesteps(num_inference_steps)
    timesteps = sched.timesteps
    b = prompt_embeds.shape[0]
    neg = neg_embed.repeat(b, 1, 1)
    embeds = torch.cat([neg, prompt_embeds])
    latents = torch.randn((b, unet.config.in_channels, latent_side, latent_side),
                          generator=generator).to(dev, dtype)
    prompts_k = list(prompts) * k  # k-major, as extra_info is repeated in the official script
    current = all_prev = last_t = None
    v_t, v_cur, v_next, v_emb, score_log = [], [], [], [], []

    def score_and_pick(images, t_value):
        scores = preference(((images.float() + 1) / 2).clamp(0, 1), prompts_k,
                            torch.full((len(images),), t_value, dtype=torch.long)).float().cpu()
        score_log.append(scores)
        s = scores.reshape(k, -1)
        best, worst = s.argmax(0), s.argmin(0)
        cols = torch.arange(s.shape[1])
        probs = torch.stack([s[best, cols], s[worst, cols]]).softmax(0)
        valid = ((probs[0] - probs[1]) > threshold) & (best != worst)
        idx = torch.stack([best, worst]).to(dev)                    # (2, b)
        nxt = torch.gather(all_prev, 0, idx[..., None, None, None].expand(-1, -1, *all_prev.shape[2:]))
        valid_d = valid.to(dev)
        v_next.append(nxt[:, valid_d])
        v_cur.append(current[valid_d])
        v_t.append(last_t.repeat(int(valid.sum())))
        v_emb.append(prompt_embeds[valid_d])

    for i, t in enumerate(timesteps):
        tt = torch.full((latents.shape[0],), int(t), dtype=torch.long, device=dev)
        out = unet_call(unet, torch.cat([latents] * 2), torch.cat([tt] * 2), embeds)
        u, c = out.chunk(2)
        eps = u + guidance_scale * (c - u)
        pred = fetch_x0(sched, eps, tt, latents, num_inference_steps)
        if i >= divert_start_step:
            if i == divert_start_step:
                prev = fetch_x_t_1(sched, pred, eta, k, num_inference_steps, generator)
                embeds = torch.cat([neg_embed.repeat(k * b, 1, 1), prompt_embeds.repeat(k, 1, 1)])
            else:
                x0 = pred["pred_original_sample"]
                images = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor).sample
                score_and_pick(images, int(t))
                pick = torch.randint(0, k, (b,), generator=generator).to(dev)
                gidx = pick[None, :, None, None, None].expand(-1, -1, *all_prev.shape[2:])
                for key, v in list(pred.items()):
                    v = v.reshape(k, -1, *v.shape[1:])
                    if key == "timestep":
                        pred[key] = v[0]
                    else:
                        pred[key] = torch.gather(v, 0, gidx)[0]
                current = torch.gather(all_prev, 0, gidx)[0]
                prev = fetch_x_t_1(sched, pred, eta, k, num_inference_steps, generator)
            latents = prev.flatten(0, 1)
            all_prev, last_t = prev, tt[:1]
            if i == len(timesteps) - 1:
                images = vae.decode(prev.flatten(0, 1).to(vae.dtype) / vae.config.scaling_factor).sample
                score_and_pick(images, 0)
        else:
            latents = fetch_x_t_1(sched, pred, eta, 1, num_inference_steps, generator)
            if i == divert_start_step - 1:
                current = latents
    nxt = torch.cat(v_next, dim=1)
    pairs = OfficialPairs(timesteps=torch.cat(v_t), latents=torch.cat(v_cur), next_win=nxt[0],
                          next_lose=nxt[1], prompt_embeds=torch.cat(v_emb))
    return pairs, torch.cat(score_log)
