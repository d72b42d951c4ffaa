"""The pure pieces of SPM training: loss, pseudo-labels, accuracy, schedule, batch order."""

from __future__ import annotations

import math

import pytest
import torch

from spo.spm.objective import (batch_indices, learning_rate, pair_loss, pairwise_accuracy,
                               pseudo_labels)


def test_pair_loss_values():
    s0, s1 = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    # A tie with equal scores costs 0 (the official + log 0.5).
    assert pair_loss(s0[1:2], s1[1:2], torch.tensor([0.5]), torch.ones(1)).item() == pytest.approx(0, abs=1e-7)
    win = pair_loss(s0[:1], s1[:1], torch.tensor([1.0]), torch.ones(1)).item()
    assert win == pytest.approx(math.log1p(math.exp(-2.0)))
    lose = pair_loss(s0[:1], s1[:1], torch.tensor([0.0]), torch.ones(1)).item()
    assert lose == pytest.approx(math.log1p(math.exp(2.0)))
    # 1 / examples-per-prompt weights, normalised: a pair of a 3-pair prompt counts 1/3.
    both = pair_loss(s0[:2], s1[:2], torch.tensor([1.0, 0.0]), torch.tensor([1.0, 3.0])).item()
    assert both == pytest.approx((win * 1 + math.log(2) * (1 / 3)) / (4 / 3))


def test_pseudo_labels_and_accuracy():
    s0, s1 = torch.tensor([3.0, 0.0, 0.1, -2.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])
    assert pseudo_labels(s0, s1, 0.1).tolist() == [1.0, 0.5, 0.5, 0.0]
    acc, n = pairwise_accuracy(s0, s1, torch.tensor([1.0, 1.0, 0.5, 1.0]))
    assert n == 3 and acc == pytest.approx((1 + 0.5 + 0) / 3)


def test_learning_rate_schedule():
    assert learning_rate(0, 1.0, 10, 100, "constant") == pytest.approx(0.1)
    assert learning_rate(50, 1.0, 10, 100, "constant") == 1.0
    assert learning_rate(10, 1.0, 10, 100, "warmup_decay") == pytest.approx(1.0)
    assert learning_rate(55, 1.0, 10, 100, "warmup_decay") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cosine"):
        learning_rate(50, 1.0, 10, 100, "cosine")


def test_batch_order_is_a_pure_function_covering_each_epoch():
    n, b = 10, 4
    first = torch.cat([batch_indices(s, b, n, seed=3) for s in range(5)])  # 2 epochs
    assert sorted(first[:10].tolist()) == list(range(10))
    assert sorted(first[10:20].tolist()) == list(range(10))
    assert torch.equal(batch_indices(3, b, n, seed=3), first[12:16])
    assert not torch.equal(batch_indices(0, b, n, seed=4), first[:4])
