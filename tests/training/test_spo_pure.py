"""SPO's pure functions against hand-computed values and diffusers."""

import math

import pytest
import torch

from spo.preference.selection import probability_gap, select_pairs
from spo.sampling.ddim import DDIMSchedule, ddim_transition, gaussian_logprob, predict_x0
from spo.sampling.stepwise import SamplerSettings, trained_steps
from spo.training.losses import clamped_log_ratio, spo_loss


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(20)
    return sched


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_mean_equals_diffusers_step(scheduler, eta):
    schedule = DDIMSchedule.from_scheduler(scheduler, 20)
    gen = torch.Generator().manual_seed(0)
    for t in [951, 751, 401, 51, 1]:  # 1: the last step, where t_prev < 0
        x = torch.randn(2, 4, 4, 4, generator=gen)
        eps = torch.randn(2, 4, 4, 4, generator=gen)
        mean, std, x0 = ddim_transition(schedule, eps, x, torch.tensor([t, t]), eta)
        ref = scheduler.step(eps, t, x, eta=eta, variance_noise=torch.zeros_like(x))
        assert torch.allclose(mean, ref.prev_sample, atol=1e-5), t
        assert torch.allclose(x0, ref.pred_original_sample, atol=1e-5)
        assert torch.allclose(predict_x0(schedule, eps, x, torch.tensor([t, t])), x0, atol=1e-6)
        prev_t = t - 50
        expected_std = eta * scheduler._get_variance(t, prev_t) ** 0.5
        assert torch.allclose(std.flatten(), torch.full((2,), float(expected_std)), atol=1e-6)


def test_ddim_mean_at_eta_one_with_noise_equals_diffusers(scheduler):
    schedule = DDIMSchedule.from_scheduler(scheduler, 20)
    x, eps, z = torch.randn(3, 1, 4, 4, 4).unbind(0)
    mean, std, _ = ddim_transition(schedule, eps, x, torch.tensor([501]), 1.0)
    ref = scheduler.step(eps, 501, x, eta=1.0, variance_noise=z).prev_sample
    assert torch.allclose(mean + std * z, ref, atol=1e-5)


def test_gaussian_logprob_matches_torch_distributions():
    mean, x = torch.randn(2, 3, 2, 2, 2).unbind(0)
    std = torch.tensor([0.5, 2.0, 1.3]).view(3, 1, 1, 1)
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(x)
    assert torch.allclose(gaussian_logprob(x, mean, std, "mean"), expected.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(gaussian_logprob(x, mean, std, "sum"), expected.sum(dim=(1, 2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="'mean', 'sum'"):
        gaussian_logprob(x, mean, std, "max")


def test_pair_selection_by_hand():
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.5],     # best 1, worst 3: gap tanh(1.25) = 0.848
                           [1.0, 1.1, 1.05, 1.02]])   # best 1, worst 0: gap tanh(0.05) = 0.050
    win, lose, keep = select_pairs(scores, threshold=0.3)
    assert win.tolist() == [1, 1] and lose.tolist() == [3, 0] and keep.tolist() == [True, False]
    assert probability_gap(torch.tensor(3.0), torch.tensor(0.5)).item() == pytest.approx(math.tanh(1.25))
    _, _, keep0 = select_pairs(scores, threshold=0.0)
    assert keep0.tolist() == [True, True]


def test_random_pairs_are_distinct_and_ordered():
    scores = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    win, lose, _ = select_pairs(scores, threshold=0.0, mode="random",
                                generator=torch.Generator().manual_seed(2))
    rows = torch.arange(200)
    assert (win != lose).all() and (scores[rows, win] >= scores[rows, lose]).all()
    assert len({(w, l) for w, l in zip(win.tolist(), lose.tolist())}) > 6  # not always best-worst


@pytest.mark.parametrize("kwargs, match", [
    ({"scores": torch.zeros(3, 1), "threshold": 0.1}, "k >= 2"),
    ({"scores": torch.zeros(3, 2), "threshold": 1.0}, r"\[0, 1\)"),
    ({"scores": torch.zeros(3, 2), "threshold": 0.1, "mode": "best"}, "best-worst"),
])
def test_pair_selection_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_pairs(**kwargs)


def test_spo_loss_by_hand():
    w, l = torch.tensor([0.05]), torch.tensor([-0.02])
    zero = torch.zeros(1)
    # No clamp: -log sigmoid(10 * (0.05 + 0.02)) = log(1 + e^-0.7) = 0.403186
    out = spo_loss(w, l, zero, zero, beta=10.0, clamp_eps=None)
    assert out["loss"].item() == pytest.approx(math.log1p(math.exp(-0.7)), abs=1e-6)
    assert out["ratio_w"].item() == pytest.approx(math.exp(0.05))
    # Clamp 0.01: log ratios become log(1.01) and log(0.99): 10 * 0.0200003 = 0.200003
    out = spo_loss(w, l, zero, zero, beta=10.0, clamp_eps=0.01)
    margin = 10 * (math.log(1.01) - math.log(0.99))
    assert out["loss"].item() == pytest.approx(math.log1p(math.exp(-margin)), abs=1e-6)
    # Beyond the clamp the gradient is zero (the official PPO-like behaviour).
    w = torch.tensor([0.5], requires_grad=True)
    spo_loss(w, zero, zero, zero, beta=10.0, clamp_eps=0.1)["loss"].backward()
    assert w.grad.item() == 0.0
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        clamped_log_ratio(w, zero, 1.5)


def test_trained_range_on_the_ddim_grid(scheduler):
    ts = scheduler.timesteps
    assert sum(trained_steps(ts, 1, (0, 750))) == 16          # kappa = 750: t = 751 ... 1
    assert [int(t) for t, m in zip(ts, trained_steps(ts, 1, (0, 750))) if m][0] == 751
    assert sum(trained_steps(ts, 1, (0, 1000))) == 20
    assert sum(trained_steps(ts, 1, (250, 500))) == 6
    assert sum(trained_steps(ts, 1, (500, 750))) == 6


@pytest.mark.parametrize("kwargs, key", [
    ({"k": 1}, "train.k"), ({"inner_steps": 0}, "train.inner_steps"),
    ({"timestep_range": (500, 250)}, "train.timestep_range"), ({"threshold": 1.0}, "train.threshold"),
    ({"next_init": "best"}, "train.next_init"),
])
def test_sampler_settings_name_the_bad_key(kwargs, key):
    from spo.config_spec import ConfigError, parse

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse(SamplerSettings, kwargs, "train")
