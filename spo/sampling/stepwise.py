"""The step-wise resampler of SPO, and its multi-step window variant MSPO.

One trajectory per prompt is sampled with DDIM(eta) and CFG. Steps outside the trained timestep
range are ordinary sampling steps. At a trained step, k candidates x_{t-1} are drawn from the same
x_t (one batched UNet call); with MSPO (j = ``inner_steps`` > 1) each candidate is denoised j - 1 more
single-sample steps. The candidates at the end of the window are compared by the preference model
on their decoded x0 estimate (at that window end's timestep, or the final x0 at t = 0); the best and
worst make a pair, kept when their probability gap exceeds the threshold, and every transition of
the window gets that label. The trajectory continues from one candidate (uniformly random in the
paper; the winner or loser as ablations).

Ranges are given on the un-offset DDIM grid {0, 50, ..., 950} (20 steps): a step from x_t is trained
when ``lo <= t - steps_offset <= hi``. The paper's kappa = 750 is [0, 750]: 16 trained transitions,
t = 751 ... 1, as the official ``divert_start_step = 4``.

How the trained steps are cut into windows (``window_schedule``) follows the official samplers
(RockeyCoss/SPO@27a8642:spo_training_and_inference/spo/custom_diffusers/): ``multi_sample_pipeline.py``
(SD-1.5, j = 1) branches at every trained step, the last one (t = 1) too ("split");
``multi_sample_pipeline_sdxl.py`` (any j) opens a window every j steps but never at the last step
(its ``i == len(timesteps) - 1`` case, lines 249 and 397-408, only finishes the open window), so
the last window runs to x0 and may be longer than j ("extend").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from spo.models.backbone import Backbone, Conditioning
from spo.preference.selection import probability_gap, select_pairs
from spo.sampling.ddim import DDIMSchedule, ddim_transition, predict_x0, sample_transition
# the settings live in a torch-free module: config validation at DAG start imports them
from spo.sampling.settings import NEXT_INIT, SamplerSettings

__all__ = ["NEXT_INIT", "PairBatch", "SamplerSettings", "official_tiling", "sample_pairs", "trained_steps",
           "window_schedule"]


@dataclass
class PairBatch:
    """Accepted training pairs, on the CPU.

    Attributes:
        xt_w, xt_l: (M, C, h, w) the states the win / lose transitions start from (equal when shared).
        x_w, x_l: (M, C, h, w) the win / lose next states.
        t: (M,) long timestep of the transition's start.
        prompt_index: (M,) long index into the round's prompts.
        shared: (M,) bool, True when xt_w and xt_l are the same tensor (one UNet pass serves both).
    """

    xt_w: torch.Tensor
    xt_l: torch.Tensor
    x_w: torch.Tensor
    x_l: torch.Tensor
    t: torch.Tensor
    prompt_index: torch.Tensor
    shared: torch.Tensor

    def __len__(self) -> int:
        return len(self.t)

    def select(self, index: torch.Tensor) -> "PairBatch":
        return PairBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    @staticmethod
    def cat(parts: Sequence["PairBatch"]) -> "PairBatch":
        return PairBatch(*(torch.cat([getattr(p, f) for p in parts])
                           for f in PairBatch.__dataclass_fields__))


def trained_steps(timesteps: torch.Tensor, steps_offset: int, timestep_range: tuple[int, int]) -> list[bool]:
    lo, hi = timestep_range
    return [lo <= int(t) - steps_offset <= hi for t in timesteps]


def official_tiling(tiling: str | None, is_sdxl: bool, inner_steps: int) -> str:
    """``train.window_tiling`` resolved: null is the official pipeline of the model family (the
    SD-1.5 pipeline exists for j = 1 only; every other case is the SDXL pipeline's)."""
    if tiling is not None:
        return tiling
    return "split" if not is_sdxl and inner_steps == 1 else "extend"


def window_schedule(trained: Sequence[bool], inner_steps: int, tiling: str) -> list[tuple[int, int]]:
    """The windows of a trajectory: (first step index, number of steps), in order.

    Each maximal run of trained steps [s, e] is cut into windows of ``inner_steps`` steps from s on.
    ``split``: the last window holds what is left (it may be a branch at e alone). ``extend``: no
    window starts at e (unless the run is that one step); the last window runs from the last start
    before e through e, so it may hold up to ``2 j - 1`` steps (official SDXL sampler).
    """
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
    if tiling not in ("split", "extend"):
        raise ValueError(f"window tiling {tiling!r}: allowed 'split', 'extend'")
    windows, i, n = [], 0, len(trained)
    while i < n:
        if not trained[i]:
            i += 1
            continue
        end = i
        while end + 1 < n and trained[end + 1]:
            end += 1
        starts = list(range(i, end + 1, inner_steps))
        if tiling == "extend" and len(starts) > 1 and starts[-1] == end:
            starts.pop()
        for a, b in zip(starts, starts[1:] + [None]):
            last = end if b is None and tiling == "extend" else min(end, a + inner_steps - 1)
            windows.append((a, last - a + 1))
        i = end + 1
    return windows


@torch.no_grad()
def sample_pairs(backbone: Backbone, scheduler, prompts: Sequence[str], preference,
                 settings: SamplerSettings, generator: torch.Generator,
                 dump_examples: int = 0,
                 should_stop: Callable[[], bool] | None = None,
                 cond: Conditioning | None = None) -> tuple[PairBatch, dict]:
    """Sample one trajectory per prompt and collect the accepted win / lose transitions.

    Args:
        dump_examples: keep the decoded x̂0 of winner and loser of N accepted pairs (Figure 5):
            the first accepted pair of each window, N windows evenly spread over the trajectory;
            nothing else depends on it, and it draws no random numbers.
        should_stop: polled before every DDIM step; when it returns True, ``spo.checkpoint.Preempted``
            is raised (a trainer's preemption signal, acted on within a step).
        cond: ``backbone.encode(prompts)`` when the caller has it already (a trainer's round
            encodes its prompts once for sampling and loss); None encodes them here.

    Returns:
        the accepted pairs, and statistics: ``pairs_total``, ``pairs_accepted``,
        ``score_mean`` / ``score_std`` over every scored candidate, ``gap_max`` (the largest
        best-worst probability gap of a window, what ``threshold`` is compared with),
        ``final_latents`` (B, C, h, w),
        and ``examples``: up to ``dump_examples`` dicts with ``t`` (the window's first transition),
        ``t_scored`` (the timestep of the scored x̂0), ``prompt``, ``score_win`` / ``score_lose`` and
        the images ``win`` / ``lose`` ((3, H, W) float in [0, 1], CPU).
    """
    scheduler.set_timesteps(settings.num_inference_steps)
    timesteps = scheduler.timesteps.cpu()
    schedule = DDIMSchedule.from_scheduler(scheduler, settings.num_inference_steps)
    trained = trained_steps(timesteps, scheduler.config.steps_offset, settings.timestep_range)
    if not any(trained):
        grid = sorted(int(t) - scheduler.config.steps_offset for t in timesteps)
        raise ValueError(f"config key 'train.timestep_range' {list(settings.timestep_range)} holds "
                         f"no step of the {settings.num_inference_steps}-step DDIM grid {grid}; "
                         f"widen it so that it contains at least one of them")
    cond = backbone.encode(prompts) if cond is None else cond
    n, k, g, eta = len(prompts), settings.k, settings.guidance_scale, settings.eta
    device = backbone.device
    x = backbone.initial_latents(n, generator)
    eps_x = None  # eps of the current x at the current step, when already computed
    parts, all_scores, total, examples, gap_max = [], [], 0, [], float("nan")

    def full(t, size):
        return torch.full((size,), int(t), dtype=torch.long, device=device)

    tiling = official_tiling(settings.window_tiling, backbone.is_sdxl, settings.inner_steps)
    windows = dict(window_schedule(trained, settings.inner_steps, tiling))
    i = 0
    while i < len(timesteps):
        if should_stop is not None and should_stop():
            from spo.checkpoint import Preempted

            raise Preempted()
        t = timesteps[i]
        eps = eps_x if eps_x is not None else backbone.eps(x, full(t, n), cond, g)
        mean, std, _ = ddim_transition(schedule, eps, x, full(t, n), eta)
        if i not in windows:
            x, eps_x, i = sample_transition(mean, std, generator), None, i + 1
            continue
        # The window: this branch step and the following steps of the window (window_schedule).
        width = windows[i]
        rows = torch.arange(n).repeat_interleave(k)
        cond_k = cond.take(rows)
        prompts_k = [prompts[r] for r in rows.tolist()]
        starts = [x.repeat_interleave(k, dim=0)]
        cur = sample_transition(mean.repeat_interleave(k, dim=0), std.repeat_interleave(k, dim=0),
                                generator)
        nexts = [cur]
        for s in range(1, width):
            ts = full(timesteps[i + s], n * k)
            m, sd, _ = ddim_transition(schedule, backbone.eps(cur, ts, cond_k, g), cur, ts, eta)
            starts.append(cur)
            cur = sample_transition(m, sd, generator)
            nexts.append(cur)
        end = i + width
        if end < len(timesteps):
            t_cmp = full(timesteps[end], n * k)
            eps_cmp = backbone.eps(cur, t_cmp, cond_k, g)
            x0 = predict_x0(schedule, eps_cmp.float(), cur.float(), t_cmp)
        else:  # the window reaches the end: score the final sample itself, at t = 0
            t_cmp, eps_cmp, x0 = full(0, n * k), None, cur
        decoded = backbone.decode(x0)
        scores = preference(decoded, prompts_k, t_cmp).float().cpu().view(n, k)
        all_scores.append(scores.flatten())
        gap = float(probability_gap(scores.max(dim=1).values, scores.min(dim=1).values).max())
        gap_max = gap if not gap_max >= gap else gap_max  # NaN-aware max
        win, lose, accepted = select_pairs(scores, threshold=settings.threshold,
                                           mode=settings.pair_mode, generator=generator)
        total += n * width
        keep = torch.nonzero(accepted).flatten()
        wi, li = keep * k + win[keep], keep * k + lose[keep]
        for a, b in zip(wi.tolist()[:1 if dump_examples else 0], li.tolist()):
            examples.append({"t": int(timesteps[i]), "t_scored": int(t_cmp[0]),
                             "prompt": prompts_k[a], "score_win": float(scores.view(-1)[a]),
                             "score_lose": float(scores.view(-1)[b]),
                             "win": decoded[a].float().cpu(), "lose": decoded[b].float().cpu()})
        del decoded
        for s in range(width):
            parts.append(PairBatch(
                xt_w=starts[s][wi].cpu(), xt_l=starts[s][li].cpu(), x_w=nexts[s][wi].cpu(),
                x_l=nexts[s][li].cpu(), t=torch.full((len(keep),), int(timesteps[i + s])),
                prompt_index=keep.clone(), shared=torch.full((len(keep),), s == 0)))
        if settings.next_init == "random":
            pick = torch.randint(0, k, (n,), generator=generator)
        else:
            pick = win if settings.next_init == "win" else lose
        chosen = torch.arange(n) * k + pick
        x = cur[chosen.to(cur.device)]
        eps_x = None if eps_cmp is None else eps_cmp[chosen.to(cur.device)]
        i = end
    if len(examples) > dump_examples:  # N windows evenly spread over t
        step = (len(examples) - 1) / max(1, dump_examples - 1)
        examples = [examples[round(j * step)] for j in range(dump_examples)]
    pairs = PairBatch.cat(parts) if parts else None
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0)
    stats = {"pairs_total": total, "pairs_accepted": 0 if pairs is None else len(pairs),
             "score_mean": float(scores.mean()) if len(scores) else float("nan"),
             "score_std": float(scores.std()) if len(scores) > 1 else float("nan"),
             "gap_max": gap_max, "final_latents": x.cpu(), "examples": examples}
    return pairs, stats
