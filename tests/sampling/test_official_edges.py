"""Issue 17, items 2 and 8: MSPO's window tiling as the official samplers, the last DDIM step with
``set_alpha_to_one``, and tied lowest scores."""

from __future__ import annotations

import math

import pytest
import torch

from spo.sampling.stepwise import official_tiling, trained_steps, window_schedule

# The windows (first step index, steps) of a 20-step DDIM trajectory with kappa = 750 (trained
# steps 4..19), read off RockeyCoss/SPO@27a86428edcff3b25dcce8001be94a7a01608f58:
# spo_training_and_inference/spo/custom_diffusers/multi_sample_pipeline_sdxl.py, whose branch
# condition (line 249) is `(i >= divert_start_step and inner_step_left == 0) or i == last`, with
# inner_step_left = num_inner_step = j - 1 set at each branch and decremented on inner steps
# (line 490); the last step (lines 397-408) samples one step per candidate and scores x0, so it
# never branches: the last window runs to x0 (2 steps for j = 1, 4 for j = 3, 6 for j = 5).
OFFICIAL_SDXL = {
    1: [(i, 1) for i in range(4, 18)] + [(18, 2)],
    2: [(i, 2) for i in range(4, 19, 2)],
    3: [(4, 3), (7, 3), (10, 3), (13, 3), (16, 4)],
    4: [(4, 4), (8, 4), (12, 4), (16, 4)],
    5: [(4, 5), (9, 5), (14, 6)],
    6: [(4, 6), (10, 6), (16, 4)],
}
# multi_sample_pipeline.py (SD-1.5, j = 1) branches at every step from divert_start_step on,
# the last one (t = 1) too, and scores the final x0 at t = 0.
OFFICIAL_SD15 = [(i, 1) for i in range(4, 20)]


def _official_sdxl_control_flow(n_steps: int, divert_start_step: int, num_inner_step: int):
    """The SDXL sampler's loop reduced to its counters (an independent reading of the same code)."""
    windows, current, inner_left = [], None, 0
    for i in range(n_steps):
        if (i >= divert_start_step and inner_left == 0) or i == n_steps - 1:
            inner_left = num_inner_step
            if i == divert_start_step:
                current = [i]
            elif i > divert_start_step and i != n_steps - 1:
                windows.append(current)
                current = [i]
            else:
                current.append(i)
                windows.append(current)
        elif i >= divert_start_step:
            inner_left -= 1
            current.append(i)
    return [(w[0], len(w)) for w in windows]


def _kappa_750_mask():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(20)
    return trained_steps(sched.timesteps, 1, (0, 750))


@pytest.mark.parametrize("j", [1, 2, 3, 4, 5, 6])
def test_windows_follow_the_official_sdxl_sampler(j):
    trained = _kappa_750_mask()
    assert trained == [False] * 4 + [True] * 16
    assert _official_sdxl_control_flow(20, 4, j - 1) == OFFICIAL_SDXL[j]
    assert window_schedule(trained, j, "extend") == OFFICIAL_SDXL[j]
    assert sum(w for _, w in OFFICIAL_SDXL[j]) == 16  # every trained transition in one window


def test_sd15_spo_branches_at_every_step_as_its_official_sampler():
    assert window_schedule(_kappa_750_mask(), 1, "split") == OFFICIAL_SD15


def test_the_default_tiling_is_the_model_familys_official_one():
    assert official_tiling(None, is_sdxl=False, inner_steps=1) == "split"   # SD-1.5 pipeline
    assert official_tiling(None, is_sdxl=True, inner_steps=1) == "extend"   # SDXL pipeline, j = 1
    assert official_tiling(None, is_sdxl=False, inner_steps=4) == "extend"  # only SDXL has j > 1
    assert official_tiling("split", is_sdxl=True, inner_steps=4) == "split"


def test_a_range_that_ends_early_extends_its_last_window_to_the_range_end():
    trained = [False] * 4 + [True] * 11 + [False] * 5  # [250, 750]: steps 4..14
    assert window_schedule(trained, 5, "extend") == [(4, 5), (9, 6)]
    assert window_schedule(trained, 5, "split") == [(4, 5), (9, 5), (14, 1)]
    assert window_schedule(trained, 4, "extend") == window_schedule(trained, 4, "split") == [(4, 4), (8, 4), (12, 3)]
    with pytest.raises(ValueError, match="window tiling"):
        window_schedule(trained, 4, "cut")


@pytest.mark.parametrize("tiling, windows", [("extend", 3), ("split", 4)])
def test_the_sampler_uses_the_schedule(tiny_models, tiling, windows):
    """Tiny SDXL, 20 steps, kappa 750, j = 5: 3 windows (4-8, 9-13, 14-19) as the official sampler,
    4 when split (the old tiling: a branch of its own at t = 1); every transition is labelled."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    from spo.models.backbone import Backbone
    from spo.preference import build_preference
    from spo.sampling.settings import SamplerSettings
    from spo.sampling.stepwise import sample_pairs

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models / "pipelines" / "tiny-sdxl", local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    settings = SamplerSettings(num_inference_steps=20, k=2, inner_steps=5, threshold=0.0,
                               window_tiling=tiling)
    pairs, stats = sample_pairs(Backbone(pipe, 32), pipe.scheduler, ["a red car"],
                                build_preference({"name": "colorfulness"}), settings,
                                torch.Generator().manual_seed(0))
    assert stats["pairs_total"] == 16 and len(pairs) == 16
    assert int(pairs.shared.sum()) == windows  # one branch (shared x_t) per window


def test_window_tiling_is_a_checked_key():
    from spo.training.settings import TrainSettings

    with pytest.raises(ValueError, match="'train.window_tiling'"):
        TrainSettings.from_config({"prompts": "p", "window_tiling": "cut"})


# --- item 8: DDIM's last step with set_alpha_to_one, tied lowest scores ------------------------

def test_last_step_with_alpha_to_one_keeps_a_finite_logprob():
    """The official log-prob clamps t_prev to 0 (ddim_with_logprob.py: `torch.clamp(prev_timestep,
    0, ...)`), so the last step uses alphabar_0, not the scheduler's final_alpha_cumprod = 1."""
    from diffusers import DDIMScheduler

    from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, clip_sample=False, set_alpha_to_one=True, steps_offset=1)
    sched.set_timesteps(20)
    assert float(sched.final_alpha_cumprod) == 1.0
    schedule = DDIMSchedule.from_scheduler(sched, 20)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([1, 1])  # the last step: t_prev = -49
    mean, std, _ = ddim_transition(schedule, eps, x_t, t, 1.0)
    a_t, a_0 = float(sched.alphas_cumprod[1]), float(sched.alphas_cumprod[0])
    want_std = math.sqrt((1 - a_0) / (1 - a_t) * (1 - a_t / a_0))
    assert std.flatten().tolist() == pytest.approx([want_std] * 2, rel=1e-6) and want_std > 0
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    want_mean = math.sqrt(a_0) * x0 + math.sqrt(1 - a_0 - want_std ** 2) * eps
    assert torch.allclose(mean, want_mean, atol=1e-5)
    x_prev = mean + std * torch.randn(mean.shape, generator=g)
    assert torch.isfinite(gaussian_logprob(x_prev, mean, std)).all()


def test_tied_lowest_scores_pick_the_last_index_as_the_official_sort():
    """compare_funcs.py: torch.sort(scores, descending=True), indices[[0, -1]]: the first of the
    tied highest wins, the last of the tied lowest loses."""
    from spo.preference.selection import select_pairs

    rows = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 2.0, 0.0]]),
            torch.tensor([[3.0, 3.0, 1.0, 1.0]])]
    for scores in rows:
        win, lose, _ = select_pairs(scores, threshold=0.0)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        assert (int(win), int(lose)) == (int(order[0, 0]), int(order[0, -1])), scores
    win, lose, _ = select_pairs(torch.tensor([[1.0, 0.0, 0.0]]), threshold=0.0)
    assert (int(win), int(lose)) == (0, 2)
